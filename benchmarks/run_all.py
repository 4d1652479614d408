"""Reruns every paper-figure experiment, in order, each resumable (finished cells are skipped).

    python benchmarks/run_all.py --quick        # the preset docs/results.md reports (~1.5-2 h on 2 cores)
    python benchmarks/run_all.py                # the issue's full grid (days on 2 cores; see docs/results.md)
    python benchmarks/run_all.py --only pareto widths

Each script runs in its own process (a crash in one does not lose the others' cells); the exit code is
non-zero when any of them failed. ``make bench`` calls this (``make bench QUICK=1`` for the quick preset).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# widths reads pareto's cells, so pareto goes first
SCRIPTS = ("pareto", "widths", "grouping_ablation", "steps_ablation", "hardware")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="the small preset")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the preset's)")
    ap.add_argument("--only", nargs="*", choices=SCRIPTS, help="run only these")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    flags = (["--quick"] if args.quick else []) + (["--threads", str(args.threads)] if args.threads else [])
    flags += ["--quiet"] if args.quiet else []
    failed = []
    for name in args.only or SCRIPTS:
        cmd = [sys.executable, str(HERE / f"{name}.py"), *flags]
        print(f"== {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        print(f"== {name}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)} (rerun to resume them)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
