"""The HALP pruner: plugs into a training loop and moves a network to its latency budget in k steps.

Call :meth:`Pruner.step` after every backward pass (it accumulates importance and, every ``interval``
calls, solves the next pruning step) and :meth:`Pruner.apply_masks` after every optimizer step (so
momentum and weight decay never revive a pruned channel). :meth:`Pruner.finalize` hands back the
physically slim model. The pruner's whole state is JSON plus tensors, so a killed run resumes exactly.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from dataclasses import fields
from typing import Any, Sequence

import torch
from torch import nn

from halp.allocation import GroupOffer, StepResult, solve_step
from halp.config import CLI_FIELDS, PruneConfig
from halp.feedback import DeviceFeedback
from halp.graph.capture import normalize_inputs
from halp.verify import build_graph
from halp.graph.types import ChannelGraph, ChannelGroup
from halp.grouping import block_sizes, group_steps
from halp.importance import ImportanceAccumulator
from halp.curves import WidthPredictor
from halp.latency import LatencyTable
from halp.schedule import exponential_targets, pruning_iterations
from halp.surgery import mask_channels, prune_channels

log = logging.getLogger(__name__)


class Pruner:
    """Hardware-aware latency pruning during training.

    Args:
        model: the dense model being trained (unwrapped: pass ``ddp.module``'s original, not the DDP wrapper).
        example_inputs: inputs at the deployment batch and resolution; the graph and latencies use them.
        table: latency table measured on the target device for this model.
        config: budget, schedule, importance and grouping.
        feedback: measure the slim models proposed in the last pruning steps on the device and move the
            targets by the measured miss, so the schedule ends within ``[(1 - band), 1] x`` the budget as
            *measured* (:mod:`halp.feedback`). None: trust the table (the paper's behaviour).

    Raises:
        ValueError: when the table does not cover the model, or the budget is unreachable even with every
            group at its minimum width — before any training time is spent.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: torch.Tensor | Sequence[torch.Tensor],
        table: LatencyTable,
        config: PruneConfig | None = None,
        feedback: DeviceFeedback | None = None,
    ) -> None:
        self.model = model
        self.feedback = feedback
        self.config = config or PruneConfig()
        self.example_inputs = normalize_inputs(example_inputs)
        self.table = table
        self.graph: ChannelGraph = build_graph(model, self.example_inputs)
        table.check_compatible(batch=int(self.example_inputs[0].shape[0]))
        missing = table.covers(self.graph)
        if missing:
            raise ValueError(
                f"the latency table has no entry for {len(missing)} layer(s), e.g. {missing[:3]}; profile this "
                "model (halp.profile / `halp profile`) at the same input size and batch"
            )
        self.groups: list[ChannelGroup] = [g for g in self.graph.prunable_groups if not self._protected(g)]
        if not self.groups:
            raise ValueError("no prunable group is left after `protect`: nothing to prune")
        self.steps_per_group = group_steps(
            self.graph, table, mode=self.config.grouping, overrides=self.config.grouping_overrides or None
        )
        self.min_width = {g.name: self._min_width(g) for g in self.groups}
        self._predictor = WidthPredictor(self.graph, table)
        self.dense_ms = self.predict({})
        self.negligible = self._negligible_groups() if self.applies_min_saving else {}
        if self.negligible:
            self.groups = [g for g in self.groups if g.name not in self.negligible]
            if not self.groups:
                raise ValueError(f"every prunable group saves less than min_saving={self.config.min_saving} of the "
                                 "dense latency: nothing worth pruning; lower min_saving (0 turns the rule off)")
            self.min_width = {g.name: self.min_width[g.name] for g in self.groups}
        self.keep: dict[str, torch.Tensor] = {
            g.name: torch.arange(g.channels) for g in self.groups
        }  # kept channel indices in the dense numbering
        self.final_ms = (
            float(self.config.target_ms) if self.config.target_ms is not None else self.config.target * self.dense_ms
        )
        floor = {g.name: self._floor_width(g) for g in self.groups}
        floor_ms = self.predict(floor)
        if floor_ms > self.final_ms:
            raise ValueError(
                f"the budget {self.final_ms:.4g} ms is unreachable: the smallest network the config allows is "
                f"predicted at {floor_ms:.4g} ms (dense {self.dense_ms:.4g} ms); raise the target, lower "
                "min_channels/min_fraction, or protect fewer layers"
            )
        self.targets = exponential_targets(self.dense_ms, self.final_ms, self.config.steps)
        self.schedule = pruning_iterations(self.config.start, self.config.interval, self.config.steps)
        self.importance = ImportanceAccumulator(
            model, self.graph, self.config.importance, groups=[g.name for g in self.groups]
        )
        self.iteration = 0
        self.pruning_step = 0
        self.history: list[dict[str, Any]] = []

    # -- configuration helpers -------------------------------------------------------------------
    #: HALP keeps groups whose pruning buys no latency (``PruneConfig.min_saving``); the baselines that
    #: reproduce other methods (uniform width scaling, FLOPs ranking) turn this off.
    applies_min_saving = True

    def _negligible_groups(self) -> dict[str, float]:
        """Groups whose narrowest width saves under ``min_saving`` of the dense latency: name → saving (ms)."""
        limit = float(self.config.min_saving) * self.dense_ms
        if limit <= 0:
            return {}
        saving = {g.name: self.dense_ms - self.predict({g.name: self._floor_width(g)}) for g in self.groups}
        out = {n: s for n, s in saving.items() if s < limit}
        if out:
            log.info("not pruning %d group(s) that save under %.2g%% of the dense latency each (%.2f%% together; "
                     "PruneConfig.min_saving): %s", len(out), 100 * self.config.min_saving,
                     100 * sum(max(s, 0.0) for s in out.values()) / self.dense_ms, ", ".join(sorted(out)[:6])
                     + (", ..." if len(out) > 6 else ""))
        return out

    def _protected(self, group: ChannelGroup) -> bool:
        names = [group.name, *group.producers]
        if any(fnmatch.fnmatchcase(n, p) for n in names for p in self.config.protect):
            return True
        if self.config.protect_stem:
            layers = {l.name: l for l in self.graph.layers}
            for producer in group.producers:
                layer = layers.get(producer)
                if layer is not None and all(g is None for g, _ in layer.in_slices):
                    return True
        return False

    def _min_width(self, group: ChannelGroup) -> int:
        floor = max(self.config.min_channels, math.ceil(self.config.min_fraction * group.channels))
        if not self.config.allow_layer_removal or group.min_channels > 0:
            floor = max(floor, group.min_channels, 1)
        floor = min(floor, group.channels)
        multiple = max(group.multiple_of, 1)
        return int(math.ceil(floor / multiple) * multiple) if floor else 0

    def _floor_width(self, group: ChannelGroup) -> int:
        """The narrowest width the knapsack can reach: its first block (a whole latency step) or zero."""
        minimum = self.min_width[group.name]
        if minimum == 0:
            return 0
        return block_sizes(group.channels, self.steps_per_group[group.name], minimum)[0]

    def widths(self) -> dict[str, int]:
        """Kept channels per pruned group now."""
        return {name: int(idx.numel()) for name, idx in self.keep.items()}

    def predict(self, widths: dict[str, int]) -> float:
        """Predicted latency (ms) of the dense graph at ``widths`` (missing groups dense)."""
        return self._predictor(widths)

    @property
    def done(self) -> bool:
        return self.pruning_step >= self.config.steps

    # -- training-loop hooks ---------------------------------------------------------------------
    def step(self) -> StepResult | None:
        """Call after ``loss.backward()``: accumulates importance; runs a pruning step when one is due."""
        if self.done:
            return None
        self.iteration += 1
        if self.iteration <= self.config.start:
            return None
        self.importance.accumulate()
        if self.iteration != self.schedule[self.pruning_step]:
            return None
        return self.prune_now()

    def prune_now(self, target_ms: float | None = None) -> StepResult:
        """Solves the next pruning step from the importance gathered so far and updates the masks.

        Args:
            target_ms: overrides the schedule's target, e.g. for a correction step after the schedule when
                the slim model measured on the device misses the budget the table predicted it meets.
        """
        self.importance.all_reduce()
        scores = self.importance.scores()
        target = self.targets[min(self.pruning_step, len(self.targets) - 1)] if target_ms is None else target_ms
        offers, ranked = [], {}
        for group in self.groups:
            kept = self.keep[group.name]
            order = torch.argsort(scores[group.name][kept], descending=True, stable=True)
            ranked[group.name] = kept[order]
            s = scores[group.name][ranked[group.name]]
            sizes = block_sizes(int(kept.numel()), self.steps_per_group[group.name], self.min_width[group.name])
            bounds = [0]
            for size in sizes:
                bounds.append(bounds[-1] + size)
            values = tuple(float(s[a:b].sum()) for a, b in zip(bounds, bounds[1:]))
            min_blocks = next(i for i, b in enumerate(bounds) if b >= self.min_width[group.name])
            offers.append(GroupOffer(group.name, tuple(sizes), values, min_blocks))
        feedback: list[dict[str, float]] = []
        loop = self.feedback if self._measured_step(target_ms) else None
        if loop is not None:
            result, feedback = loop.run(
                target / self.dense_ms, self.dense_ms, lambda t: self._allocate(offers, ranked, scores, t),
                lambda widths: self._slim_at(ranked, widths),
            )
        else:
            result = self._allocate(offers, ranked, scores, target)
        total = sum(float(scores[g].sum()) for g in scores) or 1.0
        kept_importance = 0.0
        for group in self.groups:
            width = result.widths[group.name]
            self.keep[group.name] = torch.sort(ranked[group.name][:width]).values
            kept_importance += float(scores[group.name][self.keep[group.name]].sum())
        self.apply_masks()
        self.history.append(
            {
                "step": self.pruning_step + 1,
                "iteration": self.iteration,
                "target_ms": target,
                "knapsack_ms": result.knapsack_ms,
                "predicted_ms": result.predicted_ms,
                "importance_kept": kept_importance / total,
                "solve_seconds": result.solve_seconds,
                "solves": result.solves,
                "skipped_batches": self.importance.skipped,
                "widths": dict(result.widths),
                **({"feedback": feedback, "measured_ratio": loop.lookup(result.widths)} if loop else {}),
            }
        )
        log.info(
            "pruning step %d/%d: target %.3f ms, knapsack %.3f ms, re-predicted %.3f ms (%.2fs)",
            self.pruning_step + 1, self.config.steps, target, result.knapsack_ms, result.predicted_ms,
            result.solve_seconds,
        )
        self.pruning_step += 1
        self.importance.reset()
        return result

    def _measured_step(self, target_ms: float | None) -> bool:
        """Is this a schedule step the device feedback measures (the last ``feedback.steps``)?"""
        return (self.feedback is not None and target_ms is None
                and self.pruning_step >= self.config.steps - self.feedback.steps)

    def _slim_at(self, ranked: dict[str, torch.Tensor], widths: dict[str, int]) -> nn.Module:
        """The slim model keeping the ``widths[g]`` best-ranked channels of each group (for measuring)."""
        keep = {n: torch.sort(ranked[n][:w]).values for n, w in widths.items() if w < self.graph.group(n).channels}
        return prune_channels(self.model, self.graph, keep).eval()

    def _allocate(
        self,
        offers: list[GroupOffer],
        ranked: dict[str, torch.Tensor],
        scores: dict[str, torch.Tensor],
        target: float,
    ) -> StepResult:
        """HALP's choice of widths: the prefix-constrained knapsack (baselines override this)."""
        return solve_step(
            offers,
            self.widths(),
            target,
            self._predictor,
            refine=self.config.refine,
            tolerance=self.config.refine_tolerance,
            resolution=self.config.solver_resolution,
        )

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Call after ``optimizer.step()``: zeroes every pruned channel's weights and statistics."""
        if self.pruning_step == 0:
            return
        mask_channels(self.model, self.graph, self._pruned_keep())

    def _pruned_keep(self) -> dict[str, torch.Tensor]:
        return {n: k for n, k in self.keep.items() if k.numel() < self.graph.group(n).channels}

    def finalize(self) -> nn.Module:
        """The physically slim model (masked and slim models give the same outputs)."""
        self.apply_masks()
        return prune_channels(self.model, self.graph, self._pruned_keep())

    # -- reporting and checkpoints ------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        """Per-step targets, knapsack and re-predicted latency, widths, importance kept, solve times."""
        return {
            "config": self.config.to_dict(),
            "dense_ms": self.dense_ms,
            "final_target_ms": self.final_ms,
            "targets_ms": list(self.targets),
            "schedule": list(self.schedule),
            "group_steps": dict(self.steps_per_group),
            "not_pruned_negligible_ms": dict(self.negligible),
            "dense_widths": {g.name: g.channels for g in self.groups},
            "widths": self.widths(),
            "predicted_ms": self.predict(self.widths()),
            "skipped_batches": self.importance.skipped,
            "steps": list(self.history),
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: counters, kept indices, importance, history (tensors + JSON types)."""
        return {
            "config": self.config.to_dict(),
            "iteration": self.iteration,
            "pruning_step": self.pruning_step,
            "keep": {n: k.clone() for n, k in self.keep.items()},
            "importance": self.importance.state_dict(),
            "history": list(self.history),
            "feedback_correction": None if self.feedback is None else self.feedback.correction,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved_fields = dict(state["config"])
        # A checkpoint written before ``min_saving`` existed pruned every group: read it as min_saving 0, so
        # that resuming it under the new default is refused with the fix named, not with missing groups.
        saved_fields.setdefault("min_saving", 0.0)
        saved = PruneConfig.from_dict(saved_fields)
        if saved != self.config:
            raise ValueError(_config_mismatch(saved, self.config, old_format="min_saving" not in state["config"]))
        unknown = set(state["keep"]) - set(self.keep)
        if unknown and unknown <= set(self.negligible):
            raise ValueError(
                f"the checkpoint prunes groups that this run leaves whole because they save under min_saving="
                f"{self.config.min_saving:g} of the dense latency with this table ({sorted(unknown)[:5]}); resume "
                "with the table the checkpoint was made with, or with a lower min_saving in a new output directory")
        if unknown:
            raise ValueError(f"checkpoint names groups this model does not have: {sorted(unknown)[:5]}; resume with "
                             "the model and recipe the checkpoint was made with")
        self.iteration = int(state["iteration"])
        self.pruning_step = int(state["pruning_step"])
        for name, idx in state["keep"].items():
            self.keep[name] = idx.clone().long()
        self.importance.load_state_dict(state["importance"])
        self.history = list(state["history"])
        if self.feedback is not None and state.get("feedback_correction") is not None:
            self.feedback.correction = float(state["feedback_correction"])
        self.apply_masks()


def _config_mismatch(saved: PruneConfig, now: PruneConfig, *, old_format: bool) -> str:
    """The refusal to resume a checkpoint under another config, naming each changed field and its fix.

    A default that changed between releases (detection's width floor went from 0.1 to 0.25) shows up here
    as a field the user never set: the message gives the recipe line that resumes the run as it started.
    """
    changed = [f.name for f in fields(PruneConfig) if getattr(saved, f.name) != getattr(now, f.name)]
    said = ", ".join(f"{n}={_yaml(getattr(saved, n))} (this run: {_yaml(getattr(now, n))})" for n in changed)
    fix = ", ".join(f"{n}: {_yaml(getattr(saved, n))}" for n in changed)
    flags = " ".join(f"--{n.replace('_', '-')} {_yaml(getattr(saved, n))}" for n in changed
                     if n in CLI_FIELDS)
    why = (" (checkpoints older than the min_saving setting pruned every group, min_saving 0)"
           if old_format and "min_saving" in changed else "")
    return (f"the checkpoint was made with a different PruneConfig: {said}{why}; resume with "
            f"`prune: {{{fix}}}` in the recipe" + (f" (CLI {flags})" if flags else "")
            + " or start a new output directory")


def _yaml(value: Any) -> str:
    """A config value as a recipe (YAML) would spell it."""
    if isinstance(value, tuple):
        return "[" + ", ".join(map(_yaml, value)) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else repr(value)


__all__ = ["Pruner", "PruneConfig", "StepResult"]
