"""Symbolic tracing and shape propagation, with errors that say how to get past them.

The model is traced with ``torch.fx`` (its own modules are referenced, never copied or changed) and run
once on the example inputs with :class:`torch.fx.passes.shape_prop.ShapeProp` in eval mode under
``no_grad`` so that every node carries its real output shape. Training flags are restored afterwards,
so building a graph has no side effect on the model (batch-norm statistics are not updated).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

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


class _Tracer(fx.Tracer):
    """fx tracer that keeps user leaves opaque and remembers which module it was inside on failure."""

    def __init__(self, is_leaf: Callable[[nn.Module, str], bool]) -> None:
        super().__init__()
        self._user_leaf = is_leaf
        self.stack: list[str] = []
        self.failed_in: str | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return self._user_leaf(m, module_qualified_name) or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        name = self.path_of_module(m)
        self.stack.append(name)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = name
            raise
        finally:
            self.stack.pop()


def trace(
    model: nn.Module,
    inputs: Sequence[torch.Tensor],
    is_leaf: Callable[[nn.Module, str], bool],
    concrete_args: dict[str, Any] | None,
) -> fx.GraphModule:
    """Trace ``model`` and annotate every node with ``meta["tensor_meta"]`` from a real forward."""
    tracer = _Tracer(is_leaf)
    try:
        graph = tracer.trace(model, concrete_args=concrete_args)
    except Exception as e:  # fx raises TraceError, TypeError, RuntimeError ... depending on the cause
        where = f" inside submodule {tracer.failed_in!r}" if tracer.failed_in else ""
        raise ValueError(
            f"torch.fx could not trace {type(model).__name__}{where}: {type(e).__name__}: {e}. "
            "This usually means Python control flow or indexing that depends on tensor values. Fixes: "
            "pass build_graph(..., leaf_modules=[name or class]) to keep that submodule as one call "
            "(then register a handler for its class or list it in ignore=[...] so its channels are never "
            "pruned), pass concrete_args={...} to fix non-tensor forward arguments, or move the "
            "data-dependent code into a function decorated with torch.fx.wrap."
        ) from e
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            ShapeProp(gm).propagate(*inputs)
    except Exception as e:
        raise ValueError(
            f"running the traced {type(model).__name__} on example_inputs of shapes "
            f"{[tuple(t.shape) for t in inputs]} failed: {e}. Check that example_inputs match "
            "model.forward's tensor arguments (count, shape, dtype, device)."
        ) from e
    finally:
        for m, training in flags:
            m.training = training
    return gm
