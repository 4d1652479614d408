"""Latency-aware neuron grouping against fixed group sizes (the paper's Figs. 4 and 6).

HALP prunes the same dense model to the same latency budget with ``grouping="auto"`` (each group's block
size is its latency step, detected from the table's staircase on this CPU) and with fixed block sizes
1, 8, 16, 32 and 64 channels; everything else (schedule, fine-tuning, seed) is identical. Each slim model's
accuracy is reported at its *measured* latency (dense and all variants measured together). A fixed size as
wide as a layer freezes that layer, so large sizes can make the budget unreachable: such cells are
recorded as infeasible with the pruner's reason, not dropped.

    python benchmarks/grouping_ablation.py --quick
    python benchmarks/grouping_ablation.py          # resnet56 + mobilenet_v2_cifar, 3 seeds
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _experiment as ex  # noqa: E402
import _variants as va  # noqa: E402

EXPERIMENT = "grouping"
SIZES: tuple[Any, ...] = ("auto", 1, 8, 16, 32, 64)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ex.add_common_args(ap)
    args = ap.parse_args(argv)
    p = ex.preset_from_args(args)
    ex.setup(p, args.quiet)
    store = ex.open_cells(EXPERIMENT, p, args.remeasure, ablation=True)
    variants = {str(s): {"grouping": s} for s in SIZES}
    rows = []
    auto_steps = {}
    for model in p.ablation_models:
        for seed in p.ablation_seeds:
            ctx = ex.Context(model, p.ablation_task, seed, p)
            rows += va.run_variants(store, ctx, EXPERIMENT, variants, p.ablation_budget)
            from halp.grouping import group_steps

            auto_steps[model] = group_steps(ctx.graph, ctx.table, "auto")
    ex.write_json(ex.RESULTS / "grouping_ablation.json",
                  {"preset": p.to_dict(), "machine": ex.machine(p), "auto_steps": auto_steps, "rows": rows})
    va.plot_variants(rows, ex.RESULTS / "grouping_ablation.png", "grouping", "group")
    md = va.variants_markdown(rows, "group size")
    steps_line = "; ".join(
        f"{m}: " + ", ".join(f"{v}×{sum(1 for s in st.values() if s == v)}" for v in sorted(set(st.values())))
        for m, st in auto_steps.items()
    )
    md += f"\n`auto` block sizes detected from the table (size×groups): {steps_line}\n"
    (ex.RESULTS / "grouping_ablation.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
