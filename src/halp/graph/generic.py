"""The three generic handlers behind ``register_handler``'s string kinds, and the broadcasting rule.

``elementwise`` is the workhorse: activations, arithmetic, ``where``, a layer scale. Broadcasting is
read from the real shapes: ``x * s`` with ``s`` of shape ``(N, C, 1, 1)`` couples ``x`` with ``s``
(squeeze-excitation); ``x * gamma`` with a parameter ``gamma`` of shape ``(C, 1, 1)`` makes ``gamma`` a
member of ``x``'s group (it is sliced with it); a ``(N, 1, H, W)`` map broadcast across channels freezes
its single channel; values without prunable channels meeting a channel axis freeze it.
"""

from __future__ import annotations

from typing import Callable

from .context import OpContext, ParamVal, TensorVal, Value

Handler = Callable[[OpContext], "Value | None"]


def passthrough(other_kind: str | None = None) -> Handler:
    """Output channels are the first tensor input's channels, one to one."""

    def handler(ctx: OpContext) -> Value | None:
        vals = ctx.values()
        if not vals:
            return ctx.opaque(f"{ctx.describe()} has no tensor input")
        first = vals[0]
        if isinstance(first, ParamVal):
            return _param_result(ctx, vals) or ctx.untracked()
        out = ctx.passthrough(first)
        if other_kind:
            ctx.other(other_kind, first, out)
        return out

    return handler


def _param_result(ctx: OpContext, vals: list[TensorVal | ParamVal]) -> ParamVal | None:
    """An entry-wise function of parameters only (``gain * scale``, ``exp(log_scale)``) is still a view of
    them for channel purposes: entry ``i`` of the result depends on entry ``i`` of each input."""
    if not all(isinstance(v, ParamVal) for v in vals):
        return None
    meta = ctx.out_meta
    shape = tuple(int(s) for s in meta.shape)
    n = len(shape)
    refs = []
    for v in vals:
        lead = n - len(v.shape)
        for fqn, dims in v.refs:  # type: ignore[union-attr]
            new = [None] * lead + [d if v.shape[i] == shape[lead + i] else None for i, d in enumerate(dims)]
            refs.append((fqn, tuple(new)))
    return ParamVal(shape, meta.dtype, tuple(refs))


def elementwise(other_kind: str | None = None) -> Handler:
    """Inputs broadcast against each other; those spanning the output's channel axis are coupled."""

    def handler(ctx: OpContext) -> Value | None:
        meta = ctx.out_meta
        if meta is None or not hasattr(meta, "shape"):
            return ctx.opaque(f"{ctx.describe()} does not return a tensor")
        vals = ctx.values()
        if not vals:
            return ctx.untracked()
        pv = _param_result(ctx, vals)
        if pv is not None:
            return pv
        out_shape = ctx.out_shape
        n = len(out_shape)
        # where each activation's channel axis lands in the output
        carriers: list[tuple[TensorVal, int]] = []
        for v in vals:
            if isinstance(v, TensorVal) and v.chan is not None:
                o = v.axis + n - len(v.shape)
                if v.shape[v.axis] == out_shape[o]:
                    carriers.append((v, o))
                elif out_shape[o] != 1:
                    ctx.fix(v, f"{ctx.describe()} broadcasts a tensor of shape {tuple(v.shape)} against "
                               f"{tuple(out_shape)} along its channel axis")
        axes = {o for _, o in carriers}
        if len(axes) != 1:
            for v, _ in carriers:
                ctx.fix(v, f"{ctx.describe()} combines channel axes lying on different dimensions")
            out = ctx.untracked()
        else:
            axis = axes.pop()
            first = carriers[0][0]
            for v, _ in carriers[1:]:
                ctx.equate(first, v)
            out = ctx.output(first.chan, axis)
            width = out_shape[axis]
            for v in vals:
                if any(v is c for c, _ in carriers):
                    continue
                d = axis - (n - len(v.shape))
                size = v.shape[d] if d >= 0 else 1
                if size == 1 or width == 1:
                    continue
                if isinstance(v, ParamVal) and ctx.param_members(v, d, out):
                    continue
                ctx.fix(out, f"{ctx.describe()} combines the channels with values that cannot be pruned "
                             f"with them (shape {tuple(v.shape)})")
        if other_kind and carriers:
            ctx.other(other_kind, carriers[0][0], out)
        return out

    return handler


def opaque(other_kind: str | None = None) -> Handler:
    """Freeze the channels of every input and output: the op's channel semantics are not known."""

    def handler(ctx: OpContext) -> Value | None:
        out = ctx.opaque(f"{ctx.describe()} is registered as opaque")
        tensors = ctx.tensors()
        if other_kind and tensors and isinstance(out, TensorVal):
            ctx.other(other_kind, tensors[0], out)
        return out

    return handler
