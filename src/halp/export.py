"""Getting models out of halp: ONNX export, and INT8 models for ONNX Runtime and OpenVINO.

ONNX is how a slim model reaches ONNX Runtime, TensorRT and most edge runtimes, and how the
``onnxruntime`` latency backend times whole networks. The TorchScript exporter (``dynamo=False``) is
tried first: it handles plain CNNs reliably and quickly; the torch.export-based exporter is the fallback.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
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


INT8_SUFFIX = {"onnxruntime-int8": ".onnx", "openvino-int8": ".xml"}


@dataclass(frozen=True)
class Int8Export:
    """What :func:`export_int8` wrote and how the INT8 model scores next to its FP32 source.

    Attributes:
        backend: the runtime the model is for (``onnxruntime-int8``: QDQ ONNX; ``openvino-int8``: IR).
        files: the files written (``.onnx``; or ``.xml`` and ``.bin``).
        calibration_samples: samples the quantizer calibrated on.
        fp32_top1, int8_top1: top-1 accuracy (%) of the FP32 model (eager torch) and of the INT8 model in
            its runtime on the evaluation data; None without evaluation data.
        agreement: % of evaluation samples on which both predict the same class.
        eval_samples: samples evaluated.
    """

    backend: str
    files: list[Path]
    calibration_samples: int
    fp32_top1: float | None = None
    int8_top1: float | None = None
    agreement: float | None = None
    eval_samples: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "files": [str(f) for f in self.files]}


def _runtime_predictor(backend: Any, path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """Logits of the exported INT8 file, run by its runtime (first output, first input)."""
    if backend.name == "onnxruntime-int8":
        sess = backend._session(str(path))
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: x})[0]
    compiled = backend.compile(path)
    return lambda x: compiled({0: x})[compiled.outputs[0]]


def _top1(model: nn.Module, predict: Callable[[np.ndarray], np.ndarray], data: Iterable[Any], batch: int,
          ) -> tuple[float, float, float, int]:
    """Top-1 (%) of ``model`` and ``predict`` and their agreement, over ``(images, labels)`` batches cut into
    the exported graph's fixed batch (the last chunk padded with copies of its last sample, then ignored)."""
    right_fp = right_q = same = total = 0
    with torch.no_grad():
        for item in data:
            images, labels = item[0], torch.as_tensor(item[1])
            for start in range(0, len(images), batch):
                x = images[start:start + batch].float()
                n = len(x)
                if n < batch:
                    x = torch.cat([x, x[-1:].expand(batch - n, *x.shape[1:])])
                fp = model(x)[:n].argmax(1)
                q = torch.from_numpy(np.asarray(predict(x.numpy())))[:n].argmax(1)
                y = labels[start:start + n]
                right_fp += int((fp == y).sum())
                right_q += int((q == y).sum())
                same += int((fp == q).sum())
                total += n
    if total == 0:
        raise ValueError("the evaluation data held no samples")
    return 100.0 * right_fp / total, 100.0 * right_q / total, 100.0 * same / total, total


def export_int8(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    path: str | Path,
    backend: str = "openvino-int8",
    *,
    calibration_data: Any,
    eval_data: Iterable[Any] | None = None,
    threads: int | None = None,
) -> Int8Export:
    """Write ``model`` statically quantized to INT8 for a runtime, and check it against the FP32 model.

    ``onnxruntime-int8`` writes a QDQ ONNX model (onnxruntime.quantization, per-channel int8 weights);
    ``openvino-int8`` an OpenVINO IR (``.xml`` + ``.bin``) read from such a model (the backend's default
    quantizer; see :mod:`halp.latency.openvino_backend` for why not NNCF's): the same quantization the INT8
    latency backends measure, so the table a model was pruned with describes the file deployed.

    Args:
        model: the (slim) FP32 network; not modified.
        example_inputs: inputs of the exported shape (their batch is the graph's fixed batch).
        path: the file to write: ``.onnx`` for ``onnxruntime-int8``, ``.xml`` for ``openvino-int8``.
        backend: ``"onnxruntime-int8"`` or ``"openvino-int8"``.
        calibration_data: example batches of the model's data (tensors, or a loader of ``(images, labels)``;
            at most 300 samples are used). Required: scales from random inputs would ruin accuracy.
        eval_data: ``(images, labels)`` batches to compare top-1 of the INT8 and FP32 models on.
        threads: runtime threads for the evaluation.

    Raises:
        ValueError: an unknown backend, a path with the wrong suffix, or no calibration data.
    """
    from halp.latency.backends import get_backend
    from halp.latency.qdq import calibration_feeds

    if backend not in INT8_SUFFIX:
        raise ValueError(f"INT8 export targets {sorted(INT8_SUFFIX)}, got backend {backend!r}")
    path = Path(path)
    if path.suffix != INT8_SUFFIX[backend]:
        raise ValueError(f"backend {backend!r} writes a {INT8_SUFFIX[backend]} file; got {path} (change its suffix)")
    if calibration_data is None:
        raise ValueError("INT8 export needs calibration data: pass calibration_data= example batches of the model's "
                         "data (CLI: --data NAME)")
    inputs = _as_tuple(example_inputs)
    feeds = calibration_feeds(calibration_data, inputs)  # ValueError early for empty or misshapen data
    be = get_backend(backend, threads=threads)
    flags = {name: m.training for name, m in model.named_modules()}
    model.eval()
    try:
        source = [torch.from_numpy(s[0]) for s in feeds] if len(inputs) == 1 else [
            tuple(torch.from_numpy(a) for a in s) for s in feeds]
        path.parent.mkdir(parents=True, exist_ok=True)
        if backend == "onnxruntime-int8":
            be.quantized_onnx(model, inputs, path, calibration_data=source)
            files = [path]
        else:
            import tempfile

            import openvino as ov

            with tempfile.TemporaryDirectory(prefix="halp-export-") as tmp:
                ov.save_model(be.quantized_network(model, inputs, tmp, calibration_data=source), str(path),
                              compress_to_fp16=False)
            files = [path, path.with_suffix(".bin")]
        result = Int8Export(backend, files, len(feeds))
        if eval_data is not None:
            if len(inputs) != 1:
                raise ValueError("the accuracy check runs single-input classifiers; drop eval_data")
            with be:
                fp, q, agree, n = _top1(model, _runtime_predictor(be, path), eval_data, int(inputs[0].shape[0]))
            result = Int8Export(backend, files, len(feeds), fp, q, agree, n)
            logger.info("INT8 export %s: top-1 %.2f%% (FP32 %.2f%%), %.1f%% agreement on %d samples", path, q, fp,
                        agree, n)
    finally:
        for name, m in model.named_modules():
            m.train(flags[name])
    return result
