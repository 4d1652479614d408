"""Does a runtime time one network the same way twice, and alone as among many live sessions? (issue 15)

Times a dense network and a few random prunings of it alone, then interleaved in a group of 37 networks
(as ``int8_fidelity.py`` measures them), then alone again, on each backend named. Differences between the
two "alone" readings are the machine's and the runtime's own noise; differences against the group would be
a bias of measuring many sessions side by side.

    flock -x /tmp/halp-cpu.lock python benchmarks/session_noise.py --backends onnxruntime-int8 onnxruntime
"""

from __future__ import annotations

import argparse
import copy
import json
import sys

import numpy as np
import torch

import halp
from halp.latency import measure_many
from halp.latency.calibrate import random_widths, slim_variant


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--backends", nargs="+", default=["onnxruntime-int8", "onnxruntime"])
    ap.add_argument("--variants", type=int, default=8)
    ap.add_argument("--group", type=int, default=37, help="networks measured together in the group pass")
    ap.add_argument("--repeats", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model = halp.models.create(args.model).eval()
    x = torch.randn(1, 3, args.size, args.size)
    graph = halp.build_graph(model, x)
    rng = np.random.default_rng(0)
    variants = [slim_variant(model, graph, random_widths(graph, rng, 0.25, 1.0, jitter=0.3)) for _ in range(args.variants)]
    probe = [model, *variants[:3]]
    fill = [copy.deepcopy(model) for _ in range(max(0, args.group - 1 - len(variants)))]
    out = {}
    for be in args.backends:
        def alone() -> list[float]:
            return [measure_many([m], x, backend=be, threads=1, repeats=args.repeats, rounds=args.rounds)[0].latency_ms
                    for m in probe]
        first = alone()
        group = measure_many([model, *variants, *fill], x, backend=be, threads=1, repeats=args.repeats, rounds=args.rounds)
        again = alone()
        out[be] = {"alone_ms": first, "group_ms": [g.latency_ms for g in group[:len(probe)]], "alone_again_ms": again,
                   "group_dense_copies_median_ms": float(np.median([g.latency_ms for g in group[1 + len(variants):]]))
                   if fill else None}
        print(be, json.dumps({k: np.round(v, 3).tolist() if isinstance(v, list) else v for k, v in out[be].items()}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
