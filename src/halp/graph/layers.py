"""Built-in handlers for layers with per-channel parameters: Conv2d, Linear and the norms.

A dense conv or linear *starts* a new channel source (its output) and *consumes* its input's channels
(dim 1 of its weight). A depthwise conv (groups == in == out) keeps its input's channels, so it joins
that group as a ``"depthwise"`` member. Other grouped convs are recorded so that the builder can attach
the per-conv-group balance constraint to the groups on both sides.
"""

from __future__ import annotations

import math

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from .channels import Chan
from .handlers import Handler, OpContext, TensorVal, Value, register_handler
from .types import LayerShape


def _dtype_name(t: TensorVal) -> str:
    return str(t.dtype).removeprefix("torch.")


def _pair(v: object) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    a, b = tuple(v)  # type: ignore[arg-type]
    return (int(a), int(b))


def _padding(m: nn.Conv2d) -> tuple[int, int]:
    if isinstance(m.padding, str):  # "valid" / "same"
        if m.padding == "valid":
            return (0, 0)
        kh, kw = _pair(m.kernel_size)
        dh, dw = _pair(m.dilation)
        return (dh * (kh - 1) // 2, dw * (kw - 1) // 2)
    return _pair(m.padding)


def _input(ctx: OpContext) -> TensorVal:
    x = ctx.tensor(ctx.arg(0, "input"))
    if x is None:
        raise ValueError(f"{ctx.describe()} was called without a tensor input")
    return x


def conv2d(ctx: OpContext) -> Value | None:
    m = ctx.module
    x = _input(ctx)
    if len(x.shape) != 4 or x.chan is None:
        raise ValueError(
            f"{ctx.describe()} received an input of shape {tuple(x.shape)}; build_graph needs batched "
            "(N, C, H, W) example inputs"
        )
    if any(s.repeat != 1 for s in x.chan):
        ctx.fix(x, f"{ctx.describe()} reads channels built by a reshape")
    w = ctx.walker
    cin, out_shape = x.shape[1], ctx.out_shape
    cout, g = out_shape[1], m.groups
    if g > 1 and g == cin == cout:  # depthwise: output channel c is input channel c
        ctx.member(ctx.name, "depthwise", x)
        out = ctx.output(x.chan)
        groups_kind = 0
    else:
        chan: Chan = w.first_output(ctx.name, lambda: w.solver.new_source("layer", ctx.name, cout))
        out = ctx.output(chan)
        ctx.member(ctx.name, "out", out)
        ctx.member(ctx.name, "in", x)
        if g > 1:
            w.grouped.append((ctx.name, g, x.chan, chan))
        groups_kind = 1 if g == 1 else g
    shape = LayerShape(
        kind="conv2d", kernel=_pair(m.kernel_size), stride=_pair(m.stride), padding=_padding(m),
        dilation=_pair(m.dilation), groups=groups_kind, in_hw=(x.shape[2], x.shape[3]), batch=x.shape[0],
        dtype=_dtype_name(x), bias=m.bias is not None,
    )
    w.add_layer(ctx.name, shape, x, out)
    return out


def linear(ctx: OpContext) -> Value | None:
    m = ctx.module
    x = _input(ctx)
    w = ctx.walker
    batch = x.shape[0] if len(x.shape) == 2 else math.prod(x.shape[:-1])
    shape = LayerShape(kind="linear", batch=batch, dtype=_dtype_name(x), bias=m.bias is not None)
    if len(x.shape) != 2 or x.chan is None:
        # features on the last axis of a >2-D tensor: not the channel axis we track; freeze both sides
        out = ctx.opaque(f"{ctx.describe()} is applied to a {len(x.shape)}-D tensor")
        w.add_layer(ctx.name, shape, None, None, in_features=x.shape[-1], out_features=m.out_features)
        return out
    if len({s.repeat for s in x.chan}) > 1:
        ctx.fix(x, f"{ctx.describe()} reads flattened maps of different sizes")
    chan = w.first_output(ctx.name, lambda: w.solver.new_source("layer", ctx.name, ctx.out_shape[1]))
    out = ctx.output(chan)
    ctx.member(ctx.name, "out", out)
    ctx.member(ctx.name, "in", x)
    w.add_layer(ctx.name, shape, x, out)
    return out


def norm(kind: str) -> Handler:
    """BatchNorm / InstanceNorm: per-channel affine terms and statistics."""

    def handler(ctx: OpContext) -> Value | None:
        x = _input(ctx)
        out = ctx.passthrough(x)
        if out.chan is not None:
            ctx.member(ctx.name, "norm", out)
        ctx.other(kind, x, out)
        return out

    return handler


def group_norm(ctx: OpContext) -> Value | None:
    m = ctx.module
    x = _input(ctx)
    out = ctx.passthrough(x)
    if m.num_groups == m.num_channels and out.chan is not None:  # per-channel statistics
        ctx.member(ctx.name, "norm", out)
    else:
        ctx.fix(x, f"{ctx.describe()} normalises over groups of {m.num_channels // m.num_groups} channels")
    ctx.other("groupnorm", x, out)
    return out


def layer_norm(ctx: OpContext) -> Value | None:
    m = ctx.module
    x = _input(ctx)
    if len(x.shape) - len(m.normalized_shape) <= 1:
        ctx.fix(x, f"{ctx.describe()} normalises across channels")
    out = ctx.passthrough(x)
    ctx.other("layernorm", x, out)
    return out


register_handler(nn.Conv2d, conv2d)
register_handler(nn.Linear, linear)
register_handler(_BatchNorm, norm("batchnorm"))
register_handler(_InstanceNorm, norm("instancenorm"))
register_handler(nn.GroupNorm, group_norm)
register_handler(nn.LayerNorm, layer_norm)
