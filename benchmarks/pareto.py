"""Accuracy against measured latency and against FLOPs, HALP versus the field (the paper's Figs. 2 and 7).

For every (model, task, seed) and budget: HALP prunes to ``budget`` x the dense latency its table predicts,
during the preset's fine-tuning. Each baseline then gets its knob tuned until its slim model's *measured*
latency matches HALP's slim model within 2%, then prunes and fine-tunes with the identical budget:

* ``uniform`` — :class:`halp.baselines.UniformPruner`; knob: its latency target (a fraction of dense), i.e.
  one width multiplier for every layer.
* ``taylor-flops`` — :class:`halp.baselines.FlopsTaylorPruner`, global Taylor ranking; knob: FLOPs target.
* ``torch-pruning`` — Torch-Pruning's MetaPruner (global Taylor, one shot before fine-tuning); knob: FLOPs.

The knob is matched on dry runs (widths from the dense model's scores, no fine-tuning; the slim model is
measured interleaved with HALP's), because a real run per probe would cost a fine-tuning each. Torch-Pruning
prunes along one deterministic trajectory, recorded once, so its dry runs read widths off that record and
its real run stops at the same step. Finally dense and all four slim models are measured together and
each baseline's latency ratio to HALP is recorded; a mismatch beyond 2% is flagged, never hidden.

    python benchmarks/pareto.py --quick      # the preset docs/results.md reports
    python benchmarks/pareto.py              # the issue's grid (3 seeds, 2 models, 2 tasks)
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _experiment as ex  # noqa: E402

log = logging.getLogger("pareto")
METHODS = ("halp", "uniform", "taylor-flops", "torch-pruning")
BASELINES = METHODS[1:]
EXPERIMENT = "pareto"


# ----------------------------------------------------------------------------- widths per knob (dry runs)


def uniform_widths(ctx: ex.Context) -> tuple[Callable[[float], dict[str, int]], float]:
    """widths(target fraction) of the uniform baseline, and the lowest reachable fraction."""
    from halp.baselines import UniformPruner

    one = dict(steps=1, interval=1)
    probe = UniformPruner(copy.deepcopy(ctx.dense), ctx.x, ctx.table, ctx.prune_config(target=1.0, **one))
    floor = probe.predict({g.name: probe.min_width[g.name] for g in probe.groups}) / probe.dense_ms

    def widths(knob: float) -> dict[str, int]:
        p = UniformPruner(copy.deepcopy(ctx.dense), ctx.x, ctx.table, ctx.prune_config(target=knob, **one))
        p.prune_now()  # uniform widths do not depend on the (empty) scores
        return p.widths()

    return widths, floor


def taylor_widths(ctx: ex.Context) -> Callable[[float], dict[str, int]]:
    """widths(FLOPs target) of the global-Taylor baseline from scores of the dense model on a few batches."""
    from halp.baselines import FlopsTaylorPruner

    one = dict(steps=1, interval=1)
    calib = copy.deepcopy(ctx.dense).train()
    scorer = FlopsTaylorPruner(calib, ctx.x, ctx.table, ctx.prune_config(**one), flops_target=1.0)
    loss = nn.CrossEntropyLoss()
    for xb, yb in ex.calibration_batches(ctx.train_loader, ctx.p.calib_batches):
        calib.zero_grad()
        loss(calib(xb), yb).backward()
        scorer.importance.accumulate()
    state = scorer.importance.state_dict()

    def widths(knob: float) -> dict[str, int]:
        p = FlopsTaylorPruner(copy.deepcopy(ctx.dense), ctx.x, ctx.table, ctx.prune_config(**one),
                              flops_target=knob)
        p.importance.load_state_dict(state)
        p.prune_now()
        return p.widths()

    return widths


def _module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def tp_group_widths(model: nn.Module, graph: Any) -> dict[str, int]:
    """Our group widths of a model Torch-Pruning slimmed (read off its layers' output sizes)."""
    out = {}
    for g in graph.prunable_groups:
        sizes = set()
        for name in g.producers:
            m = _module(model, name)
            sizes.add(int(getattr(m, "out_channels", getattr(m, "out_features", -1))))
        if len(sizes) != 1:
            raise ValueError(f"Torch-Pruning left group {g.name} with unequal producer widths {sorted(sizes)}")
        out[g.name] = sizes.pop()
    return out


def tp_ignored(ctx: ex.Context) -> list[str]:
    """Layers Torch-Pruning must not prune, for parity with HALP: the classifier and HALP's protected groups."""
    from halp.pruner import Pruner

    probe = Pruner(copy.deepcopy(ctx.dense), ctx.x, ctx.table, ctx.prune_config(target=1.0, steps=1, interval=1))
    kept = {g.name for g in probe.groups}
    names = {n for g in ctx.graph.prunable_groups if g.name not in kept for n in g.producers}
    names |= {l.name for l in ctx.graph.layers if l.shape.kind == "linear"}
    return sorted(names)


def tp_trajectory(ctx: ex.Context, ignored: list[str], floor: float) -> list[dict[str, Any]]:
    """Torch-Pruning's pruning path (as :func:`halp.baselines.torch_pruning_prune` walks it): MACs and
    widths after every step, down to ``floor`` x the dense MACs."""
    import torch_pruning as tp

    model = copy.deepcopy(ctx.dense)
    base, _ = tp.utils.count_ops_and_params(model, ctx.x)
    pruner = tp.pruner.MetaPruner(
        model, ctx.x, importance=tp.importance.TaylorImportance(), global_pruning=True, pruning_ratio=0.9,
        iterative_steps=200, ignored_layers=[_module(model, n) for n in ignored],
    )
    loss = nn.CrossEntropyLoss()
    calibration = ex.calibration_batches(ctx.train_loader, 1)
    path = []
    for step in range(200):
        model.zero_grad()
        for xb, yb in calibration:
            loss(model(xb), yb).backward()
        pruner.step()
        macs, _ = tp.utils.count_ops_and_params(model, ctx.x)
        path.append({"step": step + 1, "macs_frac": float(macs / base), "widths": tp_group_widths(model, ctx.graph)})
        if macs / base <= floor:
            break
    return path


def tp_prune(ctx: ex.Context, ignored: list[str], knob: float) -> nn.Module:
    from halp.baselines import torch_pruning_prune

    model = copy.deepcopy(ctx.dense)
    return torch_pruning_prune(model, ctx.x, knob, ignored_layers=[_module(model, n) for n in ignored],
                               importance="taylor", loss_fn=nn.CrossEntropyLoss(),
                               calibration=ex.calibration_batches(ctx.train_loader, 1))


# ----------------------------------------------------------------------------- cells


def halp_cell(ctx: ex.Context, budget: float) -> dict[str, Any]:
    from halp.pruner import Pruner

    out = ctx.model_dir(EXPERIMENT, method="halp", budget=budget)
    try:
        rec = ctx.run_pruner(lambda m: Pruner(m, ctx.x, ctx.table, ctx.prune_config(target=budget)), out)
    except ValueError as exc:  # an unreachable budget: recorded, not skipped silently
        return {"infeasible": str(exc)}
    rec["model_dir"] = str(out.relative_to(ex.ROOT))
    return rec


def _ratio_fn(ctx: ex.Context, ref: nn.Module, widths_at: Callable[[float], dict[str, int]]) -> Callable[[float], float]:
    seen: dict[str, float] = {}

    def ratio(knob: float) -> float:
        w = widths_at(knob)
        key = json.dumps(sorted(w.items()))
        if key not in seen:
            cand = ex.slim_copy(ctx.dense, ctx.graph, w)
            ref_ms, cand_ms = ex.measure([ref, cand], ctx.x, ctx.p, repeats=ctx.p.dry_repeats)
            r = cand_ms / ref_ms
            if abs(r - 1.0) <= 2 * ctx.p.match_tol:  # near: a second measurement halves the noise
                ref_ms, cand_ms = ex.measure([ref, cand], ctx.x, ctx.p, repeats=ctx.p.dry_repeats)
                r = 0.5 * (r + cand_ms / ref_ms)
            seen[key] = r
            log.info("  knob %.4f -> measured ratio %.3f", knob, r)
        return seen[key]

    return ratio


def baseline_cell(ctx: ex.Context, method: str, budget: float, halp: dict[str, Any],
                  dry: dict[str, Any]) -> dict[str, Any]:
    """Matches ``method``'s knob to HALP's measured latency, then prunes and fine-tunes for real."""
    from halp.baselines import FlopsTaylorPruner, UniformPruner
    from halp.serialize import attach_spec, save_pruned

    ref = ex.load_slim(ex.ROOT / halp["model_dir"])
    flops_start = halp["flops"] / ex.model_stats(ctx.graph, {})["flops"]
    out = ctx.model_dir(EXPERIMENT, method=method, budget=budget)
    p = ctx.p
    if method == "uniform":
        if "uniform" not in dry:
            dry["uniform"] = uniform_widths(ctx)
        widths_at, floor = dry["uniform"]
        match = ex.match_knob(_ratio_fn(ctx, ref, widths_at), floor * 1.001, 1.0, start=budget, tol=p.match_tol)
        rec = ctx.run_pruner(lambda m: UniformPruner(m, ctx.x, ctx.table, ctx.prune_config(target=match.knob)), out)
    elif method == "taylor-flops":
        if "taylor" not in dry:
            dry["taylor"] = taylor_widths(ctx)
        match = ex.match_knob(_ratio_fn(ctx, ref, dry["taylor"]), 0.01, 1.0, start=flops_start, tol=p.match_tol)
        rec = ctx.run_pruner(lambda m: FlopsTaylorPruner(m, ctx.x, ctx.table, ctx.prune_config(),
                                                         flops_target=match.knob), out)
    elif method == "torch-pruning":
        ignored, path = dry["tp"]
        lo = path[-1]["macs_frac"]

        def widths_at(knob: float) -> dict[str, int]:
            return next((s["widths"] for s in path if s["macs_frac"] <= knob), path[-1]["widths"])

        match = ex.match_knob(_ratio_fn(ctx, ref, widths_at), lo, 1.0, start=max(flops_start, lo), tol=p.match_tol)
        model = tp_prune(ctx, ignored, match.knob)
        widths = tp_group_widths(model, ctx.graph)
        ft = ex.finetune(model, ctx.train_loader, p, ctx.seed)
        attach_spec(model, widths, tuple(ctx.x.shape))
        acc = ctx.evaluate(model)
        save_pruned(model, out, meta={"accuracy": acc})
        ex.load_slim(out)  # the saved TP model must load as a halp slim model (same shapes)
        rec = {"accuracy": acc, "widths": widths, "widths_match_dry_run": widths == widths_at(match.knob),
               **ex.model_stats(ctx.graph, widths), **ft}
    else:
        raise ValueError(f"unknown method {method!r}; choose one of {BASELINES}")
    rec["knob"] = match.to_dict()
    rec["model_dir"] = str(out.relative_to(ex.ROOT))
    return rec


def measure_cell(ctx: ex.Context, cells: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Dense and every method's slim model measured together (interleaved): the latencies reported."""
    names = [m for m in METHODS if m in cells and "model_dir" in cells[m]]
    models = [ctx.dense] + [ex.load_slim(ex.ROOT / cells[m]["model_dir"]) for m in names]
    ms = ex.measure_joint(models, ctx.x, ctx.p)
    return {"dense_ms": ms[0], "latency_ms": dict(zip(names, ms[1:]))}


def run_context(store: ex.CellStore, ctx: ex.Context, methods: tuple[str, ...]) -> None:
    p = ctx.p
    base = {"model": ctx.model_name, "task": ctx.task, "seed": ctx.seed, "preset": p.name}
    dry: dict[str, Any] = {}
    for budget in p.budgets:
        cells: dict[str, dict[str, Any]] = {}
        halp = store.run({**base, "budget": budget, "method": "halp"}, lambda: halp_cell(ctx, budget))
        cells["halp"] = halp
        if "infeasible" in halp:
            log.warning("HALP-%g is infeasible for %s: %s", budget, ctx.model_name, halp["infeasible"])
            continue
        for method in methods:
            if method == "halp":
                continue
            key = {**base, "budget": budget, "method": method}
            if method == "torch-pruning" and key not in store and "tp" not in dry:
                ignored = tp_ignored(ctx)
                floor = 0.05
                path = store.run({**base, "trajectory": "torch-pruning", "floor": floor},
                                 lambda: {"ignored": ignored, "path": tp_trajectory(ctx, ignored, floor)})
                dry["tp"] = (path["ignored"], path["path"])
            cells[method] = store.run(key, lambda: baseline_cell(ctx, method, budget, halp, dry))
        store.run({**base, "budget": budget, "measure": sorted(cells)}, lambda: measure_cell(ctx, cells))


# ----------------------------------------------------------------------------- results


def collect(store: ex.CellStore, p: ex.Preset) -> list[dict[str, Any]]:
    """The pareto.json rows: one per finished method cell, latencies from the joint measurement."""
    recs = [r for r in store.records() if r.get("preset") == p.name]
    joint = {(r["model"], r["task"], r["seed"], r["budget"]): r for r in recs if "measure" in r}
    rows = []
    for r in recs:
        if "method" not in r or "infeasible" in r:
            continue
        j = joint.get((r["model"], r["task"], r["seed"], r["budget"]))
        if j is None or r["method"] not in j["latency_ms"]:
            continue
        lat = j["latency_ms"][r["method"]]
        halp_ms = j["latency_ms"].get("halp")
        ratio = lat / halp_ms if halp_ms else None
        rows.append({
            "model": r["model"], "task": r["task"], "method": r["method"], "budget": r["budget"],
            "seed": r["seed"], "accuracy": r["accuracy"], "latency_ms": lat, "flops": r["flops"],
            "params": r["params"], "dense_latency_ms": j["dense_ms"], "latency_vs_dense": lat / j["dense_ms"],
            "latency_vs_halp": ratio, "matched": ratio is not None and abs(ratio - 1) <= p.match_tol,
            "knob": r.get("knob", {}).get("knob"), "preset": p.name,
            "predicted_vs_dense": (r["predicted_ms"] / r["dense_predicted_ms"]) if "dense_predicted_ms" in r else None,
        })
    return sorted(rows, key=lambda d: (d["model"], d["task"], -d["budget"], METHODS.index(d["method"]), d["seed"]))


def dense_rows(store: ex.CellStore, p: ex.Preset) -> dict[tuple[str, str], dict[str, float]]:
    """Dense accuracy, latency and FLOPs per (model, task), averaged over seeds (for the plots' anchor)."""
    import halp.models
    from halp.flops import count_macs
    from halp.graph import build_graph

    out: dict[tuple[str, str], dict[str, list[float]]] = {}
    for r in store.records():
        if r.get("preset") == p.name and "measure" in r:
            d = out.setdefault((r["model"], r["task"]), {"latency_ms": [], "accuracy": []})
            d["latency_ms"].append(r["dense_ms"])
    for (model, task), d in out.items():
        for seed in p.seeds:
            acc = ex.dense_accuracy(model, task, p.for_model(model), seed)
            if acc is not None:
                d["accuracy"].append(acc)
        chans = 1 if task == "digits" else 3
        m = halp.models.create(model, num_classes=10, in_chans=chans)
        d["flops"] = [count_macs(build_graph(m, torch.zeros(1, chans, 32, 32)))]
    return {k: {kk: ex.mean(v) for kk, v in d.items()} for k, d in out.items()}


def table_markdown(rows: list[dict[str, Any]], dense: dict, p: ex.Preset) -> str:
    lines = [
        f"Preset `{p.name}`: mean test accuracy (%) over seeds {list(p.seeds)} at equal measured latency "
        "(each cell: accuracy ± std over seeds; [latency / HALP's latency]).",
        "",
        "| model | task | budget | dense | halp | uniform | taylor-flops | torch-pruning | HALP − best baseline |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["model"], r["task"], r["budget"]) for r in rows}, key=lambda k: (k[0], k[1], -k[2]))
    for model, task, budget in keys:
        sel = [r for r in rows if (r["model"], r["task"], r["budget"]) == (model, task, budget)]
        accs, cells = {}, []
        for m in METHODS:
            mine = [r for r in sel if r["method"] == m]
            if not mine:
                cells.append("—")
                continue
            accs[m] = ex.mean(r["accuracy"] for r in mine)
            ratio = ex.mean(r["latency_vs_halp"] for r in mine)
            flag = "" if all(r["matched"] for r in mine) else " ⚠"
            spread = f" ± {100 * ex.std([r['accuracy'] for r in mine]):.2f}" if len(mine) > 1 else ""
            extra = f" [{ratio:.3f}{flag}]" if m != "halp" else f" [{ex.mean(r['latency_vs_dense'] for r in mine):.2f}× dense]"
            cells.append(f"{100 * accs[m]:.2f}{spread}{extra}")
        base = [accs[m] for m in BASELINES if m in accs]
        gap = f"{100 * (accs['halp'] - max(base)):+.2f}" if base and "halp" in accs else "—"
        d = dense.get((model, task), {})
        lines.append(f"| {model} | {task} | {budget:g} | {ex.fmt(d.get('accuracy'), pct=True)} | " + " | ".join(cells)
                     + f" | {gap} |")
    lines.append("")
    lines.append("[x] = measured latency over HALP's slim model's (joint interleaved measurement); ⚠ = outside "
                 f"±{100 * p.match_tol:.0f}%. HALP's bracket is its measured latency over dense. One accuracy on "
                 "the 4,000 test images has a binomial standard error of about 0.8 points near 50%.")
    lines += paired_markdown(rows, keys)
    lines += ["", "HALP's table against the measurement (latency / dense):", "",
              "| model | task | budget | predicted by the table | measured | MACs / dense |", "|---|---|---|---|---|---|"]
    for model, task, budget in keys:
        mine = [r for r in rows if (r["model"], r["task"], r["budget"], r["method"]) == (model, task, budget, "halp")]
        if mine:
            d = dense.get((model, task), {})
            macs = ex.mean(r["flops"] for r in mine) / d["flops"] if d.get("flops") else float("nan")
            lines.append(f"| {model} | {task} | {budget:g} | {ex.mean(r['predicted_vs_dense'] for r in mine):.3f} | "
                         f"{ex.mean(r['latency_vs_dense'] for r in mine):.3f} | {macs:.3f} |")
    return "\n".join(lines) + "\n"


def paired_markdown(rows: list[dict[str, Any]], keys: list[tuple[str, str, float]]) -> list[str]:
    """HALP minus each baseline on the same seed (same dense model, same fine-tuning data order), per seed
    and as mean ± standard error: the seeds differ mostly through their dense models, so this is the
    comparison with the least noise."""
    lines = ["", "HALP − baseline, paired by seed (points; per seed, then mean ± standard error):", "",
             "| model | task | budget | " + " | ".join(f"vs {m}" for m in BASELINES) + " |",
             "|---|---|---|" + "---|" * len(BASELINES)]
    for model, task, budget in keys:
        by = {(r["method"], r["seed"]): r["accuracy"] for r in rows
              if (r["model"], r["task"], r["budget"]) == (model, task, budget)}
        cells = []
        for m in BASELINES:
            seeds = sorted(s for (mm, s) in by if mm == m and ("halp", s) in by)
            diffs = [100 * (by[("halp", s)] - by[(m, s)]) for s in seeds]
            if not diffs:
                cells.append("—")
                continue
            se = ex.std(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
            per = " / ".join(f"{d:+.2f}" for d in diffs)
            cells.append(f"{per} → **{ex.mean(diffs):+.2f}** ± {se:.2f}" if len(diffs) > 1 else per)
        lines.append(f"| {model} | {task} | {budget:g} | " + " | ".join(cells) + " |")
    return lines


def plot(rows: list[dict[str, Any]], dense: dict, path_latency: Path, path_flops: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = sorted({(r["model"], r["task"]) for r in rows})
    colors = {"halp": "tab:red", "uniform": "tab:blue", "taylor-flops": "tab:green", "torch-pruning": "tab:purple"}
    for xkey, path, label in (("latency_ms", path_latency, "measured latency (ms, batch 1)"),
                              ("flops", path_flops, "MACs (M)")):
        fig, axes = plt.subplots(1, max(len(pairs), 1), figsize=(5.2 * max(len(pairs), 1), 4), squeeze=False)
        for ax, (model, task) in zip(axes[0], pairs):
            for m in METHODS:
                pts = []
                for b in sorted({r["budget"] for r in rows}):
                    mine = [r for r in rows if (r["model"], r["task"], r["method"], r["budget"]) == (model, task, m, b)]
                    if mine:
                        xs = [r[xkey] / (1e6 if xkey == "flops" else 1) for r in mine]
                        pts.append((ex.mean(xs), 100 * ex.mean(r["accuracy"] for r in mine),
                                    100 * ex.std([r["accuracy"] for r in mine])))
                if pts:
                    xs, ys, es = zip(*pts)
                    ax.errorbar(xs, ys, yerr=es, marker="o", label=m, color=colors[m], capsize=3)
            d = dense.get((model, task))
            if d and d.get("accuracy") == d.get("accuracy"):
                xd = d["flops"] / 1e6 if xkey == "flops" else d["latency_ms"]
                ax.scatter([xd], [100 * d["accuracy"]], marker="*", s=150, color="black", label="dense", zorder=5)
            ax.set_title(f"{model} / {task}")
            ax.set_xlabel(label)
            ax.set_ylabel("test accuracy (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ex.add_common_args(ap)
    ap.add_argument("--models", nargs="*", help="override the preset's models")
    ap.add_argument("--tasks", nargs="*", help="override the preset's tasks")
    ap.add_argument("--seeds", nargs="*", type=int, help="override the preset's seeds")
    ap.add_argument("--budgets", nargs="*", type=float, help="override the preset's budgets (the report keeps "
                    "every finished cell)")
    ap.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite pareto.json/.md and the figures from the finished cells; train and measure nothing")
    args = ap.parse_args(argv)
    p = ex.preset_from_args(args)
    p = replace(p, models=tuple(args.models or p.models), tasks=tuple(args.tasks or p.tasks),
                   seeds=tuple(args.seeds if args.seeds is not None else p.seeds),
                   budgets=tuple(args.budgets or p.budgets))
    ex.setup(p, args.quiet)
    store = ex.open_cells(EXPERIMENT, p, args.remeasure)
    for model, task in p.pairs() if not args.report_only else ():
        for seed in p.seeds:
            ctx = ex.Context(model, task, seed, p)
            run_context(store, ctx, tuple(args.methods))
    rows = collect(store, p)
    dense = dense_rows(store, p)
    ex.write_json(ex.RESULTS / "pareto.json", rows)
    md = table_markdown(rows, dense, p)
    (ex.RESULTS / "pareto.md").write_text(md)
    plot(rows, dense, ex.RESULTS / "pareto_latency.png", ex.RESULTS / "pareto_flops.png")
    ex.write_json(ex.RESULTS / "pareto_meta.json", {"preset": p.to_dict(), "machine": ex.machine(p)})
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
