"""Latency-aware neuron grouping (HALP-SPEC section 4): prune each group in steps of its latency staircase.

Removing channels only pays when a width crosses a cliff of the latency staircase, so a group shrinks
in whole *steps* (the distance between consecutive cliffs) and lands on the fast edge of a stair. The
paper hard-codes ResNet-50's sizes for one GPU; here the step comes from the measured table, per layer
and per device:

* :func:`detect_step` (from :mod:`halp.staircase`) finds the cliffs of one layer's output-channel
  sweep and returns their typical spacing;
* :func:`group_steps` takes, for each prunable group, the largest step among the layers producing it
  (coupled layers must all land on their fast edge), with a fixed global size for ablations and
  per-name overrides;
* :func:`block_sizes` cuts a group's current width into the knapsack's items.
"""

from __future__ import annotations

import fnmatch
import logging
from typing import TYPE_CHECKING, Mapping, Protocol

import numpy as np

from halp.staircase import NO_STAIRCASE, detect_step, find_cliffs

if TYPE_CHECKING:  # types only: grouping needs no torch and no tracer
    from halp.graph.types import ChannelGraph, Layer

__all__ = ["NO_STAIRCASE", "SweepTable", "block_sizes", "detect_step", "find_cliffs", "group_steps"]

log = logging.getLogger(__name__)


class SweepTable(Protocol):
    """What :func:`group_steps` needs from a latency table."""

    def cout_sweep(self, layer: "Layer") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(channels, median_ms, noise_ms) over output channels near full width; KeyError if not profiled."""
        ...


def _check_size(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive whole number of channels, got {value!r}")
    return int(value)


def _override(name: str, overrides: Mapping[str, int]) -> int | None:
    for pattern, size in overrides.items():  # first matching pattern wins
        if fnmatch.fnmatchcase(name, pattern):
            return size
    return None


def group_steps(
    graph: "ChannelGraph",
    table: SweepTable | None,
    mode: str | int = "auto",
    overrides: Mapping[str, int] | None = None,
    k: float = 3.0,
) -> dict[str, int]:
    """Each prunable group's step (channels per knapsack item).

    Args:
        graph: the channel graph; ``group.producers`` name the layers whose outputs are the group.
        table: anything with ``cout_sweep(layer)`` (see :class:`SweepTable`); only used with ``"auto"``.
        mode: ``"auto"`` (detect from the table) or a fixed size for every group (the fixed-group
            ablation of the paper's Figs. 4 and 6).
        overrides: ``{fnmatch pattern: size}``. A pattern matching the group's name sets the group's
            step; one matching a producer layer's name sets that layer's step. Patterns are tried in
            order, the first match wins, and overrides win over ``mode``.
        k: cliff threshold in noise units, passed to :func:`detect_step`.

    Returns:
        ``{group name: step}``. A coupled group takes the largest step of its producers; a layer the
        table has not profiled counts as step 1 (with a warning). Steps are capped at the group's
        width and rounded up to its ``multiple_of``.
    """
    if isinstance(mode, str):
        if mode != "auto":
            raise ValueError(f"mode must be 'auto' or a positive integer block size, got {mode!r}")
        if table is None:
            raise ValueError("mode='auto' needs a latency table to detect steps from; pass one or a fixed size")
    else:
        mode = _check_size(mode, "mode (a fixed group size)")
    overrides = dict(overrides or {})
    for pattern, size in overrides.items():
        if not isinstance(pattern, str):
            raise ValueError(f"override patterns must be strings, got {pattern!r}")
        _check_size(size, f"override {pattern!r}")
    layers = {layer.name: layer for layer in graph.layers}
    cache: dict[str, int] = {}

    def layer_step(name: str) -> int:
        if name in cache:
            return cache[name]
        step = _override(name, overrides)
        if step is None and isinstance(mode, int):
            step = mode
        if step is None:
            layer = layers.get(name)
            if layer is None:
                log.warning("grouping: producer %r is not a conv/linear layer of the graph; step 1", name)
                step = NO_STAIRCASE
            else:
                try:
                    channels, median_ms, noise_ms = table.cout_sweep(layer)  # type: ignore[union-attr]
                except KeyError:
                    log.warning("grouping: layer %r was not profiled in the table; step 1", name)
                    step = NO_STAIRCASE
                else:
                    step = detect_step(channels, median_ms, noise_ms, k=k)
                    log.debug("grouping: layer %s step %d", name, step)
        cache[name] = step
        return step

    steps: dict[str, int] = {}
    for group in graph.prunable_groups:
        step = _override(group.name, overrides)
        if step is None:
            candidates = [layer_step(p) for p in group.producers]
            step = max(candidates) if candidates else (mode if isinstance(mode, int) else NO_STAIRCASE)
        step = min(step, group.channels)
        mult = max(1, int(group.multiple_of))
        steps[group.name] = max(mult, -(-step // mult) * mult)
    return steps


def block_sizes(width: int, step: int, min_keep: int = 1) -> list[int]:
    """Cut a group of ``width`` ranked channels into knapsack items, most important block first.

    Widths shrink only in whole steps from a multiple of ``step``: the ``width % step`` least important
    channels form the *last* block (removed first), so the reachable widths are ``width``, then the
    multiples of ``step`` below it, down to the smallest multiple ``>= min_keep``, which is the first
    block (a prefix of one block is the least a group may keep; zero blocks removes the group, allowed
    only when the knapsack's ``min_keep`` for it is 0). If no multiple of ``step`` fits between
    ``min_keep`` and ``width``, the group is one block.

    Example: ``block_sizes(250, 16, 20) == [32] + [16] * 13 + [10]`` (widths 32, 48, ..., 240, 250).

    Raises:
        ValueError: ``width`` or ``step`` below 1, or ``min_keep`` outside ``0..width``.
    """
    width = _check_size(width, "width")
    step = _check_size(step, "step")
    if isinstance(min_keep, bool) or not isinstance(min_keep, (int, np.integer)) or not 0 <= min_keep <= width:
        raise ValueError(f"min_keep must be a whole number in 0..width ({width}), got {min_keep!r}")
    whole = width - width % step  # largest multiple of step <= width
    first = max(step, -(-int(min_keep) // step) * step)  # smallest multiple of step >= max(min_keep, 1)
    if first > whole:
        return [width]
    blocks = [first] + [step] * ((whole - first) // step)
    if width > whole:
        blocks.append(width - whole)
    return blocks
