"""Built-in handlers for ATen ops with per-channel parameters: convolution, linear, the norms, and
products of activations (attention).

A conv or linear whose weight is a module's parameter *starts* a channel source (its output) and
*consumes* its input's channels (dim 1 of the weight). A depthwise conv (groups == in == out) keeps its
input's channels, so it joins that group. Other grouped convs are recorded so that the builder attaches
the per-conv-group balance constraint to the groups on both sides. A conv whose weight is computed in
``forward`` (weight standardisation) is timed but its channels are frozen: the computation may mix them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from .context import OpContext, ParamVal, TensorVal, TupleVal, Value
from .handlers import register_handler
from .types import LayerShape

aten = torch.ops.aten


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _pair(v: Any, default: int) -> tuple[int, int]:
    if v is None:
        return (default, default)
    if isinstance(v, int):
        return (v, v)
    v = list(v)
    return (int(v[0]), int(v[-1])) if v else (default, default)


def direct_param(ctx: OpContext, arg: Any) -> tuple[str, str, nn.Module | None, ParamVal] | None:
    """(owner module name, attribute, owner, value) when ``arg`` is a parameter read as it is stored."""
    p = ctx.param(arg)
    if p is None or len(p.refs) != 1:
        return None
    fqn, dims = p.refs[0]
    if dims != tuple(range(len(p.shape))):
        return None
    owner, attr, module = ctx.walker.module_of(fqn)
    return owner, attr, module, p


def _input_chan(ctx: OpContext, x: TensorVal, axis: int, what: str) -> TensorVal:
    """``x`` as the layer reads it: its channels when they lie on ``axis`` unrepeated, else none."""
    if x.chan is None:
        return x
    if x.axis != axis:
        ctx.fix(x, f"{what} reads its input features along another axis than the channels")
        return TensorVal(x.shape, x.dtype, None)
    return x


def conv(ctx: OpContext) -> Value | None:
    name = ctx.node.target.overloadpacket.__name__
    x = ctx.tensor(ctx.arg(0))
    out_shape = ctx.out_shape
    if name == "convolution":
        transposed = bool(ctx.arg(6))
        stride, padding, dilation, groups = ctx.arg(3), ctx.arg(4), ctx.arg(5), int(ctx.arg(8))
    else:
        transposed = False
        stride, padding, dilation, groups = ctx.arg(3), ctx.arg(4), ctx.arg(5), int(ctx.arg(6, "groups", 1))
    if x is not None and len(x.shape) == 3 and name in ("conv2d", "convolution"):
        raise ValueError(
            f"{ctx.describe()} received an input of shape {tuple(x.shape)}; build_graph needs batched "
            "(N, C, H, W) example inputs"
        )
    if x is None or len(x.shape) != 4 or transposed or name not in ("conv2d", "convolution"):
        return ctx.opaque(f"{ctx.describe()} is not a 2-D convolution the graph can prune")
    w = direct_param(ctx, ctx.arg(1))
    weight = ctx.value(ctx.arg(1))
    kernel = tuple(int(s) for s in weight.shape[2:]) if weight is not None else (1, 1)
    if isinstance(padding, str):
        pad = (0, 0) if padding == "valid" else tuple(
            d * (k - 1) // 2 for d, k in zip(_pair(dilation, 1), kernel))
    else:
        pad = _pair(padding, 0)
    cin, cout = x.shape[1], out_shape[1]
    depthwise = groups > 1 and groups == cin == cout
    shape = LayerShape(
        kind="conv2d", kernel=(kernel[0], kernel[-1]), stride=_pair(stride, 1), padding=pad,
        dilation=_pair(dilation, 1), groups=0 if depthwise else groups, in_hw=(x.shape[2], x.shape[3]),
        batch=x.shape[0], dtype=_dtype_name(x.dtype), bias=ctx.arg(2) is not None,
    )
    owner = w[0] if w is not None else ctx.name
    standard = w is not None and isinstance(w[2], nn.Conv2d) and w[1] == "weight"
    if w is None and groups == 1 and _rows_follow(weight):
        return _derived_conv(ctx, weight, x, shape, cin, cout)
    if w is None or (groups > 1 and not standard):
        out = ctx.opaque(f"{ctx.describe()} computes its weight in forward (the computation may mix channels)"
                         if w is None else f"{ctx.describe()} is a grouped conv of a {type(w[2]).__name__}")
        ctx.walker.add_layer(owner, shape, None, None, in_features=cin, out_features=cout)
        return out
    x = _input_chan(ctx, x, 1, ctx.describe())
    if x.chan is not None and any(s.repeat != 1 for s in x.chan):
        ctx.fix(x, f"{ctx.describe()} reads channels built by a reshape")
    if depthwise:
        if x.chan is None:
            out = ctx.untracked()
        else:
            ctx.member(owner, "depthwise", x)
            out = ctx.output(x.chan, 1)
        ctx.walker.add_layer(owner, shape, x if x.chan is not None else None, out if out.chan is not None else None,
                             in_features=cin, out_features=cout)
        return out
    out = ctx.output(ctx.walker.first_output(owner, cout), 1)
    _linear_members(ctx, owner, w[1], standard, out, x, bias=direct_param(ctx, ctx.arg(2)))
    if groups > 1:
        ctx.walker.add_grouped(owner, groups, x.chan, out.chan)
    ctx.walker.add_layer(owner, shape, x if x.chan is not None else None, out, in_features=cin, out_features=cout)
    return out


def _rows_follow(weight: Any) -> bool:
    """A weight computed from parameters whose output rows still map onto parameter rows."""
    return isinstance(weight, ParamVal) and len(weight.shape) == 4 and all(d[0] is not None for _, d in weight.refs)


def _derived_conv(ctx: OpContext, weight: ParamVal, x: TensorVal, shape: LayerShape, cin: int, cout: int) -> Value:
    """A conv whose weight is computed in forward row by row (weight standardisation, weight norm): its
    output channels are prunable (every parameter behind a row is sliced with it); its input channels are
    not, unless every parameter also follows the input dimension."""
    owner = ctx.walker.module_of(weight.refs[0][0])[0]
    out = ctx.output(ctx.walker.first_output(owner, cout), 1)
    ctx.param_members(weight, 0, out)
    bias = direct_param(ctx, ctx.arg(2))
    if bias is not None:
        ctx.member(bias[0], "param", out, attr=bias[1], dim=0)
    x = _input_chan(ctx, x, 1, ctx.describe())
    if x.chan is not None and (any(s.repeat != 1 for s in x.chan) or not ctx.param_members(weight, 1, x)):
        ctx.fix(x, f"{ctx.describe()} computes its weight in forward across its input channels")
        x = TensorVal(x.shape, x.dtype, None)
    ctx.walker.add_layer(owner, shape, x if x.chan is not None else None, out, in_features=cin, out_features=cout)
    return out


def _linear_members(ctx: OpContext, owner: str, attr: str, standard: bool, out: TensorVal, x: TensorVal,
                    bias: Any) -> None:
    if standard:
        ctx.member(owner, "out", out)
        if x.chan is not None:
            ctx.member(owner, "in", x)
        return
    ctx.member(owner, "param", out, attr=attr, dim=0)
    if bias is not None:
        ctx.member(bias[0], "param", out, attr=bias[1], dim=0)
    if x.chan is not None:
        ctx.member(owner, "param", x, attr=attr, dim=1)


def linear(ctx: OpContext) -> Value | None:
    x = ctx.tensor(ctx.arg(0))
    w = direct_param(ctx, ctx.arg(1))
    if x is None or len(x.shape) < 2 or w is None:
        return ctx.opaque(f"{ctx.describe()} has a weight computed in forward or a 1-D input")
    out_shape = ctx.out_shape
    last = len(x.shape) - 1
    shape = LayerShape(kind="linear", batch=math.prod(x.shape[:-1]), dtype=_dtype_name(x.dtype),
                       bias=ctx.arg(2) is not None)
    x = _input_chan(ctx, x, last, ctx.describe())
    if x.chan is not None and len({s.repeat for s in x.chan}) > 1:
        ctx.fix(x, f"{ctx.describe()} reads flattened maps of different sizes")
    owner, attr, module, _ = w
    standard = isinstance(module, nn.Linear) and attr == "weight"
    out = ctx.output(ctx.walker.first_output(owner, out_shape[-1]), last)
    _linear_members(ctx, owner, attr, standard, out, x, bias=direct_param(ctx, ctx.arg(2)))
    ctx.walker.add_layer(owner, shape, x if x.chan is not None else None, out,
                         in_features=x.shape[-1], out_features=out_shape[-1])
    return out


def _norm_members(ctx: OpContext, out: TensorVal, args: list[Any], kind: type) -> bool:
    """Per-channel norm parameters: one norm module's own (role "norm"), or any parameters (role "param")."""
    direct = [direct_param(ctx, a) for a in args if a is not None]
    if any(d is None for d in direct):
        return False
    owners = {d[0] for d in direct}
    if len(owners) == 1 and direct and isinstance(direct[0][2], kind):
        ctx.member(direct[0][0], "norm", out)
        return True
    for owner, attr, _, p in direct:
        if p.shape and p.shape[0] > 1:
            ctx.member(owner, "param", out, attr=attr, dim=0)
    return True


def batch_norm(kind: str) -> Any:
    """batch/instance norm: per-channel statistics and affine terms on dim 1."""

    def handler(ctx: OpContext) -> Value | None:
        standardised = _standardised_weight(ctx)
        if standardised is not None:
            return standardised
        x = ctx.tensor(ctx.arg(0))
        if x is None:
            return ctx.opaque(f"{ctx.describe()} has no tensor input")
        params = [ctx.arg(i) for i in range(1, 5)]
        if x.chan is not None and x.axis != 1:
            ctx.fix(x, f"{ctx.describe()} normalises along another axis than the channels")
            x = TensorVal(x.shape, x.dtype, None)
        out = ctx.map_outputs(lambda m: ctx.output(x.chan, 1, m) if len(m.shape) == len(x.shape) else ctx.untracked(m))
        first = out.items[0] if hasattr(out, "items") else out
        if x.chan is not None and not _norm_members(ctx, first, params, _NormBase):
            ctx.fix(x, f"{ctx.describe()} normalises with statistics computed in forward")
        ctx.other(kind, x, first)
        return out

    return handler


def _standardised_weight(ctx: OpContext) -> Value | None:
    """Weight standardisation (``batch_norm(weight.reshape(1, out, -1), ...)``): each output row is
    normalised on its own, so the rows still follow the parameter's output dimension (the other axes
    are mixed)."""
    p = ctx.param(ctx.arg(0))
    if p is None or len(p.shape) < 2:
        return None
    refs = [(f, tuple(d[i] if i == 1 else None for i in range(len(p.shape)))) for f, d in p.refs]
    for a in (ctx.arg(1), ctx.arg(2)):
        q = ctx.param(a)
        if q is not None and len(q.shape) == 1:
            refs += [(f, tuple(d[0] if i == 1 else None for i in range(len(p.shape)))) for f, d in q.refs]
    meta = ctx.out_meta
    first = meta if hasattr(meta, "shape") else meta[0]
    value = ParamVal(tuple(int(s) for s in first.shape), first.dtype, tuple(refs))
    if hasattr(meta, "shape"):
        return value
    return TupleVal((value,) + tuple(ctx.untracked(m) for m in meta[1:]))


def group_norm(ctx: OpContext) -> Value | None:
    x = ctx.tensor(ctx.arg(0))
    name = ctx.node.target.overloadpacket.__name__
    if name == "native_group_norm":
        groups, params = int(ctx.arg(6)), [ctx.arg(1), ctx.arg(2)]
    else:
        groups, params = int(ctx.arg(1)), [ctx.arg(2), ctx.arg(3)]
    out = ctx.map_outputs(lambda m: ctx.output(x.chan, 1, m) if len(m.shape) == len(x.shape) else ctx.untracked(m))
    first = out.items[0] if hasattr(out, "items") else out
    if x.chan is not None:
        if x.axis != 1 or groups != x.shape[1] or not _norm_members(ctx, first, params, nn.GroupNorm):
            ctx.fix(x, f"{ctx.describe()} normalises over groups of {x.shape[1] // max(groups, 1)} channels")
    ctx.other("groupnorm", x, first)
    return out


def layer_norm(ctx: OpContext) -> Value | None:
    """LayerNorm/RMSNorm normalise over the last axes: across channels when they lie there (frozen)."""
    x = ctx.tensor(ctx.arg(0))
    normalized = ctx.arg(1)
    n_norm = len(normalized) if isinstance(normalized, (list, tuple)) else 1
    if x.chan is not None and x.axis >= len(x.shape) - n_norm:
        ctx.fix(x, f"{ctx.describe()} normalises across channels")
    out = ctx.map_outputs(lambda m: ctx.output(x.chan, x.axis, m) if len(m.shape) == len(x.shape) else ctx.untracked(m))
    first = out.items[0] if hasattr(out, "items") else out
    ctx.other("layernorm", x, first)
    return out


def matmul(ctx: OpContext) -> Value | None:
    """Products of activations (attention scores, attention-weighted values).

    The contracted axis may be pruned if both sides lose the same channels (zeros add nothing);
    the free axes keep their channels.
    """
    name = ctx.node.target.overloadpacket.__name__
    first = 1 if name in ("addmm", "baddbmm", "addbmm") else 0
    a, b = ctx.value(ctx.arg(first)), ctx.value(ctx.arg(first + 1))
    if not isinstance(a, TensorVal) or not isinstance(b, TensorVal) or len(a.shape) < 2 or len(b.shape) < 2:
        return ctx.opaque(f"{ctx.describe()} multiplies by a parameter or a vector")
    na, nb = len(a.shape), len(b.shape)
    out_shape = ctx.out_shape
    out_chan, out_axis = None, -1
    if a.chan is not None and a.axis == na - 1:
        if b.chan is not None and b.axis == nb - 2:
            ctx.equate(a, TensorVal(b.shape, b.dtype, b.chan, b.axis))
        else:
            ctx.fix(a, f"{ctx.describe()} contracts the channels with values that cannot follow them")
    elif b.chan is not None and b.axis == nb - 2:
        ctx.fix(b, f"{ctx.describe()} contracts the channels with values that cannot follow them")
    if a.chan is not None and a.axis == na - 2:
        out_chan, out_axis = a.chan, len(out_shape) - 2
    elif a.chan is not None and a.axis < na - 2:
        ctx.fix(a, f"{ctx.describe()} broadcasts the channels as a batch axis")
    if b.chan is not None and b.axis == nb - 1:
        if out_chan is None:
            out_chan, out_axis = b.chan, len(out_shape) - 1
        else:
            ctx.fix(b, f"{ctx.describe()} would have two channel axes")
    elif b.chan is not None and b.axis < nb - 2:
        ctx.fix(b, f"{ctx.describe()} broadcasts the channels as a batch axis")
    if first and ctx.tensor(ctx.arg(0)) is not None and out_chan is not None:
        ctx.fix(TensorVal(out_shape, a.dtype, out_chan, out_axis), f"{ctx.describe()} adds a bias to the product")
    out = ctx.output(out_chan, out_axis)
    ctx.other("matmul", a, out)
    return out


def attention(ctx: OpContext) -> Value | None:
    """scaled_dot_product_attention: the query/key width sets the softmax scale (frozen); the value
    channels pass through."""
    q, k, v = (ctx.tensor(ctx.arg(i)) for i in range(3))
    for t in (q, k):
        ctx.fix(t, f"{ctx.describe()} scales its scores by the query width")
    out_chan = None
    if v is not None and v.chan is not None:
        if v.axis == len(v.shape) - 1:
            out_chan = v.chan
        else:
            ctx.fix(v, f"{ctx.describe()} mixes the values along the channel axis")
    out = ctx.output(out_chan, len(ctx.out_shape) - 1)
    if q is not None:
        ctx.other("attention", q, out)
    return out


def _register_all() -> None:
    for name in ("conv2d", "convolution", "conv1d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                 "conv_transpose3d", "_convolution", "conv_tbc"):
        if hasattr(aten, name):
            register_handler(getattr(aten, name), conv)
    register_handler(aten.linear, linear)
    for name in ("batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit",
                 "native_batch_norm", "_batch_norm_with_update", "_batch_norm_no_update", "cudnn_batch_norm"):
        if hasattr(aten, name):
            register_handler(getattr(aten, name), batch_norm("batchnorm"))
    register_handler(aten.instance_norm, batch_norm("instancenorm"))
    for name in ("group_norm", "native_group_norm"):
        register_handler(getattr(aten, name), group_norm)
    for name in ("layer_norm", "native_layer_norm", "rms_norm", "_fused_rms_norm"):
        if hasattr(aten, name):
            register_handler(getattr(aten, name), layer_norm)
    for name in ("matmul", "mm", "bmm", "addmm", "baddbmm"):
        register_handler(getattr(aten, name), matmul)
    register_handler(aten.scaled_dot_product_attention, attention)


_register_all()
