"""Channel dependency graphs: which channels of a network must be pruned together.

``build_graph(model, example_inputs)`` traces the model with torch.fx, runs it once for shapes, and
returns a frozen :class:`ChannelGraph` (see :mod:`halp.graph.types`). How each op moves channels is
decided by a handler from a registry; :func:`register_handler` adds handlers for your own layers.
"""

from __future__ import annotations

from .build import build_graph
from .handlers import (
    DEFAULT_HANDLERS,
    ConstVal,
    HandlerRegistry,
    OpContext,
    TensorVal,
    TupleVal,
    register_handler,
)
from .ops import elementwise, opaque, passthrough
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
    "TupleVal",
    "ConstVal",
    "passthrough",
    "elementwise",
    "opaque",
]
