"""The heap state behind the closed loop's disagreement with later timings (issues 13 and 14).

Times the detection benchmark's dense SSDlite320 core against one of its HALP networks (side by side, halp's
statistic, 1 thread) and counts minor page faults per forward, in one fresh process: first with glibc as a
fresh process finds it (``HALP_KEEP_MALLOC=1``), then ``--then fixed``: with halp's fixed thresholds
(:mod:`halp.latency.heap`, what every halp measurement now starts with), or ``--then train``: after one
training step of the detector (the state the closed loop measures in). Run it alone on the machine, once each way:

    flock -x /tmp/halp-cpu.lock python benchmarks/heap_state.py --then fixed
    flock -x /tmp/halp-cpu.lock python benchmarks/heap_state.py --then train
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import sys
from pathlib import Path
from typing import Any

os.environ["HALP_KEEP_MALLOC"] = "1"  # the first state is glibc's own: halp must not fix it on import/measure

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import detection as D  # noqa: E402

from halp.detection.core import DetectorCore  # noqa: E402
from halp.detection.train import detection_loss, make_detection_optimizer  # noqa: E402
from halp.latency import heap  # noqa: E402
from halp.run import pair_meter  # noqa: E402
from halp.serialize import load_pruned  # noqa: E402


def faults_per_forward(model: torch.nn.Module, x: torch.Tensor, n: int = 20) -> float:
    with torch.inference_mode():
        model(x)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(n):
            model(x)
        return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("runs/detection"), help="benchmarks/detection.py's work folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--halp", default="halp-0.6-seed0", help="a HALP run folder inside --work")
    ap.add_argument("--readings", type=int, default=3)
    ap.add_argument("--then", choices=["fixed", "train"], default="fixed")
    ap.add_argument("--out", type=Path, default=None, help="default benchmarks/results/heap_state_<then>.json")
    args = ap.parse_args(argv)
    a = D._args(["--phase", "measure", "--seeds", str(args.seed), "--work", str(args.work)])
    train_loader, _, info = D._loaders(a)
    x = D._example(a)
    dense = D._dense(a, args.seed, info)
    core = DetectorCore(dense).eval()
    slim = load_pruned(args.work / args.halp, model=copy.deepcopy(core)).eval()
    pair = pair_meter(core, x, 40.0, threads=1, seconds=1.0)
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []

    def read(state: str) -> None:
        got = [pair(slim) for _ in range(args.readings)]
        rows.append({"state": state, "dense_faults": faults_per_forward(core, x), "slim_faults": faults_per_forward(slim, x),
                     "dense_ms": [d.latency_ms for d, _ in got], "slim_ms": [s.latency_ms for _, s in got],
                     "ratio": [s.latency_ms / d.latency_ms for d, s in got]})
        print(json.dumps(rows[-1]), flush=True)

    read("fresh process, glibc's own thresholds")
    if args.then == "fixed":
        os.environ.pop("HALP_KEEP_MALLOC")
        heap._state.clear()
        read(f"halp's fixed thresholds (mallopt applied: {heap.steady_heap()})")
    else:
        train_once(dense, a, args.seed, train_loader)
        read("after one training step of the detector (batch 8), glibc's own thresholds")
    out = args.out or Path(f"benchmarks/results/heap_state_{args.then}.json")
    out.write_text(json.dumps({"work": str(args.work), "halp": args.halp, "seed": args.seed, "rows": rows},
                              indent=1), encoding="utf-8")
    return 0


def train_once(dense: torch.nn.Module, a: argparse.Namespace, seed: int, train_loader: Any) -> None:
    """One AdamW step of a copy of the detector on one training batch, as the pruning run takes them."""
    trained = copy.deepcopy(dense).train()
    optimizer = make_detection_optimizer(trained, D._cfg(a, 1, seed, a.lr))
    images, targets = next(iter(train_loader))
    loss = sum(detection_loss(trained, images, targets, torch.device("cpu")).values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


if __name__ == "__main__":
    sys.exit(main())
