"""Whole-network latency from a table: layers at their widths, non-conv ops, calibration.

``prediction = a · Σ_layers T(cin, cout) + b · Σ_ops (overhead + slope · volume) + c``, with the layer
time read between measured grid points weighted by ``d`` and depthwise convolutions by ``e`` instead
of ``a`` where the calibration chose those forms (see :class:`Calibration`),

where ``a, b, c`` come from the calibration measured while profiling. The same arithmetic serves a
slim model (traced again, :func:`predict_latency`) and the dense graph with group widths
(:func:`predict_from_widths`, the pruner's inner loop, no tracing): both see identical layer shapes and
widths, so they agree to rounding.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from halp.graph.types import ChannelGraph
from halp.latency.backends import as_inputs
from halp.latency.table import LatencyTable


def features(
    graph: ChannelGraph, table: LatencyTable, widths: Mapping[str, int] | None = None, *, extrapolate: str = "warn"
) -> tuple[float, float]:
    """``(Σ layer latency, Σ op latency)`` in ms, uncalibrated, with groups at ``widths`` (missing = dense)."""
    layers_ms, ops_ms, *_ = split_features(graph, table, widths, extrapolate=extrapolate)
    return layers_ms, ops_ms


def split_features(
    graph: ChannelGraph, table: LatencyTable, widths: Mapping[str, int] | None = None, *, extrapolate: str = "warn"
) -> tuple[float, float, float, float]:
    """``(Σ layer latency, Σ op latency, the part of the layer sum read between measured points, the part
    from depthwise convolutions)`` in ms: the features the calibration weighs."""
    widths = dict(widths or {})
    lw = graph.layer_widths(widths)
    layers_ms = interp_ms = depthwise_ms = 0.0
    for layer in graph.layers:
        cin, cout = lw[layer.name]
        t = float(table.layer_latency(layer, cin, cout, extrapolate=extrapolate))
        layers_ms += t
        if t and table.layer_interpolated(layer, cin, cout):
            interp_ms += t
        if layer.shape.depthwise:
            depthwise_ms += t
    ops_ms = 0.0
    for op in graph.others:
        channels = graph.slice_width(op.slices, widths)
        if channels <= 0:
            continue
        volume = op.batch * channels * op.hw[0] * op.hw[1]
        ops_ms += float(table.op_latency(op.kind, volume))
    return layers_ms, ops_ms, interp_ms, depthwise_ms


def predict_from_widths(
    graph: ChannelGraph,
    table: LatencyTable,
    widths: Mapping[str, int] | None = None,
    *,
    extrapolate: str = "warn",
    calibrated: bool = True,
) -> float:
    """Predicted latency (ms) of the model ``graph`` describes when each group keeps ``widths[name]``.

    Args:
        graph: the dense model's graph (no re-tracing: this is the pruner's fast path).
        table: a table profiled for this model (or one whose shapes cover it).
        widths: kept channels per group; groups not listed stay dense.
        extrapolate: policy outside the table's grids, ``"warn"`` or ``"raise"``.
        calibrated: apply the end-to-end calibration (False: the raw sum of layers and ops).
    """
    layers_ms, ops_ms, interp_ms, depthwise_ms = split_features(graph, table, widths, extrapolate=extrapolate)
    if not calibrated:
        return layers_ms + ops_ms
    return float(table.calibration.apply(layers_ms, ops_ms, interp_ms, depthwise_ms))


def latency_breakdown(
    graph: ChannelGraph, table: LatencyTable, widths: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """Per-layer and per-op predicted latency (uncalibrated) plus the totals, for reports and plots."""
    widths = dict(widths or {})
    lw = graph.layer_widths(widths)
    layers = {l.name: float(table.layer_latency(l, *lw[l.name])) for l in graph.layers}
    interp = sum(t for l in graph.layers if (t := layers[l.name]) and table.layer_interpolated(l, *lw[l.name]))
    depthwise = sum(layers[l.name] for l in graph.layers if l.shape.depthwise)
    ops = {}
    for op in graph.others:
        channels = graph.slice_width(op.slices, widths)
        ops[op.name] = float(table.op_latency(op.kind, op.batch * channels * op.hw[0] * op.hw[1])) if channels else 0.0
    lsum, osum = sum(layers.values()), sum(ops.values())
    return {
        "layers_ms": layers, "ops_ms": ops, "sum_layers_ms": lsum, "sum_ops_ms": osum,
        "interpolated_ms": float(interp), "depthwise_ms": float(depthwise),
        "predicted_ms": float(table.calibration.apply(lsum, osum, interp, depthwise)),
    }


def predict_latency(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    table: LatencyTable,
    graph: ChannelGraph | None = None,
    *,
    extrapolate: str = "warn",
) -> float:
    """Predicted latency (ms) of ``model`` (dense, or slim from the profiled dense one) from ``table``.

    Raises:
        ValueError: the inputs' batch differs from the table's, or the model has layers or ops the
            table does not cover (profile this model).
    """
    inputs = as_inputs(example_inputs)
    table.check_compatible(batch=int(inputs[0].shape[0]))
    if graph is None:
        from halp.graph import build_graph

        graph = build_graph(model, inputs)
    missing = table.covers(graph)
    if missing:
        raise ValueError(
            f"the latency table has no entry for {len(missing)} layer(s)/op(s) of this model, e.g. {missing[:5]}; "
            "profile this model (halp.profile / `halp profile`) to build a table that covers it"
        )
    return predict_from_widths(graph, table, None, extrapolate=extrapolate)
