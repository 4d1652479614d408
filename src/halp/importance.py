"""Channel importance: first-order Taylor scores accumulated during training (HALP-SPEC section 2).

The score of a channel estimates how much the loss changes when the channel is removed. On the BatchNorm
after a conv that is ``|gamma * dL/dgamma + beta * dL/dbeta|``; a coupled group (a residual sum, a depthwise
follower, ...) loses the same channel everywhere at once, so the signed terms of all its members are summed
*before* the absolute value. Scores of one minibatch are averaged with the others since the last pruning
step; a minibatch whose gradients are not finite is skipped and counted, never folded in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from halp.graph.types import ChannelGraph, ChannelGroup

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Site:
    """A slice ``[offset, offset + channels)`` of one parameter's dim 0 that belongs to a group."""

    weight: nn.Parameter
    bias: nn.Parameter | None
    offset: int
    channels: int


def _norm_sites(model: nn.Module, group: ChannelGroup) -> list[_Site]:
    modules = dict(model.named_modules())
    sites = []
    for m in group.members:
        mod = modules[m.module]
        if m.role == "norm" and getattr(mod, "weight", None) is not None:
            sites.append(_Site(mod.weight, getattr(mod, "bias", None), m.offset, group.channels))
    return sites


def _filter_sites(model: nn.Module, group: ChannelGroup) -> list[_Site]:
    modules = dict(model.named_modules())
    sites = []
    for m in group.members:
        if m.role in ("out", "depthwise"):
            mod = modules[m.module]
            sites.append(_Site(mod.weight, getattr(mod, "bias", None), m.offset, group.channels))
    return sites


def _rows(t: torch.Tensor, site: _Site) -> torch.Tensor:
    # rows of dim 0 that belong to the group, flattened per channel: (C, rest)
    return t.detach()[site.offset : site.offset + site.channels].reshape(site.channels, -1)


def _taylor_term(site: _Site) -> torch.Tensor | None:
    """Signed sum over a site's parameters of ``p * dL/dp`` per channel, or None without gradients."""
    if site.weight.grad is None:
        return None
    term = (_rows(site.weight, site) * _rows(site.weight.grad, site)).sum(1)
    if site.bias is not None and site.bias.grad is not None:
        term = term + (_rows(site.bias, site) * _rows(site.bias.grad, site)).sum(1)
    return term


def _magnitude_term(site: _Site) -> torch.Tensor:
    return _rows(site.weight, site).abs().sum(1)


class ImportanceAccumulator:
    """Accumulates per-channel scores of every prunable group over minibatches.

    Args:
        model: the (unwrapped) model being trained; parameters are read, never written.
        graph: its channel graph.
        kind: ``"taylor"`` (BatchNorm Taylor; weight Taylor for groups without a BN),
            ``"weight-taylor"`` or ``"magnitude"``.
        groups: names of the groups to score (default: every prunable group).
    """

    def __init__(
        self, model: nn.Module, graph: ChannelGraph, kind: str = "taylor", groups: list[str] | None = None
    ) -> None:
        if kind not in SCORERS:
            raise ValueError(f"unknown importance {kind!r}; choose one of {sorted(SCORERS)}")
        self.kind = kind
        names = groups if groups is not None else [g.name for g in graph.prunable_groups]
        self._sites: dict[str, list[_Site]] = {}
        for name in names:
            group = graph.group(name)
            norm = _norm_sites(model, group)
            use_norm = kind in ("taylor", "magnitude") and norm
            sites = norm if use_norm else _filter_sites(model, group)
            if not sites:
                raise ValueError(
                    f"group {name!r} has no BatchNorm and no producing conv/linear to score; protect it "
                    "(PruneConfig.protect) or register a handler that records its producers"
                )
            self._sites[name] = sites
        self._score = SCORERS[kind]
        self.total = {n: torch.zeros(graph.group(n).channels, dtype=torch.float64) for n in names}
        self.batches = 0
        self.skipped = 0  # minibatches with NaN/Inf gradients, reported, never folded in

    def accumulate(self) -> bool:
        """Adds this minibatch's scores; returns False (and counts it) when they are not finite."""
        current: dict[str, torch.Tensor] = {}
        for name, sites in self._sites.items():
            terms = [self._score(s) for s in sites]
            terms = [t for t in terms if t is not None]
            if not terms:
                continue  # no gradient reached this group (e.g. frozen), nothing to add
            current[name] = torch.stack(terms).sum(0).abs().double().cpu()
        if any(not torch.isfinite(v).all() for v in current.values()):
            self.skipped += 1
            log.warning("skipped a minibatch with non-finite importance (%d skipped so far)", self.skipped)
            return False
        for name, value in current.items():
            self.total[name] += value
        self.batches += 1
        return True

    def all_reduce(self) -> None:
        """Sums the accumulators over all ranks so every rank ranks channels identically."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        names = sorted(self.total)
        flat = torch.cat([self.total[n] for n in names] + [torch.tensor([self.batches, self.skipped], dtype=torch.float64)])
        torch.distributed.all_reduce(flat)
        offset = 0
        for n in names:
            size = self.total[n].numel()
            self.total[n] = flat[offset : offset + size].clone()
            offset += size
        self.batches, self.skipped = int(flat[-2].item()), int(flat[-1].item())

    def scores(self) -> dict[str, torch.Tensor]:
        """Mean score per channel since the last reset; (C,) float64 per group."""
        denominator = max(self.batches, 1)
        return {n: t / denominator for n, t in self.total.items()}

    def reset(self) -> None:
        for t in self.total.values():
            t.zero_()
        self.batches = 0

    def state_dict(self) -> dict:
        return {"total": {n: t.clone() for n, t in self.total.items()}, "batches": self.batches, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.total) - set(state["total"])
        if missing:
            raise ValueError(f"importance state lacks groups {sorted(missing)}: was it saved for another model?")
        for n in self.total:
            self.total[n] = state["total"][n].clone().double()
        self.batches, self.skipped = int(state["batches"]), int(state["skipped"])


SCORERS: dict[str, Callable[[_Site], torch.Tensor | None]] = {
    "taylor": _taylor_term,
    "weight-taylor": _taylor_term,
    "magnitude": _magnitude_term,
}
