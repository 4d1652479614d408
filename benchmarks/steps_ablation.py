"""The number of pruning steps k (the paper's Fig. 10).

HALP prunes the same dense model to the same latency budget in k ∈ {1, 5, 10, 30} exponential steps.
The steps are spread over the same share of the fine-tuning (``interval = span // k``), so every k
gets the same fine-tuning budget and the same recovery time after its last step; accuracy is reported
at the measured latency (dense and all variants measured together).

    python benchmarks/steps_ablation.py --quick
    python benchmarks/steps_ablation.py           # resnet56 + mobilenet_v2_cifar, 3 seeds
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _experiment as ex  # noqa: E402
import _variants as va  # noqa: E402

EXPERIMENT = "steps"
KS = (1, 5, 10, 30)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ex.add_common_args(ap)
    args = ap.parse_args(argv)
    p = ex.preset_from_args(args)
    ex.setup(p, args.quiet)
    store = ex.open_cells(EXPERIMENT, p, args.remeasure, ablation=True)
    variants = {str(k): {"steps": k} for k in KS}
    rows, schedules = [], {}
    for model in p.ablation_models:
        for seed in p.ablation_seeds:
            ctx = ex.Context(model, p.ablation_task, seed, p)
            schedules[model] = {str(k): list(ctx.schedule(k)) for k in KS}
            rows += va.run_variants(store, ctx, EXPERIMENT, variants, p.ablation_budget)
    ex.write_json(ex.RESULTS / "steps_ablation.json",
                  {"preset": p.to_dict(), "machine": ex.machine(p), "schedules": schedules, "rows": rows})
    va.plot_variants(rows, ex.RESULTS / "steps_ablation.png", "pruning steps", "k")
    md = va.variants_markdown(rows, "k")
    md += "\nSchedules (k, interval in minibatches): " + "; ".join(
        f"{m}: " + ", ".join(f"k={k}: r={v[1]}" for k, v in s.items()) for m, s in schedules.items()) + "\n"
    (ex.RESULTS / "steps_ablation.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
