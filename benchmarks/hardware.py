"""The same pruning aimed at different hardware (the paper's Figs. 3 and 14).

One dense model, one budget, two latency tables: eager PyTorch on this CPU (``torch-cpu``) and ONNX Runtime
on the same CPU (``onnxruntime``, a different kernel library and graph optimiser, hence different
staircases and per-op costs). HALP prunes with each table (identical schedule and fine-tuning), and each
slim model is measured on *both* backends next to the dense model: the 2×2 table shows whether each
table's model is the faster one on its own backend. ``torch-cuda`` joins as a third table and backend when
a GPU is present (``--cuda``); none was lent to the session that produced docs/results.md.

    python benchmarks/hardware.py --quick
    python benchmarks/hardware.py            # resnet56 + mobilenet_v2_cifar, 3 seeds
    python benchmarks/hardware.py --matrix   # issue 15: torch-cpu, openvino, openvino-int8 tables (+ Fig. 15)
    python benchmarks/hardware.py --matrix --feedback-steps 8   # each table's pruning measured on its backend

Without ``--feedback-steps`` each model is pruned with its table alone (the paper's setting), so the
matrix also carries every table's own error on this CPU; with it, halp's closed loop makes every model meet
the budget as measured on its own backend, and the matrix compares the networks the tables chose.
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

# The FP32 + INT8 matrix of issue 15 (``--matrix``): digits_resnet (few wide layers: 7 convolutions, 109 M MACs
# at 32x32, ~2.7x ResNet-20 in a third of its layers), so that channel
# counts rather than per-op overhead set the latency on every backend (ResNet-20 at 32x32 is overhead-bound
# on openvino-int8); one seed, budget 0.5, the same coarse profile grid for every table.
MATRIX = ex.replace(
    ex.QUICK, name="matrix", ablation_models=("digits_resnet",), ablation_task="digits", ablation_seeds=(0,),
    hardware_budget=0.5, dense_epochs=20, finetune_epochs=3, batch_size=32, dense_lr=0.05, steps=8,
    data_kw={"size": 32}, per_model={}, profile={"grid_points": 8, "fine_span": 32}, measure_repeats=30,
    measure_rounds=8,
)
MATRIX_BACKENDS = ["torch-cpu", "openvino", "openvino-int8"]


def table_settings(p: ex.Preset, backend: str) -> dict[str, Any]:
    """Profile settings per backend: ONNX Runtime and OpenVINO build a model per point (the INT8 backends
    also quantize it), so the quick preset uses a coarser grid there (recorded in the table and the results)."""
    if backend != "torch-cpu" and backend != "torch-cuda" and p.name != "full":
        return {**dict(p.profile), "grid_points": 8, "fine_span": 32}
    return dict(p.profile)


def make_pruner(ctx: ex.Context, table: Any, backend: str, cfg: Any, feedback_steps: int):
    """HALP with ``table``; with ``feedback_steps`` > 0 its last steps measure the proposed slim models on
    ``backend`` against the dense model (halp's closed loop, as ``halp prune``), so every table's model meets
    the budget *as measured on its own backend* and the matrix compares networks, not tables' errors."""
    from halp.feedback import DeviceFeedback
    from halp.pruner import Pruner
    from halp.run import ratio_meter

    def build(model: torch.nn.Module) -> Pruner:
        pruner = Pruner(model, ctx.x, table, cfg)
        if feedback_steps > 0:
            meter = ratio_meter(ctx.dense.eval(), ctx.x, pruner.dense_ms, threads=ctx.p.threads,
                                backend=ex.timing_backend(backend, ctx.p.threads), seconds=1.0,
                                min_repeats=ctx.p.measure_repeats)
            pruner.feedback = DeviceFeedback(meter, steps=min(feedback_steps, cfg.steps))
        return pruner

    return build


def run_model(store: ex.CellStore, ctx: ex.Context, backends: list[str], prepare: bool = False,
              feedback_steps: int = 0) -> dict[str, Any]:
    from halp.latency import predict_from_widths

    p = ctx.p
    tables = {b: ex.latency_table(ctx.dense, ctx.model_name, ctx.x, b, p, table_settings(p, b)) for b in backends}
    budget = p.hardware_budget  # every table must reach it: ONNX Runtime's coarse steps stop near 0.61 x dense
    base = {"model": ctx.model_name, "task": ctx.task, "seed": ctx.seed, "preset": p.name, "budget": budget,
            **({"feedback_steps": feedback_steps} if feedback_steps > 0 else {})}
    cells = {}
    for b in backends:
        def compute(b: str = b) -> dict[str, Any]:
            cfg = ctx.prune_config(target=budget)
            loop = {"loop": feedback_steps} if feedback_steps else {}
            out = ctx.model_dir(EXPERIMENT, table=b, budget=budget, **loop)
            try:
                rec = ctx.run_pruner(make_pruner(ctx, tables[b], b, cfg, feedback_steps), out)
            except ValueError as exc:
                return {"infeasible": str(exc)}
            return {**rec, "model_dir": str(out.relative_to(ex.ROOT))}

        cells[b] = store.run({**base, "table": b}, compute)
    ok = [b for b in backends if "model_dir" in cells[b]]
    deployed = {}
    if INT8_TARGET in backends:  # Fig. 15: every model deployed INT8, its top-1 on the test split
        for b in ["dense"] + ok:
            def deploy(b: str = b) -> dict[str, Any]:
                model = ctx.dense if b == "dense" else ex.load_slim(ex.ROOT / cells[b]["model_dir"])
                return int8_accuracy(ctx, model, INT8_TARGET)

            deployed[b] = store.run({**base, "int8_deploy": INT8_TARGET, "table": b}, deploy)
    if prepare:
        return {}
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
        if b in deployed:
            row["int8"] = deployed[b]
        rows.append(row)
    return {"rows": rows, "dense_ms": {on: measured[on]["dense_ms"] for on in backends},
            **({"dense_int8": deployed["dense"]} if "dense" in deployed else {})}


INT8_TARGET = "openvino-int8"


def int8_accuracy(ctx: ex.Context, model: torch.nn.Module, backend: str) -> dict[str, Any]:
    """``model`` exported INT8 for ``backend`` by :func:`halp.export_int8` (calibrated on 288 training
    samples, as ``benchmarks/int8_export.py``), scored on the whole test split next to its FP32 self."""
    import tempfile

    from halp.export import export_int8

    calib = [x for x, _ in ex.calibration_batches(ctx.train_loader, 9)]
    suffix = ".xml" if backend == "openvino-int8" else ".onnx"
    with tempfile.TemporaryDirectory(prefix="halp-hardware-int8-") as tmp:
        r = export_int8(model.eval(), ctx.x, Path(tmp) / f"model{suffix}", backend, calibration_data=calib,
                        eval_data=list(ctx.test_loader), threads=ctx.p.threads)
    return {"backend": backend, "fp32_top1": r.fp32_top1, "int8_top1": r.int8_top1, "agreement": r.agreement,
            "eval_samples": r.eval_samples, "calibration_samples": r.calibration_samples}


def verdict(results: list[dict[str, Any]], backends: list[str], tolerance: float = 0.02) -> str:
    """The claim under test, per backend, both ways the paper puts it: is the model pruned with that backend's
    table the fastest there, and is it the most accurate of the models that meet the budget there (measured
    ratio <= budget x (1 + ``tolerance``), halp's correction tolerance)?"""
    lines = []
    for res in results:
        rows = [r for r in res["rows"] if "infeasible" not in r]
        for on in backends:
            if not any(r["pruned_with"] == on for r in rows):
                continue
            best = min(rows, key=lambda r: r[f"latency_ms@{on}"])
            own = next(r for r in rows if r["pruned_with"] == on)
            gap = own[f"latency_ms@{on}"] / best[f"latency_ms@{on}"] - 1
            lines.append(f"* on {on}: fastest is the {best['pruned_with']} table's model"
                         + (" (its own: claim holds)" if best is own else
                            f"; its own table's model is {100 * gap:.1f}% slower (claim fails here)"))
            limit = own["budget"] * (1 + tolerance)
            meet = [r for r in rows if r[f"vs_dense@{on}"] <= limit]
            if not meet:
                lines.append(f"  * no model measures within {limit:.3f} x dense on {on}")
                continue
            top = max(meet, key=lambda r: r["accuracy"])
            names = ", ".join(r["pruned_with"] for r in meet)
            if top is own:
                verdict_ = "its own: claim holds"
            elif own in meet:
                short = 100 * (top["accuracy"] - own["accuracy"])
                verdict_ = f"its own is {short:.2f} points less accurate: claim fails here"
            else:
                verdict_ = "its own misses the budget here: claim fails here"
            lines.append(f"  * within {limit:.3f} x dense on {on} ({names}): most accurate is the "
                         f"{top['pruned_with']} table's model, {100 * top['accuracy']:.2f}% ({verdict_})")
    return "\n".join(lines) + "\n"


def int8_markdown(results: list[dict[str, Any]]) -> str:
    """Fig. 15: each model deployed INT8 on openvino-int8: top-1 FP32 vs INT8 and measured INT8 latency."""
    on = INT8_TARGET
    lines = [f"| pruned with table | FP32 top-1 (%) | INT8 top-1 on {on} (%) | INT8 − FP32 (points) | "
             f"{on} latency: ms (× dense) |", "|---|---|---|---|---|"]
    for res in results:
        for r in res["rows"]:
            if "int8" not in r:
                continue
            q = r["int8"]
            lines.append(f"| {r['pruned_with']} | {q['fp32_top1']:.2f} | {q['int8_top1']:.2f} | "
                         f"{q['int8_top1'] - q['fp32_top1']:+.2f} | {r[f'latency_ms@{on}']:.3f} "
                         f"({r[f'vs_dense@{on}']:.3f}) |")
        if "dense_int8" in res:
            q = res["dense_int8"]
            lines.append(f"| dense | {q['fp32_top1']:.2f} | {q['int8_top1']:.2f} | "
                         f"{q['int8_top1'] - q['fp32_top1']:+.2f} | {res['dense_ms'][on]:.3f} |")
    return "\n".join(lines) + "\n"


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


def plot_int8(results: list[dict[str, Any]], path: Path) -> None:
    """Fig. 15: INT8 top-1 against measured INT8 latency, one point per table (and the dense model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    on = INT8_TARGET
    for res in results:
        for r in res["rows"]:
            if "int8" in r:
                ax.scatter(r[f"latency_ms@{on}"], r["int8"]["int8_top1"], s=40)
                ax.annotate(f"{r['pruned_with']} table", (r[f"latency_ms@{on}"], r["int8"]["int8_top1"]),
                            fontsize=8, xytext=(4, 4), textcoords="offset points")
        if "dense_int8" in res:
            ax.scatter(res["dense_ms"][on], res["dense_int8"]["int8_top1"], marker="*", s=80, color="k")
            ax.annotate("dense", (res["dense_ms"][on], res["dense_int8"]["int8_top1"]), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel(f"measured latency on {on} (ms, 1 thread)")
    ax.set_ylabel(f"INT8 top-1 on {on} (%)")
    ax.set_title(f"{results[0]['rows'][0]['model']} deployed INT8 (Fig. 15)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ex.add_common_args(ap)
    ap.add_argument("--cuda", action="store_true", help="add torch-cuda (needs a GPU)")
    ap.add_argument("--matrix", action="store_true",
                    help="issue 15's FP32 + INT8 matrix: digits_resnet at 64x64, budget 0.5, one seed; default "
                         f"backends {' '.join(MATRIX_BACKENDS)}; INT8 deployment accuracy (Fig. 15)")
    ap.add_argument("--budget", type=float, default=None,
                    help="latency budget as a fraction of each table's dense prediction (default: the preset's)")
    ap.add_argument("--prepare", action="store_true",
                    help="train, profile, prune and score INT8 accuracy only (cached); a later run without it "
                         "takes the side-by-side measurements (the only step that must hold the exclusive lock "
                         "when the tables were profiled earlier)")
    ap.add_argument("--feedback-steps", type=int, default=0,
                    help="the last this many pruning steps measure on the table's own backend (halp's closed "
                         "loop; the preset's step count: every step); 0, the default, prunes with the tables alone "
                         "as the paper does, so the matrix then also shows each table's error")
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="dense-model seeds (default: the preset's; the tables are shared, latency does not "
                         "depend on the weights)")
    ap.add_argument("--measure-repeats", type=int, default=None,
                    help="forwards per model in each of the final measurement's three passes is twice this "
                         "(default: the preset's); with --remeasure, retakes the matrix's timing longer")
    ap.add_argument("--measure-rounds", type=int, default=None,
                    help="interleaved rounds per pass (default: the preset's); more rounds spread a slow spell "
                         "of the machine over every model")
    ap.add_argument("--backends", nargs="+", default=None,
                    help="tables to prune with and backends to measure on (also openvino, onnxruntime-int8, "
                         "openvino-int8: the Figs. 3/14 matrix with FP32 and INT8 tables)")
    args = ap.parse_args(argv)
    if args.feedback_steps < 0:
        raise ValueError(f"--feedback-steps must be >= 0 (0: the tables alone), got {args.feedback_steps}")
    p = ex.preset_from_args(args)
    if args.matrix:
        p = MATRIX if args.threads is None else ex.replace(MATRIX, threads=args.threads)
    if args.budget is not None:
        if not 0.0 < args.budget < 1.0:
            raise ValueError(f"--budget must be in (0, 1), got {args.budget}")
        p = ex.replace(p, hardware_budget=args.budget)
    for flag, value in (("--measure-repeats", args.measure_repeats), ("--measure-rounds", args.measure_rounds)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be a positive integer, got {value}")
    if args.seeds is not None:
        p = ex.replace(p, ablation_seeds=tuple(args.seeds))
    if args.measure_repeats is not None:
        p = ex.replace(p, measure_repeats=args.measure_repeats)
    if args.measure_rounds is not None:
        p = ex.replace(p, measure_rounds=args.measure_rounds)
    ex.setup(p, args.quiet)
    backends = list(args.backends or (MATRIX_BACKENDS if args.matrix else ["torch-cpu", "onnxruntime"]))
    if args.cuda:
        if not torch.cuda.is_available():
            raise ValueError("--cuda needs a CUDA GPU; none is visible to torch")
        backends.append("torch-cuda")
    store = ex.open_cells(EXPERIMENT, p, args.remeasure, measure_key="measure_on", ablation=True)
    results = []
    for model in p.ablation_models:
        for seed in p.ablation_seeds:
            results.append(run_model(store, ex.Context(model, p.ablation_task, seed, p), backends, args.prepare,
                                     args.feedback_steps))
    if args.prepare:
        return 0
    stem = "hardware" if backends == ["torch-cpu", "onnxruntime"] else "hardware_" + "_".join(backends)
    if args.matrix:
        stem = "hardware_matrix_" + "_".join(backends)
    if args.budget is not None:
        stem += f"_b{args.budget:g}"
    if args.feedback_steps:
        stem += f"_loop{args.feedback_steps}"
    if args.seeds is not None:
        stem += "_s" + "-".join(map(str, args.seeds))
    ex.write_json(ex.RESULTS / f"{stem}.json", {"preset": p.to_dict(), "machine": ex.machine(p),
                                                 "cuda": torch.cuda.is_available(), "results": results})
    plot(results, backends, ex.RESULTS / f"{stem}.png")
    md = markdown(results, backends) + "\n" + verdict(results, backends)
    if any("int8" in r for res in results for r in res["rows"]):
        md += "\n" + int8_markdown(results)
        plot_int8(results, ex.RESULTS / f"{stem}_int8.png")
    (ex.RESULTS / f"{stem}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
