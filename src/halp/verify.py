"""Checks that a pruning is exact: the slim model computes what the masked model computes.

Used by the tests, the zoo coverage benchmark and ``halp graph --check``; a user can run it on their
own model before trusting a slim one.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .graph.capture import normalize_inputs
from .graph.types import ChannelGraph
from .surgery import keep_from_widths, mask_channels, prune_channels


def random_keep(graph: ChannelGraph, generator: torch.Generator, low: float = 0.3,
                high: float = 0.9) -> dict[str, torch.Tensor]:
    """A random kept fraction in ``[low, high]`` of every prunable group, random channels, balanced per
    conv group and within each group's constraints (at least one channel is always removed where the
    group allows it)."""
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(f"need 0 < low <= high <= 1, got low={low}, high={high}")
    widths, scores = {}, {}
    for g in graph.prunable_groups:
        step = max(g.blocks, g.multiple_of)
        frac = low + (high - low) * float(torch.rand((), generator=generator))
        w = max(g.min_channels, step, int(round(g.channels * frac / step)) * step)
        if w >= g.channels and g.channels - step >= max(g.min_channels, step):
            w = g.channels - step
        widths[g.name] = min(w, g.channels)
        scores[g.name] = torch.rand(g.channels, generator=generator)
    return keep_from_widths(graph, scores, widths)


def _flat(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flat(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _flat(v)]
    return []


@dataclass(frozen=True)
class Equivalence:
    """How far apart the masked and slim models' outputs are, and what the pruning removed."""

    max_abs_diff: float
    scale: float  # max |output| of the masked model (at least 1)
    params_dense: int
    params_slim: int
    groups_pruned: int

    @property
    def relative(self) -> float:
        return self.max_abs_diff / self.scale


@torch.no_grad()
def masked_vs_slim(model: nn.Module, graph: ChannelGraph, keep: dict[str, torch.Tensor],
                   example_inputs: Any) -> Equivalence:
    """Run the masked and the slim model (eval mode) on the same inputs and compare every output."""
    inputs = normalize_inputs(example_inputs)
    masked = copy.deepcopy(model).eval()
    mask_channels(masked, graph, keep)
    slim = prune_channels(model, graph, keep).eval()
    a, b = _flat(masked(*inputs)), _flat(slim(*inputs))
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        raise ValueError("the slim model's outputs have other shapes than the masked model's")
    diff = max((float((x.float() - y.float()).abs().max()) for x, y in zip(a, b) if x.numel()), default=0.0)
    scale = max([1.0] + [float(x.float().abs().max()) for x in a if x.numel()])
    pruned = sum(1 for name, idx in keep.items() if len(idx) < graph.group(name).channels)
    return Equivalence(diff, scale, sum(p.numel() for p in model.parameters()),
                       sum(p.numel() for p in slim.parameters()), pruned)
