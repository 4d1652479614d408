"""INT8 export accuracy (issue 15): the quantized model for each runtime against its FP32 source.

Trains the digits model with ``halp.train`` (a few epochs, seconds on a CPU core), prunes it to half of
each group's channels (a slim model, as ``halp export`` receives one), fine-tunes it briefly, then
:func:`halp.export_int8` writes it for ``onnxruntime-int8`` (QDQ ONNX) and ``openvino-int8`` (OpenVINO
IR), calibrated on training batches, and reports both top-1 on the whole digits test split. Accuracy
only (no timing), so it needs no exclusive CPU.

    python benchmarks/int8_export.py
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import halp
from halp.data import make_loaders
from halp.train import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent
TITLE = "## INT8 export accuracy (issue 15)"


def run_seed(args: argparse.Namespace, seed: int) -> list[dict[str, Any]]:
    """One seed's slim model (training, data split and calibration batches all follow the seed), both runtimes."""
    torch.manual_seed(seed)
    model = halp.models.create("digits_resnet")
    loader, test, _ = make_loaders("digits", 32, eval_batch_size=128, seed=seed)
    cfg = TrainConfig(epochs=args.epochs, lr=0.05, batch_size=32, warmup_epochs=0.5, eval_every=0, log_every=0)
    train(model, loader, cfg, progress=False)
    x = torch.randn(1, 1, 32, 32)
    graph = halp.build_graph(model.eval(), x)
    keep = {g.name: torch.arange(max(1, g.channels // 2)) for g in graph.prunable_groups}
    slim = halp.prune_channels(model, graph, keep)
    train(slim, loader, TrainConfig(epochs=args.finetune_epochs, lr=0.02, batch_size=32, warmup_epochs=0.0,
                                    eval_every=0, log_every=0), progress=False)
    slim.eval()
    calib = []
    for batch in loader:
        calib.append(batch[0])
        if 32 * len(calib) >= args.calibration_samples:
            break
    evald = list(test)
    rows = []
    with tempfile.TemporaryDirectory(prefix="halp-int8-export-") as tmp:
        for backend, suffix in (("onnxruntime-int8", ".onnx"), ("openvino-int8", ".xml")):
            r = halp.export_int8(slim, x, Path(tmp) / f"slim{suffix}", backend, calibration_data=calib,
                                 eval_data=evald, threads=1)
            rows.append({"seed": seed, "backend": backend, "fp32_top1": r.fp32_top1, "int8_top1": r.int8_top1,
                         "agreement": r.agreement, "eval_samples": r.eval_samples,
                         "calibration_samples": r.calibration_samples,
                         "bytes": sum(f.stat().st_size for f in r.files)})
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    rows = [row for seed in args.seeds for row in run_seed(args, seed)]
    return {"model": "digits_resnet, half of every prunable group's channels", "epochs": args.epochs,
            "finetune_epochs": args.finetune_epochs, "seeds": list(args.seeds), "rows": rows,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": {"torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__,
                         "openvino": __import__("openvino").__version__}}


def write_md(res: dict[str, Any], argv: list[str]) -> None:
    md = ROOT / "docs" / "results.md"
    text = md.read_text(encoding="utf-8")
    lines = [TITLE, "", f"Command: `python benchmarks/int8_export.py {' '.join(argv)}`".rstrip() + "  ",
             f"{res['model']}, trained {res['epochs']} epochs and fine-tuned {res['finetune_epochs']} after pruning "
             f"(seeds {', '.join(map(str, res['seeds']))}); `halp.export_int8` (CLI `halp export --int8`) calibrated on "
             f"{res['rows'][0]['calibration_samples']} training samples; top-1 on the {res['rows'][0]['eval_samples']} "
             f"digits test images; {res['date'][:10]}, onnxruntime {res['versions']['onnxruntime']}, openvino "
             f"{res['versions']['openvino']}.", "",
             "| seed | runtime | file | FP32 top-1 (%) | INT8 top-1 (%) | INT8 − FP32 (points) | same prediction (%) |",
             "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        kind = "QDQ ONNX" if r["backend"] == "onnxruntime-int8" else "OpenVINO IR"
        lines.append(f"| {r['seed']} | {r['backend']} | {kind}, {r['bytes'] / 1024:.0f} KiB | {r['fp32_top1']:.2f} | "
                     f"{r['int8_top1']:.2f} | {r['int8_top1'] - r['fp32_top1']:+.2f} | {r['agreement']:.1f} |")
    ok = all(abs(r["int8_top1"] - r["fp32_top1"]) <= 1.0 for r in res["rows"])
    lines += ["", f"Acceptance (within 1 point of the FP32 slim model): {'met' if ok else 'missed'} on both runtimes, every seed. "
              "Data: `benchmarks/results/int8_export.json`.", ""]
    section = "\n".join(lines)
    pattern = re.compile(re.escape(TITLE) + r"\n.*?(?=\n## |\Z)", re.S)
    text = pattern.sub(lambda _: section.rstrip("\n") + "\n", text) if pattern.search(text) else (
        text.rstrip("\n") + "\n\n" + section)
    md.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--finetune-epochs", type=int, default=3)
    ap.add_argument("--calibration-samples", type=int, default=288)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args(argv)
    res = run(args)
    out = ROOT / "benchmarks" / "results" / "int8_export.json"
    out.write_text(json.dumps(res, indent=1), encoding="utf-8")
    if not args.no_docs:
        write_md(res, [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--no-docs"])
    for r in res["rows"]:
        print(f"seed {r['seed']} {r['backend']}: FP32 {r['fp32_top1']:.2f}%  INT8 {r['int8_top1']:.2f}%  "
              f"({r['int8_top1'] - r['fp32_top1']:+.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
