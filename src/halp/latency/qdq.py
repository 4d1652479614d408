"""INT8 ONNX models with onnxruntime's static quantizer (QDQ format), and their calibration data.

Both INT8 backends time single layers and ops from the same kind of model: a one-layer FP32 graph
quantized by :func:`onnxruntime.quantization.quantize_static` (QDQ, per-channel weights), then cut
at its quantized boundary (:func:`strip_boundary_qdq`) so that it reads and writes uint8 tensors.
Inside a quantized network a conv never converts its input from float or its output back: it gets
uint8 from the previous layer and hands uint8 to the next. The cut graph is exactly that kernel (ONNX
Runtime fuses it into one ``QLinearConv``; OpenVINO's CPU plugin runs a ``u8`` convolution), where
the uncut one would add a float quantize and dequantize pass to every point of the table.

Calibration data for whole networks are the user's example batches (:func:`calibration_feeds`).
"""

from __future__ import annotations

import logging
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)

#: most calibration samples fed to a quantizer (NNCF's default subset size)
MAX_CALIBRATION_SAMPLES = 300


def calibration_feeds(
    calibration_data: Any, example_inputs: tuple[torch.Tensor, ...], *, limit: int = MAX_CALIBRATION_SAMPLES
) -> list[tuple[np.ndarray, ...]]:
    """Calibration samples shaped like ``example_inputs``, as float32 arrays.

    Args:
        calibration_data: ``None`` (use ``example_inputs`` themselves: enough for timing, where only the
            kernels matter, not for accuracy), a tensor, a sequence of tensors or of input tuples, or a
            ``DataLoader`` yielding ``(images, labels)`` batches. Batches are split into samples of the
            example inputs' batch size (the exported graphs have a fixed batch).
        example_inputs: the inputs the model is exported with.
        limit: stop after this many samples.

    Raises:
        ValueError: no samples, or samples whose shape differs from the example inputs'.
    """
    want = [tuple(t.shape) for t in example_inputs]
    batch = want[0][0]
    if calibration_data is None:
        return [tuple(t.detach().cpu().float().numpy() for t in example_inputs)]
    if isinstance(calibration_data, torch.Tensor):
        calibration_data = [calibration_data]
    feeds: list[tuple[np.ndarray, ...]] = []
    for item in calibration_data:
        if isinstance(item, torch.Tensor):
            tensors: tuple[torch.Tensor, ...] = (item,)
        elif isinstance(item, (tuple, list)) and item and isinstance(item[0], torch.Tensor):
            # a (images, labels) batch from a loader: the model's inputs are the leading tensors
            tensors = tuple(item[: len(want)])
        else:
            raise ValueError("calibration data must hold tensors or (inputs, labels) batches, got "
                             f"{type(item).__name__}")
        if len(tensors) != len(want) or any(tuple(t.shape[1:]) != w[1:] for t, w in zip(tensors, want)):
            raise ValueError(
                f"calibration batch of shape {[tuple(t.shape) for t in tensors]} does not fit the model's inputs "
                f"{want}: pass batches of the example inputs' shape (any batch size)")
        n = int(tensors[0].shape[0])
        for start in range(0, n - batch + 1, batch):
            feeds.append(tuple(t[start:start + batch].detach().cpu().float().numpy() for t in tensors))
            if len(feeds) >= limit:
                return feeds
    if not feeds:
        raise ValueError(
            f"no calibration samples: the calibration data held no batch of at least {batch} sample(s); "
            "pass example batches from your data (calibration_data=..., CLI --data)")
    return feeds


def _quantizer() -> Any:
    try:
        from onnxruntime import quantization
    except ImportError as exc:
        raise ValueError("INT8 backends and export need onnxruntime's quantizer: `pip install halp[onnx]`") from exc
    return quantization


@contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime's quantizer logs "consider pre-processing" on the root logger for every model."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_qdq(
    src: str | Path, dst: str | Path, feeds: Iterable[dict[str, np.ndarray]], *, preprocess: bool = False
) -> Path:
    """Static INT8 quantization of the ONNX model ``src`` into ``dst`` (QDQ, per-channel int8 weights,
    uint8 activations: the u8s8 form x86 VNNI/AMX kernels run), calibrated by min/max on ``feeds``.

    Args:
        preprocess: run onnxruntime's ``quant_pre_process`` first (shape inference and ONNX Runtime's
            basic graph optimisation, the step its quantizer asks for). Needed for ONNX Runtime to run
            exported networks in INT8: torch's exporter shares equal constants (the zero biases of
            BatchNorm-folded convs) through ``Identity`` nodes, the quantizer then writes one int32
            bias for several convs, and ONNX Runtime leaves convs sharing it in float (at init 10 of
            MobileNet-V2's 52 convs, 16 of ResNet-18's 20; measured: the dense MobileNet-V2
            at 128² ran 3.59 ms that way, 1.50 ms preprocessed, 2.63 ms in FP32). One-node graphs do
            not need it.
    """
    q = _quantizer()
    if preprocess:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        with tempfile.TemporaryDirectory(prefix="halp-qdq-") as tmp:
            pre = Path(tmp) / "pre.onnx"
            try:
                with _quiet():
                    quant_pre_process(str(src), str(pre))
            except Exception as exc:  # noqa: BLE001 - shape inference fails on some exporters' graphs
                logger.warning("quant_pre_process failed (%s: %s); quantizing the model as exported, where ONNX "
                               "Runtime may leave convs with shared biases in float", type(exc).__name__, exc)
                pre = Path(src)
            return quantize_qdq(pre, dst, feeds)

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    with _quiet():
        q.quantize_static(str(src), str(dst), Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                          activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                          calibrate_method=q.CalibrationMethod.MinMax)
    return Path(dst)


def _init(graph: Any, name: str) -> np.ndarray:
    from onnx import numpy_helper

    for t in graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    raise ValueError(f"quantized model has no initializer {name!r}")


def strip_boundary_qdq(model: Any) -> tuple[Any, dict[str, tuple[str, float, int, np.dtype]]]:
    """Cut the float→int8 conversions at a quantized model's inputs and outputs.

    A ``QuantizeLinear`` that reads a graph input becomes the input (its output tensor, now uint8), a
    ``DequantizeLinear`` that writes a graph output becomes the output. Inputs no quantizer reads stay
    float (an op the quantizer left in float runs in float inside a network too).

    Returns:
        the modified model and, for each new quantized input, ``(float input it replaces, scale, zero
        point, dtype)``.
    """
    import onnx
    from onnx import helper

    graph = model.graph
    inputs = {vi.name: vi for vi in graph.input}
    outputs = {vi.name: vi for vi in graph.output}
    quant: dict[str, tuple[str, float, int, np.dtype]] = {}
    for node in list(graph.node):
        if node.op_type == "QuantizeLinear" and node.input[0] in inputs and node.input[0] not in {
                q[0] for q in quant.values()}:
            zp = _init(graph, node.input[2])
            vi = inputs[node.input[0]]
            shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
            new = helper.make_tensor_value_info(node.output[0], helper.np_dtype_to_tensor_dtype(zp.dtype), shape)
            graph.input.remove(vi)
            graph.input.append(new)
            quant[node.output[0]] = (vi.name, float(_init(graph, node.input[1])), int(zp), zp.dtype)
            graph.node.remove(node)
    for node in list(graph.node):
        if node.op_type == "DequantizeLinear" and node.output[0] in outputs:
            zp = _init(graph, node.input[2])
            vi = outputs[node.output[0]]
            shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
            graph.output.remove(vi)
            graph.output.append(helper.make_tensor_value_info(node.input[0], helper.np_dtype_to_tensor_dtype(zp.dtype),
                                                              shape))
            graph.node.remove(node)
    onnx.checker.check_model(model)
    return model, quant


def quantized_layer_model(
    data: bytes, feed: dict[str, np.ndarray], workdir: str | Path
) -> tuple[bytes, dict[str, np.ndarray]]:
    """A float one-layer (or one-op) model ``data`` quantized and cut at its boundary (module docstring).

    Returns:
        the serialised INT8 model and a feed for it: each quantized input holds the float input
        quantized with the removed quantizer's scale and zero point.
    """
    import onnx

    workdir = Path(workdir)
    src, dst = workdir / "layer.onnx", workdir / "layer.int8.onnx"
    src.write_bytes(data)
    quantize_qdq(src, dst, [feed])
    model, quant = strip_boundary_qdq(onnx.load(str(dst)))
    new_feed = {}
    for vi in model.graph.input:
        if vi.name in quant:
            orig, scale, zp, dtype = quant[vi.name]
            info = np.iinfo(dtype)
            new_feed[vi.name] = np.clip(np.round(feed[orig] / scale) + zp, info.min, info.max).astype(dtype)
        elif vi.name in feed:
            new_feed[vi.name] = feed[vi.name]
    return model.SerializeToString(), new_feed


def input_names(onnx_path: str | Path) -> list[str]:
    """Names of an ONNX model's graph inputs (initializers excluded), in order."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    return [vi.name for vi in model.graph.input if vi.name not in inits]


def named_feeds(names: Sequence[str], feeds: Sequence[tuple[np.ndarray, ...]]) -> list[dict[str, np.ndarray]]:
    """Calibration samples as ``{input name: array}`` dicts (constant-folded inputs are dropped)."""
    return [dict(zip(names, sample[: len(names)])) for sample in feeds]
