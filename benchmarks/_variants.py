"""HALP config variants at one budget, measured together: the ablations of Figs. 4/6 (grouping) and 10 (k)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from _experiment import ROOT, CellStore, Context, load_slim, mean, measure_joint, std


def run_variants(
    store: CellStore,
    ctx: Context,
    experiment: str,
    variants: Mapping[str, Mapping[str, Any]],
    budget: float,
) -> list[dict[str, Any]]:
    """HALP at ``budget`` once per config variant (``label -> PruneConfig fields``), then dense and every
    feasible variant measured together; returns one row per variant (ablations of Figs. 4/6 and 10).

    A variant whose budget is unreachable (e.g. a group size as wide as the layers) is recorded as
    infeasible with the pruner's reason.
    """
    from halp.pruner import Pruner

    base = {"model": ctx.model_name, "task": ctx.task, "seed": ctx.seed, "preset": ctx.p.name, "budget": budget}
    cells: dict[str, dict[str, Any]] = {}
    for label, fields in variants.items():
        def compute(label: str = label, fields: Mapping[str, Any] = fields) -> dict[str, Any]:
            rest = {k: v for k, v in fields.items() if k != "steps"}
            cfg = ctx.prune_config(fields.get("steps"), target=budget, **rest)
            out = ctx.model_dir(experiment, variant=label, budget=budget)
            try:
                rec = ctx.run_pruner(lambda m: Pruner(m, ctx.x, ctx.table, cfg), out)
            except ValueError as exc:
                return {"infeasible": str(exc), "config": cfg.to_dict()}
            return {**rec, "config": cfg.to_dict(), "model_dir": str(out.relative_to(ROOT))}

        cells[label] = store.run({**base, "variant": label}, compute)
    ok = [label for label in variants if "model_dir" in cells[label]]

    def joint() -> dict[str, Any]:
        models = [ctx.dense] + [load_slim(ROOT / cells[label]["model_dir"]) for label in ok]
        ms = measure_joint(models, ctx.x, ctx.p)
        return {"dense_ms": ms[0], "latency_ms": dict(zip(ok, ms[1:]))}

    measured = store.run({**base, "measure": ok}, joint)
    rows = []
    for label in variants:
        c = cells[label]
        row = {**base, "variant": label, "dense_accuracy": ctx.dense_accuracy, "dense_ms": measured["dense_ms"]}
        if "infeasible" in c:
            row["infeasible"] = c["infeasible"]
        else:
            lat = measured["latency_ms"][label]
            row.update(accuracy=c["accuracy"], latency_ms=lat, latency_vs_dense=lat / measured["dense_ms"],
                       predicted_ms=c["predicted_ms"], dense_predicted_ms=c["dense_predicted_ms"],
                       flops=c["flops"], params=c["params"], widths=c["widths"], group_steps=c["group_steps"])
        rows.append(row)
    return rows


def plot_variants(rows: list[dict[str, Any]], path: Path, title: str, legend: str) -> None:
    """Accuracy against measured latency (relative to dense), one point per variant (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        labels = list(dict.fromkeys(r["variant"] for r in rows if r["model"] == model))
        for i, label in enumerate(labels):
            mine = [r for r in rows if r["model"] == model and r["variant"] == label and "accuracy" in r]
            if not mine:
                continue
            x = mean(r["latency_vs_dense"] for r in mine)
            y = 100 * mean(r["accuracy"] for r in mine)
            e = 100 * std([r["accuracy"] for r in mine])
            ax.errorbar([x], [y], yerr=[e], marker="o", capsize=3, color=f"C{i}", label=f"{legend}={label}")
        dense = [r["dense_accuracy"] for r in rows if r["model"] == model]
        if dense:
            ax.axhline(100 * mean(dense), color="black", ls=":", lw=1, label="dense")
        budget = rows[0]["budget"]
        ax.axvline(budget, color="grey", ls="--", lw=1, label=f"budget {budget:g}")
        ax.set_title(f"{title}: {model}")
        ax.set_xlabel("measured latency / dense (batch 1)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def variants_markdown(rows: list[dict[str, Any]], legend: str) -> str:
    """Mean accuracy and measured latency per variant (± std over seeds)."""
    lines = [f"| model | {legend} | accuracy (%) | measured latency / dense | predicted / dense | MACs (M) | seeds |",
             "|---|---|---|---|---|---|---|"]
    keys = list(dict.fromkeys((r["model"], r["variant"]) for r in rows))
    for model, label in keys:
        mine = [r for r in rows if (r["model"], r["variant"]) == (model, label)]
        ok = [r for r in mine if "accuracy" in r]
        if not ok:
            reason = mine[0].get("infeasible", "")
            lines.append(f"| {model} | {label} | infeasible | — | — | — | {len(mine)} |")
            lines.append(f"|  | ↳ | {reason[:140]} |  |  |  |  |")
            continue
        acc = [r["accuracy"] for r in ok]
        spread = f" ± {100 * std(acc):.2f}" if len(ok) > 1 else ""
        lines.append(
            f"| {model} | {label} | {100 * mean(acc):.2f}{spread} | {mean(r['latency_vs_dense'] for r in ok):.3f} | "
            f"{mean(r['predicted_ms'] / r['dense_predicted_ms'] for r in ok):.3f} | "
            f"{mean(r['flops'] for r in ok) / 1e6:.2f} | {len(ok)} |"
        )
    return "\n".join(lines) + "\n"


__all__ = ["plot_variants", "run_variants", "variants_markdown"]
