"""Where latency is measured: torch on CPU, torch on CUDA, ONNX Runtime on CPU.

A backend times three things the same way: one conv/linear layer at given channel counts (the table's
grid), one non-conv op (the table's elementwise model) and whole networks (calibration, and
:func:`halp.measure_latency`). It also fixes the thread count for as long as it is open (``with
backend:``) and restores the previous setting afterwards, because tables are only comparable at equal
thread counts.
"""

from __future__ import annotations

import copy
import itertools
import logging
import platform
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from halp.graph.types import LayerShape
from halp.latency.heap import steady_heap
from halp.latency.onnx_layers import conv_groups, single_layer_model
from halp.latency.ops import op_module
from halp.latency.timing import LatencyStats, TimingSettings, time_callable, time_interleaved

logger = logging.getLogger(__name__)

BACKENDS = ("torch-cpu", "torch-cuda", "onnxruntime", "openvino", "onnxruntime-int8", "openvino-int8")
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def cpu_model_name() -> str:
    """The CPU's marketing name (``/proc/cpuinfo``), falling back to ``platform``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def as_inputs(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    """Normalise ``example_inputs`` (a tensor or a sequence of tensors) to a tuple (the graph's rule)."""
    from halp.graph.capture import normalize_inputs

    return normalize_inputs(example_inputs)


class Backend(ABC):
    """Times layers, ops and networks on one device with one dtype and thread count."""

    name: str = ""

    def __init__(
        self, *, dtype: str = "float32", threads: int | None = None, settings: TimingSettings | None = None
    ) -> None:
        if dtype not in TORCH_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(TORCH_DTYPES)}, got {dtype!r}")
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise ValueError(f"threads must be a positive integer or None (torch's current), got {threads!r}")
        self.dtype = dtype
        self.threads = int(threads) if threads is not None else torch.get_num_threads()
        self.settings = settings or TimingSettings()
        self._saved_threads: list[int] = []

    def __enter__(self) -> "Backend":
        if self.settings.clock == "thread" and (self.threads != 1 or self.name == "torch-cuda"):
            raise ValueError(
                "the thread clock counts only the calling thread's CPU time: use it with threads=1 on a CPU "
                f"backend (got {self.name} with {self.threads} threads)"
            )
        steady_heap()  # one heap state whatever the process allocated before (halp.latency.heap)
        self._saved_threads.append(torch.get_num_threads())
        torch.set_num_threads(self.threads)
        return self

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self._saved_threads.pop())

    def info(self) -> dict[str, Any]:
        """Device and library versions: what makes a measurement reproducible."""
        import numpy

        info = {
            "backend": self.name,
            "device": self.device_name(),
            "torch": torch.__version__,
            "numpy": numpy.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
        }
        try:
            import onnxruntime

            info["onnxruntime"] = onnxruntime.__version__
        except ImportError:
            info["onnxruntime"] = None
        return info

    def options(self) -> dict[str, Any]:
        """Backend-specific settings that change the numbers (recorded in tables and partial files)."""
        return {}

    def _timed(self, fn: Callable[[], Any], **timing: Any) -> LatencyStats:
        """``time_callable(fn)`` with this backend's settings."""
        return time_callable(fn, self.settings, **timing)

    @abstractmethod
    def device_name(self) -> str: ...

    @abstractmethod
    def time_layer(self, shape: LayerShape, cin: int, cout: int, in_repeat: int = 1) -> LatencyStats:
        """Latency of one conv/linear layer with random weights and inputs."""

    @abstractmethod
    def time_op(self, kind: str, batch: int, channels: int, hw: tuple[int, int]) -> LatencyStats:
        """Latency of one non-conv op (see :mod:`halp.latency.ops`)."""

    @abstractmethod
    def time_models(
        self, models: Sequence[nn.Module], example_inputs: Any, rounds: int = 5
    ) -> list[LatencyStats]:
        """End-to-end latency of several networks, measured interleaved."""


class TorchBackend(Backend):
    """Eager PyTorch on ``cpu`` or ``cuda``; CUDA timings use events, with ``cudnn.benchmark`` on.

    In a network every layer's weights arrive cold (the rest of the forward pass evicted them), while a
    layer timed alone in a loop keeps them in cache; weight-heavy layers (late 1x1 convs, classifiers)
    then look up to ~1.5x faster alone than in the network. So single layers cycle through several
    copies of their weights, views into one random pool of ``cold_weights_mb`` (0 disables this).
    """

    def __init__(self, device: str = "cpu", cold_weights_mb: float = 64.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("backend 'torch-cuda' needs a CUDA device and none is available; use 'torch-cpu'")
        if not cold_weights_mb >= 0:
            raise ValueError(f"cold_weights_mb must be >= 0, got {cold_weights_mb!r}")
        self.device = device
        self.name = "torch-cuda" if device == "cuda" else "torch-cpu"
        self.cold_weights_mb = float(cold_weights_mb)
        self._tdtype = TORCH_DTYPES[self.dtype]
        self._saved_cudnn: list[bool] = []
        self._pool: torch.Tensor | None = None

    def options(self) -> dict[str, Any]:
        return {"cold_weights_mb": self.cold_weights_mb}

    def _weights(self, *shape: int) -> list[torch.Tensor]:
        """Copies of a random weight tensor whose total size reaches the cold pool (at most 64)."""
        numel = int(np.prod(shape))
        itemsize = torch.empty((), dtype=self._tdtype).element_size()
        pool_numel = int(self.cold_weights_mb * 2**20) // itemsize
        if numel > pool_numel // 2:
            return [torch.randn(*shape, device=self.device, dtype=self._tdtype) * 0.05]
        if self._pool is None:
            gen = torch.Generator(device="cpu").manual_seed(0)
            self._pool = (torch.randn(pool_numel, generator=gen) * 0.05).to(device=self.device, dtype=self._tdtype)
        stride = -(-numel // 16) * 16  # 64-byte aligned views
        copies = max(1, min(64, pool_numel // stride))
        return [self._pool[i * stride: i * stride + numel].view(*shape) for i in range(copies)]

    def __enter__(self) -> "TorchBackend":
        super().__enter__()
        self._saved_cudnn.append(torch.backends.cudnn.benchmark)
        if self.device == "cuda":
            torch.backends.cudnn.benchmark = True
        return self

    def __exit__(self, *exc: object) -> None:
        torch.backends.cudnn.benchmark = self._saved_cudnn.pop()
        super().__exit__(*exc)

    def device_name(self) -> str:
        if self.device == "cuda":
            return torch.cuda.get_device_name()
        return cpu_model_name()

    def _timing_kwargs(self) -> dict[str, Callable[..., Any]]:
        if self.device != "cuda":
            return {}

        def timer(fn: Callable[[], Any]) -> float:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))

        return {"sync": torch.cuda.synchronize, "timer": timer}

    def _time(self, fn: Callable[[], Any]) -> LatencyStats:
        with torch.inference_mode():
            return self._timed(fn, **self._timing_kwargs())

    def time_layer(self, shape: LayerShape, cin: int, cout: int, in_repeat: int = 1) -> LatencyStats:
        dev, dt = self.device, self._tdtype
        if shape.kind == "linear":
            features = cin * max(int(in_repeat), 1)
            x = torch.randn(shape.batch, features, device=dev, dtype=dt)
            ws = itertools.cycle(self._weights(cout, features))
            b = torch.randn(cout, device=dev, dtype=dt) if shape.bias else None
            return self._time(lambda: F.linear(x, next(ws), b))
        if shape.kind != "conv2d":
            raise ValueError(f"cannot time a layer of kind {shape.kind!r}; expected 'conv2d' or 'linear'")
        groups = conv_groups(shape, cin, cout)
        if shape.depthwise:
            cin = cout
        if cin % groups or cout % groups:
            raise ValueError(f"channels {cin}->{cout} are not divisible by the conv's {groups} groups")
        kh, kw = shape.kernel
        x = torch.randn(shape.batch, cin, *shape.in_hw, device=dev, dtype=dt)
        ws = itertools.cycle(self._weights(cout, cin // groups, kh, kw))
        b = torch.randn(cout, device=dev, dtype=dt) if shape.bias else None
        stride, padding, dilation = shape.stride, shape.padding, shape.dilation
        return self._time(lambda: F.conv2d(x, next(ws), b, stride, padding, dilation, groups))

    def time_op(self, kind: str, batch: int, channels: int, hw: tuple[int, int]) -> LatencyStats:
        module, inputs = op_module(kind, batch, channels, hw, self._tdtype, self.device)
        return self._time(lambda: module(*inputs))

    def _prepare(self, model: nn.Module) -> nn.Module:
        params = list(model.parameters()) + list(model.buffers())
        on_target = all(p.device.type == self.device for p in params) and all(
            p.dtype == self._tdtype for p in params if p.is_floating_point()
        )
        if on_target:
            return model
        return copy.deepcopy(model).to(device=self.device, dtype=self._tdtype)

    def time_models(
        self, models: Sequence[nn.Module], example_inputs: Any, rounds: int = 5
    ) -> list[LatencyStats]:
        inputs = tuple(t.to(device=self.device, dtype=self._tdtype if t.is_floating_point() else t.dtype)
                       for t in as_inputs(example_inputs))
        ready = [self._prepare(m) for m in models]
        flags = [{n: m.training for n, m in r.named_modules()} for r in ready]
        for r in ready:
            r.eval()
        try:
            fns = [(lambda r=r: r(*inputs)) for r in ready]
            with torch.inference_mode():
                return time_interleaved(fns, self.settings, rounds=rounds, **self._timing_kwargs())
        finally:
            for r, f in zip(ready, flags):
                for n, m in r.named_modules():
                    m.train(f[n])


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime, CPU execution provider, float32; ``intra_op_num_threads`` = ``threads``."""

    name = "onnxruntime"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.dtype != "float32":
            raise ValueError(f"backend 'onnxruntime' measures float32 only, got dtype {self.dtype!r}")
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise ValueError("backend 'onnxruntime' needs `pip install halp[onnx]`") from exc

    def device_name(self) -> str:
        return cpu_model_name()

    def session_options(self) -> Any:
        """The ``onnxruntime.SessionOptions`` every session of this backend runs with."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        return opts

    def _session(self, model: bytes | str) -> Any:
        import onnxruntime as ort

        return ort.InferenceSession(model, sess_options=self.session_options(), providers=["CPUExecutionProvider"])

    def time_layer(self, shape: LayerShape, cin: int, cout: int, in_repeat: int = 1) -> LatencyStats:
        data, name, x = single_layer_model(shape, cin, cout, in_repeat)
        sess = self._session(data)
        feed = {name: x}
        return self._timed(lambda: sess.run(None, feed))

    def _export_sessions(self, modules: Sequence[nn.Module], inputs: tuple[torch.Tensor, ...]) -> list[Any]:
        from halp.export import export_onnx

        sessions = []
        with tempfile.TemporaryDirectory(prefix="halp-ort-") as tmp:
            for i, module in enumerate(modules):
                path = export_onnx(module, inputs, Path(tmp) / f"m{i}.onnx")
                sessions.append(self._session(str(path)))
        return sessions

    def _feed(self, sess: Any, inputs: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
        names = [i.name for i in sess.get_inputs()]
        arrays = [t.detach().cpu().float().numpy() for t in inputs]
        if len(names) != len(arrays):  # constant-folded inputs are dropped by the exporter
            arrays = arrays[: len(names)]
        return dict(zip(names, arrays))

    def time_op(self, kind: str, batch: int, channels: int, hw: tuple[int, int]) -> LatencyStats:
        module, inputs = op_module(kind, batch, channels, hw, torch.float32, "cpu")
        (sess,) = self._export_sessions([module], inputs)
        feed = self._feed(sess, inputs)
        return self._timed(lambda: sess.run(None, feed))

    def time_models(
        self, models: Sequence[nn.Module], example_inputs: Any, rounds: int = 5
    ) -> list[LatencyStats]:
        inputs = tuple(t.detach().cpu() for t in as_inputs(example_inputs))
        cpu_models = [
            m
            if all(p.device.type == "cpu" and p.dtype == torch.float32 for p in m.parameters())
            else copy.deepcopy(m).to(device="cpu", dtype=torch.float32)
            for m in models
        ]
        sessions = self._export_sessions(cpu_models, inputs)
        fns = [(lambda s=s, f=self._feed(s, inputs): s.run(None, f)) for s in sessions]
        return time_interleaved(fns, self.settings, rounds=rounds)


def get_backend(
    backend: str | Backend,
    *,
    dtype: str = "float32",
    threads: int | None = None,
    settings: TimingSettings | None = None,
    calibration_data: Any = None,
) -> Backend:
    """A backend by name (one of :data:`BACKENDS`); a :class:`Backend` passes through.

    ``calibration_data`` (example batches) quantizes whole networks on the INT8 backends
    (``onnxruntime-int8``, ``openvino-int8``; None: the example inputs) and is refused elsewhere.
    """
    if isinstance(backend, Backend):
        return backend
    if calibration_data is not None and backend not in ("onnxruntime-int8", "openvino-int8"):
        raise ValueError(f"calibration_data quantizes networks for the INT8 backends; backend {backend!r} "
                         "runs float models: drop calibration_data or choose 'onnxruntime-int8' / 'openvino-int8'")
    if backend == "torch-cpu":
        return TorchBackend("cpu", dtype=dtype, threads=threads, settings=settings)
    if backend == "torch-cuda":
        return TorchBackend("cuda", dtype=dtype, threads=threads, settings=settings)
    if backend == "onnxruntime":
        return OnnxRuntimeBackend(dtype=dtype, threads=threads, settings=settings)
    if backend == "onnxruntime-int8":
        from halp.latency.int8 import OnnxRuntimeInt8Backend

        return OnnxRuntimeInt8Backend(dtype=dtype, threads=threads, settings=settings, calibration_data=calibration_data)
    if backend in ("openvino", "openvino-int8"):
        from halp.latency.openvino_backend import OpenVinoBackend, OpenVinoInt8Backend

        if backend == "openvino":
            return OpenVinoBackend(dtype=dtype, threads=threads, settings=settings)
        return OpenVinoInt8Backend(dtype=dtype, threads=threads, settings=settings, calibration_data=calibration_data)
    raise ValueError(f"unknown latency backend {backend!r}; choose one of {', '.join(BACKENDS)}")
