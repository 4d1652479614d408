#!/usr/bin/env bash
# The detection benchmark end to end (issue 14): timing phases (and HALP, whose closed loop measures) under
# the exclusive CPU lock, training under the shared one, every locked command at most ~9 minutes (training
# phases stop with a checkpoint after --slice-minutes and exit 3; profile and match resume from what they wrote). Resumable: rerun the script
# after a kill and every phase skips what is already done. One process per seed and budget, one thread each.
#   benchmarks/detection_run.sh [extra args for benchmarks/detection.py, e.g. --finetune-epochs 3]
# LOCK_CMD: the lock wrapper taking -s/-x (default /work/wt/cpulock if present, else flock on /tmp/halp-cpu.lock)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
B=benchmarks/detection.py
SEEDS=${SEEDS:-0 1}
BUDGETS=${BUDGETS:-0.5 0.7}
export OMP_NUM_THREADS=1
lock() {  # lock -s|-x command...
  local mode=$1; shift
  if [ -n "${LOCK_CMD:-}" ]; then $LOCK_CMD "$mode" "$@"
  elif [ -x /work/wt/cpulock ]; then /work/wt/cpulock "$mode" "$@"
  else flock "$mode" /tmp/halp-cpu.lock "$@"; fi
}
sliced() {  # sliced -s|-x args...: rerun a phase until it stops asking for another slice (exit 3)
  local rc
  while true; do
    lock "$1" timeout 600 $PY $B "${@:2}" --slice-minutes 9; rc=$?
    [ $rc -eq 3 ] || [ $rc -eq 124 ] || return $rc
  done
}
par() {  # one sliced process per seed (and budget with $2=budgets); fail if any fails
  local pids=() s b rc=0
  for s in $SEEDS; do
    if [ "$2" = budgets ]; then
      for b in $BUDGETS; do sliced -s --phase "$1" --seeds "$s" --budgets "$b" "${@:3}" & pids+=($!); done
    else sliced -s --phase "$1" --seeds "$s" "${@:3}" & pids+=($!); fi
  done
  for p in "${pids[@]}"; do wait "$p" || rc=$?; done
  return $rc
}
par dense seeds "$@" || exit 1
sliced -x --phase profile --seeds ${SEEDS%% *} "$@" || exit 1   # the table of the first seed's dense network
# HALP's closed loop measures on this CPU: one run at a time, with the machine to itself
for s in $SEEDS; do for b in $BUDGETS; do sliced -x --phase halp --seeds "$s" --budgets "$b" "$@" || exit 1; done; done
# one exclusive slot: match uniform to HALP, then time everything (uniform by its widths: shapes set latency)
lock -x timeout 600 bash -c "$PY $B --phase match --seeds $SEEDS --budgets $BUDGETS $* && \
  $PY $B --phase measure --seeds $SEEDS --budgets $BUDGETS $*" || exit 1
par uniform budgets "$@" || exit 1
lock -s $PY $B --phase report --seeds $SEEDS --budgets $BUDGETS "$@"
