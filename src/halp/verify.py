"""Checks that a pruning is exact: the slim model computes what the masked model computes.

Used by the tests, the zoo coverage benchmark and ``halp graph --check``; a user can run it on their
own model before trusting a slim one.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn

from .graph import build_graph as capture_graph
from .graph.capture import normalize_inputs
from .graph.types import ChannelGraph
from .surgery import keep_from_widths, mask_channels, prune_channels

log = logging.getLogger(__name__)


def random_keep(graph: ChannelGraph, generator: torch.Generator, low: float = 0.3, high: float = 0.9,
                groups: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """A random kept fraction in ``[low, high]`` of every prunable group (or of ``groups``), random
    channels, balanced per conv group and within each group's constraints (at least one channel is
    removed where the group allows it)."""
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(f"need 0 < low <= high <= 1, got low={low}, high={high}")
    chosen = None if groups is None else set(groups)
    widths, scores = {}, {}
    for g in graph.prunable_groups:
        if chosen is not None and g.name not in chosen:
            continue
        step = max(g.blocks, g.multiple_of)
        frac = low + (high - low) * float(torch.rand((), generator=generator))
        w = max(g.min_channels, step, int(round(g.channels * frac / step)) * step)
        if w >= g.channels and g.channels - step >= max(g.min_channels, step):
            w = g.channels - step
        widths[g.name] = min(w, g.channels)
        scores[g.name] = torch.rand(g.channels, generator=generator)
    return keep_from_widths(graph, scores, widths)


@torch.no_grad()
def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random batch-norm statistics and shifts (in place), so that a zeroed channel does not output zero
    by itself: a freshly initialised model (mean 0, var 1, shift 0) would make a masked-vs-slim check pass
    trivially wherever masking zeroes a norm."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            if m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.5)
    return model


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


def _exact(model: nn.Module, graph: ChannelGraph, inputs: tuple[torch.Tensor, ...], groups: list[str],
           seed: int, tol: float) -> bool:
    keep = random_keep(graph, torch.Generator().manual_seed(seed), groups=groups)
    try:
        return masked_vs_slim(model, graph, keep, inputs).relative <= tol
    except Exception as e:  # a size written in the code: the slim model does not even run
        log.debug("slim model of groups %s failed: %s", groups[:4], e)
        return False


def freeze_inexact(model: nn.Module, graph: ChannelGraph, example_inputs: Any, *, seed: int = 0,
                   tol: float = 1e-3) -> ChannelGraph:
    """Prune every prunable group at random and compare the slim model with the masked one; freeze the
    groups (found by bisection) whose pruning changes the outputs.

    The capture sees concrete sizes only, so ``x.view(n, 64, -1)`` written with a literal 64 looks the
    same as one written with ``x.shape[1]``; pruning such a group would give a slim model that fails or,
    worse, computes something else. This check catches every such case on the example inputs.
    """
    inputs = normalize_inputs(example_inputs)
    names = [g.name for g in graph.prunable_groups]
    if not names or _exact(model, graph, inputs, names, seed, tol):
        return graph
    bad: list[str] = []
    todo = [names]
    while todo:
        part = todo.pop()
        if _exact(model, graph, inputs, part, seed, tol):
            continue
        if len(part) == 1:
            bad.append(part[0])
        else:
            todo += [part[: len(part) // 2], part[len(part) // 2:]]
    rest = [n for n in names if n not in bad]
    if rest and not _exact(model, graph, inputs, rest, seed + 1, tol):
        bad += rest  # groups that fail only together: freeze them all rather than guess
    reason = ("pruning it changes the model's outputs beyond masking (a channel count or position "
              "written in the code?), found by pruning it on the example inputs")
    log.info("froze %d groups whose pruning is not exact: %s", len(bad), bad[:8])
    bad_set = set(bad)
    groups = tuple(dataclasses.replace(g, prunable=False, reason=reason) if g.name in bad_set else g
                   for g in graph.groups)
    return dataclasses.replace(graph, groups=groups)


def build_graph(model: nn.Module, example_inputs: Any, *, check: bool = True, **kwargs: Any) -> ChannelGraph:
    """:func:`halp.graph.build_graph`, then :func:`freeze_inexact`: the graph every pruner should use.

    Args:
        model: the network.
        example_inputs: a tensor, or a tuple with one tensor per forward argument.
        check: prune at random once and freeze what is not exact (a few forwards of the model).
        **kwargs: ``ignore``, ``leaf_modules``, ``handlers`` as in :func:`halp.graph.build_graph`.
    """
    graph = capture_graph(model, example_inputs, **kwargs)
    return freeze_inexact(model, graph, example_inputs) if check else graph
