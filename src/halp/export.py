"""Getting models out of halp: ONNX export.

ONNX is how a slim model reaches ONNX Runtime, TensorRT and most edge runtimes, and how the
``onnxruntime`` latency backend times whole networks. The TorchScript exporter (``dynamo=False``) is
tried first: it handles plain CNNs reliably and quickly; the torch.export-based exporter is the fallback.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17


def _as_tuple(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in example_inputs):
        return tuple(example_inputs)
    raise ValueError(
        "example_inputs must be a tensor or a tuple of tensors (e.g. torch.randn(1, 3, 224, 224)), "
        f"got {type(example_inputs).__name__}"
    )


def export_onnx(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    path: str | Path,
    opset: int = DEFAULT_OPSET,
    *,
    dynamic_batch: bool = False,
    check: bool = True,
) -> Path:
    """Write ``model`` (in inference mode) to an ONNX file.

    The model is exported in eval mode and its training flags are restored afterwards, so exporting
    in the middle of training changes nothing. Inputs are named ``input`` (``input0``, ``input1``... for
    several) and outputs ``output``...

    Args:
        model: the (dense or slim) network.
        example_inputs: a tensor or tuple of tensors with the shapes to export for.
        path: the ``.onnx`` file to write; parent folders are created.
        opset: ONNX opset version.
        dynamic_batch: mark dim 0 of inputs and outputs as dynamic.
        check: run ``onnx.checker`` on the result.

    Returns:
        the path written.
    """
    inputs = _as_tuple(example_inputs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = ["input"] if len(inputs) == 1 else [f"input{i}" for i in range(len(inputs))]
    flags = {name: m.training for name, m in model.named_modules()}
    model.eval()  # before any forward: a training-mode forward would update BatchNorm statistics
    try:
        with torch.no_grad():
            out = model(*inputs)
        n_out = len(out) if isinstance(out, (tuple, list)) else 1
        out_names = ["output"] if n_out == 1 else [f"output{i}" for i in range(n_out)]
        dynamic_axes = {n: {0: "batch"} for n in names + out_names} if dynamic_batch else None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
                torch.onnx.export(
                    model,
                    inputs,
                    str(path),
                    dynamo=False,
                    opset_version=opset,
                    input_names=names,
                    output_names=out_names,
                    dynamic_axes=dynamic_axes,
                    do_constant_folding=True,
                )
        except Exception as exc:  # noqa: BLE001 - any exporter failure: try the other exporter
            logger.info("TorchScript ONNX export failed (%s); trying the torch.export-based exporter", exc)
            dynamic_shapes = None
            if dynamic_batch:
                batch = torch.export.Dim("batch")
                dynamic_shapes = tuple({0: batch} for _ in inputs)
            program = torch.onnx.export(
                model,
                inputs,
                dynamo=True,
                opset_version=opset,
                input_names=names,
                output_names=out_names,
                dynamic_shapes=dynamic_shapes,
            )
            program.save(str(path))
    finally:
        for name, m in model.named_modules():
            m.train(flags[name])
    if check:
        import onnx

        try:
            onnx.checker.check_model(str(path))
        except onnx.checker.ValidationError as exc:
            raise ValueError(f"exported ONNX model {path} failed onnx.checker: {exc}") from exc
    return path
