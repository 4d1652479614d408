"""Built-in handlers for per-element ops: activations, arithmetic, pooling, resampling, padding.

These ops keep every channel separate, so pruning a channel upstream removes exactly that channel
downstream. Element-wise ops between several tensors additionally *couple* their channel axes (a
residual sum: all branches lose the same channels). Broadcasting is read from the real shapes:
``x * s`` with ``s`` of shape ``(N, C, 1, 1)`` couples ``x`` with ``s`` (squeeze-excitation), while a
``(N, 1, H, W)`` map broadcast across channels freezes its single channel.
"""

from __future__ import annotations

import operator
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .handlers import ConstVal, Handler, OpContext, TensorVal, Value, register_handler


# -- generic handlers (also behind the string kinds of register_handler) -------------------------
def passthrough(other_kind: str | None = None) -> Handler:
    """Output channels are the first tensor input's channels, one to one."""

    def handler(ctx: OpContext) -> Value | None:
        tensors = ctx.tensors()
        if not tensors:
            raise ValueError(f"{ctx.describe()} has no tensor input to pass channels through")
        out = ctx.passthrough(tensors[0])
        if other_kind:
            ctx.other(other_kind, tensors[0], out)
        return out

    return handler


def elementwise(other_kind: str | None = None) -> Handler:
    """Inputs broadcast against each other; those spanning the output's channel axis are coupled."""

    def handler(ctx: OpContext) -> Value | None:
        out_shape = ctx.out_shape
        n = len(out_shape)
        vals = ctx.values()
        if n < 2:
            return ctx.output(None)
        width = out_shape[1]
        aligned: list[TensorVal] = []
        params: list[tuple[ConstVal, int]] = []
        for arg, v in vals:
            k = len(v.shape)
            d = 1 - (n - k)  # the input's dim lying on the output's channel axis
            size = v.shape[d] if d >= 0 else 1
            if isinstance(v, ConstVal):
                if d >= 0 and size == width:
                    params.append((v, d))
                continue
            if d == 1 and size == width:
                aligned.append(v)
                continue
            if v.chan is not None and not (d == 1 and size == 1 and width == 1):
                ctx.fix(v, f"{ctx.describe()} broadcasts a tensor of shape {tuple(v.shape)} against "
                        f"{tuple(out_shape)}, so its channels do not map onto the output's channels")
        if aligned:
            for v in aligned[1:]:
                ctx.equate(aligned[0], v)
            out = ctx.output(aligned[0].chan)
        else:
            out = ctx.fixed_output(f"{ctx.describe()} builds its channels by broadcasting")
        for v, d in params:
            ctx.member(v.owner, "param", out, attr=v.attr, dim=d)
        if other_kind:
            first = aligned[0] if aligned else out
            ctx.other(other_kind, first, out)
        return out

    return handler


def opaque(other_kind: str | None = None) -> Handler:
    """Freeze the channels of every input and output: the op's channel semantics are unknown."""

    def handler(ctx: OpContext) -> Value | None:
        out = ctx.opaque(f"{ctx.describe()} is registered as opaque")
        tensors = ctx.tensors()
        if other_kind and tensors and isinstance(out, TensorVal):
            ctx.other(other_kind, tensors[0], out)
        return out

    return handler


def _fixed_through(reason: str, other_kind: str | None) -> Handler:
    """Channels stay in place but every value depends on all of them (normalising across channels)."""

    def handler(ctx: OpContext) -> Value | None:
        x = ctx.tensors()[0]
        ctx.fix(x, f"{ctx.describe()} {reason}")
        out = ctx.passthrough(x)
        if other_kind:
            ctx.other(other_kind, x, out)
        return out

    return handler


def _norm_dim(dim: Any, ndim: int) -> Any:
    if isinstance(dim, int):
        return dim + ndim if dim < 0 else dim
    return dim


def _softmax(ctx: OpContext) -> Value | None:
    x = ctx.tensors()[0]
    dim = ctx.module.dim if ctx.module is not None else ctx.arg(1, "dim")
    if dim is None or _norm_dim(dim, len(x.shape)) == 1:
        ctx.fix(x, f"{ctx.describe()} normalises across channels")
    out = ctx.passthrough(x)
    ctx.other("softmax", x, out)
    return out


def _glu(ctx: OpContext) -> Value | None:
    """``glu(x, dim)``: the two halves of ``dim`` multiply; along channels they are coupled."""
    x = ctx.tensors()[0]
    dim = ctx.module.dim if ctx.module is not None else ctx.arg(1, "dim", -1)
    if _norm_dim(dim, len(x.shape)) != 1 or x.chan is None:
        return passthrough("glu")(ctx)
    from .channels import slice_chan

    half = x.shape[1] // 2
    a, b = slice_chan(x.chan, 0, half), slice_chan(x.chan, half, 2 * half)
    if a is None or b is None:
        return ctx.opaque(f"{ctx.describe()} splits a flattened channel")
    ta, tb = TensorVal(ctx.out_shape, x.dtype, a), TensorVal(ctx.out_shape, x.dtype, b)
    ctx.equate(ta, tb)
    out = ctx.output(a)
    ctx.other("glu", x, out)
    return out


def _prelu(ctx: OpContext) -> Value | None:
    x = ctx.tensors()[0]
    out = ctx.passthrough(x)
    if ctx.module.num_parameters > 1 and out.chan is not None:
        ctx.member(ctx.name, "param", out, attr="weight", dim=0)
    ctx.other("prelu", x, out)
    return out


def _pad(ctx: OpContext) -> Value | None:
    x = ctx.tensors()[0]
    pad = ctx.module.padding if ctx.module is not None else ctx.arg(1, "pad")
    if isinstance(pad, int):  # a module padding every spatial side alike
        padded_dims = 2 if isinstance(ctx.module, (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d,
                                                   nn.ReplicationPad2d)) else 1
    else:
        padded_dims = len(pad) // 2
    if len(x.shape) - padded_dims <= 1:
        return ctx.opaque(f"{ctx.describe()} pads the channel axis")
    out = ctx.passthrough(x)
    ctx.other("pad", x, out)
    return out


def _kind_of(name: str) -> str:
    return name.rstrip("_").lower()


# -- registration --------------------------------------------------------------------------------
_ACT_MODULES: dict[type, str] = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.LeakyReLU: "leaky_relu", nn.ELU: "elu", nn.SELU: "selu",
    nn.CELU: "celu", nn.GELU: "gelu", nn.SiLU: "silu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh",
    nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid", nn.Hardtanh: "hardtanh", nn.Mish: "mish",
    nn.Softplus: "softplus", nn.Softsign: "softsign", nn.Tanhshrink: "tanhshrink",
    nn.LogSigmoid: "logsigmoid", nn.Threshold: "threshold", nn.RReLU: "rrelu",
    nn.Hardshrink: "hardshrink", nn.Softshrink: "softshrink",
}
_POOL_MODULES: dict[type, str] = {
    nn.MaxPool1d: "maxpool", nn.MaxPool2d: "maxpool", nn.AvgPool1d: "avgpool", nn.AvgPool2d: "avgpool",
    nn.AdaptiveAvgPool1d: "adaptive_avgpool", nn.AdaptiveAvgPool2d: "adaptive_avgpool",
    nn.AdaptiveMaxPool1d: "adaptive_maxpool", nn.AdaptiveMaxPool2d: "adaptive_maxpool",
    nn.LPPool2d: "lppool", nn.Upsample: "upsample", nn.UpsamplingNearest2d: "upsample",
    nn.UpsamplingBilinear2d: "upsample",
}
_FREE_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                 nn.FeatureAlphaDropout)

_ACT_FUNCTIONS: list[Callable[..., Any]] = [
    F.relu, F.relu_, F.relu6, F.leaky_relu, F.leaky_relu_, F.elu, F.elu_, F.selu, F.celu, F.gelu, F.silu,
    F.sigmoid, F.tanh, F.hardswish, F.hardsigmoid, F.hardtanh, F.hardtanh_, F.mish, F.softplus,
    F.softsign, F.tanhshrink, F.logsigmoid, F.threshold, F.rrelu, F.hardshrink, F.softshrink,
    torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.selu, torch.celu, torch.rrelu,
    torch.abs, torch.neg, torch.exp, torch.log, torch.sqrt, torch.rsqrt, torch.square, torch.sign,
    torch.clamp, torch.clip, torch.reciprocal, torch.erf, torch.sin, torch.cos, torch.floor,
    torch.round, torch.ceil, torch.nn.functional.silu, operator.neg, operator.pos, operator.abs,
]
_ACT_METHODS = [
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "abs", "neg", "exp", "log", "sqrt",
    "rsqrt", "square", "sign", "clamp", "clamp_", "clip", "reciprocal", "erf", "floor", "round", "ceil",
    "pow", "sin", "cos", "hardswish", "silu",
]
_BINARY = {
    operator.add: "add", operator.iadd: "add", operator.sub: "sub", operator.isub: "sub",
    operator.mul: "mul", operator.imul: "mul", operator.truediv: "div", operator.itruediv: "div",
    operator.floordiv: "div", operator.pow: "pow", torch.add: "add", torch.sub: "sub",
    torch.subtract: "sub", torch.mul: "mul", torch.multiply: "mul", torch.div: "div",
    torch.divide: "div", torch.true_divide: "div", torch.maximum: "max", torch.minimum: "min",
    torch.where: "where", torch.lerp: "lerp", torch.pow: "pow", torch.fmax: "max", torch.fmin: "min",
    torch.addcmul: "addcmul",
}
_BINARY_METHODS = {
    "add": "add", "add_": "add", "sub": "sub", "sub_": "sub", "mul": "mul", "mul_": "mul", "div": "div",
    "div_": "div", "maximum": "max", "minimum": "min", "where": "where", "lerp": "lerp",
    "__add__": "add", "__radd__": "add", "__mul__": "mul", "__rmul__": "mul", "__sub__": "sub",
}
_POOL_FUNCTIONS = {
    F.max_pool1d: "maxpool", F.max_pool2d: "maxpool", F.avg_pool1d: "avgpool", F.avg_pool2d: "avgpool",
    F.adaptive_avg_pool1d: "adaptive_avgpool", F.adaptive_avg_pool2d: "adaptive_avgpool",
    F.adaptive_max_pool1d: "adaptive_maxpool", F.adaptive_max_pool2d: "adaptive_maxpool",
    F.lp_pool2d: "lppool", F.interpolate: "upsample", F.upsample: "upsample",
    F.upsample_nearest: "upsample", F.upsample_bilinear: "upsample", torch.max_pool2d: "maxpool",
    torch.avg_pool1d: "avgpool", torch.adaptive_avg_pool1d: "adaptive_avgpool",
}
_FREE_FUNCTIONS = [F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
                   F.feature_alpha_dropout, torch.clone, torch.detach]
_FREE_METHODS = ["contiguous", "clone", "detach", "to", "float", "double", "half", "bfloat16", "type",
                 "type_as", "cpu", "cuda", "requires_grad_"]


def _register_all() -> None:
    for cls, kind in {**_ACT_MODULES, **_POOL_MODULES}.items():
        register_handler(cls, passthrough(kind))
    for cls in _FREE_MODULES:
        register_handler(cls, passthrough(None))
    for fn in _ACT_FUNCTIONS:
        register_handler(fn, elementwise(_kind_of(getattr(fn, "__name__", "op"))))
    for name in _ACT_METHODS:
        register_handler(name, elementwise(_kind_of(name)))
    for fn, kind in _BINARY.items():
        register_handler(fn, elementwise(kind))
    for name, kind in _BINARY_METHODS.items():
        register_handler(name, elementwise(kind))
    for fn, kind in _POOL_FUNCTIONS.items():
        register_handler(fn, passthrough(kind))
    for fn in _FREE_FUNCTIONS:
        register_handler(fn, passthrough(None))
    for name in _FREE_METHODS:
        register_handler(name, passthrough(None))
    for target in (nn.Softmax, nn.LogSoftmax, nn.Softmin, F.softmax, F.log_softmax, F.softmin,
                   torch.softmax, torch.log_softmax, "softmax", "log_softmax"):
        register_handler(target, _softmax)
    for target in (nn.GLU, F.glu):
        register_handler(target, _glu)
    register_handler(nn.PReLU, _prelu)
    for target in (nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ReflectionPad1d,
                   nn.ReflectionPad2d, nn.ReplicationPad1d, nn.ReplicationPad2d, F.pad):
        register_handler(target, _pad)
    register_handler(nn.PixelShuffle, opaque("pixel_shuffle"))
    register_handler(nn.PixelUnshuffle, opaque("pixel_unshuffle"))
    register_handler(nn.ChannelShuffle, opaque("channel_shuffle"))
    register_handler(F.normalize, _fixed_through("normalises across an axis", "normalize"))
    register_handler(nn.LocalResponseNorm, _fixed_through("mixes neighbouring channels", "lrn"))
    register_handler(F.local_response_norm, _fixed_through("mixes neighbouring channels", "lrn"))


_register_all()
