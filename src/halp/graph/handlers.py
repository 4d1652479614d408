"""The per-op handler registry.

Every captured op is an ATen operator (``torch.ops.aten.conv2d.default``, ``aten.add.Tensor`` ...):
handlers are registered per ATen operator, a finite set, instead of per Python function or module,
which never ends. An operator with no handler is never guessed at: its channels are frozen, with the
operator named as the reason (see ``halp graph``). A module kept whole with ``build_graph(...,
leaf_modules=[...])`` is dispatched by its class instead.

Users extend the registry::

    from halp.graph import register_handler

    register_handler(torch.ops.aten.cumsum, "opaque")             # an ATen op (or "cumsum", torch.cumsum)
    register_handler(MyActivation, "passthrough", other_kind="act") # a leaf module class
    register_handler(MyMixer, "elementwise")

    @register_handler(MyGate)                                     # anything else
    def _gate(ctx):
        x, g = ctx.tensors()
        ctx.equate(x, g)
        return ctx.passthrough(x)
"""

from __future__ import annotations

from typing import Any, Callable, Union

import torch
from torch import fx, nn

from .generic import Handler, elementwise, opaque, passthrough

Target = Union[type, Callable[..., Any], str, Any]


def aten_packet(target: Any) -> Any:
    """The ATen overload packet for an op given as an overload, a packet, a name or a torch function."""
    if isinstance(target, torch._ops.OpOverload):
        return target.overloadpacket
    if isinstance(target, torch._ops.OpOverloadPacket):
        return target
    name = target if isinstance(target, str) else getattr(target, "__name__", None)
    if isinstance(name, str):
        name = name.removeprefix("aten.").split(".")[0]
        if hasattr(torch.ops.aten, name):
            return getattr(torch.ops.aten, name)
    return None


class HandlerRegistry:
    """Maps ATen operators (and leaf module classes) to handlers."""

    def __init__(self) -> None:
        self._ops: dict[Any, Handler] = {}
        self._modules: dict[type, Handler] = {}
        self._other: dict[Any, Handler] = {}

    def register(self, target: Target, handler: Handler | str, *, other_kind: str | None = None) -> Handler:
        fn = _resolve(handler, other_kind)
        if isinstance(target, type):
            if not issubclass(target, nn.Module):
                raise ValueError(f"handler target {target!r} is a class but not an nn.Module subclass")
            self._modules[target] = fn
            return fn
        packet = aten_packet(target)
        if packet is not None:
            self._ops[packet] = fn
        elif callable(target):  # operator.getitem and other non-ATen callables of the captured graph
            self._other[target] = fn
        else:
            raise ValueError(
                f"cannot register a handler for {target!r}: give an ATen operator (torch.ops.aten.cumsum, "
                "'cumsum', or a torch function with an ATen namesake such as torch.cumsum) or an nn.Module "
                "subclass kept whole with build_graph(..., leaf_modules=[...])"
            )
        return fn

    def lookup_op(self, node: fx.Node) -> Handler | None:
        target = node.target
        if isinstance(target, torch._ops.OpOverload):
            return self._ops.get(target.overloadpacket)
        try:
            return self._other.get(target)
        except TypeError:  # unhashable target
            return None

    def lookup_module(self, module: nn.Module) -> Handler | None:
        for cls in type(module).__mro__:
            if cls in self._modules:
                return self._modules[cls]
        return None

    def copy(self) -> "HandlerRegistry":
        new = HandlerRegistry()
        new._ops, new._modules, new._other = dict(self._ops), dict(self._modules), dict(self._other)
        return new


def _resolve(handler: Handler | str, other_kind: str | None) -> Handler:
    if callable(handler):
        return handler
    makers = {"passthrough": passthrough, "elementwise": elementwise, "opaque": opaque}
    if handler not in makers:
        raise ValueError(
            f"unknown handler kind {handler!r}; use 'passthrough' (each channel stays itself), "
            "'elementwise' (same-shaped inputs meet channel by channel), 'opaque' (freeze the channels "
            "around the op) or a function(ctx) -> value"
        )
    return makers[handler](other_kind)


#: the handlers every build_graph call starts from (built-ins are registered on import of halp.graph)
DEFAULT_HANDLERS = HandlerRegistry()


def register_handler(target: Target, handler: Handler | str | None = None, *, other_kind: str | None = None) -> Any:
    """Teach every later ``build_graph`` call how channels flow through ``target``.

    Args:
        target: an ATen operator (``torch.ops.aten.cumsum``, its name ``"cumsum"``, or a torch function
            with that name), or an ``nn.Module`` subclass that ``build_graph(..., leaf_modules=...)``
            keeps whole (matched through its MRO).
        handler: ``"passthrough"``, ``"elementwise"``, ``"opaque"`` or a function ``(OpContext) ->
            value``. Omit it to use ``register_handler`` as a decorator.
        other_kind: for the string kinds, the ``OtherOp.kind`` recorded for the latency predictor.

    Returns:
        The registered handler (or a decorator when ``handler`` is omitted).
    """
    if handler is None:

        def deco(fn: Handler) -> Handler:
            DEFAULT_HANDLERS.register(target, fn, other_kind=other_kind)
            return fn

        return deco
    return DEFAULT_HANDLERS.register(target, handler, other_kind=other_kind)
