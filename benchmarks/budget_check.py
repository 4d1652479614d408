"""Budgets met when measured (issue 13): ``halp prune`` at budgets 0.7 and 0.5 on two models, one with
depthwise convolutions, and where the schedule ends as the device measures it.

For each model the dense network is trained once (the first budget's run) and its table profiled once;
the other budgets reuse both (copied into their own run directories). Every run is an ordinary
``halp.run.run`` with the closed loop on (the recipe's default: every pruning step); the row reports the budget, the table's
prediction of the schedule's final widths, the loop's own measurement of them, the independent
measurement right after the schedule (before any correction step: ``schedule_end_measured_ratio``), the
report's final measurement, and how many correction steps ran. All latencies are ratios of the slim over
the dense model measured in the same interleaved rounds (halp's statistic, 1 thread).

    flock -x /tmp/halp-cpu.lock python benchmarks/budget_check.py            # both models, 0.7 and 0.5
    python benchmarks/budget_check.py --models digits_resnet --budgets 0.5 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cells import update_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TITLE = "## Budgets met when measured: halp prune at 0.7 and 0.5 (issue 13)"


def recipes() -> dict[str, dict[str, Any]]:
    """The demo's recipe (a ResNet) and MobileNet-V2 (CIFAR variant, depthwise convs) on digits."""
    import yaml

    from halp.cli.demo import DEMO_RECIPE

    mbv2 = yaml.safe_load((ROOT / "benchmarks" / "recipes" / "mbv2_digits_latency_check.yaml").read_text())
    return {"digits_resnet": dict(DEMO_RECIPE), "mobilenet_v2_cifar": mbv2}


def run_one(model: str, budget: float, out: Path, seed_dir: Path | None, quiet: bool) -> dict[str, Any]:
    from halp.recipe import Recipe
    from halp.run import run

    data = recipes()[model]
    data = dict(data, out=str(out), prune=dict(data["prune"], target=budget))
    if seed_dir is not None and not (out / "dense").exists():  # the first budget's dense model and table
        out.mkdir(parents=True, exist_ok=True)
        shutil.copytree(seed_dir / "dense", out / "dense")
        shutil.copy2(seed_dir / "table.json", out / "table.json")
    t0 = time.perf_counter()
    report = run(Recipe.from_dict(data), progress=not quiet)
    return dict(summarize(model, budget, out, report), seconds=time.perf_counter() - t0)


def summarize(model: str, budget: float, out: Path, report: dict[str, Any]) -> dict[str, Any]:
    """One row from a run's report: the last step's loop measurements and the device checks after it."""
    last = report["steps"][-1] if report.get("steps") else {}
    loop = [f["measured_ratio"] for f in last.get("feedback", [])]
    return {
        "model": model, "budget": budget, "out": str(out),
        "predicted_ratio": report["predicted_ratio"],
        "loop_measured_ratio": last.get("measured_ratio"), "loop_measurements": loop,
        "schedule_end_measured_ratio": report["schedule_end_measured_ratio"],
        "schedule_end_measurements": (report["corrections"] or [{}])[0].get("measurements"),
        "final_measured_ratio": report["latency_ratio"],
        "corrections": len(report["corrections"]) - 1 if report["corrections"] else 0,
        "dense_accuracy": report["dense"]["accuracy"], "pruned_accuracy": report["pruned"]["accuracy"],
        "seconds": report.get("seconds"),
    }


def in_band(ratio: float | None, budget: float) -> bool:
    return ratio is not None and 0.95 * budget <= ratio <= budget + 1e-9


def markdown(rows: list[dict[str, Any]], command: str) -> str:
    lines = [TITLE, "", f"Command: `{command}`", "",
             "| model | budget | predicted | loop's measurement of the final widths | measured at the schedule's end "
             "| in [0.95, 1.00] × budget | final report | corrections | accuracy (dense → pruned) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        end = r["schedule_end_measured_ratio"]
        loop = "-" if r["loop_measured_ratio"] is None else f"{r['loop_measured_ratio']:.3f}"
        lines.append(
            f"| {r['model']} | {r['budget']:.2f} | {r['predicted_ratio']:.3f} | {loop} | "
            f"{end:.3f} | {'yes' if in_band(end, r['budget']) else 'no'} | {r['final_measured_ratio']:.3f} | "
            f"{r['corrections']} | {100 * r['dense_accuracy']:.2f}% → {100 * r['pruned_accuracy']:.2f}% |")
    met = sum(in_band(r["schedule_end_measured_ratio"], r["budget"]) for r in rows)
    lines += ["", f"Measured at the schedule's end inside [0.95, 1.00] × budget: {met}/{len(rows)} runs."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["digits_resnet", "mobilenet_v2_cifar"], choices=list(recipes()))
    ap.add_argument("--budgets", nargs="+", type=float, default=[0.7, 0.5])
    ap.add_argument("--repeat", type=int, default=1, help="runs per (model, budget), each from its own directory")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "budget_check"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "budget_check.json"))
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--no-docs", action="store_true")
    ap.add_argument("--report-only", action="store_true", help="rebuild the table from the runs' report.json")
    args = ap.parse_args(argv)
    for b in args.budgets:
        if not 0.0 < b < 1.0:
            raise SystemExit(f"budgets are fractions of the dense latency in (0, 1), got {b}")
    runs = Path(args.runs)
    rows = []
    for model in args.models:
        seed_dir = None
        for budget in args.budgets:
            for k in range(args.repeat):
                out = runs / f"{model}-{budget:g}-{k}"
                if args.report_only:
                    rep = out / "report.json"
                    if rep.exists():
                        rows.append(summarize(model, budget, out, json.loads(rep.read_text(encoding="utf-8"))))
                    continue
                rows.append(run_one(model, budget, out, seed_dir, args.quiet))
                print(json.dumps(rows[-1]), flush=True)
                seed_dir = seed_dir or out
    Path(args.out).write_text(json.dumps(rows, indent=1), encoding="utf-8")
    command = "python benchmarks/budget_check.py " + " ".join(sys.argv[1:])
    text = markdown(rows, command.strip())
    print(text)
    if not args.no_docs:
        update_results(TITLE, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
