"""Diagnostic for the digits shortfall: one HALP cell with the stem group protected (nothing is stored).

On digits at budget 0.55 HALP cut ResNet-56's stem group (the first stage's residual stream) to 2-6 channels
and lost 6-17 points to the baselines. This reruns the same HALP cell (same dense model, table, schedule and
fine-tuning) with ``protect_stem=True`` and prints its accuracy, to test that cause. It uses a separate preset
name so its slim model does not overwrite the Pareto cell's.

    python benchmarks/diag_stem.py --seeds 0
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _experiment as ex  # noqa: E402
import pareto  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet56")
    ap.add_argument("--task", default="digits")
    ap.add_argument("--budget", type=float, default=0.55)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    args = ap.parse_args(argv)
    p = dataclasses.replace(ex.QUICK, name="quick-diag-stem", protect_stem=True)
    ex.setup(p, quiet=True)
    for seed in args.seeds:
        r = pareto.halp_cell(ex.Context(args.model, args.task, seed, p), args.budget)
        print(f"{args.model}/{args.task} budget {args.budget:g} seed {seed}, stem protected: accuracy "
              f"{100 * r['accuracy']:.2f}%, predicted {r['predicted_ms'] / r['dense_predicted_ms']:.3f} x dense")
    return 0


if __name__ == "__main__":
    sys.exit(main())
