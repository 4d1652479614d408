"""Latency fidelity (the paper's Fig. 13): predicted vs measured latency of random prunings.

For each model: profile a table (cached under ``<out>/tables/``; an interrupted run resumes), draw
random widths per prunable group (uniform in [25%, 100%]), build the slim variants, predict each one's
latency from the table, and measure the dense model and all variants end to end, interleaved in rounds
so that drift of a shared machine affects all alike (two passes, each model keeping its faster one). The
table's own calibration networks are measured in the same passes and the calibration refitted from them
(what :func:`halp.recalibrate` does): this VM's speed drifts by ~10% within minutes, so the headline
numbers compare the predictor with the machine as it is; the prediction with the calibration as profiled
is reported beside it. Reported: Pearson r of the latency *reductions*
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
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

import halp
from halp.latency import measure_many, predict_latency
from halp.latency.backends import cpu_model_name
from halp.latency.calibrate import calibration_widths, fit_samples, random_widths, refit, slim_variant
from halp.latency.predict import split_features

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cells import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("latency_fidelity")
DEFAULT_THREADS = 2  # the setting; another thread count gets its own docs section and files
DEFAULT_MODELS = ["resnet50", "mobilenet_v2"]  # another model list or --size gets its own docs section and files


def run_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    model = halp.models.create(name).eval()
    x = torch.randn(args.batch, *halp.models.input_size(name)[:1], args.size, args.size)
    clock = ("" if args.clock == "wall" else f"_{args.clock}clock") + ("" if args.statistic == "median" else
                                                                      f"_{args.statistic}")
    backend = getattr(args, "backend", "torch-cpu")  # benchmarks/int8_fidelity.py runs this for other runtimes
    table_path = Path(args.out) / "tables" / f"{name}_{backend}_b{args.batch}_t{args.threads}_{args.size}{clock}.json"
    reused = table_path.exists()
    t0 = time.perf_counter()
    table = halp.profile(model, x, backend=backend, threads=args.threads, path=table_path,
                         progress=not args.quiet, name=name, clock=args.clock, statistic=args.statistic,
                         **getattr(args, "profile_settings", {}))
    call_s = time.perf_counter() - t0
    build_s = float(table.meta.get("profile_seconds", call_s))
    log.info("%s: table %s (%s, built in %.0f s)", name, table_path, "reused" if reused else "profiled", build_s)

    graph = halp.build_graph(model, x)
    if reused:  # a table profiled by an earlier halp: its stored end-to-end samples refitted with today's forms
        refit(table, graph)
    rng = np.random.default_rng(args.seed)
    steps = None
    if args.aligned:  # the widths latency-aware pruning produces: multiples of each group's latency step
        from halp.grouping import group_steps

        steps = group_steps(graph, table)
    jitter = None if args.jitter < 0 else args.jitter
    widths = [random_widths(graph, rng, args.low, 1.0, steps=steps, jitter=jitter) for _ in range(args.variants)]
    variants = [slim_variant(model, graph, w) for w in widths]
    feats = [split_features(graph, table, w) for w in [{}, *widths]]  # the pruner's path: dense graph + widths
    for v, f in zip(variants, feats[1:]):
        p = predict_latency(v, x, table)  # traces the slim model
        fast = table.calibration.apply(*f)  # = predict_from_widths(graph, table, widths)
        if abs(p - fast) > 1e-9 * max(p, 1.0):
            raise RuntimeError(f"predict_latency {p} != predict_from_widths {fast}")
    # the calibration's own slim variants (other random networks than the ones scored) are measured in
    # the same passes, so that the calibration can be re-taken on the machine as it is while measuring
    cal_samples = [s for s in table.calibration.samples if s["widths"]]
    if args.calibration == "session" and args.more_calibration:
        # more calibration networks drawn the way halp.profile draws its own, with another seed: never the
        # scored networks
        extra = calibration_widths(graph, table, args.more_calibration, args.low, np.random.default_rng(args.seed + 7919))
        cal_samples += [{"label": f"extra{i}", "widths": w} for i, w in enumerate(extra)]
    cal_models = [slim_variant(model, graph, s["widths"]) for s in cal_samples] if args.calibration == "session" else []
    models = [model, *variants, *cal_models]
    log.info("%s: measuring dense + %d variants + %d calibration variants (%d passes x %d rounds x %d repeats)",
             name, len(variants), len(cal_models), args.passes, args.rounds, args.repeats)
    t1 = time.perf_counter()
    load_before = os.getloadavg()[0]
    passes = []
    for k in range(args.passes):  # every pass times all models; later passes in another order
        order = list(range(len(models))) if k % 2 == 0 else list(reversed(range(len(models))))
        got = measure_many([models[i] for i in order], x, backend=backend, threads=args.threads,
                           warmup=args.warmup, repeats=args.repeats, rounds=args.rounds, clock=args.clock)
        passes.append({i: s for i, s in zip(order, got)})
    # per model the pass with the lowest statistic: another tenant of a shared machine only ever adds time,
    # and a disturbance that outlasts one pass's rounds must not become a "prediction error"
    stats = [min((p[i] for p in passes), key=lambda s: s.summary(args.statistic)) for i in range(len(models))]
    spread = [max(p[i].summary(args.statistic) for p in passes) / stats[i].summary(args.statistic) - 1
              for i in range(len(models))]
    measure_s = time.perf_counter() - t1
    scored = range(len(variants) + 1)  # dense and the scored variants, not the calibration networks
    pass_r = repeatability([[p[i].summary(args.statistic) for i in scored] for p in passes])
    profiled = table.calibration
    calib = {"profiled": profiled}
    if cal_models:
        session = [{"label": "dense", "widths": {}, "measured_ms": stats[0].summary(args.statistic),
                    "noise_ms": stats[0].iqr_ms}]
        session += [{"label": s["label"], "widths": s["widths"], "measured_ms": st.summary(args.statistic),
                     "noise_ms": st.iqr_ms} for s, st in zip(cal_samples, stats[1 + len(variants):])]
        calib["session"] = fit_samples(graph, table, session)
    out = {
        "model": name,
        "input": list(x.shape),
        "table": str(table_path.relative_to(ROOT) if table_path.is_relative_to(ROOT) else table_path),
        "table_reused": reused,
        "table_build_s": build_s,
        "table_entries": len(table.entries),
        "aligned_to_steps": bool(args.aligned),
        "jitter": jitter,
        "calibration_used": args.calibration,
        "more_calibration": args.more_calibration,
        "calibrations": {k: {"a": c.a, "b": c.b, "c": c.c, "d": c.a if c.d is None else c.d,
                             "e": c.a if c.e is None else c.e, "method": c.method,
                             "loo_rel_rmse": c.loo_rel_rmse,
                             "samples": [{f: v for f, v in row.items() if f != "widths"} for row in c.samples]}
                         for k, c in calib.items()},
        "statistic": args.statistic,
        "measure_s": measure_s,
        "passes": args.passes,
        "pass_spread_median": float(np.median(spread)),  # relative gap between the passes, per model
        "pass_spread_max": float(np.max(spread)),
        # r of the reductions measured in one pass against those measured in another: the ceiling that the
        # machine's own repeatability puts on any predictor's r (one pass is noisier than the best of all)
        "pass_pair_r": pass_r,
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # before, after measuring
        "dense": {"measured_ms": stats[0].summary(args.statistic), "iqr_ms": stats[0].iqr_ms,
                  **{f"predicted_{k}_ms": c.apply(*feats[0]) for k, c in calib.items()}},
        "variants": [
            {"widths": w, "measured_ms": s.summary(args.statistic), "iqr_ms": float(s.iqr_ms),
             **{f"predicted_{k}_ms": c.apply(*f) for k, c in calib.items()}}
            for w, s, f in zip(widths, stats[1:], feats[1:])
        ],
    }
    for k in calib:
        out[k] = metrics(out, f"predicted_{k}_ms")
    main = out[args.calibration]
    log.info("%s: r=%.4f  median |rel err|=%.2f%%  p90=%.2f%%  dense %.1f ms (pred %.1f)  [%s calibration]", name,
             main["pearson_r_reduction"], 100 * main["median_abs_rel_error"], 100 * main["p90_abs_rel_error"],
             out["dense"]["measured_ms"], out["dense"][f"predicted_{args.calibration}_ms"], args.calibration)
    return out


def repeatability(per_pass: list[list[float]]) -> list[float]:
    """Pearson r of the latency reductions (dense − variant) measured in one pass against another, for
    every pair of passes; ``per_pass[k]`` lists pass ``k``'s latencies, the dense model first."""
    red = [np.asarray(p[0]) - np.asarray(p[1:]) for p in per_pass]
    return [float(np.corrcoef(red[i], red[j])[0, 1]) for i in range(len(red)) for j in range(i + 1, len(red))
            if len(red[i]) > 1]


def metrics(out: dict[str, Any], key: str) -> dict[str, float]:
    """Pearson r of the reductions (dense - variant) and the relative errors of the latencies predicted
    under ``key``."""
    measured = np.array([v["measured_ms"] for v in out["variants"]])
    predicted = np.array([v[key] for v in out["variants"]])
    rel = np.abs(predicted - measured) / measured
    red_m = out["dense"]["measured_ms"] - measured
    red_p = out["dense"][key] - predicted
    # the budget's quantity: each network's latency as a fraction of the dense model's, predicted vs measured
    ratio = np.abs((predicted / out["dense"][key]) / (measured / out["dense"]["measured_ms"]) - 1)
    return {
        "median_abs_ratio_error": float(np.median(ratio)),
        "p90_abs_ratio_error": float(np.percentile(ratio, 90)),
        "pearson_r_reduction": float(np.corrcoef(red_p, red_m)[0, 1]) if len(measured) > 1 else float("nan"),
        "median_abs_rel_error": float(np.median(rel)),
        "p90_abs_rel_error": float(np.percentile(rel, 90)),
        "mean_signed_rel_error": float(np.mean((predicted - measured) / measured)),
        "dense_rel_error": float(out["dense"][key] / out["dense"]["measured_ms"] - 1),
    }


#: issue 13's acceptance: upper bounds on the errors, lower bound on r
ACCEPT = {"median_abs_rel_error": 0.05, "p90_abs_rel_error": 0.12, "pearson_r_reduction": 0.95}


def meets(m: dict[str, float], accept: dict[str, float]) -> bool:
    """Does a calibration's scores ``m`` meet ``accept`` (errors at most, r at least its value)?"""
    return all(m[k] >= v if k == "pearson_r_reduction" else m[k] <= v for k, v in accept.items())


def print_verdicts(results: list[dict[str, Any]], accept: dict[str, float]) -> None:
    """One PASS/FAIL line per model and calibration."""
    for r in results:
        for kind in ("session", "profiled"):
            if kind in r:
                k = r[kind]
                print(f"{r['model']} ({kind} calibration): r={k['pearson_r_reduction']:.4f} "
                      f"median|err|={100 * k['median_abs_rel_error']:.2f}% p90={100 * k['p90_abs_rel_error']:.2f}% "
                      f"table {r['table_build_s']:.0f}s -> {'PASS' if meets(k, accept) else 'FAIL'}")


def scatter(results: list[dict[str, Any]], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2 * len(results), 4.6))
    for i, r in enumerate(results):
        ax = fig.add_subplot(1, len(results), i + 1)
        dm = r["dense"]["measured_ms"]
        m = dm - np.array([v["measured_ms"] for v in r["variants"]])
        lo, hi = 0.0, float(np.max(m))
        for kind, style in (("profiled", dict(marker="x", color="tab:gray", alpha=0.7)),
                            ("session", dict(marker="o", color="tab:blue", alpha=0.8))):
            if kind not in r:
                continue
            key = f"predicted_{kind}_ms"
            p = r["dense"][key] - np.array([v[key] for v in r["variants"]])
            lo, hi = min(lo, float(np.min(m)), float(np.min(p))), max(hi, float(np.max(p)))
            k = r[kind]
            ax.scatter(m, p, s=18, **style, label=f"{kind} calibration: r = {k['pearson_r_reduction']:.3f}, "
                       f"median |err| = {100 * k['median_abs_rel_error']:.1f}%")
        lim = [lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)]
        ax.plot(lim, lim, "--", color="gray", lw=1, label="y = x")
        ax.set_xlabel("measured latency reduction (ms)")
        ax.set_ylabel("predicted latency reduction (ms)")
        ax.set_title(r["model"], fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=7)
    fig.suptitle(f"predicted vs measured latency reduction, {len(results[0]['variants'])} random prunings, "
                 f"{results[0].get('backend', 'torch-cpu')} batch {results[0]['input'][0]}", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), dpi=150, bbox_inches="tight")


CALIBRATION_LABELS = {
    "session": "re-taken in the same passes",
    "profiled": "as profiled",
}


def noise(r: dict[str, Any]) -> float:
    """Median relative interquartile range of the measured networks (dense included)."""
    rows = [r["dense"], *r["variants"]]
    return float(np.median([v["iqr_ms"] / v["measured_ms"] for v in rows]))


def _scheme(args: argparse.Namespace) -> str:
    lo = int(100 * args.low)
    if args.jitter < 0:
        return f"each prunable group keeps an independent uniform {lo}-100% of its channels"
    return (f"each network draws a level uniform in {lo}-100% and every prunable group keeps that fraction "
            f"x (1 ± U({args.jitter:g})) of its channels, clipped to {lo}-100%")


def variant_labels(args: argparse.Namespace) -> list[tuple[str, str]]:
    """``(docs title part, file name part)`` for every option that differs from the default measurement, in
    one place so that each kind of run gets its own docs section and its own files."""
    labels = []
    if list(args.models) != DEFAULT_MODELS or args.size != 224:
        labels.append((f", {' + '.join(args.models)} at {args.size}²", f"_{'-'.join(args.models)}_{args.size}"))
    if args.clock != "wall":
        labels.append((f", {args.threads} thread(s), {args.clock} clock (diagnostic)", f"_{args.clock}clock"))
    elif args.threads != DEFAULT_THREADS:
        labels.append((f", {args.threads} thread(s)", f"_t{args.threads}"))
    if args.statistic != "median":
        labels.append((f", {args.statistic} of the samples", f"_{args.statistic}"))
    if args.jitter < 0:
        labels.append((", independent group widths", "_independent"))
    if args.aligned:
        labels.append((", widths on the latency steps", "_aligned"))
    if args.more_calibration:
        labels.append((f", {args.more_calibration} more calibration networks", f"_cal{args.more_calibration}"))
    return labels


def section_title(args: argparse.Namespace) -> str:
    """One docs section per measurement kind: the default (wall clock) and each variation of it."""
    return "## Latency fidelity (paper Fig. 13)" + "".join(title for title, _ in variant_labels(args))


def write_results_md(results: list[dict[str, Any]], args: argparse.Namespace, fig: Path, js: Path) -> None:
    md = ROOT / "docs" / "results.md"
    md.parent.mkdir(parents=True, exist_ok=True)
    text = md.read_text(encoding="utf-8") if md.exists() else "# halp results\n"
    argv, shown = sys.argv[1:], []
    while argv:  # the measuring command: without the re-reporting flags
        a = argv.pop(0)
        if a == "--note":
            argv = argv[1:]
        elif a not in ("--report-only", "--no-docs"):
            shown.append(a)
    cmd = "python benchmarks/latency_fidelity.py " + " ".join(shown)
    clock_note = ("" if args.clock == "wall" else
                  " Times are the CPU time of the (single) working thread, which other processes cannot inflate:"
                  " a check of the predictor on a shared machine, not a latency.")
    lines = [
        section_title(args),
        "",
        f"Command: `{cmd.strip()}`  ",
        f"Machine: {cpu_model_name()}, torch {torch.__version__}, torch-cpu, {args.threads} thread{'s' if args.threads != 1 else ''}, "
        f"batch {args.batch}, {args.size}x{args.size}; {datetime.now(timezone.utc):%Y-%m-%d}.  ",
        f"{args.variants} random prunings per model ({_scheme(args)}"
        f"{', rounded to its latency step' if args.aligned else ''}); predicted from the table vs "
        f"measured end to end (dense and variants interleaved, {args.passes} passes in alternating order, "
        f"each model keeping its fastest pass).{clock_note}",
        "Two predictions per network from the same table: *as profiled* uses the calibration measured at the end of "
        "profiling; *re-taken in the same passes* refits it (`halp.recalibrate` does the same for users) from the "
        "table's own calibration networks, measured interleaved with the scored networks, which are different "
        "random networks (held out). This VM's speed drifts by about 10% within minutes, which no table can "
        "predict; the second row shows the predictor once the machine is the same machine.",
        "",
        "| model | table build (s) | calibration | dense measured / predicted (ms) | Pearson r of reductions | "
        "median abs rel err | p90 abs rel err | calibration (form: a, d, e, b, c) | measurement noise |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for kind in ("session", "profiled"):
            if kind not in r:
                continue
            c, k = r["calibrations"][kind], r[kind]
            lines.append(
                f"| {r['model']} | {r['table_build_s']:.0f}{' (cached)' if r['table_reused'] else ''} | "
                f"{CALIBRATION_LABELS[kind]} | {r['dense']['measured_ms']:.1f} / {r['dense'][f'predicted_{kind}_ms']:.1f} | "
                f"{k['pearson_r_reduction']:.4f} | {100 * k['median_abs_rel_error']:.2f}% | "
                f"{100 * k['p90_abs_rel_error']:.2f}% | {c.get('method', '?')}: {c['a']:.3f}, {c.get('d', c['a']):.3f}, "
                f"{c.get('e', c['a']):.3f}, "
                f"{c['b']:.3f}, {c['c']:.2f} ms | "
                f"{100 * noise(r):.0f}% |")
    lines += ["", "Measurement noise: the median over the measured networks of the interquartile range of a network's "
              "forward times over its median (one pass); the same network's passes differed by a median of "
              + ", ".join(f"{100 * r['pass_spread_median']:.0f}% ({r['model']})" for r in results if "pass_spread_median" in r)
              + "."]
    if any(r.get("pass_pair_r") for r in results):
        lines += ["", "Repeatability of the measurement itself: Pearson r of the reductions measured in one pass against "
                  "another pass of the same networks (every pair of passes), "
                  + ", ".join(f"{r['model']} " + " / ".join(f"{v:.3f}" for v in r["pass_pair_r"])
                              for r in results if r.get("pass_pair_r"))
                  + ". A predictor cannot be scored above what the machine repeats (each pass alone is noisier "
                  "than the fastest of all passes, so this bound is conservative)."]
    load = {r["model"]: r.get("load_average_1min", [float("nan")] * 2) for r in results}
    loads = ", ".join(f"{m} {a:.1f}-{b:.1f}" for m, (a, b) in load.items())
    note = [f"Note: {args.note}"] if args.note else []
    lines += ["", f"1-minute load average while measuring (2 cores): {loads}.", *note,
              "Acceptance (issue 13): median abs rel error <= 5%, p90 <= 12%, Pearson r of the reductions >= 0.95.",
              f"Figure: `{fig.relative_to(ROOT)}`; data: `{js.relative_to(ROOT)}`.", ""]
    section = "\n".join(lines)
    write_section(md, text, section_title(args), section)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    ap.add_argument("--variants", type=int, default=30)
    ap.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--low", type=float, default=0.25, help="smallest kept fraction per group")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=40, help="forwards per model and pass (halp.measure_latency's)")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--passes", type=int, default=3, choices=range(1, 10), metavar="N",
                    help="independent measuring passes over all models (alternating order); each model keeps "
                         "its fastest pass")
    ap.add_argument("--seed", type=int, default=1234, help="random widths (the table's calibration uses its own)")
    ap.add_argument("--jitter", type=float, default=0.3,
                    help="each variant draws a level in [low, 1] and every group keeps level x (1 +- jitter); "
                         "-1: every group an independent uniform fraction (all variants then land near the "
                         "same total latency, and r measures the noise more than the predictor)")
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
    ap.add_argument("--calibration", choices=["session", "profiled"], default="session",
                    help="session: also measure the table's calibration networks in the same passes and refit the "
                         "calibration (the headline numbers); profiled: only the table's own calibration")
    ap.add_argument("--more-calibration", type=int, default=0, metavar="N",
                    help="session calibration: N more random networks besides the table's own (drawn as halp.profile "
                         "draws them, another seed), measured in the same passes")
    ap.add_argument("--no-docs", action="store_true", help="do not update docs/results.md")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(name)s: %(message)s")
    out = Path(args.out)
    stem = "latency_fidelity" + "".join(part for _, part in variant_labels(args))
    fig = out / f"{stem}.png"
    js = out / f"{stem}.json"
    if args.report_only:
        saved = json.loads(js.read_text(encoding="utf-8"))
        results = saved["results"]
    else:
        results = [run_model(name, args) for name in args.models]
        meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_model_name(),
                "torch": torch.__version__, "python": platform.python_version(), "args": vars(args)}
        js.write_text(json.dumps({"meta": meta, "results": results}, indent=1), encoding="utf-8")
    scatter(results, fig)
    if not args.no_docs:
        write_results_md(results, args, fig, js)
    print_verdicts(results, ACCEPT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
