"""What to measure for a graph: deduplicated layer entries, their channel grids, representative ops.

Only widths that pruning can reach are measured: an axis made only of fixed channels (the image input,
the classifier output) or of unprunable groups is a single point; a prunable axis gets a coarse grid
from a small width up to full width (aligned to the staircase step where known, so pruned widths, which
land on fast edges, fall on grid points) and, for cout, a fine sweep of every channel near full width.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from halp.graph.types import ChannelGraph, LayerShape, Slice
from halp.latency.ops import canonical_kind
from halp.latency.entries import entry_id


@dataclass
class EntryPlan:
    """One table entry to measure and the layers it serves."""

    shape: LayerShape  # with the profiled dtype
    in_repeat: int
    cin_full: int
    cout_full: int
    cin_low: int  # smallest reachable width (== full when not prunable)
    cout_low: int
    multiple: int = 1  # widths must be multiples of this (grouped convs)
    layers: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return entry_id(self.shape, self.in_repeat, self.cin_full, self.cout_full)

    @property
    def depthwise(self) -> bool:
        return self.shape.depthwise


def _low(slices: tuple[Slice, ...], graph: ChannelGraph) -> int:
    """Smallest width of an axis: fixed pieces stay whole, each prunable group keeps its minimum."""
    low = 0
    for name, n in slices:
        if name is None:
            low += n
            continue
        g = graph.group(name)
        low += max(1, min(g.min_channels, n), g.multiple_of) if g.prunable else n
    return max(low, 1)


def plan_entries(graph: ChannelGraph, dtype: str) -> list[EntryPlan]:
    """Deduplicate the graph's layers by (shape, in_repeat, full widths); the union of their prunability."""
    plans: dict[str, EntryPlan] = {}
    for layer in graph.layers:
        shape = dataclasses.replace(layer.shape, dtype=dtype)
        multiple = max(shape.groups, 1) if shape.kind == "conv2d" and not shape.depthwise else 1
        cin, cout = layer.in_channels, layer.out_channels
        p = EntryPlan(shape, int(layer.in_repeat), cin, cout, _low(layer.in_slices, graph),
                      _low(layer.out_slices, graph), multiple)
        if shape.depthwise:
            p.cin_low = p.cout_low = min(p.cin_low, p.cout_low)
        known = plans.get(p.id)
        if known is None:
            plans[p.id] = known = p
        else:
            known.cin_low = min(known.cin_low, p.cin_low)
            known.cout_low = min(known.cout_low, p.cout_low)
        known.layers.append(layer.name)
    return list(plans.values())


def axis_grid(full: int, low: int, points: int, align: int = 1, multiple: int = 1) -> np.ndarray:
    """About ``points`` widths from ``low`` to ``full`` (both included), evenly spread and rounded to
    multiples of ``align`` (and of ``multiple``, which every width must be)."""
    if low >= full or points <= 1:
        return np.array([full], dtype=np.int64)
    step = align * multiple // math.gcd(align, multiple)
    low = max(low, multiple)
    values = {full, -(-low // multiple) * multiple}
    for x in np.linspace(low, full, points)[1:-1]:
        v = int(round(x / step)) * step
        if low <= v <= full:
            values.add(v)
    return np.array(sorted(values), dtype=np.int64)


def default_align(full: int, points: int) -> int:
    """Grid alignment when no step is known: 8 channels (a common SIMD/tile width) on wide axes."""
    return 8 if full >= 8 * points else 1


def fine_range(plan: EntryPlan, span: int) -> np.ndarray:
    """The cout values of the fine sweep (every channel over the last ``span``); empty if none."""
    if span <= 0 or plan.cout_low >= plan.cout_full or plan.multiple > 1:
        return np.zeros(0, dtype=np.int64)
    start = max(plan.cout_low, plan.cout_full - span + 1)
    return np.arange(start, plan.cout_full + 1, dtype=np.int64)


def plan_ops(graph: ChannelGraph, per_kind: int = 3) -> dict[str, list[tuple[int, int, int, int]]]:
    """Representative ``(batch, channels, h, w)`` per op kind: volumes spread from the smallest to the
    largest op of that kind in the graph, plus the largest at half its channels (so the line is fitted
    over the range pruning reaches)."""
    by_kind: dict[str, set[tuple[int, int, int, int]]] = {}
    for op in graph.others:
        c = sum(n for _, n in op.slices)
        if c <= 0:
            continue
        by_kind.setdefault(canonical_kind(op.kind), set()).add((int(op.batch), int(c), int(op.hw[0]), int(op.hw[1])))
    plans: dict[str, list[tuple[int, int, int, int]]] = {}
    for kind, configs in sorted(by_kind.items()):
        ordered = sorted(configs, key=lambda t: (t[0] * t[1] * t[2] * t[3], t))
        idx = sorted({int(round(i)) for i in np.linspace(0, len(ordered) - 1, min(per_kind, len(ordered)))})
        chosen = [ordered[i] for i in idx]
        b, c, h, w = ordered[-1]
        if c >= 2:
            chosen.append((b, c // 2, h, w))
        plans[kind] = list(dict.fromkeys(chosen))
    return plans
