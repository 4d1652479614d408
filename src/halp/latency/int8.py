"""``onnxruntime-int8``: ONNX Runtime running statically quantized INT8 networks (QDQ, per-channel).

A quantized network does not cost what its FP32 twin does with every layer made cheaper by the same
factor: measured on a 6-conv net at 224², 1 thread, FP32 39.8 ms against INT8 30.6 ms, and which widths
are cheap changes with the kernel (INT8 kernels tile channels in other steps). So the table must hold
the INT8 kernels: every single layer and op is quantized and timed as it runs inside a quantized
network (:mod:`halp.latency.qdq`: uint8 in, uint8 out, fused to ``QLinearConv``), and whole networks
are exported, quantized with calibration batches and timed end to end.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from halp.graph.types import LayerShape
from halp.latency.backends import OnnxRuntimeBackend, as_inputs
from halp.latency.onnx_layers import single_layer_model
from halp.latency.ops import op_module
from halp.latency.qdq import calibration_feeds, input_names, named_feeds, quantize_qdq, quantized_layer_model
from halp.latency.timing import LatencyStats, time_interleaved

#: what an INT8 backend accepts as ``dtype``: the tables it writes say "int8"
INT8_DTYPES = ("float32", "int8")


def check_int8_dtype(name: str, dtype: str) -> None:
    if dtype not in INT8_DTYPES:
        raise ValueError(f"backend {name!r} runs INT8 networks quantized from float32 models; dtype must be "
                         f"'int8' (or 'float32', the model's own precision), got {dtype!r}")


def float_cpu(models: Sequence[nn.Module]) -> list[nn.Module]:
    """The models as float32 on the CPU (copies only where needed): the form they are exported in."""
    return [m if all(p.device.type == "cpu" and p.dtype == torch.float32 for p in m.parameters())
            else copy.deepcopy(m).to(device="cpu", dtype=torch.float32) for m in models]


def export_float_onnx(
    module: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path
) -> tuple[Path, dict[str, np.ndarray]]:
    """``module`` exported to ONNX at ``path`` and a feed of ``inputs`` for it."""
    from halp.export import export_onnx

    export_onnx(module, inputs, path)
    names = input_names(path)
    return path, dict(zip(names, [t.detach().cpu().float().numpy() for t in inputs][: len(names)]))


class OnnxRuntimeInt8Backend(OnnxRuntimeBackend):
    """ONNX Runtime CPU, INT8: onnxruntime.quantization static QDQ, per-channel int8 weights, uint8
    activations (min/max calibration).

    Args:
        calibration_data: example batches of the user's data for quantizing whole networks (a tensor,
            a sequence of tensors, or a loader of ``(images, labels)``); None: the example inputs.
            Latency does not depend on the quantization scales, accuracy does (see :mod:`halp.export`).
        **kwargs: as :class:`~halp.latency.backends.Backend` (``threads``, ``settings``).
    """

    name = "onnxruntime-int8"

    def __init__(self, *, calibration_data: Any = None, dtype: str = "int8", **kwargs: Any) -> None:
        check_int8_dtype(self.name, dtype)
        super().__init__(dtype="float32", **kwargs)
        self.dtype = "int8"
        self.calibration_data = calibration_data

    def options(self) -> dict[str, Any]:
        return {"precision": "int8", "runtime": "onnxruntime", "quantizer": "onnxruntime.quantization.quantize_static",
                "quant_format": "QDQ", "per_channel": True, "activations": "uint8", "weights": "int8",
                "calibration": "minmax"}

    def time_layer(self, shape: LayerShape, cin: int, cout: int, in_repeat: int = 1) -> LatencyStats:
        data, name, x = single_layer_model(shape, cin, cout, in_repeat)
        with tempfile.TemporaryDirectory(prefix="halp-ort8-") as tmp:
            qdata, feed = quantized_layer_model(data, {name: x}, tmp)
        sess = self._session(qdata)
        return self._timed(lambda: sess.run(None, feed))

    def time_op(self, kind: str, batch: int, channels: int, hw: tuple[int, int]) -> LatencyStats:
        module, inputs = op_module(kind, batch, channels, hw, torch.float32, "cpu")
        with tempfile.TemporaryDirectory(prefix="halp-ort8-") as tmp:
            path, feed = export_float_onnx(module, inputs, Path(tmp) / "op.onnx")
            qdata, qfeed = quantized_layer_model(path.read_bytes(), feed, tmp)
        sess = self._session(qdata)
        return self._timed(lambda: sess.run(None, qfeed))

    def quantized_onnx(self, model: nn.Module, inputs: tuple[torch.Tensor, ...], path: str | Path,
                       calibration_data: Any = None) -> Path:
        """``model`` exported to ONNX and quantized to a QDQ INT8 model at ``path`` with calibration data
        (the argument, else the backend's, else ``inputs``)."""
        data = calibration_data if calibration_data is not None else self.calibration_data
        feeds = calibration_feeds(data, inputs)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="halp-ort8-") as tmp:
            src, _ = export_float_onnx(model, inputs, Path(tmp) / "float.onnx")
            quantize_qdq(src, path, named_feeds(input_names(src), feeds))
        return path

    def time_models(
        self, models: Sequence[nn.Module], example_inputs: Any, rounds: int = 5
    ) -> list[LatencyStats]:
        inputs = tuple(t.detach().cpu() for t in as_inputs(example_inputs))
        sessions = []
        with tempfile.TemporaryDirectory(prefix="halp-ort8-") as tmp:
            for i, m in enumerate(float_cpu(models)):
                sessions.append(self._session(str(self.quantized_onnx(m, inputs, Path(tmp) / f"m{i}.int8.onnx"))))
        fns = [(lambda s=s, f=self._feed(s, inputs): s.run(None, f)) for s in sessions]
        return time_interleaved(fns, self.settings, rounds=rounds, guard=self.guard)
