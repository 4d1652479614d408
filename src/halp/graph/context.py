"""What a handler sees of one captured ATen op, and the facts it may record about its channels.

The graph is walked over the ATen ops of ``torch.export``. Every value flowing between ops is one of:

* :class:`TensorVal` — an activation: its shape and, when it has one, the *tracked channel axis*
  (``axis``) and how that axis is made (``chan``, see :mod:`halp.graph.channels`). Channels may sit on
  any axis: dim 1 for convolutions, the last axis for a channels-last LayerNorm or a transformer MLP.
* :class:`ParamVal` — a parameter or buffer, or a view or entry-wise function of parameters
  (``weight.t()``, ``gamma.view(1, -1, 1, 1)``, ``gain * scale``): for each of its axes, which dimension
  of which parameter it is. When such a value meets a channel axis, the parameter is recorded as a
  member of that channel group, so surgery slices it.
* :class:`TupleVal` — several outputs (``chunk``, ``split``, batch-norm's statistics).

Handlers never guess: an op whose channel semantics they do not know *freezes* the channels it touches
(:meth:`OpContext.opaque`), which keeps every pruned model exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Protocol, Union

import torch
from torch import fx, nn

from .channels import Chan, ChannelSolver, chan_positions

ParamRef = tuple[str, tuple["int | None", ...]]
"""(parameter FQN, for each axis of the value the parameter dimension it is, or None for a new axis)."""


@dataclass(frozen=True)
class TensorVal:
    """An activation. ``chan`` is None when no axis carries prunable channels (then ``axis`` is unused)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    chan: Chan | None
    axis: int = 1


@dataclass(frozen=True)
class ParamVal:
    """A parameter/buffer (or an entry-wise function of some) as seen by the op that reads it."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    refs: tuple[ParamRef, ...]


@dataclass(frozen=True)
class TupleVal:
    """Several outputs; ``None`` items are not tensors."""

    items: tuple["Value | None", ...]


Value = Union[TensorVal, ParamVal, TupleVal]


class Walker(Protocol):
    """What handlers may use of the graph builder (kept as a protocol so this module imports nothing
    from the builder)."""

    solver: ChannelSolver
    values: dict[fx.Node, "Value | None"]

    def describe(self, node: fx.Node) -> str: ...

    def module_of(self, fqn: str) -> tuple[str, str, nn.Module | None]: ...

    def first_output(self, key: str, width: int) -> Chan: ...

    def add_layer(self, module: str, shape: Any, x: TensorVal | None, out: TensorVal | None,
                  in_features: int = 0, out_features: int = 0) -> None: ...

    def add_other(self, name: str, kind: str, x: TensorVal, out: TensorVal | None) -> None: ...

    def add_grouped(self, name: str, groups: int, in_chan: Chan, out_chan: Chan) -> None: ...

    def op_name(self, node: fx.Node) -> str: ...


def meta_shape(meta: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in meta.shape)


def is_tensor_meta(meta: Any) -> bool:
    return isinstance(meta, torch.Tensor)


def norm_dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


class OpContext:
    """One op: its arguments as recorded values, and methods to record channel facts."""

    def __init__(self, walker: Walker, node: fx.Node, module: nn.Module | None = None) -> None:
        self._w = walker
        self.node = node
        self.module = module
        #: the module path for an op that is a module's own computation (a conv, a norm), else the node name
        self.name: str = walker.op_name(node)

    # -- reading ---------------------------------------------------------------------------------
    @property
    def walker(self) -> Walker:
        return self._w

    @property
    def out_meta(self) -> Any:
        return self.node.meta.get("val")

    @property
    def out_shape(self) -> tuple[int, ...]:
        meta = self.out_meta
        if not is_tensor_meta(meta):
            raise ValueError(f"op {self.describe()} does not return a single tensor")
        return meta_shape(meta)

    def arg(self, index: int, name: str | None = None, default: Any = None) -> Any:
        """A raw argument (an fx.Node for tensors, a Python value otherwise), by position or keyword;
        the op schema's default when it is not given."""
        if name is not None and name in self.node.kwargs:
            return self.node.kwargs[name]
        if index < len(self.node.args):
            return self.node.args[index]
        schema = getattr(self.node.target, "_schema", None)
        if schema is not None and index < len(schema.arguments):
            a = schema.arguments[index]
            if a.name in self.node.kwargs:
                return self.node.kwargs[a.name]
            if a.has_default_value():
                return a.default_value
        return default

    def value(self, arg: Any) -> Value | None:
        return self._w.values.get(arg) if isinstance(arg, fx.Node) else None

    def tensor(self, arg: Any) -> TensorVal | None:
        """An argument as an activation; a parameter read as data has no prunable channels."""
        v = self.value(arg)
        if isinstance(v, ParamVal):
            return TensorVal(v.shape, v.dtype, None)
        return v if isinstance(v, TensorVal) else None

    def param(self, arg: Any) -> ParamVal | None:
        v = self.value(arg)
        return v if isinstance(v, ParamVal) else None

    def _flat_args(self) -> Iterator[Any]:
        def walk(a: Any) -> Iterator[Any]:
            if isinstance(a, (list, tuple)):
                for x in a:
                    yield from walk(x)
            elif isinstance(a, dict):
                for x in a.values():
                    yield from walk(x)
            else:
                yield a

        yield from walk(self.node.args)
        yield from walk(self.node.kwargs)

    def values(self) -> list[TensorVal | ParamVal]:
        """Every tensor-valued argument in order (lists such as ``cat``'s flattened)."""
        out: list[TensorVal | ParamVal] = []

        def add(v: Any) -> None:
            if isinstance(v, (TensorVal, ParamVal)):
                out.append(v)
            elif isinstance(v, TupleVal):
                for item in v.items:
                    add(item)

        for a in self._flat_args():
            add(self.value(a))
        return out

    def tensors(self) -> list[TensorVal]:
        """Every tensor argument as an activation (parameters as channel-less data)."""
        return [TensorVal(v.shape, v.dtype, None) if isinstance(v, ParamVal) else v for v in self.values()]

    def describe(self) -> str:
        return self._w.describe(self.node)

    # -- producing outputs -----------------------------------------------------------------------
    def output(self, chan: Chan | None, axis: int = 1, meta: Any = None) -> TensorVal:
        meta = self.out_meta if meta is None else meta
        shape = meta_shape(meta)
        if chan is None or not 0 <= axis < len(shape):
            return TensorVal(shape, meta.dtype, None)
        if chan_positions(chan) != shape[axis]:
            raise RuntimeError(f"internal error: channel description of {self.describe()} has the wrong width")
        return TensorVal(shape, meta.dtype, chan, axis)

    def untracked(self, meta: Any = None) -> TensorVal:
        """An output with no prunable channel axis."""
        meta = self.out_meta if meta is None else meta
        return TensorVal(meta_shape(meta), meta.dtype, None)

    def passthrough(self, x: TensorVal) -> TensorVal:
        """The output carries exactly the channels of ``x`` on the same axis."""
        shape = self.out_shape
        if x.chan is None:
            return self.untracked()
        if len(shape) != len(x.shape) or shape[x.axis] != x.shape[x.axis]:
            self.fix(x, f"{self.describe()} changes the channel axis")
            return self.untracked()
        return self.output(x.chan, x.axis)

    def map_outputs(self, fn: Any, meta: Any = None) -> Value | None:
        meta = self.out_meta if meta is None else meta
        if is_tensor_meta(meta):
            return fn(meta)
        if isinstance(meta, (tuple, list)):
            return TupleVal(tuple(self.map_outputs(fn, m) for m in meta))
        return None

    def opaque(self, reason: str) -> Value | None:
        """Freeze every input's channels; outputs have none. For ops whose channel semantics are unknown."""
        for t in self.values():
            if isinstance(t, TensorVal):
                self.fix(t, reason)
        return self.map_outputs(lambda m: self.untracked(m))

    # -- recording facts -------------------------------------------------------------------------
    def equate(self, a: TensorVal, b: TensorVal) -> None:
        """``a`` and ``b`` meet channel by channel: they must lose the same channels."""
        if a.chan is None or b.chan is None:
            for t in (a, b):
                self.fix(t, f"{self.describe()} combines a channel axis with values that have no prunable channels")
            return
        if chan_positions(a.chan) != chan_positions(b.chan):
            raise RuntimeError(f"internal error: {self.describe()} equates different widths")
        self._w.solver.equate(a.chan, b.chan, self.describe())

    def fix(self, t: TensorVal | None, reason: str) -> None:
        """These channels may never be pruned; ``reason`` is reported on the group."""
        if t is not None and t.chan is not None:
            self._w.solver.fix(t.chan, reason)

    def member(self, module: str, role: str, t: TensorVal, attr: str = "", dim: int = 0) -> None:
        """Dimension ``dim`` of ``module``'s parameters (role, see Member) holds the channels of ``t``."""
        if t.chan is None:
            raise RuntimeError(f"internal error: member {module!r} without a channel axis")
        self._w.solver.member(module, role, t.chan, attr, dim)

    def param_members(self, p: ParamVal, axis: int, t: TensorVal) -> bool:
        """Record every parameter behind axis ``axis`` of ``p`` as holding ``t``'s channels.

        Returns False when some reference has no parameter dimension there (the value was broadcast
        or tiled along it), in which case nothing is recorded and the caller must freeze ``t``.
        """
        dims = [ref_dims[axis] for _, ref_dims in p.refs]
        if any(d is None for d in dims):
            return False
        for (fqn, _), d in zip(p.refs, dims):
            owner, attr, _ = self._w.module_of(fqn)
            self.member(owner, "param", t, attr=attr, dim=int(d))  # type: ignore[arg-type]
        return True

    def other(self, kind: str, x: TensorVal, out: TensorVal | None = None) -> None:
        """Record a non-conv op for the latency predictor (``x``: its first input)."""
        self._w.add_other(self.name, kind, x, out)
