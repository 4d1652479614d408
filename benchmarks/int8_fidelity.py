"""INT8 latency fidelity (issue 15): predicted vs measured latency of random prunings on an INT8 runtime.

The same experiment as ``benchmarks/latency_fidelity.py`` (whose ``run_model`` this reuses: profile a
table, draw random prunings, predict each from the table, measure all end to end interleaved with the
table's calibration networks), on ``openvino-int8`` or ``onnxruntime-int8``: every table point is an
INT8 kernel timed as it runs inside a quantized network, every measured network is quantized (NNCF for
OpenVINO, onnxruntime's QDQ quantizer for ONNX Runtime) and run by that runtime. Each model at its own
resolution, so that a depthwise network and a plain ResNet both fit a 10-minute run.

    python benchmarks/int8_fidelity.py                                   # openvino-int8, both models
    python benchmarks/int8_fidelity.py --backend onnxruntime-int8 --models mobilenet_v2:128
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cells import write_section  # noqa: E402
from latency_fidelity import ROOT, metrics, noise, print_verdicts, run_model, scatter  # noqa: E402,F401

from halp.latency.backends import cpu_model_name  # noqa: E402

ACCEPT_ERR, ACCEPT_R = 0.05, 0.95


def parse_model(text: str) -> tuple[str, int]:
    """``NAME[:SIZE]``; NAME may itself hold colons (``torchvision:mobilenet_v3_small:128``)."""
    name, _, size = text.rpartition(":")
    if name and size.isdigit():
        return name, int(size)
    return text, 224


def section_title(args: argparse.Namespace) -> str:
    return (f"## INT8 latency fidelity (issue 15): {args.backend}, {args.threads} thread{'s' if args.threads != 1 else ''}"
            + (", widths on the latency steps" if args.aligned else ""))


def commands(results: list[dict[str, Any]]) -> list[str]:
    """The measuring command of each result (runs of one model each share a report)."""
    seen: list[str] = []
    for r in results:
        if r.get("command") and r["command"] not in seen:
            seen.append(r["command"])
    return seen


def write_results_md(results: list[dict[str, Any]], args: argparse.Namespace, fig: Path, js: Path) -> None:
    md = ROOT / "docs" / "results.md"
    text = md.read_text(encoding="utf-8") if md.exists() else "# halp results\n"
    p = args.profile_settings
    lines = [
        section_title(args), "",
        "Commands: " + ", ".join(f"`{c}`" for c in commands(results)) + "  ",
        f"Machine: {cpu_model_name()}, torch {torch.__version__}, {args.backend}, {args.threads} thread(s), batch 1; "
        f"{datetime.now(timezone.utc):%Y-%m-%d}.  ",
        f"{args.variants} random prunings per model (each draws a level uniform in {int(100 * args.low)}-100% and every "
        f"prunable group keeps that fraction x (1 ± U({args.jitter:g})) of its channels"
        f"{', rounded to its latency step' if args.aligned else ''}); every network quantized for "
        f"the runtime and measured end to end, {args.passes} pass(es) of {args.rounds} interleaved rounds x "
        f"{args.repeats} forwards. Table: {p['grid_points']} grid points per axis, {p['fine_span']}-channel fine sweep, "
        f"{p['calibration_samples']} calibration networks (coarser than the FP32 default to fit 10 minutes a model). "
        "*re-taken in the same passes*: the table's calibration refitted from its own calibration networks measured "
        "with the scored ones (as `halp.recalibrate`); *as profiled*: the calibration from the profile.",
        "",
        "| model | input | table build (s) | calibration | dense measured / predicted (ms) | Pearson r of reductions | "
        "median abs rel err | p90 abs rel err | calibration (form: a, d, e, b, c) | noise |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for kind, label in (("session", "re-taken in the same passes"), ("profiled", "as profiled")):
            if kind not in r:
                continue
            c, k = r["calibrations"][kind], r[kind]
            lines.append(
                f"| {r['model']} | {r['input'][-1]}² | {r['table_build_s']:.0f}{' (cached)' if r['table_reused'] else ''} "
                f"| {label} | {r['dense']['measured_ms']:.2f} / {r['dense'][f'predicted_{kind}_ms']:.2f} | "
                f"{k['pearson_r_reduction']:.4f} | {100 * k['median_abs_rel_error']:.2f}% | "
                f"{100 * k['p90_abs_rel_error']:.2f}% | {c['method']}: {c['a']:.3f}, {c['d']:.3f}, {c['e']:.3f}, "
                f"{c['b']:.3f}, {c['c']:.2f} ms | {100 * noise(r):.0f}% |")
    verdicts = []
    for r in results:
        k = r["session"] if "session" in r else r["profiled"]
        ok = k["median_abs_rel_error"] <= ACCEPT_ERR and k["pearson_r_reduction"] >= ACCEPT_R
        verdicts.append(f"{r['model']} {'meets' if ok else 'misses'} it")
    note = [f"Note: {args.note}"] if args.note else []
    lines += ["", *note,
              f"Acceptance (issue 15): median abs rel error <= {100 * ACCEPT_ERR:.0f}% and r >= {ACCEPT_R} (re-taken "
              f"calibration): {'; '.join(verdicts)}.",
              f"Figure: `{fig.relative_to(ROOT)}`; data: `{js.relative_to(ROOT)}`.", ""]
    section = "\n".join(lines)
    write_section(md, text, section_title(args), section)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=["openvino-int8", "onnxruntime-int8", "openvino", "onnxruntime"],
                    default="openvino-int8")
    ap.add_argument("--models", nargs="+", default=["mobilenet_v2:128", "resnet18:160"], help="NAME:SIZE")
    ap.add_argument("--variants", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--low", type=float, default=0.25)
    ap.add_argument("--jitter", type=float, default=0.3)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--passes", type=int, default=1,
                    help="measuring passes; each re-quantizes every network (NNCF: seconds each), hence 1")
    ap.add_argument("--grid-points", type=int, default=6)
    ap.add_argument("--fine-span", type=int, default=16)
    ap.add_argument("--calibration-samples", type=int, default=16)
    ap.add_argument("--more-calibration", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--aligned", action="store_true",
                    help="round the random widths to each group's latency step (the widths the pruner produces)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--note", default="")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--no-docs", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(name)s: %(message)s")
    for name in ("nncf", "onnxruntime"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # the fields latency_fidelity.run_model reads, at the FP32 benchmark's defaults where this one has none
    args.batch, args.clock, args.statistic = 1, "wall", "median"
    args.calibration = "session"
    args.profile_settings = {"grid_points": args.grid_points, "fine_span": args.fine_span,
                             "calibration_samples": args.calibration_samples}
    out = Path(args.out)
    stem = f"int8_fidelity_{args.backend}_t{args.threads}" + ("_aligned" if args.aligned else "")
    fig, js = out / f"{stem}.png", out / f"{stem}.json"
    if args.report_only:
        results = json.loads(js.read_text(encoding="utf-8"))["results"]
    else:
        # models measured by earlier runs (one model a run keeps each under 10 minutes) stay in the report
        results = []
        if js.exists():
            mine = {parse_model(t)[0] for t in args.models}
            results = [r for r in json.loads(js.read_text(encoding="utf-8"))["results"] if r["model"] not in mine]
        for text in args.models:
            name, size = parse_model(text)
            a = copy.copy(args)
            a.size = size
            r = run_model(name, a)
            r["backend"] = args.backend
            r["command"] = "python benchmarks/int8_fidelity.py " + " ".join(
                x for x in sys.argv[1:] if x not in ("--report-only", "--no-docs"))
            results.append(r)
        meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_model_name(),
                "torch": torch.__version__, "python": platform.python_version(),
                "args": {k: v for k, v in vars(args).items()}}
        out.mkdir(parents=True, exist_ok=True)
        js.write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str), encoding="utf-8")
    scatter(results, fig)
    if not args.no_docs:
        write_results_md(results, args, fig, js)
    print_verdicts(results, {"median_abs_rel_error": ACCEPT_ERR, "pearson_r_reduction": ACCEPT_R})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
