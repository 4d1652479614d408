"""The same pruning aimed at different hardware (the paper's Figs. 3 and 14).

One dense model, one budget, two latency tables: eager PyTorch on this CPU (``torch-cpu``) and ONNX Runtime
on the same CPU (``onnxruntime``, a different kernel library and graph optimiser, hence different
staircases and per-op costs). HALP prunes with each table (identical schedule and fine-tuning), and each
slim model is measured on *both* backends next to the dense model: the 2×2 table shows whether each
table's model is the faster one on its own backend. ``torch-cuda`` joins as a third table and backend when
a GPU is present (``--cuda``); none was lent to the session that produced docs/results.md.

    python benchmarks/hardware.py --quick
    python benchmarks/hardware.py            # resnet56 + mobilenet_v2_cifar, 3 seeds
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _experiment as ex  # noqa: E402

EXPERIMENT = "hardware"


def table_settings(p: ex.Preset, backend: str) -> dict[str, Any]:
    """Profile settings per backend: ONNX Runtime and OpenVINO build a model per point (the INT8 backends
    also quantize it), so the quick preset uses a coarser grid there (recorded in the table and the results)."""
    if backend != "torch-cpu" and backend != "torch-cuda" and p.name != "full":
        return {**dict(p.profile), "grid_points": 8, "fine_span": 32}
    return dict(p.profile)


def run_model(store: ex.CellStore, ctx: ex.Context, backends: list[str]) -> dict[str, Any]:
    from halp.latency import predict_from_widths
    from halp.pruner import Pruner

    p = ctx.p
    tables = {b: ex.latency_table(ctx.dense, ctx.model_name, ctx.x, b, p, table_settings(p, b)) for b in backends}
    budget = p.hardware_budget  # every table must reach it: ONNX Runtime's coarse steps stop near 0.61 x dense
    base = {"model": ctx.model_name, "task": ctx.task, "seed": ctx.seed, "preset": p.name, "budget": budget}
    cells = {}
    for b in backends:
        def compute(b: str = b) -> dict[str, Any]:
            cfg = ctx.prune_config(target=budget)
            out = ctx.model_dir(EXPERIMENT, table=b, budget=budget)
            try:
                rec = ctx.run_pruner(lambda m: Pruner(m, ctx.x, tables[b], cfg), out)
            except ValueError as exc:
                return {"infeasible": str(exc)}
            return {**rec, "model_dir": str(out.relative_to(ex.ROOT))}

        cells[b] = store.run({**base, "table": b}, compute)
    ok = [b for b in backends if "model_dir" in cells[b]]
    measured = {}
    for on in backends:
        def joint(on: str = on) -> dict[str, Any]:
            models = [ctx.dense] + [ex.load_slim(ex.ROOT / cells[b]["model_dir"]) for b in ok]
            ms = ex.measure_joint(models, ctx.x, p, backend=on)
            return {"dense_ms": ms[0], "latency_ms": dict(zip(ok, ms[1:]))}

        measured[on] = store.run({**base, "measure_on": on, "models": ok}, joint)
    rows = []
    for b in backends:
        c = cells[b]
        row: dict[str, Any] = {**base, "pruned_with": b, "dense_accuracy": ctx.dense_accuracy}
        if "infeasible" in c:
            rows.append({**row, "infeasible": c["infeasible"]})
            continue
        row.update(accuracy=c["accuracy"], flops=c["flops"], params=c["params"], widths=c["widths"],
                   group_steps=c["group_steps"])
        for on in backends:
            lat = measured[on]["latency_ms"][b]
            row[f"latency_ms@{on}"] = lat
            row[f"vs_dense@{on}"] = lat / measured[on]["dense_ms"]
            row[f"predicted_vs_dense@{on}"] = (predict_from_widths(ctx.graph, tables[on], c["widths"])
                                               / predict_from_widths(ctx.graph, tables[on], {}))
        rows.append(row)
    return {"rows": rows, "dense_ms": {on: measured[on]["dense_ms"] for on in backends}}


def markdown(results: list[dict[str, Any]], backends: list[str]) -> str:
    head = " | ".join(f"measured on {on}: ms (× dense) [predicted × dense]" for on in backends)
    lines = [f"| model | seed | pruned with table | accuracy (%) | {head} |",
             "|---|---|---|---|" + "---|" * len(backends)]
    for res in results:
        for r in res["rows"]:
            if "infeasible" in r:
                lines.append(f"| {r['model']} | {r['seed']} | {r['pruned_with']} | infeasible: {r['infeasible'][:80]} |")
                continue
            cells = []
            for on in backends:
                best = min((x for x in res["rows"] if "infeasible" not in x), key=lambda x: x[f"latency_ms@{on}"])
                mark = " **fastest**" if best is r else ""
                cells.append(f"{r[f'latency_ms@{on}']:.3f} ({r[f'vs_dense@{on}']:.3f}){mark} "
                             f"[{r[f'predicted_vs_dense@{on}']:.3f}]")
            lines.append(f"| {r['model']} | {r['seed']} | {r['pruned_with']} | {100 * r['accuracy']:.2f} | "
                         + " | ".join(cells) + " |")
        dense = ", ".join(f"{on} {ms:.3f} ms" for on, ms in res["dense_ms"].items())
        lines.append(f"| ↳ dense | | | {100 * res['rows'][0]['dense_accuracy']:.2f} | {dense} |" + " |" * (len(backends) - 1))
    return "\n".join(lines) + "\n"


def plot(results: list[dict[str, Any]], backends: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
    for ax, res in zip(axes[0], results):
        rows = [r for r in res["rows"] if "infeasible" not in r]
        xs = np.arange(len(backends))
        width = 0.8 / max(len(rows), 1)
        for i, r in enumerate(rows):
            vals = [r[f"vs_dense@{on}"] for on in backends]
            ax.bar(xs + i * width - 0.4 + width / 2, vals, width, label=f"pruned with {r['pruned_with']} table")
        ax.axhline(rows[0]["budget"] if rows else 0.5, color="grey", ls="--", lw=1, label="budget")
        ax.set_xticks(xs, [f"measured on\n{on}" for on in backends])
        ax.set_ylabel("latency / dense on that backend")
        ax.set_title(f"{res['rows'][0]['model']} seed {res['rows'][0]['seed']}")
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ex.add_common_args(ap)
    ap.add_argument("--cuda", action="store_true", help="add torch-cuda (needs a GPU)")
    ap.add_argument("--backends", nargs="+", default=["torch-cpu", "onnxruntime"],
                    help="tables to prune with and backends to measure on (also openvino, onnxruntime-int8, "
                         "openvino-int8: the Figs. 3/14 matrix with FP32 and INT8 tables)")
    args = ap.parse_args(argv)
    p = ex.preset_from_args(args)
    ex.setup(p, args.quiet)
    backends = list(args.backends)
    if args.cuda:
        if not torch.cuda.is_available():
            raise ValueError("--cuda needs a CUDA GPU; none is visible to torch")
        backends.append("torch-cuda")
    store = ex.open_cells(EXPERIMENT, p, args.remeasure, measure_key="measure_on", ablation=True)
    results = []
    for model in p.ablation_models:
        for seed in p.ablation_seeds:
            results.append(run_model(store, ex.Context(model, p.ablation_task, seed, p), backends))
    stem = "hardware" if backends == ["torch-cpu", "onnxruntime"] else "hardware_" + "_".join(backends)
    ex.write_json(ex.RESULTS / f"{stem}.json", {"preset": p.to_dict(), "machine": ex.machine(p),
                                                 "cuda": torch.cuda.is_available(), "results": results})
    plot(results, backends, ex.RESULTS / f"{stem}.png")
    md = markdown(results, backends)
    (ex.RESULTS / f"{stem}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
