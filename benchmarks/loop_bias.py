"""Are the closed loop's in-run readings biased (issues 13 and 14)? In every detection run, and for MobileNet-V2 in
the budget check, the loop read a slim network slower (relative to dense) than a standalone timing did later.

Re-runs one budget check (``budget_check.run_one``, from a finished budget-check run directory's dense model and
table), keeps every slim model the loop measures, exactly as measured, then times each again alone after the run
next to its state (parameters that require grad, contiguity, subnormal values), and the final model three times.
Timing: run it alone on the machine, under the exclusive lock.

    flock -x /tmp/halp-cpu.lock python benchmarks/loop_bias.py    # trains and profiles the dense model first
    flock -x /tmp/halp-cpu.lock python benchmarks/loop_bias.py --seed-dir runs/budget_every/mobilenet_v2_cifar-0.7-0
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import budget_check  # noqa: E402

import halp  # noqa: E402
import halp.run  # noqa: E402


def keep_measured(kept: list[tuple[torch.nn.Module, float]]) -> None:
    """Makes every closed-loop meter ``halp.run`` builds keep each model it measures and the ratio it read."""
    make = halp.run.ratio_measure

    def ratio_measure(*args: Any, **kwargs: Any):
        measure = make(*args, **kwargs)

        def recorded(slim: torch.nn.Module) -> float:
            ratio = measure(slim)
            kept.append((slim, ratio))
            return ratio

        return recorded

    halp.run.ratio_measure = ratio_measure


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenet_v2_cifar", choices=list(budget_check.recipes()))
    ap.add_argument("--budget", type=float, default=0.7)
    ap.add_argument("--seed-dir", type=Path, default=None,
                    help="a finished budget-check run whose dense model and table are reused (default: train and "
                         "profile them first)")
    ap.add_argument("--runs", type=Path, default=Path("runs/loop_bias"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/loop_bias.json"))
    args = ap.parse_args(argv)
    if args.seed_dir is not None and not ((args.seed_dir / "dense").is_dir() and (args.seed_dir / "table.json").is_file()):
        raise SystemExit(f"{args.seed_dir} holds no dense/ and table.json: pass a finished benchmarks/budget_check.py "
                         "run directory, or leave out --seed-dir to train and profile them here")
    shutil.rmtree(args.runs, ignore_errors=True)
    kept: list[tuple[torch.nn.Module, float]] = []
    keep_measured(kept)
    row = budget_check.run_one(args.model, args.budget, args.runs, args.seed_dir, quiet=True)

    dense = halp.load_pruned(args.runs / "dense").eval()
    x = torch.randn(*json.loads((args.runs / "report.json").read_text())["input_shape"],
                    generator=torch.Generator().manual_seed(0))
    meter = halp.run.ratio_meter(dense, x, 10.0, threads=1, seconds=1.0, min_repeats=40)
    tiny = torch.finfo(torch.float32).tiny
    rows = []
    for slim, in_run in kept:
        params = list(slim.parameters())
        rows.append({"in_run": in_run, "after": [meter(slim) for _ in range(2)],
                     "subnormal_params": sum(int(((p != 0) & (p.abs() < tiny)).sum()) for p in params),
                     "requires_grad": any(p.requires_grad for p in params),
                     "contiguous": all(p.is_contiguous() for p in params)})
        print(json.dumps(rows[-1]), flush=True)
    final = halp.load_pruned(args.runs / "pruned").eval()
    result = {"row": row, "measured": rows, "final_after": [meter(final) for _ in range(3)]}
    args.out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("final_after",)}), "report:", row["final_measured_ratio"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
