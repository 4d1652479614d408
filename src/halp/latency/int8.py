"""``onnxruntime-int8``: ONNX Runtime running statically quantized INT8 networks (QDQ, per-channel).

A quantized network does not cost what its FP32 twin does with every layer made cheaper by the same
factor: measured on a 6-conv net at 224², 1 thread, FP32 39.8 ms against INT8 30.6 ms, and which widths
are cheap changes with the kernel (INT8 kernels tile channels in other steps). So the table must hold
the INT8 kernels: every single layer and op is quantized and timed as it runs inside a quantized
network, and whole networks are exported, preprocessed and quantized with calibration batches
(:func:`halp.latency.qdq.quantize_qdq`, whose docstring says why the preprocessing) and timed end to end.

"As it runs inside the network" means, for ONNX Runtime (measured on MobileNet-V2 at 128², 1 thread):

* **uint8 in and out** (:func:`halp.latency.qdq.quantized_layer_model`): one ``QLinearConv``;
* **in the runtime's layout**: ONNX Runtime's layout transformer runs ``QLinearConv`` channels-last and
  wraps a one-layer graph in two uint8 transposes, which a network pays once at its ends. With them the
  52 layers summed to 2.04 ms against the dense network's 1.50 ms; without (:func:`runtime_layout`)
  to 1.50 ms;
* **after its producer** (:func:`op_after_producers`): an op is timed downstream of quantized 1x1
  convs, as ONNX Runtime runs it behind a conv. BatchNorm (folded at export) and ReLU / ReLU6 (absorbed
  by the conv's output quantization) then leave no node and cost nothing; alone they ran as float ops
  with dequantize/quantize around them, 2.0 ms for MobileNet-V2's ops, more than the whole network;
* **without the call**: every timed graph is one ``InferenceSession.run``, whose fixed cost (binding
  the feed, allocating the output, starting the executor) a network pays once, not once per layer. It
  is timed on a one-node graph (:meth:`OnnxRuntimeInt8Backend.call_overhead_ms`) and taken off every
  layer and op sample. Left in, the ~60 calls of a MobileNet-V2 over-predicted its most pruned variants
  by up to 40% (the calibration's constant cannot go negative).
"""

from __future__ import annotations

import copy
import logging
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

logger = logging.getLogger(__name__)

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


def _perm(node: Any) -> list[int]:
    from onnx import helper

    return next((list(helper.get_attribute_value(a)) for a in node.attribute if a.name == "perm"), [])


def _retype(vi: Any, name: str, shape: Sequence[int]) -> Any:
    from onnx import helper

    return helper.make_tensor_value_info(name, vi.type.tensor_type.elem_type, list(shape))


def runtime_layout(model: Any, feed: dict[str, np.ndarray]) -> tuple[Any, dict[str, np.ndarray]]:
    """An ONNX Runtime-optimised model cut at the layout transposes around its boundary.

    ONNX Runtime's layout transformer runs quantized convs channels-last and puts a ``Transpose`` to
    NHWC after each graph input and one back to NCHW before each output (module docstring). Each such
    transpose is removed: its output becomes the graph input (fed the input transposed to NHWC), its
    input the graph output. A model without them (a Gemm, a runtime that kept NCHW) is returned as is.
    """
    graph = model.graph
    feed = dict(feed)
    nhwc = (0, 2, 3, 1)
    for side, perm in (("input", list(nhwc)), ("output", [0, 3, 1, 2])):
        values = getattr(graph, side)
        ends = {vi.name: vi for vi in values}
        for node in list(graph.node):
            # the boundary value and the channels-last value on the transpose's other side
            outer, inner = (node.input[0], node.output[0]) if side == "input" else (node.output[0], node.input[0])
            if node.op_type != "Transpose" or outer not in ends or _perm(node) != perm:
                continue
            vi = ends.pop(outer)
            shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
            values.remove(vi)
            values.append(_retype(vi, inner, [shape[i] for i in nhwc]))
            if side == "input":
                feed[inner] = np.ascontiguousarray(feed.pop(outer).transpose(*nhwc))
            graph.node.remove(node)
    return model, feed


def _drop_unused_initializers(model: Any) -> None:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    for t in list(model.graph.initializer):
        if t.name not in used:
            model.graph.initializer.remove(t)


def op_after_producers(model: Any, feed: dict[str, np.ndarray]) -> tuple[Any, dict[str, np.ndarray]]:
    """The op of an optimised ``1x1 conv(s) → op`` model as it runs behind them: each quantized conv
    that reads a graph input is removed and its (same-shaped, uint8) output becomes the input.

    What is left is what the runtime runs for the op inside a quantized network; an empty graph means
    the op was folded into its producer (module docstring).
    """
    graph = model.graph
    inputs = {vi.name: vi for vi in graph.input}
    feed = dict(feed)
    for node in list(graph.node):
        if node.op_type in ("QLinearConv", "NhwcQLinearConv") and node.input[0] in inputs:
            vi = inputs.pop(node.input[0])
            shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
            graph.input.remove(vi)
            graph.input.append(_retype(vi, node.output[0], shape))
            feed[node.output[0]] = feed.pop(vi.name)
            graph.node.remove(node)
    _drop_unused_initializers(model)
    return model, feed


class _AfterConvs(nn.Module):
    """``op`` fed by one 1x1 conv per input: its producers in a network (see :func:`op_after_producers`)."""

    def __init__(self, op: nn.Module, channels: Sequence[int]) -> None:
        super().__init__()
        self.op = op
        self.convs = nn.ModuleList(nn.Conv2d(c, c, 1) for c in channels)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.op(*[conv(x) for conv, x in zip(self.convs, xs)])


def call_model() -> tuple[bytes, dict[str, np.ndarray]]:
    """The cheapest graph a session can run: one uint8 ``Identity`` of 8 elements, and its feed."""
    import onnx
    from onnx import TensorProto, helper

    from halp.latency.onnx_layers import IR_VERSION, OPSET

    graph = helper.make_graph([helper.make_node("Identity", ["X"], ["Y"])], "halp_call",
                              [helper.make_tensor_value_info("X", TensorProto.UINT8, [1, 8])],
                              [helper.make_tensor_value_info("Y", TensorProto.UINT8, [1, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="halp")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString(), {"X": np.zeros((1, 8), np.uint8)}


def less(stats: LatencyStats, ms: float) -> LatencyStats:
    """``stats`` with ``ms`` taken off every sample (none below 0)."""
    return LatencyStats.from_samples([max(v - ms, 0.0) for v in stats.samples])


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
        self._call_ms: float | None = None

    def options(self) -> dict[str, Any]:
        return {"precision": "int8", "runtime": "onnxruntime", "quantizer": "onnxruntime.quantization.quantize_static",
                "quant_format": "QDQ", "per_channel": True, "activations": "uint8", "weights": "int8",
                "calibration": "minmax", "networks": "quant_pre_process, then quantize_static",
                "layers": "uint8 in/out, runtime layout (boundary transposes cut)",
                "ops": "behind quantized 1x1 producer convs", "call_overhead": "subtracted"}

    def optimized(self, data: bytes, workdir: str | Path) -> Any:
        """The ONNX model ``data`` after this backend's session optimised it (layout included)."""
        import onnx

        path = Path(workdir) / "optimized.onnx"
        self._session(data, optimized_path=path)
        return onnx.load(str(path))

    def _session(self, model: bytes | str, optimized_path: Path | None = None) -> Any:
        if optimized_path is None:
            return super()._session(model)
        import onnxruntime as ort

        opts = self.session_options()
        opts.optimized_model_filepath = str(optimized_path)
        return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])

    def call_overhead_ms(self) -> float:
        """The fixed cost of one ``InferenceSession.run`` (module docstring), timed once per backend on
        :func:`call_model` with this backend's settings and thread count."""
        if self._call_ms is None:
            data, feed = call_model()
            sess = self._session(data)
            self._call_ms = float(self._timed(lambda: sess.run(None, feed)).median_ms)
            logger.info("onnxruntime-int8: %.4f ms a session call, taken off every layer and op", self._call_ms)
        return self._call_ms

    def _timed_call(self, sess: Any, feed: dict[str, np.ndarray]) -> LatencyStats:
        overhead = self.call_overhead_ms()
        return less(self._timed(lambda: sess.run(None, feed)), overhead)

    def time_layer(self, shape: LayerShape, cin: int, cout: int, in_repeat: int = 1) -> LatencyStats:
        data, name, x = single_layer_model(shape, cin, cout, in_repeat)
        with tempfile.TemporaryDirectory(prefix="halp-ort8-") as tmp:
            qdata, feed = quantized_layer_model(data, {name: x}, tmp)
            model, feed = runtime_layout(self.optimized(qdata, tmp), feed)
        return self._timed_call(self._session(model.SerializeToString()), feed)

    def time_op(self, kind: str, batch: int, channels: int, hw: tuple[int, int]) -> LatencyStats:
        op, inputs = op_module(kind, batch, channels, hw, torch.float32, "cpu")
        module = _AfterConvs(op, [int(t.shape[1]) for t in inputs]).eval()
        with tempfile.TemporaryDirectory(prefix="halp-ort8-") as tmp:
            path, feed = export_float_onnx(module, inputs, Path(tmp) / "op.onnx")
            qdata, qfeed = quantized_layer_model(path.read_bytes(), feed, tmp)
            model, qfeed = op_after_producers(*runtime_layout(self.optimized(qdata, tmp), qfeed))
        if not model.graph.node:
            logger.debug("onnxruntime-int8: op %r is folded into its producing conv; it costs nothing", kind)
            return LatencyStats.from_samples([0.0])
        return self._timed_call(self._session(model.SerializeToString()), qfeed)

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
            quantize_qdq(src, path, named_feeds(input_names(src), feeds), preprocess=True)
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
        return time_interleaved(fns, self.settings, rounds=rounds)
