"""The methods HALP is compared against, run through the same training loop and schedule.

Each baseline is a :class:`~halp.pruner.Pruner` whose only difference is how a step chooses widths, so
fine-tuning budget, importance, masks, slimming and reports are identical and comparisons are fair:

* :class:`UniformPruner` — every group keeps the same fraction of its channels (width scaling), the
  fraction bisected so the table predicts the step's latency target; the most important channels are kept.
* :class:`FlopsTaylorPruner` — classic FLOPs-driven pruning: channels ranked globally by Taylor score
  (unnormalised, across layers) and removed until the step's MACs target is met; latency is not consulted.
* HALP with a fixed group size is plain HALP with ``PruneConfig(grouping=size)``.
* :func:`torch_pruning_prune` — Torch-Pruning's own pruner under a FLOPs target (optional dependency, used
  by the benchmarks only).
"""

from __future__ import annotations

import heapq
import logging
import time
from typing import Any, Sequence

import torch
from torch import nn

from halp.allocation import StepResult
from halp.config import PruneConfig
from halp.flops import count_macs, layer_macs
from halp.latency import LatencyTable
from halp.pruner import Pruner
from halp.schedule import exponential_targets

log = logging.getLogger(__name__)


class UniformPruner(Pruner):
    """Uniform width scaling to each step's latency target (keeps the most important channels)."""

    applies_min_saving = False  # width scaling scales every group, squeezes included

    def uniform_widths(self, multiplier: float) -> dict[str, int]:
        return {
            g.name: min(int(self.keep[g.name].numel()), max(self.min_width[g.name], round(multiplier * g.channels)))
            for g in self.groups
        }

    def _allocate(self, offers, ranked, scores, target) -> StepResult:
        t0 = time.perf_counter()
        lo, hi = 0.0, 1.0
        best = self.uniform_widths(0.0)
        if self.predict(best) > target:
            raise ValueError(f"uniform scaling cannot reach {target:.4g} ms even at the minimum widths")
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            widths = self.uniform_widths(mid)
            if self.predict(widths) <= target:
                lo, best = mid, widths
            else:
                hi = mid
        predicted = self.predict(best)
        value = sum(float(scores[n][ranked[n][:w]].sum()) for n, w in best.items())
        return StepResult(best, target, predicted, predicted, value, time.perf_counter() - t0, 0)


class FlopsTaylorPruner(Pruner):
    """Global Taylor ranking under a MACs target (the FLOPs-driven baseline).

    Args:
        flops_target: final MACs as a fraction of the dense MACs; steps fall exponentially to it.
        Other arguments as :class:`~halp.pruner.Pruner`; ``config.target`` is ignored (set to 1.0).
    """

    applies_min_saving = False  # the FLOPs-driven tools it stands for rank every channel

    def __init__(
        self,
        model: nn.Module,
        example_inputs: torch.Tensor | Sequence[torch.Tensor],
        table: LatencyTable,
        config: PruneConfig | None = None,
        flops_target: float = 0.5,
    ) -> None:
        if not 0.0 < flops_target <= 1.0:
            raise ValueError(f"flops_target must be a fraction of the dense MACs in (0, 1], got {flops_target}")
        config = config or PruneConfig()
        super().__init__(model, example_inputs, table, _with_target(config, 1.0))
        self.flops_target = flops_target
        self.dense_macs = count_macs(self.graph)
        self.mac_targets = exponential_targets(float(self.dense_macs), flops_target * self.dense_macs, config.steps)
        self.layers = {l.name: l for l in self.graph.layers}

    def _macs_per_channel(self, widths: dict[str, int], group: str) -> float:
        """MACs removed with one channel of ``group`` at the current widths (other groups fixed)."""
        full = dict(widths)
        now = count_macs_subset(self.graph, full, group, self.layers)
        full[group] = widths[group] - 1
        return now - count_macs_subset(self.graph, full, group, self.layers)

    def _allocate(self, offers, ranked, scores, target) -> StepResult:
        t0 = time.perf_counter()
        mac_target = self.mac_targets[self.pruning_step]
        widths = self.widths()
        macs = count_macs(self.graph, widths)
        # every remaining channel, cheapest score first; a group gives up its channels in rank order
        heap = []
        position = {n: widths[n] for n in widths}  # channels still kept = prefix of ranked[n]
        for n in widths:
            if position[n] > self.min_width[n]:
                heap.append((float(scores[n][ranked[n][position[n] - 1]]), n))
        heapq.heapify(heap)
        while macs > mac_target and heap:
            _, n = heapq.heappop(heap)
            macs -= self._macs_per_channel(position, n)
            position[n] -= 1
            if position[n] > self.min_width[n]:
                heapq.heappush(heap, (float(scores[n][ranked[n][position[n] - 1]]), n))
        if macs > mac_target:
            log.warning("MACs target %.3g not reached (%.3g left at minimum widths)", mac_target, macs)
        predicted = self.predict(position)
        value = sum(float(scores[n][ranked[n][:w]].sum()) for n, w in position.items())
        return StepResult(dict(position), target, predicted, predicted, value, time.perf_counter() - t0, 0)

    def report(self) -> dict[str, Any]:
        out = super().report()
        out["method"] = "taylor-flops"
        out["flops_target"] = self.flops_target
        out["dense_macs"] = self.dense_macs
        out["macs"] = count_macs(self.graph, self.widths())
        return out


def count_macs_subset(graph, widths: dict[str, int], group: str, layers: dict) -> int:
    """MACs of only the layers that read or write ``group`` (the rest do not change with it)."""
    dims = graph.layer_widths(widths)
    g = graph.group(group)
    return sum(layer_macs(layers[name], *dims[name]) for name in set(g.producers) | set(g.consumers))


def _with_target(config: PruneConfig, target: float) -> PruneConfig:
    data = config.to_dict()
    data.update(target=target, target_ms=None)
    return PruneConfig.from_dict(data)


def torch_pruning_prune(
    model: nn.Module,
    example_inputs: torch.Tensor,
    flops_target: float,
    ignored_layers: Sequence[nn.Module] = (),
    importance: str = "taylor",
    loss_fn: Any = None,
    calibration: Any = None,
) -> nn.Module:
    """Prunes ``model`` in place with Torch-Pruning's MetaPruner until MACs fall to ``flops_target``.

    A single one-shot global pruning (Torch-Pruning's documented use), followed by the caller's fine-tuning.
    ``calibration`` is an iterable of ``(x, y)`` batches used for the Taylor importance.

    Raises:
        ValueError: when torch-pruning is not installed (``pip install torch-pruning``).
    """
    try:
        import torch_pruning as tp
    except ImportError as exc:  # optional dependency
        raise ValueError("the torch-pruning baseline needs `pip install torch-pruning`") from exc
    if not 0.0 < flops_target <= 1.0:
        raise ValueError(f"flops_target must be in (0, 1], got {flops_target}")
    imp = tp.importance.TaylorImportance() if importance == "taylor" else tp.importance.MagnitudeImportance(p=2)
    base_macs, _ = tp.utils.count_ops_and_params(model, example_inputs)
    pruner = tp.pruner.MetaPruner(
        model,
        example_inputs,
        importance=imp,
        global_pruning=True,
        pruning_ratio=0.9,
        iterative_steps=200,
        ignored_layers=list(ignored_layers),
    )
    for _ in range(200):
        if importance == "taylor" and calibration is not None:
            model.zero_grad()
            for x, y in calibration:
                loss_fn(model(x), y).backward()
        pruner.step()
        macs, _ = tp.utils.count_ops_and_params(model, example_inputs)
        if macs <= flops_target * base_macs:
            break
    return model


__all__ = ["UniformPruner", "FlopsTaylorPruner", "torch_pruning_prune"]
