"""``openvino`` and ``openvino-int8``: OpenVINO's CPU plugin, one synchronous infer request.

The CPU plugin is compiled for latency (``PERFORMANCE_HINT=LATENCY``, one stream) with a fixed
``INFERENCE_NUM_THREADS`` and ``INFERENCE_PRECISION_HINT=f32``: on CPUs with AMX or AVX-512 BF16 the
plugin otherwise runs "FP32" models in bfloat16, and the table would describe another precision than its
name says. Models reach OpenVINO as ONNX (the single-layer graphs of :mod:`halp.latency.onnx_layers`,
networks through :func:`halp.export.export_onnx`), read by ``ov.Core.read_model``.

INT8 networks are statically quantized on the user's calibration batches and compiled from the Q/DQ
ONNX model, which OpenVINO's low-precision transformations run as INT8 kernels. Which quantizer
(``quantizer=``), checked here on MobileNet-V2 (OpenVINO 2026.4, NNCF 3.4):

* ``"onnxruntime"`` (default): onnxruntime.quantization's static QDQ, per-channel int8 weights, uint8
  activations. All 52 convolutions run INT8; a digits model kept its FP32 top-1 (tests).
  It is also how the table's single layers and ops are quantized, so the table and the measured
  network share one quantization scheme.
* ``"nncf-openvino"``: ``nncf.quantize`` on the OpenVINO model. It leaves all 17 depthwise convolutions
  in f32 (the runtime graph says so; the network ran about 30% slower than the default's, in a rough
  timing on the shared machine): not the network an INT8 table of quantized kernels describes.
* ``"nncf-onnx"``: ``nncf.quantize`` on the ONNX model: all convolutions INT8, but a small digits model
  lost 3.1 top-1 points (83.2% against FP32 86.3%) where the default stayed within a point.

Single layers and ops are never quantized by NNCF: ``nncf.quantize`` takes ~0.4 s a call here and a table
needs thousands of points; onnxruntime's quantizer takes 16 ms. They are cut to uint8 in / uint8 out
(:mod:`halp.latency.qdq`), which OpenVINO compiles to ``Input u8 → Convolution u8 → Output u8``: the
kernel as it runs inside the quantized network.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from halp.graph.types import LayerShape
from halp.latency.backends import Backend, as_inputs, cpu_model_name
from halp.latency.int8 import check_int8_dtype, export_float_onnx, float_cpu
from halp.latency.onnx_layers import single_layer_model
from halp.latency.ops import op_module
from halp.latency.qdq import calibration_feeds, input_names, named_feeds, quantize_qdq, quantized_layer_model
from halp.latency.timing import LatencyStats, time_interleaved

logger = logging.getLogger(__name__)

#: how openvino-int8 quantizes whole networks (module docstring)
QUANTIZERS = ("onnxruntime", "nncf-onnx", "nncf-openvino")
QUANTIZER = "onnxruntime"


def _openvino() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise ValueError("the OpenVINO backends need `pip install halp[openvino]` (openvino, nncf)") from exc
    return openvino


class OpenVinoBackend(Backend):
    """OpenVINO CPU plugin, float32 (module docstring for the compile settings)."""

    name = "openvino"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.dtype != "float32":
            raise ValueError(f"backend {self.name!r} measures float32 only (INT8: 'openvino-int8'), got dtype "
                             f"{self.dtype!r}")
        self._ov = _openvino()
        self._core = self._ov.Core()

    def device_name(self) -> str:
        try:
            return str(self._core.get_property("CPU", "FULL_DEVICE_NAME"))
        except Exception:  # noqa: BLE001 - a name is informative only
            return cpu_model_name()

    def info(self) -> dict[str, Any]:
        return super().info() | {"openvino": self._ov.__version__}

    def compile_config(self) -> dict[str, Any]:
        return {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": self.threads,
                "INFERENCE_PRECISION_HINT": "f32"}

    def options(self) -> dict[str, Any]:
        return {"precision": "float32", "runtime": "openvino", "device": "CPU", **self.compile_config()}

    def compile(self, model: Any) -> Any:
        """An OpenVINO model (or a path to ONNX / IR) compiled for the CPU with this backend's settings."""
        if isinstance(model, (str, Path)):
            model = self._core.read_model(str(model))
        return self._core.compile_model(model, "CPU", self.compile_config())

    def runner(self, compiled: Any, feed: Sequence[np.ndarray] | dict[str, np.ndarray]) -> Callable[[], Any]:
        """One synchronous infer request with its inputs set once (shared, not copied, on every call)."""
        request = compiled.create_infer_request()
        arrays = list(feed.values()) if isinstance(feed, dict) else list(feed)
        arrays = [np.ascontiguousarray(a) for a in arrays[: len(compiled.inputs)]]
        for i, a in enumerate(arrays):
            request.set_input_tensor(i, self._ov.Tensor(a, shared_memory=True))
        return lambda: request.infer() if arrays else None  # the closure keeps the shared buffers alive

    def _layer_model(self, data: bytes, feed: dict[str, np.ndarray], tmp: str) -> tuple[bytes, dict[str, np.ndarray]]:
        return data, feed

    def _compile_bytes(self, data: bytes, tmp: str) -> Any:
        path = Path(tmp) / "layer.ov.onnx"
        path.write_bytes(data)
        return self.compile(path)

    def time_layer(self, shape: LayerShape, cin: int, cout: int, in_repeat: int = 1) -> LatencyStats:
        data, name, x = single_layer_model(shape, cin, cout, in_repeat)
        with tempfile.TemporaryDirectory(prefix="halp-ov-") as tmp:
            data, feed = self._layer_model(data, {name: x}, tmp)
            run = self.runner(self._compile_bytes(data, tmp), feed)
        return self._timed(run)

    def time_op(self, kind: str, batch: int, channels: int, hw: tuple[int, int]) -> LatencyStats:
        module, inputs = op_module(kind, batch, channels, hw, torch.float32, "cpu")
        with tempfile.TemporaryDirectory(prefix="halp-ov-") as tmp:
            path, feed = export_float_onnx(module, inputs, Path(tmp) / "op.onnx")
            data, feed = self._layer_model(path.read_bytes(), feed, tmp)
            run = self.runner(self._compile_bytes(data, tmp), feed)
        return self._timed(run)

    def network(self, model: nn.Module, inputs: tuple[torch.Tensor, ...], tmp: str | Path) -> Any:
        """The OpenVINO model of one network, as this backend runs it (float32 here)."""
        path, _ = export_float_onnx(model, inputs, Path(tmp) / "net.onnx")
        return self._core.read_model(str(path))

    def time_models(
        self, models: Sequence[nn.Module], example_inputs: Any, rounds: int = 5
    ) -> list[LatencyStats]:
        inputs = tuple(t.detach().cpu() for t in as_inputs(example_inputs))
        arrays = [t.float().numpy() for t in inputs]
        runs = []
        for m in float_cpu(models):
            with tempfile.TemporaryDirectory(prefix="halp-ov-") as tmp:
                runs.append(self.runner(self.compile(self.network(m, inputs, tmp)), arrays))
        return time_interleaved(runs, self.settings, rounds=rounds)


class OpenVinoInt8Backend(OpenVinoBackend):
    """OpenVINO CPU plugin running statically quantized INT8 networks (module docstring).

    Args:
        calibration_data: example batches for the quantizer (a tensor, a sequence of tensors, or a
            loader of ``(images, labels)``); None: the example inputs.
        quantizer: ``"onnxruntime"`` (QDQ), ``"nncf-onnx"`` or ``"nncf-openvino"`` (module docstring).
        **kwargs: as :class:`~halp.latency.backends.Backend` (``threads``, ``settings``).
    """

    name = "openvino-int8"

    def __init__(self, *, calibration_data: Any = None, dtype: str = "int8", quantizer: str = QUANTIZER,
                 **kwargs: Any) -> None:
        check_int8_dtype(self.name, dtype)
        if quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {quantizer!r}")
        super().__init__(dtype="float32", **kwargs)
        self.dtype = "int8"
        self.calibration_data = calibration_data
        self.quantizer = quantizer
        if quantizer.startswith("nncf"):
            try:
                import nncf  # noqa: F401
            except ImportError as exc:
                raise ValueError(f"quantizer {quantizer!r} needs NNCF: `pip install halp[openvino]`") from exc

    def options(self) -> dict[str, Any]:
        return super().options() | {"precision": "int8", "quantizer": self.quantizer,
                                    "layer_quantizer": "onnxruntime.quantization QDQ, per-channel, u8/s8"}

    def _layer_model(self, data: bytes, feed: dict[str, np.ndarray], tmp: str) -> tuple[bytes, dict[str, np.ndarray]]:
        return quantized_layer_model(data, feed, tmp)

    def quantized_network(self, model: nn.Module, inputs: tuple[torch.Tensor, ...], tmp: str | Path,
                          calibration_data: Any = None) -> Any:
        """``model`` exported to ONNX, quantized on calibration data (the argument, else the backend's, else
        ``inputs``) by this backend's quantizer, and read by OpenVINO (module docstring: why these)."""
        data = calibration_data if calibration_data is not None else self.calibration_data
        feeds = calibration_feeds(data, inputs)
        path, _ = export_float_onnx(model, inputs, Path(tmp) / "net.onnx")
        samples = named_feeds(input_names(path), feeds)
        if self.quantizer == "onnxruntime":
            return self._core.read_model(str(quantize_qdq(path, Path(tmp) / "net.int8.onnx", samples)))
        import nncf

        nncf_log = logging.getLogger("nncf")
        level = nncf_log.level
        nncf_log.setLevel(logging.ERROR)
        try:
            if self.quantizer == "nncf-openvino":
                return nncf.quantize(self._core.read_model(str(path)), nncf.Dataset(samples), subset_size=len(samples))
            import onnx

            quantized = nncf.quantize(onnx.load(str(path)), nncf.Dataset(samples), subset_size=len(samples))
        finally:
            nncf_log.setLevel(level)
        qpath = Path(tmp) / "net.int8.onnx"
        onnx.save(quantized, str(qpath))
        return self._core.read_model(str(qpath))

    def network(self, model: nn.Module, inputs: tuple[torch.Tensor, ...], tmp: str | Path) -> Any:
        return self.quantized_network(model, inputs, tmp)
