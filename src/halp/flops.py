"""MACs and parameter counts of a graph at given group widths, from the shapes alone.

FLOPs-driven baselines and every figure's x-axis need these for thousands of candidate widths, so they are
computed from the frozen :class:`~halp.graph.types.ChannelGraph` without building a model.
"""

from __future__ import annotations

from typing import Mapping

from halp.graph.types import ChannelGraph, Layer


def _out_hw(layer: Layer) -> tuple[int, int]:
    s = layer.shape
    if s.kind != "conv2d":
        return (1, 1)
    out = []
    for i in range(2):
        span = s.dilation[i] * (s.kernel[i] - 1) + 1
        out.append((s.in_hw[i] + 2 * s.padding[i] - span) // s.stride[i] + 1)
    return out[0], out[1]


def layer_macs(layer: Layer, cin: int, cout: int) -> int:
    """Multiply-accumulates of one conv/linear at ``cin`` -> ``cout`` channels (per batch element)."""
    s = layer.shape
    if s.kind == "linear":
        return cin * layer.in_repeat * cout
    h, w = _out_hw(layer)
    k = s.kernel[0] * s.kernel[1]
    if s.groups == 0:  # depthwise: one filter per channel
        return cout * k * h * w
    return cin // max(s.groups, 1) * cout * k * h * w


def layer_params(layer: Layer, cin: int, cout: int) -> int:
    s = layer.shape
    bias = cout if s.bias else 0
    if s.kind == "linear":
        return cin * layer.in_repeat * cout + bias
    k = s.kernel[0] * s.kernel[1]
    if s.groups == 0:
        return cout * k + bias
    return cin // max(s.groups, 1) * cout * k + bias


def count_macs(graph: ChannelGraph, widths: Mapping[str, int] | None = None) -> int:
    """Total MACs of the conv/linear layers per batch element (groups missing from ``widths`` dense)."""
    dims = graph.layer_widths(widths or {})
    return sum(layer_macs(l, *dims[l.name]) for l in graph.layers)


def count_params(graph: ChannelGraph, widths: Mapping[str, int] | None = None) -> int:
    """Conv/linear parameters (BatchNorm and other per-channel parameters excluded)."""
    dims = graph.layer_widths(widths or {})
    return sum(layer_params(l, *dims[l.name]) for l in graph.layers)
