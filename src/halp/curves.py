"""Whole-network latency when one group's width varies, without re-summing the whole network.

A pruning step needs the network's predicted latency for every prefix width of every group (hundreds of
candidates on ResNet-50) around the current widths. Only the layers and ops that read or write a group
change with its width, and the calibration is linear, so each curve costs one vectorised table lookup per
touching layer instead of a full prediction per candidate.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from halp.graph.types import ChannelGraph, Slice
from halp.latency import LatencyTable, predict_from_widths
from halp.latency.predict import split_features


def _width(slices: tuple[Slice, ...], widths: Mapping[str, int], group: str, candidates: np.ndarray) -> np.ndarray:
    """Channel-axis width for each candidate width of ``group`` (other groups at ``widths``)."""
    total = np.zeros_like(candidates)
    for g, n in slices:
        if g == group:
            total = total + candidates
        else:
            total = total + (n if g is None else int(widths.get(g, n)))
    return total


class WidthPredictor:
    """Predicted latency from group widths (the pruner's inner loop), with fast per-group curves."""

    def __init__(self, graph: ChannelGraph, table: LatencyTable) -> None:
        self.graph, self.table = graph, table
        self._layers: dict[str, list] = {}
        self._ops: dict[str, list] = {}
        for layer in graph.layers:
            for g in {g for g, _ in (*layer.in_slices, *layer.out_slices) if g is not None}:
                self._layers.setdefault(g, []).append(layer)
        for op in graph.others:
            for g in {g for g, _ in op.slices if g is not None}:
                self._ops.setdefault(g, []).append(op)

    def __call__(self, widths: Mapping[str, int]) -> float:
        return float(predict_from_widths(self.graph, self.table, widths))

    def curve(self, widths: Mapping[str, int], group: str, candidates: np.ndarray) -> np.ndarray:
        """Predicted latency with ``group`` at each of ``candidates`` and every other group at ``widths``."""
        cand = np.asarray(candidates, dtype=np.int64)
        layers_ms, ops_ms, interp_ms, depthwise_ms = split_features(self.graph, self.table, widths)
        d_layers = np.zeros(cand.shape, dtype=np.float64)
        d_interp = np.zeros(cand.shape, dtype=np.float64)
        d_depthwise = np.zeros(cand.shape, dtype=np.float64)
        for layer in self._layers.get(group, ()):
            now = (self.graph.slice_width(layer.in_slices, widths), self.graph.slice_width(layer.out_slices, widths))
            cin = _width(layer.in_slices, widths, group, cand)
            cout = _width(layer.out_slices, widths, group, cand)
            new_ms = np.asarray(self.table.layer_latency(layer, cin, cout))
            now_ms = float(self.table.layer_latency(layer, *now))
            d_layers += new_ms - now_ms
            if layer.shape.depthwise:
                d_depthwise += new_ms - now_ms
            d_interp += np.where(self.table.layer_interpolated(layer, cin, cout), new_ms, 0.0)
            d_interp -= now_ms if now_ms and self.table.layer_interpolated(layer, *now) else 0.0
        d_ops = np.zeros(cand.shape, dtype=np.float64)
        for op in self._ops.get(group, ()):
            scale = op.batch * op.hw[0] * op.hw[1]
            now_c = self.graph.slice_width(op.slices, widths)
            new_c = _width(op.slices, widths, group, cand)
            new_ms = np.where(new_c > 0, self.table.op_latency(op.kind, new_c * scale), 0.0)
            now_ms = self.table.op_latency(op.kind, now_c * scale) if now_c > 0 else 0.0
            d_ops += new_ms - now_ms
        return self.table.calibration.apply(layers_ms + d_layers, ops_ms + d_ops, interp_ms + d_interp,
                                            depthwise_ms + d_depthwise)
