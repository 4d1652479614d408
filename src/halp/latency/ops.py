"""Stand-alone versions of the non-conv ops of a network, for timing.

A network's latency is not just its convolutions: BatchNorm, activations, residual adds, pooling and
concatenations cost time that scales with the channel volume they touch, plus a fixed per-call
overhead. The profiler times each op *kind* that a graph contains on representative shapes taken from
that graph; this module builds those ops as tiny modules (so every backend, ONNX Runtime included via
export, can run them) from an :class:`~halp.graph.types.OtherOp`-like description.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

_UNARY: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "relu6": lambda: nn.ReLU6(inplace=True),
    "hardswish": nn.Hardswish,
    "hardsigmoid": nn.Hardsigmoid,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "hardtanh": nn.Hardtanh,
    "softplus": nn.Softplus,
    "mish": nn.Mish,
    "selu": nn.SELU,
    "celu": nn.CELU,
    "prelu": nn.PReLU,
    "softmax": lambda: nn.Softmax(dim=1),
    "dropout": nn.Identity,
    "identity": nn.Identity,
}


class _Binary(nn.Module):
    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.op == "add":
            return a + b
        if self.op == "sub":
            return a - b
        if self.op == "mul":
            return a * b
        if self.op == "max":
            return torch.maximum(a, b)
        if self.op == "min":
            return torch.minimum(a, b)
        return a / b


class _Cat(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, b], dim=1)


class _Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, 1)


class _MaxPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, 3, 2, 1)


class _AdaptivePool(nn.Module):
    def __init__(self, out_hw: tuple[int, int], kind: str) -> None:
        super().__init__()
        self.out_hw = out_hw
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "max":
            return F.adaptive_max_pool2d(x, self.out_hw)
        return F.adaptive_avg_pool2d(x, self.out_hw)


class _Upsample(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest")


class _Pad(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (1, 1, 1, 1))


#: op kinds with a dedicated recipe; anything else is timed as a generic elementwise op (with a warning)
KNOWN_KINDS: frozenset[str] = frozenset(
    set(_UNARY)
    | {"batchnorm", "instancenorm", "groupnorm", "add", "sub", "mul", "div", "max", "min", "cat", "maxpool",
       "avgpool", "adaptive_avgpool", "adaptive_maxpool", "upsample", "pad", "flatten"}
)
GENERIC_KIND = "elementwise"
_warned: set[str] = set()


def canonical_kind(kind: str) -> str:
    """The recipe an op kind is timed with: itself when known, else the generic elementwise op."""
    k = kind.lower()
    if k in KNOWN_KINDS:
        return k
    if k not in _warned:
        _warned.add(k)
        logger.warning(
            "no timing recipe for op kind %r; modelling it as a generic elementwise op of the same volume",
            kind,
        )
    return GENERIC_KIND


def op_module(
    kind: str, batch: int, channels: int, hw: tuple[int, int], dtype: torch.dtype, device: str
) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A module and inputs that do what an op of ``kind`` does on a ``(batch, channels, *hw)`` output.

    Pools get an input larger than ``hw`` because their cost follows the input: a max or average pool
    reads ``2·hw`` (the ResNet stem's 3x3/2), an adaptive pool to 1x1 reads a 7x7 map (the usual
    ImageNet case; other sizes ``2·hw``), an upsample reads ``hw/2``.
    """
    k = canonical_kind(kind)
    h, w = int(hw[0]), int(hw[1])
    c = max(int(channels), 1)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, dtype=dtype, device=device)

    module: nn.Module
    if k == "batchnorm":
        module = nn.BatchNorm2d(c).eval()
        with torch.no_grad():
            module.running_var.uniform_(0.5, 1.5)
        inputs: tuple[torch.Tensor, ...] = (rand(batch, c, h, w),)
    elif k == "instancenorm":
        module = nn.InstanceNorm2d(c, affine=True)
        inputs = (rand(batch, c, h, w),)
    elif k == "groupnorm":
        module = nn.GroupNorm(next(g for g in (32, 16, 8, 4, 2, 1) if c % g == 0), c)
        inputs = (rand(batch, c, h, w),)
    elif k in ("add", "sub", "mul", "div", "max", "min"):
        module = _Binary(k)
        inputs = (rand(batch, c, h, w), rand(batch, c, h, w) + (3.0 if k == "div" else 0.0))
    elif k == "cat":
        module = _Cat()
        half = max(c // 2, 1)
        inputs = (rand(batch, half, h, w), rand(batch, max(c - half, 1), h, w))
    elif k == "maxpool":
        module = _MaxPool()
        inputs = (rand(batch, c, 2 * h, 2 * w),)
    elif k == "avgpool":
        module = nn.AvgPool2d(2)
        inputs = (rand(batch, c, 2 * h, 2 * w),)
    elif k in ("adaptive_avgpool", "adaptive_maxpool"):
        module = _AdaptivePool((h, w), "max" if k == "adaptive_maxpool" else "avg")
        f = 7 if (h, w) == (1, 1) else 2
        inputs = (rand(batch, c, f * h, f * w),)
    elif k == "upsample":
        module = _Upsample()
        inputs = (rand(batch, c, max(h // 2, 1), max(w // 2, 1)),)
    elif k == "pad":
        module = _Pad()
        inputs = (rand(batch, c, max(h - 2, 1), max(w - 2, 1)),)
    elif k == "flatten":
        module = _Flatten()
        inputs = (rand(batch, c, h, w),)
    elif k in _UNARY:
        module = _UNARY[k]()
        inputs = (rand(batch, c, h, w),)
    else:  # generic elementwise
        module = nn.ReLU()
        inputs = (rand(batch, c, h, w),)
    return module.to(device=device, dtype=dtype).eval(), inputs
