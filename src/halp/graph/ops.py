"""Built-in handlers for per-element ATen ops: activations, arithmetic, pooling, resampling, padding,
reductions, softmax.

These ops keep every channel separate, so pruning a channel upstream removes exactly that channel
downstream; element-wise ops between several tensors also *couple* their channel axes (a residual sum:
all branches lose the same channels). Ops that mix channels (a softmax or a reduction over them, a pool
whose window covers the channel axis) freeze them.
"""

from __future__ import annotations

import operator
from typing import Any

import torch

from .context import OpContext, ParamVal, TensorVal, Value, norm_dim
from .generic import elementwise, opaque, passthrough
from .handlers import register_handler

aten = torch.ops.aten


def _first(ctx: OpContext) -> TensorVal:
    x = ctx.tensor(ctx.arg(0))
    if x is None:
        raise ValueError(f"{ctx.describe()} was called without a tensor input")
    return x


def _spatial(n_spatial: int, kind: str | None) -> Any:
    """Pools, resampling: the last ``n_spatial`` axes change, every other axis keeps its channels."""

    def handler(ctx: OpContext) -> Value | None:
        x = _first(ctx)
        if x.chan is not None and x.axis >= len(x.shape) - n_spatial:
            return ctx.opaque(f"{ctx.describe()} works along the channel axis")
        out = ctx.map_outputs(lambda m: ctx.output(x.chan, x.axis, m) if len(m.shape) == len(x.shape)
                              else ctx.untracked(m))
        first = out.items[0] if hasattr(out, "items") else out
        if kind and isinstance(first, TensorVal):
            ctx.other(kind, x, first)
        return out

    return handler


def _pad(ctx: OpContext) -> Value | None:
    x = _first(ctx)
    pad = ctx.arg(1, "pad") or ctx.arg(1, "padding") or []
    padded = len(pad) // 2
    if x.chan is not None and x.axis >= len(x.shape) - padded:
        return ctx.opaque(f"{ctx.describe()} pads the channel axis")
    out = ctx.passthrough(x)
    ctx.other("pad", x, out)
    return out


def _dims(ctx: OpContext, index: int, ndim: int) -> set[int]:
    dims = ctx.arg(index, "dim")
    if dims is None or dims == []:
        return set(range(ndim))
    dims = dims if isinstance(dims, (list, tuple)) else [dims]
    return {norm_dim(int(d), ndim) for d in dims}


def _reduce(kind: str, dim_index: int = 1, keepdim_index: int = 2) -> Any:
    """mean/sum/amax ...: reducing other axes keeps the channels; reducing the channel axis freezes them."""

    def handler(ctx: OpContext) -> Value | None:
        p = ctx.param(ctx.arg(0))
        if p is not None:
            return _reduce_param(ctx, p, _dims(ctx, dim_index, len(p.shape)))
        x = _first(ctx)
        meta = ctx.out_meta
        ndim = len(x.shape)
        dims = _dims(ctx, dim_index, ndim)
        if x.chan is None:
            return ctx.map_outputs(lambda m: ctx.untracked(m))
        if x.axis in dims:
            ctx.fix(x, f"{ctx.describe()} reduces over the channel axis")
            return ctx.map_outputs(lambda m: ctx.untracked(m))
        first = meta if hasattr(meta, "shape") else meta[0]
        keep = len(first.shape) == ndim
        axis = x.axis if keep else x.axis - sum(1 for d in dims if d < x.axis)
        out = ctx.map_outputs(lambda m: ctx.output(x.chan, axis, m))
        if isinstance(out, TensorVal):
            ctx.other(kind, x, out)
        return out

    return handler


def _reduce_param(ctx: OpContext, p: ParamVal, dims: set[int]) -> Value | None:
    """A reduction of parameters (weight norm's ``v.norm(dim=(1, 2, 3))``): kept axes still map."""
    meta = ctx.out_meta
    if not hasattr(meta, "shape"):
        return ctx.map_outputs(lambda m: ctx.untracked(m))
    keep = len(meta.shape) == len(p.shape)
    refs = []
    for fqn, d in p.refs:
        new = [None if i in dims else d[i] for i in range(len(p.shape))]
        refs.append((fqn, tuple(new if keep else [v for i, v in enumerate(new) if i not in dims])))
    return ParamVal(tuple(int(s) for s in meta.shape), meta.dtype, tuple(refs))


def _softmax(ctx: OpContext) -> Value | None:
    x = _first(ctx)
    dim = norm_dim(int(ctx.arg(1, "dim")), len(x.shape))
    if x.chan is not None and dim == x.axis:
        ctx.fix(x, f"{ctx.describe()} normalises across channels")
    out = ctx.passthrough(x)
    ctx.other("softmax", x, out)
    return out


def _glu(ctx: OpContext) -> Value | None:
    """``glu(x, dim)``: the two halves of ``dim`` multiply; along channels they are coupled."""
    from .channels import slice_chan

    x = _first(ctx)
    dim = norm_dim(int(ctx.arg(1, "dim", -1)), len(x.shape))
    if x.chan is None or dim != x.axis:
        return passthrough("glu")(ctx)
    half = x.shape[dim] // 2
    a, b = slice_chan(x.chan, 0, half), slice_chan(x.chan, half, 2 * half)
    if a is None or b is None:
        return ctx.opaque(f"{ctx.describe()} splits a flattened channel")
    shape = ctx.out_shape
    ctx.equate(TensorVal(shape, x.dtype, a, dim), TensorVal(shape, x.dtype, b, dim))
    out = ctx.output(a, dim)
    ctx.other("glu", x, out)
    return out


def _prelu(ctx: OpContext) -> Value | None:
    x = _first(ctx)
    out = ctx.passthrough(x)
    w = ctx.param(ctx.arg(1, "weight"))
    if out.chan is not None and w is not None and w.shape and w.shape[0] > 1:
        if out.axis != 1 or not ctx.param_members(w, 0, out):
            ctx.fix(out, f"{ctx.describe()} has per-channel slopes that cannot follow the channels")
    ctx.other("prelu", x, out)
    return out


def _to_untracked(ctx: OpContext) -> Value | None:
    """Ops that make a tensor of another's shape but not of its values (zeros_like, full_like ...)."""
    return ctx.map_outputs(lambda m: ctx.untracked(m))


_UNARY = [
    "relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "selu_", "celu", "celu_",
    "gelu", "gelu_", "silu", "silu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "hardswish", "hardswish_",
    "hardsigmoid", "hardsigmoid_", "hardtanh", "hardtanh_", "mish", "mish_", "softplus", "log_sigmoid",
    "abs", "neg", "exp", "log", "sqrt", "rsqrt", "square", "sign", "clamp", "clamp_", "clamp_min",
    "clamp_min_", "clamp_max", "clamp_max_", "clip", "clip_", "reciprocal", "erf", "sin", "cos", "floor",
    "round", "ceil", "pow", "pow_", "threshold", "hardshrink", "softshrink", "logit", "erfinv", "tan",
    "exp2", "expm1", "log1p", "log2", "log10", "frac", "trunc", "bitwise_not", "logical_not", "nan_to_num",
    "alpha_dropout", "feature_alpha_dropout", "relu6_",
]
_BINARY = {
    "add": "add", "add_": "add", "sub": "sub", "sub_": "sub", "rsub": "sub", "mul": "mul", "mul_": "mul",
    "div": "div", "div_": "div", "true_divide": "div", "floor_divide": "div", "remainder": "div",
    "fmod": "div", "maximum": "max", "minimum": "min", "fmax": "max", "fmin": "min", "where": "where",
    "lerp": "lerp", "addcmul": "addcmul", "addcdiv": "addcmul", "masked_fill": "where",
    "masked_fill_": "where", "eq": None, "ne": None, "gt": None, "ge": None, "lt": None, "le": None,
    "logical_and": None, "logical_or": None, "bitwise_and": None, "bitwise_or": None, "atan2": "div",
    "copysign": "mul", "hypot": "add", "xlogy": "mul", "pow": "pow",
}
_FREE = [
    "clone", "contiguous", "detach", "alias", "lift_fresh_copy", "_to_copy", "to", "type_as",
    "dropout", "dropout_", "native_dropout", "feature_dropout", "feature_dropout_", "_assert_tensor_metadata",
    "requires_grad_", "_assert_async",
]
_POOL2D = {
    "max_pool2d": "maxpool", "max_pool2d_with_indices": "maxpool", "avg_pool2d": "avgpool",
    "adaptive_avg_pool2d": "adaptive_avgpool", "_adaptive_avg_pool2d": "adaptive_avgpool",
    "adaptive_max_pool2d": "adaptive_maxpool", "lp_pool2d": "lppool", "upsample_nearest2d": "upsample",
    "upsample_bilinear2d": "upsample", "upsample_bicubic2d": "upsample", "_upsample_nearest_exact2d": "upsample",
    "_upsample_bilinear2d_aa": "upsample", "fractional_max_pool2d": "maxpool",
    "reflection_pad2d": "pad", "replication_pad2d": "pad",
}
_POOL1D = {
    "max_pool1d": "maxpool", "avg_pool1d": "avgpool", "adaptive_avg_pool1d": "adaptive_avgpool",
    "adaptive_max_pool1d": "adaptive_maxpool", "upsample_nearest1d": "upsample", "upsample_linear1d": "upsample",
    "reflection_pad1d": "pad", "replication_pad1d": "pad",
}
_REDUCE = ["mean", "sum", "amax", "amin", "std", "var", "logsumexp", "prod", "norm", "nansum", "nanmean",
           "argmax", "argmin", "linalg_vector_norm", "any", "all"]
_LIKE = ["zeros_like", "ones_like", "full_like", "empty_like", "rand_like", "randn_like", "new_zeros",
         "new_ones", "new_full", "new_empty", "scalar_tensor", "zeros", "ones", "full", "arange", "empty",
         "rand", "randn", "linspace", "eye"]


def _op(name: str) -> Any:
    return getattr(aten, name, None)


def _register_all() -> None:
    for name in _UNARY:
        if _op(name) is not None:
            register_handler(_op(name), elementwise(name.rstrip("_").lower()))
    for name, kind in _BINARY.items():
        if _op(name) is not None:
            register_handler(_op(name), elementwise(kind))
    for name in _FREE:
        if _op(name) is not None:
            register_handler(_op(name), passthrough(None))
    for table, n in ((_POOL2D, 2), (_POOL1D, 1)):
        for name, kind in table.items():
            if _op(name) is not None:
                register_handler(_op(name), _spatial(n, kind))
    for name in ("max_pool3d", "avg_pool3d", "adaptive_avg_pool3d", "upsample_nearest3d", "upsample_trilinear3d"):
        if _op(name) is not None:
            register_handler(_op(name), _spatial(3, None))
    for name in _REDUCE:
        if _op(name) is not None:
            if name in ("norm", "linalg_vector_norm"):
                register_handler(_op(name), _reduce(name, dim_index=2, keepdim_index=3))
            else:
                register_handler(_op(name), _reduce(name))
    for name in ("constant_pad_nd", "pad"):
        register_handler(_op(name), _pad)
    for name in ("softmax", "_softmax", "log_softmax", "_log_softmax", "softmin"):
        if _op(name) is not None:
            register_handler(_op(name), _softmax)
    register_handler(aten.glu, _glu)
    for name in ("prelu", "_prelu_kernel"):
        if _op(name) is not None:
            register_handler(_op(name), _prelu)
    for name in _LIKE:
        if _op(name) is not None:
            register_handler(_op(name), _to_untracked)
    for name in ("pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "native_channel_shuffle", "cumsum",
                 "cumprod", "sort", "topk", "roll", "flip"):
        if _op(name) is not None:
            register_handler(_op(name), opaque(name))
    register_handler(operator.getitem, _getitem)
    for name in ("max", "min"):
        register_handler(_op(name), _max_min(name))


def _max_min(kind: str) -> Any:
    """``max.other`` is element-wise; ``max.dim`` and ``max.default`` reduce."""
    reduce, binary = _reduce(kind), elementwise(kind)

    def handler(ctx: OpContext) -> Value | None:
        return binary(ctx) if ctx.node.target._overloadname == "other" else reduce(ctx)

    return handler


def _getitem(ctx: OpContext) -> Value | None:
    from .context import TupleVal

    base = ctx.value(ctx.arg(0))
    index = ctx.arg(1)
    if isinstance(base, TupleVal) and isinstance(index, int):
        return base.items[index]
    return ctx.opaque(f"{ctx.describe()} indexes a value the graph does not track")


_register_all()
