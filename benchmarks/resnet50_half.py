"""Issue 2 acceptance: prune_channels on ResNet-50 keeping half of every prunable group.

Parameters and measured CPU latency (batch 1, 224x224, torch-cpu) of the dense and the slim model, measured
side by side (interleaved rounds, :func:`halp.latency.measure_many`), written as ratios to
``benchmarks/results/resnet50_half.json`` and printed as a markdown row for ``docs/results.md``.

    python benchmarks/resnet50_half.py [--threads 2] [--repeats 30]
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

import halp
from halp.latency import measure_many
from halp.latency.backends import cpu_model_name

ROOT = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = halp.models.create("resnet50").eval()
    x = torch.randn(1, 3, 224, 224)
    graph = halp.build_graph(model, x)
    keep = {g.name: torch.arange(max(g.channels // 2, 1)) for g in graph.prunable_groups}
    slim = halp.prune_channels(model, graph, keep).eval()
    with torch.no_grad():  # the slim model is a working network of the expected shape
        assert slim(x).shape == model(x).shape
    params = [sum(p.numel() for p in m.parameters()) for m in (model, slim)]
    dense_s, slim_s = measure_many([model, slim], x, threads=args.threads, repeats=args.repeats)
    result = {
        "groups_halved": len(keep),
        "params": params,
        "params_ratio": params[1] / params[0],
        "latency_ms": [dense_s.latency_ms, slim_s.latency_ms],
        "latency_iqr_ms": [dense_s.iqr_ms, slim_s.iqr_ms],
        "latency_ratio": slim_s.latency_ms / dense_s.latency_ms,
        "threads": args.threads,
        "cpu": cpu_model_name(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    out = ROOT / "results" / "resnet50_half.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"| {len(keep)} | {params[0]:,} -> {params[1]:,} (x{result['params_ratio']:.3f}) | "
          f"{dense_s.latency_ms:.1f} -> {slim_s.latency_ms:.1f} ms (x{result['latency_ratio']:.3f}) |")


if __name__ == "__main__":
    main()
