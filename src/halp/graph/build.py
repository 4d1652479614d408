"""``build_graph``: capture a model with torch.export, walk its ATen ops through the handlers, and
assemble a ChannelGraph."""

from __future__ import annotations

import logging
import math
from typing import Any, Iterable, Mapping

import torch
from torch import fx, nn
from torch.export.graph_signature import InputKind, OutputKind

from . import layers as _layers  # noqa: F401  (registers the built-in handlers)
from . import ops as _ops  # noqa: F401
from . import shape_ops as _shape_ops  # noqa: F401
from .assemble import LayerRecord, OtherRecord, WalkFacts, assemble
from .capture import LEAF_OP, Capture, capture, module_matcher, normalize_inputs
from .channels import Chan, ChannelSolver
from .context import OpContext, ParamVal, TensorVal, TupleVal, Value, is_tensor_meta, meta_shape
from .handlers import DEFAULT_HANDLERS, Handler, HandlerRegistry, Target
from .types import ChannelGraph, LayerShape

log = logging.getLogger(__name__)


def _op_label(target: Any) -> str:
    name = getattr(target, "_name", None) or getattr(target, "__name__", None) or repr(target)
    return str(name).replace("::", ".")


class _Walker:
    """State of one walk over a captured graph; handlers reach it through ``OpContext.walker``."""

    def __init__(self, cap: Capture, model: nn.Module, registry: HandlerRegistry, ignored: Any) -> None:
        self.program = cap.program
        self.leaves = cap.leaves
        self.model = model
        self.registry = registry
        self.ignored = ignored
        self.modules = dict(model.named_modules())
        self._ignored_paths = {n for n, m in self.modules.items() if n and ignored(m, n)}
        self.solver = ChannelSolver()
        self.values: dict[fx.Node, Value | None] = {}
        self.facts = WalkFacts(self.solver, [], [], [], [])
        self._first_out: dict[str, Chan] = {}
        self._names: dict[str, int] = {}
        sig = self.program.graph_signature
        self._inputs = {s.arg.name: s for s in sig.input_specs if hasattr(s.arg, "name")}
        self._user_outputs = {s.arg.name for s in sig.output_specs
                              if s.kind == OutputKind.USER_OUTPUT and hasattr(s.arg, "name")}

    # -- what handlers use (see context.Walker) ---------------------------------------------------
    def describe(self, node: fx.Node) -> str:
        if node.target is LEAF_OP:
            name, m = self.leaves[int(node.args[1])]
            return f"module {name!r} ({type(m).__name__})"
        where = self._innermost(node)
        at = f" in {where!r}" if where else ""
        return f"{_op_label(node.target)} (node {node.name!r}{at})"

    def _innermost(self, node: fx.Node) -> str:
        stack = node.meta.get("nn_module_stack") or {}
        return next(reversed(stack.values()))[0] if stack else ""

    def op_name(self, node: fx.Node) -> str:
        if node.target is LEAF_OP:
            return self.leaves[int(node.args[1])][0]
        path = self._innermost(node)
        m = self.modules.get(path)
        if path and m is not None and not any(True for _ in m.children()):
            return path  # the op of a leaf module (a ReLU, a BatchNorm): named after it
        return node.name

    def module_of(self, fqn: str) -> tuple[str, str, nn.Module | None]:
        owner, _, attr = fqn.rpartition(".")
        return owner, attr, self.modules.get(owner)

    def first_output(self, key: str, width: int) -> Chan:
        """The output channels of module ``key``: made on its first call, shared by later calls."""
        if key not in self._first_out:
            self._first_out[key] = self.solver.new_source("layer", key, width)
        return self._first_out[key]

    def _unique(self, name: str) -> str:
        k = self._names.get(name, 0) + 1
        self._names[name] = k
        return name if k == 1 else f"{name}#{k}"

    def add_layer(self, module: str, shape: LayerShape, x: TensorVal | None, out: TensorVal | None,
                  in_features: int = 0, out_features: int = 0) -> None:
        self.facts.layers.append(LayerRecord(
            self._unique(module), module, shape, x.chan if x is not None else None,
            out.chan if out is not None else None, in_features, out_features,
        ))

    def add_other(self, name: str, kind: str, x: TensorVal, out: TensorVal | None) -> None:
        src = out if out is not None and len(out.shape) else x
        shape = tuple(src.shape)
        axis = x.axis if x.chan is not None else 1
        width = x.shape[axis] if len(x.shape) > axis else 1
        if len(shape) >= 2 and axis != 1 and len(shape) > axis:  # channels elsewhere: as (N, C, rest)
            rest = math.prod(s for i, s in enumerate(shape) if i not in (0, axis))
            shape = (shape[0], shape[axis], rest)
        self.facts.others.append(OtherRecord(self._unique(name), kind, x.chan, width, shape))

    def add_grouped(self, name: str, groups: int, in_chan: Chan | None, out_chan: Chan) -> None:
        self.facts.grouped.append((name, groups, in_chan, out_chan))

    # -- the walk --------------------------------------------------------------------------------
    def run(self) -> None:
        for node in self.program.graph.nodes:
            if node.op == "placeholder":
                self.values[node] = self._placeholder(node)
            elif node.op == "output":
                outs = node.args[0] if isinstance(node.args[0], (list, tuple)) else (node.args[0],)
                for arg in outs:
                    if isinstance(arg, fx.Node) and arg.name in self._user_outputs:
                        for v in _flatten(self.values.get(arg)):
                            if isinstance(v, TensorVal) and v.chan is not None:
                                self.solver.fix(v.chan, "reaches the network output")
            elif node.op == "call_function":
                self.values[node] = self._call(node)

    def _placeholder(self, node: fx.Node) -> Value | None:
        meta = node.meta.get("val")
        if not is_tensor_meta(meta):
            return None
        shape = meta_shape(meta)
        spec = self._inputs.get(node.name)
        kind = spec.kind if spec is not None else InputKind.USER_INPUT
        if kind in (InputKind.PARAMETER, InputKind.BUFFER):
            return ParamVal(shape, meta.dtype, ((str(spec.target), tuple(range(len(shape)))),))
        if kind == InputKind.USER_INPUT and len(shape) >= 2:
            chan = self.solver.new_source("input", node.name, shape[1], f"carries network input {node.name!r}")
            return TensorVal(shape, meta.dtype, chan, 1)
        return TensorVal(shape, meta.dtype, None)

    def _call(self, node: fx.Node) -> Value | None:
        meta = node.meta.get("val")
        if meta is None or not _has_tensor(meta):
            return None  # sizes, shapes, flags: no channels flow through them
        module = None
        if node.target is LEAF_OP:
            name, module = self.leaves[int(node.args[1])]
            handler = None if self.ignored(module, name) else self.registry.lookup_module(module)
            if handler is None:
                why = "is listed in ignore=" if self.ignored(module, name) else "is kept whole and has no handler"
                ctx = OpContext(self, node, module)
                return ctx.opaque(f"module {name!r} {why}")
            return self._leaf(node, module, handler)
        ctx = OpContext(self, node, module)
        handler = self.registry.lookup_op(node)
        if handler is None:
            self.facts.unknown_ops.append(self.describe(node))
            return ctx.opaque(f"the graph does not know how channels flow through {self.describe(node)}")
        value = handler(ctx)
        _check_value(value, meta, self.describe(node))
        inside = self._inside_ignored(node)
        if inside:
            reason = f"module {inside!r} is listed in ignore="
            for v in list(ctx.values()) + list(_flatten(value)):
                if isinstance(v, TensorVal):
                    ctx.fix(v, reason)
        return value

    def _inside_ignored(self, node: fx.Node) -> str | None:
        if not self._ignored_paths:
            return None
        for path, _ in (node.meta.get("nn_module_stack") or {}).values():
            if path in self._ignored_paths:
                return path
        return None

    def _leaf(self, node: fx.Node, module: nn.Module, handler: Handler) -> Value | None:
        metas = node.meta["val"]
        ctx = _LeafContext(self, node, module)
        value = handler(ctx)
        if len(metas) == 1:
            _check_value(value, metas[0], ctx.describe())
            return TupleVal((value,))
        _check_value(value, metas, ctx.describe())
        return value


class _LeafContext(OpContext):
    """OpContext for a leaf module call: its arguments are the module's, ``out_meta`` its single output
    when it has one."""

    @property
    def out_meta(self) -> Any:
        metas = self.node.meta.get("val")
        return metas[0] if len(metas) == 1 else metas

    def arg(self, index: int, name: str | None = None, default: Any = None) -> Any:
        args = self.node.args[0]
        return args[index] if index < len(args) else default


def _flatten(v: Any) -> Iterable[Any]:
    if isinstance(v, TupleVal):
        for item in v.items:
            yield from _flatten(item)
    else:
        yield v


def _has_tensor(meta: Any) -> bool:
    if is_tensor_meta(meta):
        return True
    if isinstance(meta, (tuple, list)):
        return any(_has_tensor(m) for m in meta)
    return False


def _check_value(value: Any, meta: Any, what: str) -> None:
    if is_tensor_meta(meta):
        ok = isinstance(value, (TensorVal, ParamVal)) and tuple(value.shape) == meta_shape(meta)
    else:
        ok = isinstance(value, TupleVal) and len(value.items) == len(meta)
    if not ok:
        raise ValueError(
            f"the handler for {what} returned {type(value).__name__}; it must return the op's output "
            "value (ctx.passthrough(x), ctx.output(chan, axis), ctx.untracked(), or a TupleVal for "
            "several outputs) matching the captured output"
        )


def build_graph(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    *,
    ignore: Iterable[str | type[nn.Module]] = (),
    leaf_modules: Iterable[str | type[nn.Module]] = (),
    handlers: Mapping[Target, Handler | str] | None = None,
) -> ChannelGraph:
    """Describe which channels of ``model`` must be pruned together, and every prunable layer's shape.

    The model is captured with ``torch.export`` (non-strict) in eval mode, on ``example_inputs``; it is
    neither modified nor kept, and its training flags are restored. Layer shapes (spatial sizes, batch,
    dtype) come from that capture, so pass inputs of the size and batch you will deploy with. Ops whose
    channel semantics the graph does not know freeze the channels they touch (listed in
    ``graph.unknown_ops`` and in each frozen group's ``reason``); nothing is guessed, so any ``keep``
    the graph accepts gives a slim model that computes what the masked one does.

    Args:
        model: the network.
        example_inputs: a tensor, or a tuple with one tensor per forward argument.
        ignore: modules (qualified names or classes) whose input and output channels must never be
            pruned; they are kept whole (not traced), so they also get past code export cannot capture.
        leaf_modules: modules to keep whole without tracing into them; a handler registered for their
            class says how channels flow through them (without one they are frozen like ``ignore``).
        handlers: extra handlers for this call only, ``{target: handler}`` as in ``register_handler``.

    Returns:
        The frozen :class:`ChannelGraph`. Group names are the qualified name of the group's first
        producer layer in execution order (``"name@offset"`` when the group starts at channel
        ``offset`` > 0 of that layer's output).

    Raises:
        ValueError: the model cannot be captured, or the inputs do not fit it.
    """
    inputs = normalize_inputs(example_inputs)
    ignored = module_matcher(model, ignore, "ignore")
    leaf = module_matcher(model, leaf_modules, "leaf_modules")
    registry = DEFAULT_HANDLERS.copy()
    for target, handler in (handlers or {}).items():
        registry.register(target, handler)
    try:  # ignored modules are captured like the rest (their layers are timed), frozen by the walk ...
        cap = capture(model, inputs, leaf)
    except ValueError:  # ... unless export cannot capture them: then they are kept whole
        if not ignore:
            raise
        cap = capture(model, inputs, lambda m, q: leaf(m, q) or ignored(m, q))
    walker = _Walker(cap, model, registry, ignored)
    walker.run()
    graph = assemble(walker.facts, tuple(tuple(t.shape) for t in inputs))
    log.debug(
        "channel graph of %s: %d groups (%d prunable), %d layers, %d other ops, %d unknown ops",
        type(model).__name__, len(graph.groups), len(graph.prunable_groups), len(graph.layers),
        len(graph.others), len(graph.unknown_ops),
    )
    return graph
