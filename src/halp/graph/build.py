"""``build_graph``: trace a model, walk its ops through the handlers, and assemble a ChannelGraph."""

from __future__ import annotations

import logging
import operator
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import TensorMetadata

from . import layers as _layers  # noqa: F401  (registers the built-in handlers)
from . import ops as _ops  # noqa: F401
from . import shape_ops as _shape_ops  # noqa: F401
from .assemble import assemble
from .channels import Chan, ChannelSolver
from .handlers import (
    DEFAULT_HANDLERS, ConstVal, Handler, HandlerRegistry, OpContext, Target, TensorVal, TupleVal, Value,
)
from .trace import module_matcher, normalize_inputs, trace
from .types import ChannelGraph, LayerShape

log = logging.getLogger(__name__)


@dataclass
class LayerRecord:
    name: str
    module: str
    shape: LayerShape
    in_chan: Chan | None
    out_chan: Chan | None
    in_features: int = 0
    out_features: int = 0


@dataclass
class OtherRecord:
    name: str
    kind: str
    chan: Chan | None
    width: int
    out_shape: tuple[int, ...]


def _function_name(fn: Any) -> str:
    """A readable, importable name: torch.cumsum rather than torch._VariableFunctionsClass.cumsum."""
    name = getattr(fn, "__name__", None)
    if name is None:
        return repr(fn)
    for prefix, namespace in (("operator", operator), ("torch", torch), ("torch.nn.functional", F)):
        if getattr(namespace, name, None) is fn:
            return f"{prefix}.{name}"
    module = getattr(fn, "__module__", None)
    return f"{module}.{getattr(fn, '__qualname__', name)}" if module else name


class _Walker:
    """State of one walk over a traced graph; handlers reach it through ``OpContext.walker``."""

    def __init__(self, gm: fx.GraphModule, registry: HandlerRegistry,
                 ignored: Callable[[nn.Module, str], bool]) -> None:
        self.gm = gm
        self.registry = registry
        self.ignored = ignored
        self.modules = dict(gm.named_modules())
        self.solver = ChannelSolver()
        self.values: dict[fx.Node, Value | None] = {}
        self.layers: list[LayerRecord] = []
        self.others: list[OtherRecord] = []
        self.grouped: list[tuple[str, int, Chan, Chan]] = []
        self._first_out: dict[str, Chan] = {}
        self._consts: dict[fx.Node, TensorVal] = {}
        self._names: dict[str, int] = {}

    # -- helpers used by handlers ----------------------------------------------------------------
    def describe(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return f"module {node.target!r} ({type(self.modules[str(node.target)]).__name__})"
        if node.op == "call_method":
            return f"tensor method .{node.target}() (node {node.name!r})"
        if node.op == "call_function":
            return f"function {_function_name(node.target)} (node {node.name!r})"
        return f"{node.op} {node.target!r}"

    def first_output(self, module: str, make: Callable[[], Chan]) -> Chan:
        """The output channels of ``module``: made on its first call, shared by later calls."""
        if module not in self._first_out:
            self._first_out[module] = make()
        return self._first_out[module]

    def const_tensor(self, node: fx.Node, v: ConstVal) -> TensorVal:
        if node not in self._consts:
            chan = None
            if len(v.shape) >= 2:
                label = f"{v.owner}.{v.attr}" if v.owner else v.attr
                chan = self.solver.new_source("const", label, v.shape[1], f"channels of tensor {label!r}")
            self._consts[node] = TensorVal(v.shape, v.dtype, chan)
        return self._consts[node]

    def map_meta(self, meta: Any, fn: Callable[[Any], Value | None]) -> Value | None:
        if isinstance(meta, TensorMetadata):
            return fn(meta)
        if isinstance(meta, (tuple, list)):
            return TupleVal(tuple(self.map_meta(m, fn) for m in meta))
        return None

    def _unique(self, name: str) -> str:
        k = self._names.get(name, 0) + 1
        self._names[name] = k
        return name if k == 1 else f"{name}#{k}"

    def add_layer(self, module: str, shape: LayerShape, x: TensorVal | None, out: TensorVal | None,
                  in_features: int = 0, out_features: int = 0) -> None:
        self.layers.append(LayerRecord(
            self._unique(module), module, shape, x.chan if x is not None else None,
            out.chan if out is not None else None, in_features, out_features,
        ))

    def add_other(self, name: str, kind: str, x: TensorVal, out: TensorVal | None) -> None:
        shape = out.shape if out is not None else x.shape
        width = x.shape[1] if len(x.shape) >= 2 else 1
        self.others.append(OtherRecord(self._unique(name), kind, x.chan, width, tuple(shape)))

    # -- the walk --------------------------------------------------------------------------------
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            meta = node.meta.get("tensor_meta")
            if node.op == "placeholder":
                self.values[node] = self.map_meta(meta, lambda m, n=node: self._input(n, m))
            elif node.op == "get_attr":
                if isinstance(meta, TensorMetadata):
                    owner, _, attr = str(node.target).rpartition(".")
                    self.values[node] = ConstVal(owner, attr, tuple(meta.shape), meta.dtype)
            elif node.op == "output":
                for v in self._flatten(node.args):
                    if isinstance(v, TensorVal) and v.chan is not None:
                        self.solver.fix(v.chan, "reaches the network output")
            else:
                self.values[node] = self._call(node, meta)

    def _input(self, node: fx.Node, meta: TensorMetadata) -> TensorVal:
        shape = tuple(meta.shape)
        chan = None
        if len(shape) >= 2:
            chan = self.solver.new_source("input", node.name, shape[1], f"carries network input {node.name!r}")
        return TensorVal(shape, meta.dtype, chan)

    def _flatten(self, a: Any) -> Iterable[Value | None]:
        if isinstance(a, fx.Node):
            v = self.values.get(a)
            if isinstance(v, TupleVal):
                for item in v.items:
                    yield item
            else:
                yield v
        elif isinstance(a, (list, tuple)):
            for x in a:
                yield from self._flatten(x)
        elif isinstance(a, dict):
            for x in a.values():
                yield from self._flatten(x)

    def _call(self, node: fx.Node, meta: Any) -> Value | None:
        module = self.modules.get(str(node.target)) if node.op == "call_module" else None
        ctx = OpContext(self, node, module)
        if meta is None or not _has_tensor(meta):
            return None  # sizes, shapes, flags: no channels flow through them
        if all(self.values.get(n) is None for n in node.all_input_nodes):
            # a tensor created inside forward (torch.zeros(...)): fixed channels
            return self.map_meta(meta, lambda m: ctx.fixed_output(f"tensor created by {ctx.describe()}", m))
        ignored = module is not None and self.ignored(module, str(node.target))
        handler = self.registry.lookup(node, module)
        if handler is None:
            if not ignored:
                raise ValueError(_unknown_message(self.describe(node), node, module))
            from .ops import opaque

            handler = opaque(None)
        value = handler(ctx)
        _check_value(value, meta, self.describe(node))
        if ignored:
            reason = f"module {node.target!r} is listed in ignore="
            for t in ctx.tensors():
                ctx.fix(t, reason)
            for v in self._flatten_value(value):
                ctx.fix(v, reason)
        return value

    def _flatten_value(self, v: Value | None) -> Iterable[TensorVal]:
        if isinstance(v, TensorVal):
            yield v
        elif isinstance(v, TupleVal):
            for item in v.items:
                yield from self._flatten_value(item)


def _has_tensor(meta: Any) -> bool:
    if isinstance(meta, TensorMetadata):
        return True
    if isinstance(meta, (tuple, list)):
        return any(_has_tensor(m) for m in meta)
    return False


def _check_value(value: Any, meta: Any, what: str) -> None:
    if isinstance(meta, TensorMetadata):
        ok = isinstance(value, TensorVal) and tuple(value.shape) == tuple(meta.shape)
    else:
        ok = isinstance(value, TupleVal) and len(value.items) == len(meta)
    if not ok:
        raise ValueError(
            f"the handler for {what} returned {type(value).__name__}; it must return the op's output "
            "value (ctx.passthrough(x), ctx.output(chan), ctx.fixed_output(reason), or a TupleVal for "
            "several outputs) matching the traced output"
        )


def _unknown_message(what: str, node: fx.Node, module: nn.Module | None) -> str:
    if module is not None:
        target = f"{type(module).__module__}.{type(module).__name__}"
        fixes = (
            f"register a handler for the class: halp.graph.register_handler({type(module).__name__}, kind) "
            f"(or build_graph(..., handlers={{{type(module).__name__}: kind}}) for this call only), or "
            f"exclude the module from pruning with build_graph(..., ignore=[{str(node.target)!r}])"
        )
    elif node.op == "call_method":
        target = f"tensor method {node.target!r}"
        fixes = (f"register a handler for it: halp.graph.register_handler({str(node.target)!r}, kind), or "
                 "wrap the call in an nn.Module, keep it whole with leaf_modules=[...] and list it in ignore=[...]")
    else:
        target = _function_name(node.target)
        fixes = (f"register a handler for it: halp.graph.register_handler({target}, kind), or wrap the call "
                 "in an nn.Module, keep it whole with leaf_modules=[...] and list it in ignore=[...]")
    return (
        f"build_graph does not know how channels flow through {what} [{target}] and will not guess. "
        f"Fix: {fixes}. kind is 'passthrough' if every output channel is the same input channel "
        "(activations, per-channel ops), 'elementwise' if same-shaped inputs meet channel by channel, "
        "'opaque' to freeze the channels around it, or a function(ctx) returning the output value."
    )


def build_graph(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    *,
    ignore: Iterable[str | type[nn.Module]] = (),
    leaf_modules: Iterable[str | type[nn.Module]] = (),
    handlers: Mapping[Target, Handler | str] | None = None,
    concrete_args: dict[str, Any] | None = None,
) -> ChannelGraph:
    """Describe which channels of ``model`` must be pruned together, and every prunable layer's shape.

    The model is traced with torch.fx and run once on ``example_inputs`` (eval mode, no grad, training
    flags restored); it is neither modified nor kept. Layer shapes (spatial sizes, batch, dtype) come
    from that run, so pass inputs of the size and batch you will deploy with.

    Args:
        model: the network.
        example_inputs: a tensor, or a tuple with one tensor per forward argument.
        ignore: modules (qualified names or classes) whose input and output channels must never be
            pruned; they are traced as single calls, so they also get past untraceable code.
        leaf_modules: modules to keep as single calls without tracing into them (each then needs a
            handler for its class, or to be listed in ``ignore``).
        handlers: extra handlers for this call only, ``{target: handler}`` as in ``register_handler``.
        concrete_args: passed to torch.fx to fix non-tensor forward arguments.

    Returns:
        The frozen :class:`ChannelGraph`. Group names are the qualified name of the group's first
        producer layer in execution order (``"name@offset"`` when the group starts at channel
        ``offset`` > 0 of that layer's output).

    Raises:
        ValueError: the model cannot be traced, an op has no handler, or the inputs do not fit.
    """
    inputs = normalize_inputs(example_inputs)
    ignored = module_matcher(model, ignore, "ignore")
    leaf = module_matcher(model, leaf_modules, "leaf_modules")
    registry = DEFAULT_HANDLERS.copy()
    for target, handler in (handlers or {}).items():
        registry.register(target, handler)
    gm = trace(model, inputs, lambda m, q: leaf(m, q) or ignored(m, q), concrete_args)
    walker = _Walker(gm, registry, ignored)
    walker.run()
    graph = assemble(walker, tuple(tuple(t.shape) for t in inputs))
    log.debug(
        "channel graph of %s: %d groups (%d prunable), %d layers, %d other ops",
        type(model).__name__, len(graph.groups), len(graph.prunable_groups), len(graph.layers), len(graph.others),
    )
    return graph
