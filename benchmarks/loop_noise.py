"""How the closed loop copes with noisy readings (issues 13 and 14): a simulation, no timing.

A shared machine's readings of one ratio are a few percent off each, and now and then much more
(docs/results.md, "The closed loop's readings"). Here the "device" is exact arithmetic: a solve's true ratio
is 1.3 x its prediction (a table 30% optimistic), and each reading multiplies it by ``exp(noise)``, normal
with ``sigma`` plus, with probability ``p_outlier``, a jump of +-``outlier``. For each setting, 20 seeds x 25
goals (0.30 ... 0.78) run one loop step each; the figure is where the *true* ratio of the solve the loop kept
lands relative to the goal. ``--compare FILE`` also runs another version of ``halp/feedback.py`` (e.g. an
earlier commit's, from ``git show REV:src/halp/feedback.py > FILE``) on the same readings.

    python benchmarks/loop_noise.py
    git show 82b6af2:src/halp/feedback.py > /tmp/feedback_old.py && python benchmarks/loop_noise.py --compare /tmp/feedback_old.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import random
import statistics
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = [(0.02, 0.25, 0.15), (0.04, 0.0, 0.15), (0.05, 0.25, 0.15)]  # (sigma, p_outlier, outlier)


class _Solve:
    """A solve whose prediction is its target, in steps of 0.01 ms (its width keys the loop's memory)."""

    def __init__(self, target_ms: float) -> None:
        self.widths = {"g": int(round(100 * target_ms))}
        self.predicted_ms = self.widths["g"] / 100


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"feedback_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def simulate(feedback: ModuleType, sigma: float, p_outlier: float, outlier: float, seeds: int = 20) -> dict[str, Any]:
    """True over goal ratio of the kept solve for every (seed, goal), and the readings taken per step."""
    kept, readings = [], 0
    for seed in range(seeds):
        rng = random.Random(seed)
        for goal in [0.3 + 0.02 * i for i in range(25)]:
            def measure(width: int) -> float:
                nonlocal readings
                readings += 1
                noise = rng.gauss(0.0, sigma) + (rng.choice([-outlier, outlier]) if rng.random() < p_outlier else 0.0)
                return 1.3 * width / 1e4 * math.exp(noise)

            loop = feedback.DeviceFeedback(measure, steps=1, band=0.05, attempts=5)
            result, _ = loop.run(goal, 100.0, _Solve, lambda w: w["g"])
            kept.append(1.3 * result.widths["g"] / 1e4 / goal)
    q = statistics.quantiles(kept, n=20)
    return {"sigma": sigma, "p_outlier": p_outlier, "outlier": outlier,
            "in_band": sum(0.95 <= k <= 1.0 for k in kept) / len(kept), "p5": q[0], "median": statistics.median(kept),
            "p95": q[-1], "readings_per_step": readings / len(kept)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compare", type=Path, default=None, help="another feedback.py to run on the same readings")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "loop_noise.json")
    args = ap.parse_args(argv)
    versions = {"halp": _load(ROOT / "src" / "halp" / "feedback.py")}
    if args.compare is not None:
        if not args.compare.is_file():
            raise SystemExit(f"--compare {args.compare}: no such file")
        versions[args.compare.name] = _load(args.compare)
    rows = [dict(simulate(module, *setting), version=name) for name, module in versions.items() for setting in SETTINGS]
    print("| version | sigma | outliers | true ratio in [0.95, 1.00] x goal | p5 | median | p95 | readings per step |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['version']} | {r['sigma']:.2f} | {r['p_outlier']:.0%} x ±{r['outlier']:.0%} | {r['in_band']:.2f} | "
              f"{r['p5']:.3f} | {r['median']:.3f} | {r['p95']:.3f} | {r['readings_per_step']:.2f} |")
    args.out.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
