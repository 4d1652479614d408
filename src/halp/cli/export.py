"""``halp export``: write a model to ONNX."""

from __future__ import annotations

import argparse
from typing import Any

from halp.cli.profile import example_input, load_model


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("export", help="export a model to ONNX",
                              description="Export a zoo model or a saved slim model to ONNX (checked by onnx.checker).")
    p.add_argument("model", metavar="MODEL", help="zoo model name or a saved slim model folder")
    p.add_argument("--onnx", required=True, help="ONNX file to write")
    p.add_argument("--input", help="input size BxCxHxW (default: 1 x the model's input size)")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--dynamic-batch", action="store_true", help="make the batch dimension dynamic")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from halp.export import export_onnx

    model, size = load_model(args.model, args.num_classes)
    x = example_input(size, args.input)
    path = export_onnx(model, x, args.onnx, opset=args.opset, dynamic_batch=args.dynamic_batch)
    print(f"wrote {path}")
    return 0
