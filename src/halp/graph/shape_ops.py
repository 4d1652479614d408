"""Built-in handlers for ops that move, cut, join or reduce axes.

All of them read the real input/output shapes recorded by shape propagation rather than re-deriving
them from arguments (``view(n, -1)``, ``flatten(1)`` and ``nn.Flatten`` are one case). When an op
rearranges the channel axis in a way the channel description cannot express (a transpose that moves
channels, a reshape that merges channels, fancy indexing), the channels around it are frozen with the
reason recorded — never guessed.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import TensorMetadata

from .channels import Chan, scale_repeat, slice_chan
from .handlers import OpContext, TensorVal, TupleVal, Value, register_handler


def _first(ctx: OpContext) -> TensorVal:
    x = ctx.tensor(ctx.arg(0, "input"))
    if x is None:
        tensors = ctx.tensors()
        if not tensors:
            raise ValueError(f"{ctx.describe()} has no tensor input")
        x = tensors[0]
    return x


def _ndim_dim(dim: Any, ndim: int) -> int | None:
    if not isinstance(dim, int):
        return None
    return dim + ndim if dim < 0 else dim


def _pin(ctx: OpContext, x: TensorVal, lo: int, hi: int, why: str) -> None:
    """Freeze channel positions [lo, hi) of ``x``: code that hard-codes them breaks if they move."""
    if x.chan is None or lo >= hi:
        return
    piece = slice_chan(x.chan, lo, hi)
    reason = f"{ctx.describe()} {why}"
    ctx.fix(TensorVal(x.shape, x.dtype, piece) if piece is not None else x, reason)


def _op_name(ctx: OpContext) -> str:
    if ctx.node.op == "call_method":
        return str(ctx.node.target)
    if ctx.node.op == "call_module":
        return type(ctx.module).__name__.lower()
    return getattr(ctx.node.target, "__name__", "")


def _literal_channel_size(ctx: OpContext, n_out: int) -> bool:
    """Does the op's size argument spell out the output's channel count as a constant?"""
    name = _op_name(ctx)
    if name in ("view", "reshape", "expand", "broadcast_to"):
        spec = list(ctx.node.args[1:]) or [ctx.node.kwargs.get("shape", ctx.node.kwargs.get("size"))]
        if len(spec) == 1 and isinstance(spec[0], (list, tuple)):
            spec = list(spec[0])
        return len(spec) == n_out and isinstance(spec[1], int) and spec[1] != -1
    if name == "unflatten":
        dim, sizes = ctx.arg(1, "dim"), ctx.arg(2, "sizes")
        if ctx.module is not None:
            dim, sizes = ctx.module.dim, ctx.module.unflattened_size
        return dim in (1, -n_out + 1) and isinstance(sizes[0], int) and sizes[0] != -1
    return False


# -- reshape family ------------------------------------------------------------------------------
def reshape(ctx: OpContext) -> Value | None:
    """view/reshape/flatten/unflatten/squeeze/unsqueeze: row-major order is kept, so a channel that
    spans ``e`` consecutive elements per sample becomes ``e / e_out`` positions of the new axis."""
    x = _first(ctx)
    i_shape, o_shape = tuple(x.shape), ctx.out_shape
    if x.chan is None:
        if len(o_shape) >= 2:
            return ctx.fixed_output(f"{ctx.describe()} creates a channel axis")
        return ctx.output(None)
    if len(o_shape) < 2:
        ctx.fix(x, f"{ctx.describe()} folds the channel axis into the batch axis")
        return ctx.output(None)
    if o_shape[0] != i_shape[0] or math.prod(o_shape[1:]) != math.prod(i_shape[1:]):
        return ctx.opaque(f"{ctx.describe()} reshapes {i_shape} to {o_shape}, mixing channels with the batch")
    e_in, e_out = math.prod(i_shape[2:]), math.prod(o_shape[2:])
    chan = scale_repeat(x.chan, e_in, e_out) if e_out else None
    if chan is None:
        return ctx.opaque(f"{ctx.describe()} reshapes {i_shape} to {o_shape}, merging channels")
    if _op_name(ctx) in ("view_as", "reshape_as"):
        other = ctx.tensor(ctx.arg(1, "other"))
        if other is not None and other.chan is not None and tuple(other.shape) == o_shape:
            ctx.equate(TensorVal(o_shape, x.dtype, chan), other)  # their widths must stay equal
        elif other is not None:
            return ctx.opaque(f"{ctx.describe()} takes its channel count from another tensor")
    if _literal_channel_size(ctx, len(o_shape)):
        ctx.fix(x, f"{ctx.describe()} hard-codes the channel count ({o_shape[1]})")
    return ctx.output(chan)


def _perm_from_args(ctx: OpContext, ndim: int) -> list[int] | None:
    method = ctx.node.target if ctx.node.op == "call_method" else getattr(ctx.node.target, "__name__", "")
    args = list(ctx.node.args[1:])
    if method == "permute":
        dims = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
        dims = ctx.node.kwargs.get("dims", dims)
        return [_ndim_dim(d, ndim) for d in dims]
    if method in ("transpose", "swapaxes", "swapdims"):
        a = _ndim_dim(ctx.arg(1, "dim0"), ndim)
        b = _ndim_dim(ctx.arg(2, "dim1"), ndim)
        perm = list(range(ndim))
        if a is None or b is None:
            return None
        perm[a], perm[b] = perm[b], perm[a]
        return perm
    if method in ("t",):
        return list(range(ndim))[::-1]
    return None


def permute(ctx: OpContext) -> Value | None:
    x = _first(ctx)
    if x.chan is None:
        return ctx.output(None) if len(ctx.out_shape) < 2 else ctx.fixed_output("permute creates channels")
    perm = _perm_from_args(ctx, len(x.shape))
    if perm is None or perm[:2] != [0, 1] or any(s.repeat != 1 for s in x.chan):
        return ctx.opaque(f"{ctx.describe()} moves the channel axis")
    return ctx.output(x.chan)


def expand(ctx: OpContext) -> Value | None:
    """expand/expand_as/broadcast_to/repeat: fine while the channel axis keeps its place and size."""
    x = _first(ctx)
    o_shape = ctx.out_shape
    if x.chan is None or len(o_shape) != len(x.shape) or o_shape[1] != x.shape[1]:
        return ctx.opaque(f"{ctx.describe()} broadcasts or tiles the channel axis")
    if _op_name(ctx) == "expand_as":
        other = ctx.tensor(ctx.arg(1, "other"))
        if other is not None and other.chan is not None:
            ctx.equate(x, other)  # the channel counts must stay equal
    if _literal_channel_size(ctx, len(o_shape)):
        ctx.fix(x, f"{ctx.describe()} hard-codes the channel count ({o_shape[1]})")
    return ctx.output(x.chan)


# -- joining and cutting -------------------------------------------------------------------------
def cat(ctx: OpContext) -> Value | None:
    tensors = ctx.tensors()
    o_shape = ctx.out_shape
    dim = _ndim_dim(ctx.arg(1, "dim", 0), len(o_shape))
    if len(o_shape) < 2:
        return ctx.output(None)
    if any(t.chan is None or len(t.shape) != len(o_shape) for t in tensors):
        return ctx.opaque(f"{ctx.describe()} joins tensors without a channel axis")
    if dim == 1:
        chan: Chan = tuple(s for t in tensors for s in t.chan)
        out = ctx.output(chan)
        ctx.other("cat", out, out)
        return out
    for t in tensors[1:]:
        ctx.equate(tensors[0], t)
    out = ctx.output(tensors[0].chan)
    ctx.other("cat", tensors[0], out)
    return out


def stack(ctx: OpContext) -> Value | None:
    tensors = ctx.tensors()
    o_shape = ctx.out_shape
    dim = _ndim_dim(ctx.arg(1, "dim", 0), len(o_shape))
    if dim is None or dim <= 1 or any(t.chan is None for t in tensors):
        return ctx.opaque(f"{ctx.describe()} stacks along or before the channel axis")
    for t in tensors[1:]:
        ctx.equate(tensors[0], t)
    return ctx.output(tensors[0].chan)


def split(ctx: OpContext) -> Value | None:
    """split/chunk/tensor_split/unbind: along channels each piece is a slice of the input's channels."""
    x = _first(ctx)
    metas = ctx.out_meta
    name = ctx.node.target if ctx.node.op == "call_method" else getattr(ctx.node.target, "__name__", "")
    if isinstance(metas, TensorMetadata) or not isinstance(metas, (tuple, list)):
        raise ValueError(f"{ctx.describe()} was expected to return several tensors")
    dim_pos = 1 if name == "unbind" else 2
    dim = _ndim_dim(ctx.arg(dim_pos, "dim", 0), len(x.shape))
    if x.chan is None:
        return TupleVal(tuple(ctx.output(None, m) for m in metas))
    if name == "unbind" and dim in (0, 1) or dim is None:
        return ctx.opaque(f"{ctx.describe()} removes the batch or channel axis")
    if dim != 1:
        return TupleVal(tuple(ctx.output(x.chan, m) for m in metas))
    items = []
    pos = 0
    for m in metas:
        width = m.shape[1]
        piece = slice_chan(x.chan, pos, pos + width)
        if piece is None:
            return ctx.opaque(f"{ctx.describe()} cuts through a flattened channel")
        items.append(ctx.output(piece, m))
        pos += width
    sections = ctx.arg(1)
    equal_parts = name == "chunk" or (name == "tensor_split" and isinstance(sections, int))
    if equal_parts and len({m.shape[1] for m in metas}) == 1:
        # chunk(n) cuts the *pruned* axis into n equal parts: the parts must lose the same channels
        for item in items[1:]:
            ctx.equate(items[0], item)
    else:  # sizes or positions written in the code: they cannot follow a pruned width
        ctx.fix(x, f"{ctx.describe()} splits channels at fixed sizes {[m.shape[1] for m in metas]}")
    return TupleVal(tuple(items))


def narrow(ctx: OpContext) -> Value | None:
    x = _first(ctx)
    dim = _ndim_dim(ctx.arg(1, "dim"), len(x.shape))
    start = ctx.arg(2, "start")
    if x.chan is None or dim != 1:
        return ctx.passthrough(x) if x.chan is not None and dim not in (None, 0) else \
            ctx.opaque(f"{ctx.describe()} narrows the batch axis")
    if not isinstance(start, int):
        return ctx.opaque(f"{ctx.describe()} narrows channels at a position known only at run time")
    start = start + x.shape[1] if start < 0 else start
    _pin(ctx, x, 0, start + ctx.out_shape[1], "selects channels at fixed positions")
    piece = slice_chan(x.chan, start, start + ctx.out_shape[1])
    return ctx.output(piece) if piece is not None else ctx.opaque(f"{ctx.describe()} cuts a flattened channel")


def getitem(ctx: OpContext) -> Value | None:
    base = ctx.value(ctx.arg(0))
    index = ctx.arg(1)
    if isinstance(base, TupleVal):
        if isinstance(index, int):
            return base.items[index]
        if isinstance(index, slice):
            return TupleVal(base.items[index])
        raise ValueError(f"{ctx.describe()} indexes a tuple of tensors with {index!r}")
    x = ctx.tensor(ctx.arg(0))
    if x is None:
        return ctx.opaque(f"{ctx.describe()} indexes a non-tensor")
    reason = f"{ctx.describe()} indexes the tensor with {index!r}, rearranging its channel axis"
    if x.chan is None:
        return ctx.output(None) if len(ctx.out_shape) < 2 else ctx.fixed_output(reason)
    entries = list(index) if isinstance(index, tuple) else [index]
    if any(isinstance(e, fx.Node) or isinstance(e, (list, torch.Tensor)) for e in entries):
        return ctx.opaque(reason)
    if Ellipsis in entries:
        at = entries.index(Ellipsis)
        consumed = sum(1 for e in entries if e is not None and e is not Ellipsis)
        entries[at:at + 1] = [slice(None)] * (len(x.shape) - consumed)
    entries += [slice(None)] * max(0, 2 - len(entries))
    if not isinstance(entries[0], slice) or not isinstance(entries[1], slice):
        return ctx.opaque(reason)
    cut = entries[1]
    if any(isinstance(e, fx.Node) for e in (cut.start, cut.stop, cut.step)):
        return ctx.opaque(reason)
    start, stop, step = cut.indices(x.shape[1])
    if step != 1:
        return ctx.opaque(reason)
    piece = slice_chan(x.chan, start, max(start, stop))
    if piece is None or len(ctx.out_shape) < 2 or ctx.out_shape[1] != max(0, stop - start):
        return ctx.opaque(reason)
    width = x.shape[1]
    for bound in (cut.start, cut.stop):  # a literal bound pins the channels between it and its end
        if isinstance(bound, int) and bound >= 0:
            _pin(ctx, x, 0, min(bound, width), "selects channels at fixed positions")
        elif isinstance(bound, int):
            _pin(ctx, x, max(0, width + bound), width, "selects channels at fixed positions")
    return ctx.output(piece)


# -- reductions ----------------------------------------------------------------------------------
def reduce(ctx: OpContext) -> Value | None:
    """mean/sum/amax/...: reducing spatial axes keeps channels; reducing channels freezes them."""
    x = _first(ctx)
    name = _op_name(ctx)
    dims = ctx.arg(2 if name == "norm" else 1, "dim")  # norm(input, p, dim, ...)
    if isinstance(dims, fx.Node) or isinstance(ctx.node.kwargs.get("other"), fx.Node):
        # torch.max(a, b): element-wise, not a reduction
        from .ops import elementwise

        return elementwise(name)(ctx)
    ndim = len(x.shape)
    if dims is None:
        dims_set = set(range(ndim))
    else:
        dims_set = {_ndim_dim(d, ndim) for d in (dims if isinstance(dims, (list, tuple)) else [dims])}
    kind = name or "reduce"
    meta = ctx.out_meta
    first_meta = meta if isinstance(meta, TensorMetadata) else meta[0]
    keepdim = len(first_meta.shape) == ndim
    if x.chan is None:
        return ctx.walker.map_meta(meta, lambda m: ctx.output(None, m) if len(m.shape) < 2
                                   else ctx.fixed_output("reduction", m))
    if 1 in dims_set or None in dims_set or (0 in dims_set and not keepdim):
        ctx.fix(x, f"{ctx.describe()} reduces over the channel or batch axis")
        return ctx.walker.map_meta(meta, lambda m: ctx.fixed_output(f"made by {ctx.describe()}", m))
    out = ctx.walker.map_meta(meta, lambda m: ctx.output(x.chan, m))
    ctx.other(str(kind), x, out if isinstance(out, TensorVal) else None)
    return out


def _register_all() -> None:
    for target in ("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as",
                   "reshape_as", torch.reshape, torch.flatten, torch.squeeze, torch.unsqueeze,
                   torch.unflatten, nn.Flatten, nn.Unflatten):
        register_handler(target, reshape)
    for target in ("permute", "transpose", "swapaxes", "swapdims", "t", torch.permute,
                   torch.transpose, torch.swapaxes, torch.t):
        register_handler(target, permute)
    for target in ("expand", "expand_as", "broadcast_to", "repeat", "tile", torch.broadcast_to,
                   torch.tile):
        register_handler(target, expand)
    for target in (torch.cat, torch.concat, torch.concatenate):
        register_handler(target, cat)
    register_handler(torch.stack, stack)
    for target in ("split", "chunk", "tensor_split", "unbind", "split_with_sizes", torch.split,
                   torch.chunk, torch.tensor_split, torch.unbind):
        register_handler(target, split)
    register_handler("narrow", narrow)
    register_handler(torch.narrow, narrow)
    register_handler(operator.getitem, getitem)
    for name in ("mean", "sum", "amax", "amin", "max", "min", "std", "var", "logsumexp", "prod", "norm"):
        register_handler(name, reduce)
        fn = getattr(torch, name, None)
        if fn is not None:
            register_handler(fn, reduce)


_register_all()
