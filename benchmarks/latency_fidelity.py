"""Latency fidelity (the paper's Fig. 13): predicted vs measured latency of random prunings.

For each model: profile a table (cached under ``<out>/tables/``; an interrupted run resumes), draw
random widths per prunable group (uniform in [25%, 100%]), build the slim variants, predict each one's
latency from the table, and measure the dense model and all variants end to end, interleaved in rounds
so that drift of a shared machine affects all alike. Reported: Pearson r of the latency *reductions*
(dense − variant, predicted vs measured), median and 90th-percentile absolute relative error of the
latencies, the table build time; a scatter plot per model and JSON with every number.

The measurements use :func:`halp.latency.measure_many` (each model warmed up, then timed in blocks of
consecutive forwards, round-robin over the models) rather than ``benchmarks/_timing.compare``, which
alternates models on every call: that would time every forward with another model's weights in cache,
a different regime from the one the table is calibrated in and the one ``halp.measure_latency`` reports.

    python benchmarks/latency_fidelity.py                       # resnet50 + mobilenet_v2, 30 variants
    python benchmarks/latency_fidelity.py --models mobilenet_v2 --variants 10   # quicker look
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

import halp
from halp.latency import measure_many, predict_from_widths, predict_latency
from halp.latency.backends import cpu_model_name
from halp.latency.calibrate import random_widths, slim_variant

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("latency_fidelity")


def run_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    model = halp.models.create(name).eval()
    x = torch.randn(args.batch, *halp.models.input_size(name)[:1], args.size, args.size)
    clock = ("" if args.clock == "wall" else f"_{args.clock}clock") + ("" if args.statistic == "median" else
                                                                      f"_{args.statistic}")
    table_path = Path(args.out) / "tables" / f"{name}_torch-cpu_b{args.batch}_t{args.threads}_{args.size}{clock}.json"
    reused = table_path.exists()
    t0 = time.perf_counter()
    table = halp.profile(model, x, backend="torch-cpu", threads=args.threads, path=table_path,
                         progress=not args.quiet, name=name, clock=args.clock, statistic=args.statistic)
    call_s = time.perf_counter() - t0
    build_s = float(table.meta.get("profile_seconds", call_s))
    log.info("%s: table %s (%s, built in %.0f s)", name, table_path, "reused" if reused else "profiled", build_s)

    graph = halp.build_graph(model, x)
    rng = np.random.default_rng(args.seed)
    steps = None
    if args.aligned:  # the widths latency-aware pruning produces: multiples of each group's latency step
        from halp.grouping import group_steps

        steps = group_steps(graph, table)
    widths = [random_widths(graph, rng, args.low, 1.0, steps=steps) for _ in range(args.variants)]
    variants = [slim_variant(model, graph, w) for w in widths]
    predicted_dense = predict_latency(model, x, table)
    predicted = []
    for v, w in zip(variants, widths):
        p = predict_latency(v, x, table)  # traces the slim model
        fast = predict_from_widths(graph, table, w)  # the pruner's path: dense graph + widths
        if abs(p - fast) > 1e-9 * max(p, 1.0):
            raise RuntimeError(f"predict_latency {p} != predict_from_widths {fast}")
        predicted.append(p)
    log.info("%s: measuring dense + %d variants (%d rounds x %d repeats)", name, len(variants), args.rounds, args.repeats)
    t1 = time.perf_counter()
    load_before = os.getloadavg()[0]
    stats = measure_many([model, *variants], x, backend="torch-cpu", threads=args.threads, warmup=args.warmup,
                         repeats=args.repeats, rounds=args.rounds, clock=args.clock)
    measure_s = time.perf_counter() - t1
    out = {
        "model": name,
        "input": list(x.shape),
        "table": str(table_path.relative_to(ROOT) if table_path.is_relative_to(ROOT) else table_path),
        "table_reused": reused,
        "table_build_s": build_s,
        "table_entries": len(table.entries),
        "aligned_to_steps": bool(args.aligned),
        "calibration": {"a": table.calibration.a, "b": table.calibration.b, "c": table.calibration.c,
                        "method": table.calibration.method},
        "dense": {"predicted_ms": predicted_dense, "measured_ms": stats[0].summary(args.statistic),
                  "iqr_ms": stats[0].iqr_ms},
        "statistic": args.statistic,
        "measure_s": measure_s,
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # before, after measuring
        "variants": [
            {"widths": w, "predicted_ms": float(p), "measured_ms": s.summary(args.statistic), "iqr_ms": float(s.iqr_ms)}
            for w, p, s in zip(widths, predicted, stats[1:])
        ],
    }
    add_metrics(out)
    log.info("%s: r=%.4f  median |rel err|=%.2f%%  p90=%.2f%%  dense %.1f ms (pred %.1f)", name,
             out["pearson_r_reduction"], 100 * out["median_abs_rel_error"], 100 * out["p90_abs_rel_error"],
             out["dense"]["measured_ms"], predicted_dense)
    return out


def add_metrics(out: dict[str, Any]) -> None:
    """Pearson r of the reductions (dense - variant) and the relative errors of the latencies."""
    measured = np.array([v["measured_ms"] for v in out["variants"]])
    predicted = np.array([v["predicted_ms"] for v in out["variants"]])
    rel = np.abs(predicted - measured) / measured
    red_m = out["dense"]["measured_ms"] - measured
    red_p = out["dense"]["predicted_ms"] - predicted
    out["pearson_r_reduction"] = float(np.corrcoef(red_p, red_m)[0, 1]) if len(measured) > 1 else float("nan")
    out["median_abs_rel_error"] = float(np.median(rel))
    out["p90_abs_rel_error"] = float(np.percentile(rel, 90))
    out["mean_signed_rel_error"] = float(np.mean((predicted - measured) / measured))


def repredict(r: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Predict a previous run's variants again with the current predictor (and its calibration refitted
    from the table's stored samples); the measurements are kept as they were."""
    from halp.latency.calibrate import refit

    path = ROOT / r["table"] if not Path(r["table"]).is_absolute() else Path(r["table"])
    table = halp.LatencyTable.load(path)
    model = halp.models.create(r["model"]).eval()
    x = torch.randn(*r["input"])
    graph = halp.build_graph(model, x)
    refit(table, graph)
    table.save(path)
    r["dense"]["predicted_ms"] = predict_latency(model, x, table)
    for v in r["variants"]:
        v["predicted_ms"] = predict_from_widths(graph, table, v["widths"])
    c = table.calibration
    r["calibration"] = {"a": c.a, "b": c.b, "c": c.c, "method": c.method}
    r["repredicted"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    add_metrics(r)
    return r


def scatter(results: list[dict[str, Any]], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2 * len(results), 4.6))
    for i, r in enumerate(results):
        ax = fig.add_subplot(1, len(results), i + 1)
        dm, dp = r["dense"]["measured_ms"], r["dense"]["predicted_ms"]
        m = np.array([v["measured_ms"] for v in r["variants"]])
        p = np.array([v["predicted_ms"] for v in r["variants"]])
        ax.scatter(dm - m, dp - p, s=18, color="tab:blue", alpha=0.8)
        lo, hi = min(0.0, np.min(dm - m), np.min(dp - p)), max(np.max(dm - m), np.max(dp - p))
        lim = [lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)]
        ax.plot(lim, lim, "--", color="gray", lw=1, label="y = x")
        ax.set_xlabel("measured latency reduction (ms)")
        ax.set_ylabel("predicted latency reduction (ms)")
        ax.set_title(f"{r['model']}: r = {r['pearson_r_reduction']:.3f}, median |err| = "
                     f"{100 * r['median_abs_rel_error']:.1f}%", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"predicted vs measured latency reduction, {len(results[0]['variants'])} random prunings, "
                 f"torch-cpu batch {results[0]['input'][0]}", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), dpi=150, bbox_inches="tight")


def section_title(args: argparse.Namespace) -> str:
    """One docs section per measurement kind: the default (wall clock) and the thread-clock check."""
    suffix = "" if args.clock == "wall" else f", {args.threads} thread(s), {args.clock} clock (diagnostic)"
    if args.statistic != "median":
        suffix += f", {args.statistic} of the samples"
    return f"## Latency fidelity (paper Fig. 13){suffix}"


def write_results_md(results: list[dict[str, Any]], args: argparse.Namespace, fig: Path, js: Path) -> None:
    md = ROOT / "docs" / "results.md"
    md.parent.mkdir(parents=True, exist_ok=True)
    text = md.read_text(encoding="utf-8") if md.exists() else "# halp results\n"
    argv, shown = sys.argv[1:], []
    while argv:  # the measuring command: without the re-reporting flags
        a = argv.pop(0)
        if a == "--note":
            argv = argv[1:]
        elif a not in ("--report-only", "--repredict", "--no-docs"):
            shown.append(a)
    cmd = "python benchmarks/latency_fidelity.py " + " ".join(shown)
    clock_note = ("" if args.clock == "wall" else
                  " Times are the CPU time of the (single) working thread, which other processes cannot inflate:"
                  " a check of the predictor on a shared machine, not a latency.")
    lines = [
        section_title(args),
        "",
        f"Command: `{cmd.strip()}`  ",
        f"Machine: {cpu_model_name()}, torch {torch.__version__}, torch-cpu, {args.threads} threads, "
        f"batch {args.batch}, {args.size}x{args.size}; {datetime.now(timezone.utc):%Y-%m-%d}.  ",
        f"{args.variants} random prunings per model (each prunable group keeps a uniform {int(100 * args.low)}-100% "
        f"of its channels{', rounded to its latency step' if args.aligned else ''}); predicted from the table vs "
        f"measured end to end (dense and variants interleaved).{clock_note}",
        "",
        "| model | table build (s) | dense measured / predicted (ms) | Pearson r of reductions | "
        "median abs rel err | p90 abs rel err | calibration a, b, c |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c = r["calibration"]
        lines.append(
            f"| {r['model']} | {r['table_build_s']:.0f}{' (cached)' if r['table_reused'] else ''} | "
            f"{r['dense']['measured_ms']:.1f} / {r['dense']['predicted_ms']:.1f} | {r['pearson_r_reduction']:.4f} | "
            f"{100 * r['median_abs_rel_error']:.2f}% | {100 * r['p90_abs_rel_error']:.2f}% | "
            f"{c['a']:.3f}, {c['b']:.3f}, {c['c']:.2f} ms |")
    load = {r["model"]: r.get("load_average_1min", [float("nan")] * 2) for r in results}
    loads = ", ".join(f"{m} {a:.1f}-{b:.1f}" for m, (a, b) in load.items())
    note = [f"Note: {args.note}"] if args.note else []
    lines += ["", f"1-minute load average while measuring (2 cores): {loads}.", *note,
              "Acceptance: median abs rel error <= 5% and r >= 0.98 on both models; ResNet-50 table <= 15 min.",
              f"Figure: `{fig.relative_to(ROOT)}`; data: `{js.relative_to(ROOT)}`.", ""]
    section = "\n".join(lines)
    pattern = re.compile(re.escape(section_title(args)) + r"\n.*?(?=\n## |\Z)", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip("\n") + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    md.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v2"])
    ap.add_argument("--variants", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--low", type=float, default=0.25, help="smallest kept fraction per group")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1234, help="random widths (the table's calibration uses its own)")
    ap.add_argument("--aligned", action="store_true",
                    help="round the random widths to each group's latency step (as the pruner does)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--clock", choices=["wall", "thread"], default="wall",
                    help="thread: CPU time of the working thread (needs --threads 1), a check on a shared machine")
    ap.add_argument("--statistic", default="median",
                    help="median, or a low percentile such as p10 on a machine shared with other jobs "
                         "(tables and measurements alike)")
    ap.add_argument("--note", default="", help="a sentence added to the docs section (e.g. machine conditions)")
    ap.add_argument("--report-only", action="store_true",
                    help="redraw the figure and the docs section from the JSON of a previous run, measure nothing")
    ap.add_argument("--repredict", action="store_true",
                    help="with --report-only: predict the stored variants again with the current predictor")
    ap.add_argument("--no-docs", action="store_true", help="do not update docs/results.md")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(name)s: %(message)s")
    out = Path(args.out)
    stem = "latency_fidelity" + ("" if args.clock == "wall" else f"_{args.clock}clock") + (
        "" if args.statistic == "median" else f"_{args.statistic}")
    fig = out / f"{stem}.png"
    js = out / f"{stem}.json"
    if args.report_only:
        saved = json.loads(js.read_text(encoding="utf-8"))
        results = saved["results"]
        if args.repredict:
            results = [repredict(r, args) for r in results]
            js.write_text(json.dumps({**saved, "results": results}, indent=1), encoding="utf-8")
    else:
        results = [run_model(name, args) for name in args.models]
        meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_model_name(),
                "torch": torch.__version__, "python": platform.python_version(), "args": vars(args)}
        js.write_text(json.dumps({"meta": meta, "results": results}, indent=1), encoding="utf-8")
    scatter(results, fig)
    if not args.no_docs:
        write_results_md(results, args, fig, js)
    for r in results:
        ok = r["median_abs_rel_error"] <= 0.05 and r["pearson_r_reduction"] >= 0.98
        print(f"{r['model']}: r={r['pearson_r_reduction']:.4f} median|err|={100 * r['median_abs_rel_error']:.2f}% "
              f"p90={100 * r['p90_abs_rel_error']:.2f}% table {r['table_build_s']:.0f}s -> {'PASS' if ok else 'FAIL'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
