"""``halp export``: write a model to ONNX, or an INT8 model for ONNX Runtime / OpenVINO."""

from __future__ import annotations

import argparse
import json
from typing import Any

from halp.cli.profile import add_model_arguments, example_input, load_model

INT8_BACKENDS = ("onnxruntime-int8", "openvino-int8")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export", help="export a model to ONNX or to INT8 for a runtime",
        description="Export a zoo model or a saved slim model to ONNX (checked by onnx.checker), or with --int8 "
                    "quantized for a runtime (QDQ ONNX for onnxruntime-int8, OpenVINO IR for openvino-int8), "
                    "calibrated on --data and checked against the FP32 model's top-1 on its test split.")
    add_model_arguments(p, positional=True)
    p.add_argument("--onnx", help="ONNX file to write (FP32)")
    p.add_argument("-o", "--output", help="file to write: .onnx (FP32, onnxruntime-int8) or .xml (openvino-int8)")
    p.add_argument("--int8", action="store_true", help="statically quantize to INT8 for --backend")
    p.add_argument("--backend", choices=INT8_BACKENDS, default="openvino-int8", help="runtime of the INT8 model")
    p.add_argument("--data", help="data set for calibration and the accuracy check (digits, shapes10, cifar10, "
                                  "imagefolder); required with --int8")
    p.add_argument("--data-root", help="folder of the data set (cifar10, imagefolder)")
    p.add_argument("--calibration-samples", type=int, default=300, help="training samples to calibrate on")
    p.add_argument("--eval-samples", type=int, default=None, help="test samples to evaluate (default: all)")
    p.add_argument("--threads", type=int, default=None, help="runtime threads for the accuracy check")
    p.add_argument("--input", help="input size BxCxHxW (default: 1 x the model's input size)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--dynamic-batch", action="store_true", help="make the batch dimension dynamic (FP32 ONNX)")
    p.set_defaults(func=run)


def _take(loader: Any, samples: int | None) -> list[Any]:
    """Batches of ``loader`` until ``samples`` samples (all when None)."""
    out, n = [], 0
    for batch in loader:
        out.append(batch)
        n += len(batch[0])
        if samples is not None and n >= samples:
            break
    return out


def run(args: argparse.Namespace) -> int:
    out = args.output or args.onnx
    if out is None:
        raise ValueError("say where to write the model: -o/--output FILE (or --onnx FILE)")
    model, size = load_model(args.model, args.num_classes, args.weights)
    x = example_input(size, args.input)
    if not args.int8:
        from halp.detection.network import is_detector
        from halp.export import export_onnx

        if is_detector(model):
            # a detector's ONNX graph is its per-image network (backbone + head at a fixed size); its
            # transform and its postprocessing (decoding, NMS) have data-dependent shapes and stay in Python
            from halp.detection.network import network_input, prunable_network

            x = network_input(model, int(x.shape[-2]), int(x.shape[-1]), batch=int(x.shape[0]))
            model = prunable_network(model)
        path = export_onnx(model, x, out, opset=args.opset, dynamic_batch=args.dynamic_batch)
        print(f"wrote {path}")
        return 0
    if not args.data:
        raise ValueError("--int8 needs --data: the quantizer calibrates on its training split and the INT8 model is "
                         "checked against the FP32 model on its test split (e.g. --data digits)")
    if args.calibration_samples < 1:
        raise ValueError(f"--calibration-samples must be >= 1, got {args.calibration_samples}")
    import halp
    from halp.data import make_loaders

    train, test, _ = make_loaders(args.data, 32, args.data_root, eval_batch_size=64)
    result = halp.export_int8(model, x, out, args.backend, calibration_data=_take(train, args.calibration_samples),
                              eval_data=_take(test, args.eval_samples), threads=args.threads)
    print(f"wrote {', '.join(str(f) for f in result.files)} ({args.backend}, calibrated on "
          f"{result.calibration_samples} samples)")
    print(f"top-1 on {result.eval_samples} {args.data} test samples: INT8 {result.int8_top1:.2f}%, FP32 "
          f"{result.fp32_top1:.2f}% ({result.int8_top1 - result.fp32_top1:+.2f} points; {result.agreement:.1f}% "
          "same predictions)")
    print(json.dumps(result.to_dict()))
    return 0
