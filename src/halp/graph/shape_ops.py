"""Built-in handlers for ATen ops that move, join or cut axes: view/reshape/flatten/squeeze, permute,
expand, cat/stack, chunk/split, slice/select.

A reshape keeps the channels when the channel axis survives whole (it may move, or absorb the axes after
it: a flatten of ``(N, C, H, W)`` into ``(N, C*H*W)`` makes every channel ``H*W`` consecutive features).
Anything else that cuts through the channel axis (splitting it into attention heads, a channel shuffle's
``view(N, g, C/g, H, W)``) freezes it: its channels can no longer be removed independently.
"""

from __future__ import annotations

import math
import torch

from .channels import scale_repeat, slice_chan
from .context import OpContext, ParamVal, TensorVal, TupleVal, Value, norm_dim
from .handlers import register_handler

aten = torch.ops.aten


def _first(ctx: OpContext) -> TensorVal | ParamVal:
    v = ctx.value(ctx.arg(0))
    if isinstance(v, (TensorVal, ParamVal)):
        return v
    raise ValueError(f"{ctx.describe()} was called without a tensor input")


def carried_axis(a: tuple[int, ...], k: int, b: tuple[int, ...]) -> tuple[int, int, int] | None:
    """Where axis ``k`` of shape ``a`` lands when ``a`` is reshaped to ``b`` (row-major).

    Returns ``(axis, num, den)``: the output axis holding it and the factor its per-channel repeat is
    scaled by (``num/den``: ``num > 1`` when later axes merge into it, ``den > 1`` when it is cut back
    into channels and features). None when the axis does not survive.
    """
    c = a[k]
    before = math.prod(a[:k])
    after = math.prod(a[k + 1:])
    p = 1
    for m, size in enumerate(b):
        if p == before and size > 0:
            if size == c:
                return m, 1, 1
            if size % c == 0 and after % (size // c) == 0:
                return m, size // c, 1
            if c % size == 0 and size > 1:
                return m, 1, c // size
        if p > before:
            break
        p *= size
    return None


def _reshape_param(p: ParamVal, out_shape: tuple[int, ...], dtype: torch.dtype) -> ParamVal:
    dims: list[list[int | None]] = [[None] * len(out_shape) for _ in p.refs]
    for k, size in enumerate(p.shape):
        if size == 1:
            continue
        hit = carried_axis(p.shape, k, out_shape)
        if hit is None or hit[1:] != (1, 1):
            continue
        for r, (_, ref_dims) in enumerate(p.refs):
            dims[r][hit[0]] = ref_dims[k]
    return ParamVal(out_shape, dtype, tuple((fqn, tuple(d)) for (fqn, _), d in zip(p.refs, dims)))


def reshape(ctx: OpContext) -> Value | None:
    x = _first(ctx)
    meta = ctx.out_meta
    out_shape = ctx.out_shape
    if isinstance(x, ParamVal):
        return _reshape_param(x, out_shape, meta.dtype)
    if x.chan is None:
        return ctx.untracked()
    hit = carried_axis(x.shape, x.axis, out_shape)
    if hit is not None:
        axis, num, den = hit
        chan = scale_repeat(x.chan, num, den)
        if chan is not None and sum(s.positions for s in chan) == out_shape[axis]:
            return ctx.output(chan, axis)
    ctx.fix(x, f"{ctx.describe()} reshapes {tuple(x.shape)} to {tuple(out_shape)}, cutting through the channel axis")
    return ctx.untracked()


def permute(ctx: OpContext) -> Value | None:
    x = _first(ctx)
    n = len(x.shape)
    name = ctx.node.target.overloadpacket.__name__
    order = list(range(n))
    if name == "permute":
        order = [norm_dim(int(d), n) for d in ctx.arg(1, "dims")]
    elif name in ("transpose", "swapaxes", "swapdims"):
        d0, d1 = norm_dim(int(ctx.arg(1)), n), norm_dim(int(ctx.arg(2)), n)
        order[d0], order[d1] = order[d1], order[d0]
    elif name in ("t", "numpy_T") and n == 2:
        order = [1, 0]
    elif name == "movedim":
        src, dst = ctx.arg(1), ctx.arg(2)
        src = [src] if isinstance(src, int) else list(src)
        dst = [dst] if isinstance(dst, int) else list(dst)
        src = [norm_dim(s, n) for s in src]
        dst = [norm_dim(d, n) for d in dst]
        rest = [d for d in range(n) if d not in src]
        order = [-1] * n
        for s, d in zip(src, dst):
            order[d] = s
        it = iter(rest)
        order = [o if o >= 0 else next(it) for o in order]
    if isinstance(x, ParamVal):
        return ParamVal(ctx.out_shape, x.dtype, tuple((f, tuple(d[o] for o in order)) for f, d in x.refs))
    if x.chan is None:
        return ctx.untracked()
    return ctx.output(x.chan, order.index(x.axis))


def expand(ctx: OpContext) -> Value | None:
    """expand/expand_as/broadcast_to/repeat: the channel axis may move right (new leading axes) but must
    keep its size."""
    x = _first(ctx)
    out_shape = ctx.out_shape
    lead = len(out_shape) - len(x.shape)
    if isinstance(x, ParamVal):
        refs = tuple((f, (None,) * lead + tuple(dd if x.shape[i] == out_shape[lead + i] else None
                                                 for i, dd in enumerate(d))) for f, d in x.refs)
        return ParamVal(out_shape, x.dtype, refs)
    if x.chan is None:
        return ctx.untracked()
    axis = x.axis + lead
    if out_shape[axis] != x.shape[x.axis]:
        ctx.fix(x, f"{ctx.describe()} broadcasts or tiles the channel axis")
        return ctx.untracked()
    return ctx.output(x.chan, axis)


def _couple_on_axis(ctx: OpContext, vals: list[TensorVal | ParamVal], out: TensorVal, in_axis: int) -> None:
    """Every input must lose the same channels along its channel axis (a cat/stack along another axis)."""
    for v in vals:
        if isinstance(v, ParamVal):
            if v.shape[in_axis] > 1 and not ctx.param_members(v, in_axis, out):
                ctx.fix(out, f"{ctx.describe()} joins the channels with a tensor that cannot follow them")
        elif v.chan is None or v.axis != in_axis:
            ctx.fix(out, f"{ctx.describe()} joins the channels with values that have no prunable channels")
        else:
            ctx.equate(out, TensorVal(out.shape, out.dtype, v.chan, out.axis))


def cat(ctx: OpContext) -> Value | None:
    vals = ctx.values()
    out_shape = ctx.out_shape
    n = len(out_shape)
    dim = norm_dim(int(ctx.arg(1, "dim", 0)), n)
    vals = [v for v in vals if len(v.shape) == n]  # legacy empty tensors are skipped by cat
    carriers = [v for v in vals if isinstance(v, TensorVal) and v.chan is not None]
    if not carriers:
        return ctx.untracked()
    axes = {v.axis for v in carriers}
    if len(axes) > 1:
        return ctx.opaque(f"{ctx.describe()} joins tensors whose channels lie on different axes")
    axis = axes.pop()
    if axis == dim:  # joining channels: the output is their concatenation
        pieces: list = []
        for v in vals:
            if isinstance(v, TensorVal) and v.chan is not None:
                pieces.extend(v.chan)
            else:
                pieces.extend(ctx.walker.solver.new_source(
                    "opaque", ctx.name, v.shape[dim], f"channels joined by {ctx.describe()} from a fixed tensor"))
        out = ctx.output(tuple(pieces), axis)
        ctx.other("cat", out, out)
        return out
    out = ctx.output(carriers[0].chan, axis)
    _couple_on_axis(ctx, vals, out, axis)
    ctx.other("cat", carriers[0], out)
    return out


def stack(ctx: OpContext) -> Value | None:
    vals = ctx.values()
    out_shape = ctx.out_shape
    dim = norm_dim(int(ctx.arg(1, "dim", 0)), len(out_shape))
    carriers = [v for v in vals if isinstance(v, TensorVal) and v.chan is not None]
    if not carriers:
        return ctx.untracked()
    if len({v.axis for v in carriers}) > 1:
        return ctx.opaque(f"{ctx.describe()} stacks tensors whose channels lie on different axes")
    in_axis = carriers[0].axis
    out = ctx.output(carriers[0].chan, in_axis + (1 if dim <= in_axis else 0))
    _couple_on_axis(ctx, vals, out, in_axis)
    return out


def split(ctx: OpContext) -> Value | None:
    """split/chunk/split_with_sizes/tensor_split/unbind: along channels each piece is a slice of them.

    ``chunk(n)`` (and ``tensor_split`` into n sections) cut the *pruned* width into n equal parts, so the
    parts must lose the same channels; sizes written in the code cannot follow a pruned width and freeze.
    """
    x = _first(ctx)
    metas = ctx.out_meta
    name = ctx.node.target.overloadpacket.__name__
    if not isinstance(metas, (tuple, list)):
        return ctx.opaque(f"{ctx.describe()} was expected to return several tensors")
    if isinstance(x, ParamVal) or x.chan is None:
        return TupleVal(tuple(ctx.untracked(m) for m in metas))
    n = len(x.shape)
    dim = norm_dim(int(ctx.arg(1 if name == "unbind" else 2, "dim", 0)), n)
    if name == "unbind":
        if dim == x.axis:
            return ctx.opaque(f"{ctx.describe()} removes the channel axis")
        axis = x.axis - (1 if dim < x.axis else 0)
        return TupleVal(tuple(ctx.output(x.chan, axis, m) for m in metas))
    if dim != x.axis:
        return TupleVal(tuple(ctx.output(x.chan, x.axis, m) for m in metas))
    items, pos = [], 0
    for m in metas:
        width = int(m.shape[dim])
        piece = slice_chan(x.chan, pos, pos + width)
        if piece is None:
            return ctx.opaque(f"{ctx.describe()} cuts through a flattened channel")
        items.append(ctx.output(piece, dim, m))
        pos += width
    equal_parts = name == "chunk" or (name == "tensor_split" and isinstance(ctx.arg(1), int))
    if equal_parts and len({int(m.shape[dim]) for m in metas}) == 1 and x.shape[dim] % len(metas) == 0:
        for item in items[1:]:
            ctx.equate(items[0], item)
    else:
        ctx.fix(x, f"{ctx.describe()} splits channels at fixed sizes {[int(m.shape[dim]) for m in metas]}")
    return TupleVal(tuple(items))


def _pin(ctx: OpContext, x: TensorVal, lo: int, hi: int, why: str) -> None:
    piece = slice_chan(x.chan, lo, hi) if x.chan is not None and lo < hi else None
    if piece:
        ctx.fix(TensorVal(x.shape, x.dtype, piece, x.axis), f"{ctx.describe()} {why}")


def slice_(ctx: OpContext) -> Value | None:
    x = _first(ctx)
    if isinstance(x, ParamVal):
        return expand_like_param(ctx, x)
    n = len(x.shape)
    dim = norm_dim(int(ctx.arg(1, "dim", 0)), n)
    if x.chan is None or dim != x.axis:
        return ctx.output(x.chan, x.axis) if x.chan is not None else ctx.untracked()
    width = x.shape[dim]
    start, end, step = ctx.arg(2, "start"), ctx.arg(3, "end"), ctx.arg(4, "step", 1)
    if not all(isinstance(v, (int, type(None))) for v in (start, end, step)) or step != 1:
        return ctx.opaque(f"{ctx.describe()} selects channels with a step or at run-time positions")
    lo, hi, _ = slice(start, end).indices(width)
    if lo == 0 and hi >= width:
        return ctx.output(x.chan, dim)
    # a literal bound pins the channels between it and its end of the axis: they keep their positions
    for bound in (start, end):
        if bound is None or bound >= width:
            continue
        if bound >= 0:
            _pin(ctx, x, 0, bound, "selects channels at fixed positions")
        else:
            _pin(ctx, x, max(0, width + bound), width, "selects channels at fixed positions")
    piece = slice_chan(x.chan, lo, max(lo, hi))
    if piece is None:
        return ctx.opaque(f"{ctx.describe()} cuts through a flattened channel")
    return ctx.output(piece, dim)


def expand_like_param(ctx: OpContext, x: ParamVal) -> ParamVal:
    out_shape = ctx.out_shape
    refs = tuple((f, tuple(dd if x.shape[i] == out_shape[i] else None for i, dd in enumerate(d))) for f, d in x.refs)
    return ParamVal(out_shape, x.dtype, refs)


def select(ctx: OpContext) -> Value | None:
    x = _first(ctx)
    n = len(x.shape)
    dim = norm_dim(int(ctx.arg(1, "dim", 0)), n)
    if isinstance(x, ParamVal):
        return ParamVal(ctx.out_shape, x.dtype, tuple((f, d[:dim] + d[dim + 1:]) for f, d in x.refs))
    if x.chan is None:
        return ctx.untracked()
    if dim == x.axis:
        ctx.fix(x, f"{ctx.describe()} picks single channels")
        return ctx.untracked()
    return ctx.output(x.chan, x.axis - (1 if dim < x.axis else 0))


def index_along(ctx: OpContext) -> Value | None:
    """index_select/gather/take_along_dim: along the channel axis they reorder channels: frozen."""
    x = _first(ctx)
    if isinstance(x, ParamVal):
        return ctx.untracked()
    dim = norm_dim(int(ctx.arg(1, "dim", 0)), len(x.shape))
    if x.chan is not None and dim != x.axis and len(ctx.out_shape) == len(x.shape) \
            and ctx.out_shape[x.axis] == x.shape[x.axis]:
        return ctx.output(x.chan, x.axis)
    return ctx.opaque(f"{ctx.describe()} gathers along the channel axis")


def _register_all() -> None:
    for name in ("view", "reshape", "_unsafe_view", "flatten", "unflatten", "squeeze", "squeeze_", "unsqueeze",
                 "unsqueeze_", "view_as", "reshape_as", "_reshape_alias", "view_copy", "reshape_copy"):
        if hasattr(aten, name):
            register_handler(getattr(aten, name), reshape)
    for name in ("permute", "transpose", "swapaxes", "swapdims", "t", "movedim", "numpy_T", "transpose_"):
        if hasattr(aten, name):
            register_handler(getattr(aten, name), permute)
    for name in ("expand", "expand_as", "broadcast_to", "repeat", "tile"):
        register_handler(getattr(aten, name), expand)
    for name in ("cat", "concat", "concatenate"):
        register_handler(getattr(aten, name), cat)
    register_handler(aten.stack, stack)
    for name in ("split", "chunk", "split_with_sizes", "tensor_split", "unbind", "unsafe_split",
                 "unsafe_chunk", "unsafe_split_with_sizes"):
        if hasattr(aten, name):
            register_handler(getattr(aten, name), split)
    register_handler(aten.slice, slice_)
    register_handler(aten.narrow, _narrow)
    register_handler(aten.select, select)
    for name in ("index_select", "gather", "take_along_dim"):
        register_handler(getattr(aten, name), index_along)


def _narrow(ctx: OpContext) -> Value | None:
    """narrow(x, dim, start, length) is slice(x, dim, start, start + length)."""
    x = _first(ctx)
    if isinstance(x, ParamVal):
        return expand_like_param(ctx, x)
    dim = norm_dim(int(ctx.arg(1, "dim")), len(x.shape))
    start, length = ctx.arg(2, "start"), ctx.arg(3, "length")
    if x.chan is None or dim != x.axis:
        return ctx.output(x.chan, x.axis) if x.chan is not None else ctx.untracked()
    if not isinstance(start, int) or not isinstance(length, int):
        return ctx.opaque(f"{ctx.describe()} narrows channels at a position known only at run time")
    start = start + x.shape[dim] if start < 0 else start
    _pin(ctx, x, 0, start + length, "selects channels at fixed positions")
    piece = slice_chan(x.chan, start, start + length)
    return ctx.output(piece, dim) if piece is not None else ctx.opaque(f"{ctx.describe()} cuts a flattened channel")


_register_all()
