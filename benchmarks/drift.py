"""How far does the machine drift while nothing changes? The same networks measured again and again.

Builds a dense model and ``--variants`` random prunings of it (the widths halp's calibration draws), then
measures all of them interleaved (:func:`halp.latency.measure_many`, halp's statistic) ``--times`` times in a
row in one process. Reports per measurement the dense latency and the prunings' mean latency as a
fraction of dense: if a table's calibration could hold, both would stay put.

    flock -x /tmp/halp-cpu.lock python benchmarks/drift.py --model mobilenet_v1 --size 128 --times 6
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import halp
from halp.latency import measure_many
from halp.latency.calibrate import random_widths, slim_variant

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenet_v1")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", type=int, default=8)
    ap.add_argument("--times", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "drift.json"))
    args = ap.parse_args(argv)
    if args.times < 2 or args.variants < 1:
        raise SystemExit("need --times >= 2 and --variants >= 1 to see a drift")
    torch.manual_seed(0)
    model = halp.models.create(args.model).eval()
    x = torch.randn(1, *halp.models.input_size(args.model)[:1], args.size, args.size)
    graph = halp.build_graph(model, x)
    rng = np.random.default_rng(args.seed)
    variants = [slim_variant(model, graph, random_widths(graph, rng, 0.25, 1.0, jitter=0.3))
                for _ in range(args.variants)]
    rows = []
    for k in range(args.times):
        stats = measure_many([model, *variants], x, threads=args.threads)
        dense = stats[0].latency_ms
        ratios = [s.latency_ms / dense for s in stats[1:]]
        rows.append({"time": time.strftime("%H:%M:%S", time.gmtime()), "dense_ms": dense,
                     "mean_ratio": float(np.mean(ratios)), "ms": [s.latency_ms for s in stats]})
        print(f"{rows[-1]['time']}  dense {dense:7.3f} ms   prunings {np.mean(ratios):.3f} x dense", flush=True)
    dense = [r["dense_ms"] for r in rows]
    ratio = [r["mean_ratio"] for r in rows]
    print(f"dense {min(dense):.3f}-{max(dense):.3f} ms ({100 * (max(dense) / min(dense) - 1):.1f}%), "
          f"prunings' ratio {min(ratio):.3f}-{max(ratio):.3f} ({100 * (max(ratio) / min(ratio) - 1):.1f}%)")
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
