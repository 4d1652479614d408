"""Channel dependency graphs: which channels of a network must be pruned together.

``build_graph(model, example_inputs)`` captures the model with ``torch.export`` (its ATen training IR),
walks every ATen op through a handler from a registry, and returns a frozen :class:`ChannelGraph` (see
:mod:`halp.graph.types`). Ops without a handler freeze the channels they touch; :func:`register_handler`
adds handlers for other ATen ops and for modules kept whole.
"""

from __future__ import annotations

from .build import build_graph
from .context import OpContext, ParamVal, TensorVal, TupleVal
from .generic import elementwise, opaque, passthrough
from .handlers import DEFAULT_HANDLERS, HandlerRegistry, register_handler
from .types import ChannelGraph, ChannelGroup, Layer, LayerShape, Member, OtherOp

__all__ = [
    "build_graph",
    "ChannelGraph",
    "ChannelGroup",
    "Layer",
    "LayerShape",
    "Member",
    "OtherOp",
    "register_handler",
    "HandlerRegistry",
    "DEFAULT_HANDLERS",
    "OpContext",
    "TensorVal",
    "ParamVal",
    "TupleVal",
    "passthrough",
    "elementwise",
    "opaque",
]
