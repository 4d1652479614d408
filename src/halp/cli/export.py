"""``halp export``: write a model to ONNX."""

from __future__ import annotations

import argparse
from typing import Any

from halp.cli.profile import add_model_arguments, example_input, load_model


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("export", help="export a model to ONNX",
                              description="Export a named model or a saved slim model to ONNX (checked by onnx.checker).")
    add_model_arguments(p, positional=True)
    p.add_argument("--onnx", required=True, help="ONNX file to write")
    p.add_argument("--input", help="input size BxCxHxW (default: 1 x the model's input size)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--dynamic-batch", action="store_true", help="make the batch dimension dynamic")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from halp.export import export_onnx

    model, size = load_model(args.model, args.num_classes, args.weights)
    x = example_input(size, args.input)
    from halp.detection.network import is_detector

    if is_detector(model):
        # a detector's ONNX graph is its per-image network (backbone + head at a fixed size); its
        # transform and its postprocessing (decoding, NMS) have data-dependent shapes and stay in Python
        from halp.detection.network import network_input, prunable_network

        x = network_input(model, int(x.shape[-2]), int(x.shape[-1]), batch=int(x.shape[0]))
        model = prunable_network(model)
    path = export_onnx(model, x, args.onnx, opset=args.opset, dynamic_batch=args.dynamic_batch)
    print(f"wrote {path}")
    return 0
