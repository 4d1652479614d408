"""One pruning step: turn ranked channels into knapsack items, solve, and refine (HALP-SPEC section 3).

Each prunable group offers its remaining channels, most important first, in blocks of its latency step.
Keeping a prefix of ``m`` blocks costs the latency the table predicts for the group at that width while
every *other* group stays at its current width (the paper's frozen-input approximation, extended to the
consumers of the group, the non-conv ops and the table's calibration, because we ask the whole-network
predictor rather than one layer). Those per-group curves make a multiple-choice knapsack whose exact
optimum :func:`halp.knapsack.solve_detailed` finds.

The frozen approximation misjudges what happens when all widths shrink at once, so the solution is
re-predicted with every width updated; contributions are then re-taken around that solution and the
knapsack capacity is bisected until the re-predicted latency lands in ``[1 - tol, 1] x target``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from halp.knapsack import solve_detailed

log = logging.getLogger(__name__)

Predictor = Callable[[Mapping[str, int]], float]  # group widths -> predicted network latency (ms)


@dataclass(frozen=True)
class GroupOffer:
    """What one group puts up for the knapsack: channel blocks in rank order with their values."""

    name: str
    blocks: tuple[int, ...]  # channels per block, most important block first; sums to the current width
    values: tuple[float, ...]  # summed importance per block
    min_blocks: int  # blocks that must be kept

    def width(self, m: int) -> int:
        return int(sum(self.blocks[:m]))


@dataclass
class StepResult:
    """A solved pruning step."""

    widths: dict[str, int]
    target_ms: float
    knapsack_ms: float  # what the knapsack believed (frozen contributions)
    predicted_ms: float  # re-predicted with all widths updated
    value: float
    solve_seconds: float
    solves: int
    history: list[tuple[float, float]] = field(default_factory=list)  # (capacity, predicted) tried


def _curves(offers: list[GroupOffer], context: Mapping[str, int], predict: Predictor) -> list[np.ndarray]:
    """Latency of the network with each group alone moved to every prefix width, others at ``context``."""
    fast = getattr(predict, "curve", None)  # halp.curves.WidthPredictor: one vectorised call per group
    curves = []
    for offer in offers:
        if fast is not None:
            widths = np.array([offer.width(m) for m in range(len(offer.blocks) + 1)])
            curve = np.asarray(fast(context, offer.name, widths), dtype=np.float64)
            curve[: offer.min_blocks] = np.nan  # forced: never used
            curves.append(curve)
            continue
        curve = np.empty(len(offer.blocks) + 1)
        for m in range(len(offer.blocks) + 1):
            if m < offer.min_blocks:
                curve[m] = np.nan  # never evaluated: forced
                continue
            widths = dict(context)
            widths[offer.name] = offer.width(m)
            curve[m] = predict(widths)
        curves.append(curve)
    return curves


def _problem(offers: list[GroupOffer], curves: list[np.ndarray], base_ms: float, target_ms: float):
    """Knapsack items and capacity for ``estimate = base + sum_g (curve_g(m_g) - base) <= target``."""
    costs, values, minimums = [], [], []
    fixed = 0.0  # latency of every group at its minimum, relative to base
    for offer, curve in zip(offers, curves):
        m0 = offer.min_blocks
        cost = np.zeros(len(offer.blocks))
        cost[m0:] = np.diff(curve[m0:])  # item j (0-based) moves the prefix from j to j + 1 blocks
        costs.append(cost)
        values.append(np.asarray(offer.values, dtype=float))
        minimums.append(m0)
        fixed += curve[m0] - base_ms
    capacity = target_ms - base_ms - fixed
    return costs, values, np.asarray(minimums), capacity


def _estimate(curves: list[np.ndarray], keep: np.ndarray, base_ms: float) -> float:
    return base_ms + float(sum(c[k] - base_ms for c, k in zip(curves, keep)))


def solve_step(
    offers: list[GroupOffer],
    current: Mapping[str, int],
    target_ms: float,
    predict: Predictor,
    refine: bool = True,
    tolerance: float = 0.02,
    resolution: float | None = None,
    max_bisections: int = 14,
) -> StepResult:
    """Chooses how many blocks each group keeps so the predicted latency is at most ``target_ms``.

    Args:
        offers: one per prunable group, blocks in rank order.
        current: the width of every group now (groups without an offer stay as they are).
        target_ms: this step's latency target.
        predict: the whole-network predictor over group widths.
        refine: bisect the capacity so the re-predicted latency lands in ``[1 - tolerance, 1] x target``.
        tolerance: width of that band.
        resolution: knapsack cost-grid cell (ms); None for automatic.

    Raises:
        ValueError: when even every group at its minimum is predicted above the target.
    """
    t0 = time.perf_counter()
    solves = 0
    context = dict(current)
    floor = dict(context)
    for offer in offers:
        floor[offer.name] = offer.width(offer.min_blocks)
    floor_ms = predict(floor)
    if floor_ms > target_ms:
        raise ValueError(
            f"latency target {target_ms:.4g} ms is unreachable: the smallest network allowed (every group at its "
            f"minimum width) is predicted at {floor_ms:.4g} ms; raise the budget, or lower min_channels / "
            "min_fraction, or protect fewer layers"
        )

    def solve(curves: list[np.ndarray], base: float, capacity_shift: float = 0.0):
        nonlocal solves
        costs, values, minimums, capacity = _problem(offers, curves, base, target_ms)
        capacity += capacity_shift
        result = solve_detailed(costs, values, capacity, min_keep=minimums, resolution=resolution)
        solves += 1
        keep = np.asarray(result.keep)
        widths = dict(context)
        for offer, k in zip(offers, keep):
            widths[offer.name] = offer.width(int(k))
        return keep, widths, float(result.total_value), _estimate(curves, keep, base)

    def feasible_solve(curves, base, shift):
        try:
            return solve(curves, base, shift)
        except ValueError:  # the shifted capacity no longer admits the minimums
            return None

    base_ms = predict(context)
    curves = _curves(offers, context, predict)
    keep, widths, value, knapsack_ms = solve(curves, base_ms)
    predicted = predict(widths)
    history = [(0.0, predicted)]
    if refine:
        # Contributions re-taken around the first solution: interactions between groups that shrink together.
        context_ms = predict(widths)
        around = _curves(offers, widths, predict)
        # Around the solution, "base" is the solution itself and each curve moves one group back toward
        # its own prefix widths; the problem keeps the same form.
        keep2, widths2, value2, knapsack2 = solve(around, context_ms)
        predicted2 = predict(widths2)
        history.append((0.0, predicted2))
        if _better(predicted2, predicted, target_ms, tolerance):
            curves, base_ms = around, context_ms
            keep, widths, value, knapsack_ms, predicted = keep2, widths2, value2, knapsack2, predicted2
        lo_ok = predicted <= target_ms
        if not (lo_ok and predicted >= (1 - tolerance) * target_ms):
            best = (keep, widths, value, knapsack_ms, predicted) if lo_ok else None
            # shift the capacity: negative when over target, positive when comfortably under
            lo, hi = (0.0, None) if lo_ok else (None, 0.0)
            step = abs(target_ms - predicted) + 1e-9
            for _ in range(max_bisections):
                if lo is None:
                    shift = hi - step
                    step *= 2
                elif hi is None:
                    shift = lo + step
                    step *= 2
                else:
                    shift = 0.5 * (lo + hi)
                attempt = feasible_solve(curves, base_ms, shift)
                if attempt is None:  # below the minimums: the answer lies above this shift
                    lo = shift
                    continue
                k_, w_, v_, e_ = attempt
                p_ = predict(w_)
                history.append((shift, p_))
                if p_ <= target_ms:
                    lo = shift
                    if best is None or p_ > best[4] or (p_ == best[4] and v_ > best[2]):
                        best = (k_, w_, v_, e_, p_)
                    if p_ >= (1 - tolerance) * target_ms:
                        break
                else:
                    hi = shift
                if lo is not None and hi is not None and hi - lo < 1e-6 * target_ms:
                    break
            if best is None:
                raise ValueError(
                    f"could not find widths predicted under {target_ms:.4g} ms (closest {predicted:.4g} ms); "
                    "the table's prediction is not monotone in the widths here: re-profile with more repeats"
                )
            keep, widths, value, knapsack_ms, predicted = best
    return StepResult(
        widths={o.name: widths[o.name] for o in offers},
        target_ms=target_ms,
        knapsack_ms=knapsack_ms,
        predicted_ms=predicted,
        value=value,
        solve_seconds=time.perf_counter() - t0,
        solves=solves,
        history=history,
    )


def _better(candidate: float, incumbent: float, target: float, tol: float) -> bool:
    """Prefers a prediction inside the band, then one under the target closest to it."""

    def rank(p: float) -> tuple[int, float]:
        if (1 - tol) * target <= p <= target:
            return (0, target - p)
        if p <= target:
            return (1, target - p)
        return (2, p - target)

    return rank(candidate) < rank(incumbent)
