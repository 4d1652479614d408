#!/usr/bin/env bash
# Three fresh `halp demo` runs in a row (issue 13, item 5), each from an empty output directory, each
# alone on the machine when LOCK is set (e.g. LOCK="flock -x /tmp/halp-cpu.lock"); logs in OUT/demoN.log.
#   benchmarks/fresh_demos.sh [OUT]     (default /tmp/halp-fresh-demos)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/halp-fresh-demos}
HALP=${HALP:-.venv/bin/halp}
mkdir -p "$OUT"
for i in 1 2 3; do
  rm -rf "$OUT/demo$i"
  start=$(date +%s)
  ${LOCK:-} "$HALP" demo --out "$OUT/demo$i" > "$OUT/demo$i.log" 2>&1
  echo "wall $(( $(date +%s) - start )) s" >> "$OUT/demo$i.log"
  grep -E "latency ratio|wall" "$OUT/demo$i.log"
done
