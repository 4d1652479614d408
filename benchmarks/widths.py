"""Kept channels per layer: HALP against the FLOPs-driven baseline (the paper's Figs. 8 and 12).

Reads the slim models' widths from the Pareto experiment's cells (run ``pareto.py`` first; nothing is
trained here) and draws, per budget, the kept channels of every prunable group for HALP and for global
Taylor pruning under a FLOPs target matched to HALP's measured latency, over the dense widths. Each
group's latency-step edges on this CPU are marked: the multiples of the step that latency-aware grouping
detected in the table (``halp.grouping.group_steps``), and the cliffs found in the table's fine sweep
near full width (``LatencyTable.cout_sweep`` + ``halp.grouping.find_cliffs``). The share of groups that
sit exactly on an edge is reported per method.

    python benchmarks/widths.py --quick
    python benchmarks/widths.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _experiment as ex  # noqa: E402

METHODS = ("halp", "taylor-flops", "uniform", "torch-pruning")
SHOWN = ("halp", "taylor-flops")


def step_edges(ctx: ex.Context) -> dict[str, dict[str, Any]]:
    """Per group: the detected step and the measured cliffs of its producers' fine sweeps."""
    from halp.grouping import find_cliffs, group_steps

    steps = group_steps(ctx.graph, ctx.table, "auto")
    layers = {l.name: l for l in ctx.graph.layers}
    out = {}
    for g in ctx.graph.prunable_groups:
        cliffs: set[int] = set()
        for name in g.producers:
            try:
                ch, med, noise = ctx.table.cout_sweep(layers[name])
            except KeyError:
                continue
            if len(ch) >= 8:
                cliffs |= {int(c) - 1 for c in find_cliffs(ch, med, noise)}  # fast edge: just below the cliff
        out[g.name] = {"channels": g.channels, "step": int(steps[g.name]), "cliff_edges": sorted(cliffs)}
    return out


def on_edge(width: int, info: dict[str, Any]) -> bool:
    step = info["step"]
    return width == info["channels"] or (step > 1 and width % step == 0) or width in info["cliff_edges"]


def collect(p: ex.Preset) -> list[dict[str, Any]]:
    path = ex.cells_path("pareto", p)
    if not path.is_file():
        raise ValueError(f"{path} does not exist: run `python benchmarks/pareto.py{' --quick' if p.name == 'quick' else ''}` first")
    store = ex.CellStore(path, "pareto")
    return [r for r in store.records() if r.get("method") in METHODS and "widths" in r]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ex.add_common_args(ap)
    ap.add_argument("--models", nargs="*", help="only these models (the other models' results already in "
                    "widths.json are kept: drawing them needs their dense models and tables on this machine)")
    ap.add_argument("--tasks", nargs="*", help="only these tasks (likewise)")
    args = ap.parse_args(argv)
    p = ex.preset_from_args(args)
    ex.setup(p, args.quiet)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = collect(p)
    pairs = sorted({(r["model"], r["task"]) for r in recs if (not args.models or r["model"] in args.models)
                    and (not args.tasks or r["task"] in args.tasks)})
    results: list[dict[str, Any]] = []
    previous = ex.RESULTS / "widths.json"
    if (args.models or args.tasks) and previous.is_file():
        results = [r for r in json.loads(previous.read_text())["results"] if (r["model"], r["task"]) not in pairs]
    for model, task in pairs:
        seed = min(r["seed"] for r in recs if (r["model"], r["task"]) == (model, task))
        ctx = ex.Context(model, task, seed, p)
        edges = step_edges(ctx)
        names = [g.name for g in ctx.graph.prunable_groups]
        budgets = sorted({r["budget"] for r in recs if (r["model"], r["task"], r["seed"]) == (model, task, seed)},
                         reverse=True)
        fig, axes = plt.subplots(len(budgets), 1, figsize=(max(8, 0.32 * len(names)), 2.8 * len(budgets)),
                                 squeeze=False)
        for ax, budget in zip(axes[:, 0], budgets):
            xs = range(len(names))
            ax.bar(xs, [edges[n]["channels"] for n in names], color="0.9", edgecolor="0.7", label="dense")
            for n_i, n in enumerate(names):
                e = edges[n]
                marks = set(e["cliff_edges"])
                if e["step"] > 1:
                    marks |= set(range(e["step"], e["channels"] + 1, e["step"]))
                for y in sorted(marks):
                    ax.plot([n_i - 0.4, n_i + 0.4], [y, y], color="0.55", lw=0.6)
            row = {"model": model, "task": task, "seed": seed, "budget": budget, "widths": {}, "on_edge": {}}
            for m, style in zip(METHODS, ("o-", "s--", "^:", "d-.")):
                cell = [r for r in recs if (r["model"], r["task"], r["seed"], r["budget"], r["method"])
                        == (model, task, seed, budget, m)]
                if not cell:
                    continue
                w = {n: int(cell[0]["widths"].get(n, edges[n]["channels"])) for n in names}
                row["widths"][m] = w
                row["on_edge"][m] = sum(on_edge(w[n], edges[n]) for n in names) / len(names)
                if m in SHOWN:
                    ax.plot(list(xs), [w[n] for n in names], style, ms=4, lw=1, label=f"{m} "
                            f"({100 * row['on_edge'][m]:.0f}% on an edge)")
            ax.set_title(f"{model} / {task}: budget {budget:g} × dense latency (grey ticks: latency-step edges)")
            ax.set_ylabel("kept channels")
            ax.set_xticks(list(xs), names, rotation=90, fontsize=6)
            ax.legend(fontsize=7, loc="upper left")
            results.append(row)
        fig.tight_layout()
        fig.savefig(ex.RESULTS / f"widths_{model}_{task}.png", dpi=110)
        plt.close(fig)
        results.append({"model": model, "task": task, "edges": edges})
    ex.write_json(ex.RESULTS / "widths.json", {"preset": p.to_dict(), "results": results})
    md = [f"| {r['model']} | {r['task']} | {r['budget']:g} | " + " | ".join(
        f"{100 * r['on_edge'][m]:.0f}%" if m in r["on_edge"] else "—" for m in METHODS) + " |"
        for r in results if "on_edge" in r]
    text = ("| model | task | budget | " + " | ".join(f"{m} on an edge" for m in METHODS) + " |\n"
            + "|---|---|---|" + "---|" * len(METHODS) + "\n" + "\n".join(md) + "\n")
    (ex.RESULTS / "widths.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
