#!/usr/bin/env bash
# The detection benchmark end to end (issue 14): timing phases under the exclusive CPU lock, training under
# the shared one. Resumable: rerun the script after a kill and every phase skips what is already done.
# The budgets' fine-tunes run as parallel processes (BUDGETS, default "0.6 0.8"), one thread each.
#   benchmarks/detection_run.sh [extra args for benchmarks/detection.py, e.g. --seeds 0 --finetune-epochs 3]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
LOCK=/tmp/halp-cpu.lock
B=benchmarks/detection.py
export OMP_NUM_THREADS=1
flock -s $LOCK $PY $B --phase dense "$@"
# PROFILE_LOCK=-s profiles beside other jobs (pass --profile-statistic p10 then); the reported
# measurements (match, measure) always take the machine to themselves
flock ${PROFILE_LOCK:--x} $LOCK $PY $B --phase profile "$@"
BUDGETS=${BUDGETS:-0.6 0.8}
par() {  # one process per budget; fail if any fails
  local pids=() b
  for b in $BUDGETS; do flock -s $LOCK $PY $B --phase "$1" --budgets "$b" "${@:2}" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p"; done
}
par halp "$@"
flock -x $LOCK $PY $B --phase match --budgets $BUDGETS "$@"
par uniform "$@"
flock -x $LOCK $PY $B --phase measure --budgets $BUDGETS "$@"
