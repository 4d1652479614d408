"""Capture a model's ATen graph with ``torch.export`` (non-strict), with errors that say what to do.

We walk export's *training IR* (``torch.export.export`` without ``run_decompositions``): it is made of
ATen operators, every parameter appears under its fully qualified name, every op carries the module
stack it ran in, and it keeps the ops whose channel semantics a core-ATen decomposition erases:
``chunk`` (cut at the pruned width) stays distinct from ``split`` (cut at sizes written in the code),
and ``linear`` stays one op instead of ``view``/``expand``/``bmm``.

Modules kept whole (``leaf_modules=`` / ``ignore=``) are replaced during the capture by one call of the
custom operator ``halp::leaf``, whose output shapes come from a real forward on the example inputs, so
code inside them is never traced (data-dependent control flow included).
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

_LEAF_SHAPES: dict[int, list[list[tuple[tuple[int, ...], torch.dtype]]]] = {}
_LEAF_MODULES: dict[int, nn.Module] = {}
_keys = itertools.count()


@torch.library.custom_op("halp::leaf", mutates_args=())
def _leaf(inputs: list[torch.Tensor], key: int, call: int) -> list[torch.Tensor]:
    out = _LEAF_MODULES[key](*inputs)
    return [t.clone() for t in (out if isinstance(out, (tuple, list)) else (out,))]


@_leaf.register_fake
def _leaf_fake(inputs: list[torch.Tensor], key: int, call: int) -> list[torch.Tensor]:
    device = inputs[0].device if inputs else torch.device("cpu")
    return [torch.empty(s, dtype=d, device=device) for s, d in _LEAF_SHAPES[key][call]]


LEAF_OP = torch.ops.halp.leaf.default


def normalize_inputs(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and example_inputs and all(
        isinstance(t, torch.Tensor) for t in example_inputs
    ):
        return tuple(example_inputs)
    raise ValueError(
        "example_inputs must be a tensor or a non-empty tuple of tensors (one per forward argument), "
        f"got {type(example_inputs).__name__}"
    )


def module_matcher(model: nn.Module, specs: Iterable[Any], arg: str) -> Callable[[nn.Module, str], bool]:
    """A predicate for modules named (qualified name) or typed (class) in ``specs``."""
    names: set[str] = set()
    types: list[type] = []
    known = dict(model.named_modules())
    for spec in specs:
        if isinstance(spec, str):
            if spec not in known:
                close = [n for n in known if n and (spec in n or n in spec)][:5]
                raise ValueError(
                    f"{arg}: the model has no submodule named {spec!r}"
                    + (f"; did you mean one of {close}?" if close else "; use names from model.named_modules()")
                )
            names.add(spec)
        elif isinstance(spec, type) and issubclass(spec, nn.Module):
            types.append(spec)
        else:
            raise ValueError(f"{arg}: entries must be qualified module names or nn.Module classes, got {spec!r}")
    type_tuple = tuple(types)

    def match(m: nn.Module, qualname: str) -> bool:
        return qualname in names or (bool(type_tuple) and isinstance(m, type_tuple))

    return match


@dataclass
class Capture:
    """The exported program plus what the walk needs to name things."""

    program: Any  # torch.export.ExportedProgram
    leaves: dict[int, tuple[str, nn.Module]] = field(default_factory=dict)  # key -> (qualified name, module)


def _outputs(out: Any) -> list[torch.Tensor]:
    items = out if isinstance(out, (tuple, list)) else (out,)
    if not all(isinstance(t, torch.Tensor) for t in items):
        raise ValueError("a module kept whole (leaf_modules/ignore) must return a tensor or a tuple of tensors")
    return list(items)


@contextlib.contextmanager
def _leaves_replaced(model: nn.Module, inputs: Sequence[torch.Tensor],
                     is_leaf: Callable[[nn.Module, str], bool]) -> Iterator[dict[int, tuple[str, nn.Module]]]:
    """Swap every outermost leaf module's forward for one ``halp::leaf`` call while the block runs."""
    leaves = [(name, m) for name, m in model.named_modules() if name and is_leaf(m, name)]
    outer = [(n, m) for n, m in leaves if not any(n.startswith(o + ".") for o, _ in leaves)]
    keys: dict[int, tuple[str, nn.Module]] = {}
    singles: dict[int, list[bool]] = {}
    hooks = []
    for name, m in outer:
        key = next(_keys)
        keys[key], _LEAF_MODULES[key], _LEAF_SHAPES[key], singles[key] = (name, m), m, [], []

        def record(mod: nn.Module, args: Any, out: Any, key: int = key) -> None:
            _LEAF_SHAPES[key].append([(tuple(t.shape), t.dtype) for t in _outputs(out)])
            singles[key].append(isinstance(out, torch.Tensor))

        hooks.append(m.register_forward_hook(record))
    try:
        if outer:
            with torch.no_grad():
                model(*inputs)  # the real shapes of every leaf call, for the fake implementation
    finally:
        for h in hooks:
            h.remove()
    saved = {}
    for key, (name, m) in keys.items():

        def forward(*args: Any, key: int = key, calls: Iterator[int] = itertools.count(), **kwargs: Any) -> Any:
            if kwargs or not all(isinstance(t, torch.Tensor) for t in args):
                raise ValueError(
                    f"module {keys[key][0]!r} is kept whole (leaf_modules/ignore) but is called with "
                    "non-tensor or keyword arguments; only positional tensor arguments are supported"
                )
            call = next(calls)
            out = torch.ops.halp.leaf(list(args), key, call)
            return out[0] if singles[key][call] else tuple(out)

        saved[key] = m.__dict__.get("forward")
        m.forward = forward  # type: ignore[method-assign]
    try:
        yield keys
    finally:
        for key, (_, m) in keys.items():
            if saved[key] is None:
                del m.forward
            else:
                m.forward = saved[key]  # type: ignore[method-assign]
            _LEAF_MODULES.pop(key, None)
            _LEAF_SHAPES.pop(key, None)


class _Stack:
    """Which module the capture was in when it failed."""

    def __init__(self, model: nn.Module) -> None:
        self.stack: list[str] = []
        self.failed_in: str | None = None
        names = {m: n for n, m in model.named_modules()}
        self._handles = []
        for m, n in names.items():
            self._handles.append(m.register_forward_pre_hook(lambda mod, a, n=n: self.stack.append(n)))
            self._handles.append(m.register_forward_hook(lambda mod, a, o: self._pop()))

    def _pop(self) -> None:
        if self.stack:
            self.stack.pop()

    def close(self) -> None:
        if self.stack and self.failed_in is None:
            self.failed_in = self.stack[-1]
        for h in self._handles:
            h.remove()


def capture(model: nn.Module, inputs: Sequence[torch.Tensor], is_leaf: Callable[[nn.Module, str], bool]) -> Capture:
    """Export ``model`` on ``inputs`` in eval mode (training flags restored afterwards, no side effect)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        try:
            with torch.no_grad():
                model(*inputs)
        except Exception as e:
            raise ValueError(
                f"running {type(model).__name__} on example_inputs of shapes {[tuple(t.shape) for t in inputs]} "
                f"failed: {type(e).__name__}: {e}. Check that example_inputs match model.forward's tensor "
                "arguments (count, shape, dtype, device)."
            ) from e
        with _leaves_replaced(model, inputs, is_leaf) as leaves:
            tracker = _Stack(model)
            try:
                program = torch.export.export(model, tuple(inputs), strict=False)
            except Exception as e:
                tracker.close()
                where = f" inside submodule {tracker.failed_in!r}" if tracker.failed_in else ""
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                raise ValueError(
                    f"torch.export could not capture {type(model).__name__}{where}: {type(e).__name__}: {first}. "
                    "This usually means Python control flow that depends on tensor values. Fixes: keep that "
                    "submodule whole with build_graph(..., leaf_modules=[name or class]) and register a "
                    "handler for its class (or list it in ignore=[...] so its channels are never pruned), "
                    "or rewrite the data-dependent branch with torch.cond."
                ) from e
            tracker.close()
        return Capture(program, dict(leaves))
    finally:
        for m, training in flags:
            m.training = training
