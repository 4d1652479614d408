"""The per-op handler registry and the context a handler works with.

Every traced op (a leaf module call, a function such as ``torch.cat``, a tensor method such as ``view``)
is dispatched to a handler that says how channels flow through it. A handler receives an
:class:`OpContext` and returns the value of the op's output (a :class:`TensorVal`, or a
:class:`TupleVal` for ops like ``chunk``). Ops with no handler are an error, never a guess: a wrong
guess would silently produce a model that computes something else after pruning.

Users extend the registry for their own layers::

    from halp.graph import register_handler

    register_handler(MyActivation, "passthrough", other_kind="myact")  # each channel stays itself
    register_handler(torch.special.expit, "elementwise")               # inputs meet element-wise
    register_handler(MyMixer, "opaque")                                # freeze the channels around it

    @register_handler(MyGate)
    def _gate(ctx):                                                    # anything else
        x, g = ctx.tensors()
        ctx.equate(x, g)
        return ctx.passthrough(x)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Union

import torch
from torch import fx, nn

from .channels import Chan, chan_positions

if TYPE_CHECKING:  # pragma: no cover
    from .build import _Walker


@dataclass(frozen=True)
class TensorVal:
    """A tensor flowing through the network: its shape and how its channel axis (dim 1) is made.

    ``chan`` is None for tensors without a channel axis (fewer than two dimensions).
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    chan: Chan | None


@dataclass(frozen=True)
class ConstVal:
    """A parameter or buffer read directly in ``forward`` (``self.scale``): a candidate per-channel param."""

    owner: str  # qualified name of the module that owns it ("" = the root)
    attr: str
    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass(frozen=True)
class TupleVal:
    """Several outputs (``chunk``/``split``); ``None`` items are not tensors."""

    items: tuple["Value | None", ...]


Value = Union[TensorVal, ConstVal, TupleVal]
Handler = Callable[["OpContext"], "Value | None"]
Target = Union[type, Callable[..., Any], str]


class OpContext:
    """What a handler sees of one traced op, and the facts it may record about its channels."""

    def __init__(self, walker: "_Walker", node: fx.Node, module: nn.Module | None) -> None:
        self._w = walker
        self.node = node
        self.module = module
        #: qualified module name for module calls, the fx node name otherwise
        self.name: str = str(node.target) if node.op == "call_module" else node.name

    # -- reading -------------------------------------------------------------------------------
    @property
    def out_meta(self) -> Any:
        return self.node.meta.get("tensor_meta")

    @property
    def out_shape(self) -> tuple[int, ...]:
        meta = self.out_meta
        if not hasattr(meta, "shape"):
            raise ValueError(f"op {self.describe()} does not return a single tensor")
        return tuple(meta.shape)

    def arg(self, index: int, name: str | None = None, default: Any = None) -> Any:
        """A raw argument (an fx.Node for tensors, a Python value otherwise), by position or keyword."""
        if name is not None and name in self.node.kwargs:
            return self.node.kwargs[name]
        if index < len(self.node.args):
            return self.node.args[index]
        return default

    def value(self, arg: Any) -> Value | None:
        """The recorded value of an argument; None for Python values and non-tensor results."""
        return self._w.values.get(arg) if isinstance(arg, fx.Node) else None

    def tensor(self, arg: Any) -> TensorVal | None:
        """An argument as a tensor; a directly read parameter becomes a fixed (unprunable) source."""
        v = self.value(arg)
        if isinstance(v, ConstVal):
            return self._w.const_tensor(arg, v)
        return v if isinstance(v, TensorVal) else None

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

    def values(self) -> list[tuple[Any, TensorVal | ConstVal]]:
        """(raw arg, value) of every tensor-valued argument, constants kept as ConstVal.

        Tuples of tensors passed whole (``torch.cat(x.chunk(2, 1), 1)``) are expanded in order.
        """
        out: list[tuple[Any, TensorVal | ConstVal]] = []

        def add(a: Any, v: Any) -> None:
            if isinstance(v, (TensorVal, ConstVal)):
                out.append((a, v))
            elif isinstance(v, TupleVal):
                for item in v.items:
                    add(None, item)

        for a in self._flat_args():
            add(a, self.value(a))
        return out

    def tensors(self) -> list[TensorVal]:
        """Every tensor argument in order (lists such as ``torch.cat``'s are flattened)."""
        out = []
        for a, v in self.values():
            if isinstance(v, ConstVal):
                v = self._w.const_tensor(a, v)
            out.append(v)
        return out

    def describe(self) -> str:
        return self._w.describe(self.node)

    # -- producing outputs ---------------------------------------------------------------------
    def output(self, chan: Chan | None, meta: Any = None) -> TensorVal:
        meta = self.out_meta if meta is None else meta
        shape = tuple(meta.shape)
        if chan is not None and (len(shape) < 2 or chan_positions(chan) != shape[1]):
            raise RuntimeError(f"internal error: channel description of {self.describe()} has the wrong width")
        return TensorVal(shape, meta.dtype, chan if len(shape) >= 2 else None)

    def passthrough(self, x: TensorVal) -> TensorVal:
        """The output carries exactly the channels of ``x`` (same count, same order)."""
        shape = self.out_shape
        if len(shape) < 2:
            return self.output(None)
        if x.chan is None or len(x.shape) < 2 or x.shape[1] != shape[1]:
            self.fix(x, f"{self.describe()} changes the channel axis")
            return self.fixed_output(f"channels made by {self.describe()}")
        return self.output(x.chan)

    def fixed_output(self, reason: str, meta: Any = None) -> TensorVal:
        """A fresh channel axis that can never be pruned (the op scrambles or creates channels)."""
        meta = self.out_meta if meta is None else meta
        shape = tuple(meta.shape)
        if len(shape) < 2:
            return TensorVal(shape, meta.dtype, None)
        chan = self._w.solver.new_source("opaque", self.name, shape[1], reason)
        return TensorVal(shape, meta.dtype, chan)

    def opaque(self, reason: str) -> Value | None:
        """Freeze every input's channels and give every output fresh frozen channels."""
        for t in self.tensors():
            self.fix(t, reason)
        return self._w.map_meta(self.out_meta, lambda m: self.fixed_output(reason, m))

    # -- recording facts -----------------------------------------------------------------------
    def equate(self, a: TensorVal, b: TensorVal) -> None:
        """``a`` and ``b`` meet channel by channel: they must lose the same channels."""
        if a.chan is None or b.chan is None:
            for t in (a, b):
                self.fix(t, f"{self.describe()} combines a channel axis with a tensor without one")
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

    def other(self, kind: str, x: TensorVal, out: TensorVal | None = None) -> None:
        """Record a non-conv op for the latency predictor (``x``: its first input)."""
        self._w.add_other(self.name, kind, x, out if out is not None else self.output_or_none())

    def output_or_none(self) -> TensorVal | None:
        meta = self.out_meta
        return TensorVal(tuple(meta.shape), meta.dtype, None) if hasattr(meta, "shape") else None

    @property
    def walker(self) -> "_Walker":
        """The graph builder (for handlers that add layers, e.g. convolutions)."""
        return self._w


class HandlerRegistry:
    """Maps module types, functions and tensor-method names to handlers."""

    def __init__(self) -> None:
        self._modules: dict[type, Handler] = {}
        self._functions: dict[Any, Handler] = {}
        self._methods: dict[str, Handler] = {}

    def register(self, target: Target, handler: Handler | str, *, other_kind: str | None = None) -> Handler:
        fn = _resolve(handler, other_kind)
        if isinstance(target, type):
            if not issubclass(target, nn.Module):
                raise ValueError(f"handler target {target!r} is a class but not an nn.Module subclass")
            self._modules[target] = fn
        elif isinstance(target, str):
            self._methods[target] = fn
        elif callable(target):
            self._functions[target] = fn
        else:
            raise ValueError(
                f"cannot register a handler for {target!r}: give an nn.Module subclass, a function "
                "(torch.cat, operator.add, F.relu ...), or a tensor method name ('view', 'relu' ...)"
            )
        return fn

    def lookup(self, node: fx.Node, module: nn.Module | None) -> Handler | None:
        if node.op == "call_module" and module is not None:
            for cls in type(module).__mro__:
                if cls in self._modules:
                    return self._modules[cls]
            return None
        if node.op == "call_method":
            return self._methods.get(str(node.target))
        if node.op == "call_function":
            try:
                return self._functions.get(node.target)
            except TypeError:  # unhashable target
                return None
        return None

    def copy(self) -> "HandlerRegistry":
        new = HandlerRegistry()
        new._modules = dict(self._modules)
        new._functions = dict(self._functions)
        new._methods = dict(self._methods)
        return new


def _resolve(handler: Handler | str, other_kind: str | None) -> Handler:
    if callable(handler):
        return handler
    from . import ops  # the generic handlers live with the built-in ops

    makers = {"passthrough": ops.passthrough, "elementwise": ops.elementwise, "opaque": ops.opaque}
    if handler not in makers:
        raise ValueError(
            f"unknown handler kind {handler!r}; use 'passthrough' (each channel stays itself), "
            "'elementwise' (same-shaped inputs meet channel by channel), 'opaque' (freeze the channels "
            "around the op) or a function(ctx) -> value"
        )
    return makers[handler](other_kind)


#: the handlers every build_graph call starts from (built-ins are registered on import of halp.graph)
DEFAULT_HANDLERS = HandlerRegistry()


def register_handler(
    target: Target, handler: Handler | str | None = None, *, other_kind: str | None = None
) -> Any:
    """Teach every later ``build_graph`` call how channels flow through ``target``.

    Args:
        target: an ``nn.Module`` subclass (matched through its MRO, so subclasses inherit it), a
            function as it appears in traced code (``torch.cat``, ``operator.add``, ``F.gelu``), or a
            tensor method name (``"view"``).
        handler: ``"passthrough"``, ``"elementwise"``, ``"opaque"`` or a function ``(OpContext) ->
            value``. Omit it to use ``register_handler`` as a decorator.
        other_kind: for the string kinds, the ``OtherOp.kind`` recorded for the latency predictor
            (None: not recorded, for ops that cost nothing such as views).

    Returns:
        The registered handler (or a decorator when ``handler`` is omitted).
    """
    if handler is None:

        def deco(fn: Handler) -> Handler:
            DEFAULT_HANDLERS.register(target, fn, other_kind=other_kind)
            return fn

        return deco
    return DEFAULT_HANDLERS.register(target, handler, other_kind=other_kind)

