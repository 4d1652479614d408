"""Closing the loop on the device: the last pruning steps measure the slim models the solver proposes.

A latency table predicts; only the device says what a slim network costs. Measured on this project's CPU,
a table's prediction of the schedule's final slim model was off by up to 18% (the demo measured 0.59 x
dense where the table said 0.50), from effects a per-layer table cannot see (oneDNN's channel-alignment
sawtooth, in-network cache effects, per-op overhead; HALP-SPEC section 6). Correcting *after* the schedule
prunes a fine-tuned network once more and costs accuracy (the demo lost 4.2 points that way).

So the last ``steps`` pruning steps (``halp prune``: every step, unless the recipe says) run a closed
loop: solve the knapsack for a target, build the slim model it proposes, measure it against the dense
model, and move the target until the measured ratio lands in ``[(1 - band), 1] x`` the step's ratio.

One reading of a ratio on a shared machine is off by several percent, in either direction, and readings
minutes apart disagree more than readings seconds apart (docs/results.md, "the closed loop's readings"),
while the table's *shape* is right (its reductions correlate with measured ones at r >= 0.99). So the loop
separates the two: the factor ``measured / predicted`` is estimated robustly (the median over the step's
readings, seeded by the previous step's), and the next target is the one whose *prediction* times that
factor hits the band; the solver's target -> prediction map has no noise, so the loop does not chase one
noisy reading. A reading that disagrees with the factor of the others by more than the band is taken once
more and the two averaged, so a transient outlier does not decide the step, while a real width-specific
cost (an alignment sawtooth, a runtime's staircase) survives the second reading and is kept. Every width
combination measured is remembered, so the loop never measures one a third time.
"""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

log = logging.getLogger(__name__)

#: slim model at the proposed widths -> its latency measured as a fraction of the dense model's
RatioMeasure = Callable[[Any], float]


@dataclass
class DeviceFeedback:
    """Settings and memory of the closed loop (hand one to :class:`halp.pruner.Pruner`).

    Attributes:
        measure: measures a slim model and returns its latency over the dense model's, both taken with
            halp's one statistic in the same interleaved rounds (:func:`halp.latency.measure_many`).
        steps: how many of the schedule's last pruning steps are measured (the last one always lands
            the budget; earlier ones teach the loop the table's error before the final step).
        band: the final measured ratio aims at ``[(1 - band), 1] x budget``.
        attempts: most solves (each one measurement) per measured step.
        correction: the factor measured / predicted learned so far (the median over the last measured
            step's readings; 1: trust the table).
        readings: every reading per width combination (two where a reading was confirmed): the loop's
            memory; :attr:`measured` and :meth:`lookup` give their mean.
    """

    measure: RatioMeasure
    steps: int = 2
    band: float = 0.05
    attempts: int = 5
    correction: float = 1.0
    readings: dict[tuple[tuple[str, int], ...], list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise ValueError(f"feedback steps must be a positive integer (0 steps: pass no feedback), got {self.steps!r}")
        if not 0.0 < self.band < 1.0:
            raise ValueError(f"feedback band must be a fraction in (0, 1), e.g. 0.05, got {self.band!r}")
        if not isinstance(self.attempts, int) or self.attempts < 1:
            raise ValueError(f"feedback attempts must be a positive integer, got {self.attempts!r}")

    @staticmethod
    def _key(widths: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
        return tuple(sorted((str(k), int(v)) for k, v in widths.items()))

    def _ratio(self, key: tuple[tuple[str, int], ...]) -> float:
        """The measured ratio of a width combination taken at least once: the mean of its readings."""
        return statistics.fmean(self.readings[key])

    @property
    def measured(self) -> dict[tuple[tuple[str, int], ...], float]:
        """Measured ratio per width combination: the mean of its readings."""
        return {key: self._ratio(key) for key in self.readings}

    def lookup(self, widths: Mapping[str, int]) -> float | None:
        """The measured ratio of these widths, if the loop measured them."""
        key = self._key(widths)
        return self._ratio(key) if self.readings.get(key) else None

    def ratio_of(self, widths: Mapping[str, int], build: Callable[[Mapping[str, int]], Any]) -> float:
        """Measured ratio of ``widths`` (built by ``build`` and measured once; remembered after)."""
        key = self._key(widths)
        if key not in self.readings:
            self.readings[key] = [float(self.measure(build(widths)))]
        return self._ratio(key)

    def _confirm(self, widths: Mapping[str, int], build: Callable[[Mapping[str, int]], Any]) -> float:
        """Takes ``widths`` once more (if taken once only); its ratio is then the mean of the two readings."""
        key = self._key(widths)
        if len(self.readings[key]) < 2:
            self.readings[key].append(float(self.measure(build(widths))))
        return self._ratio(key)

    def _factors(self, tried: list[tuple[float, Any, float]]) -> list[float]:
        """measured / predicted of every attempt in ``tried`` ((target_ms, result, predicted ratio))."""
        return [self.lookup(r.widths) / p for _, r, p in tried]

    def run(
        self,
        goal_ratio: float,
        dense_ms: float,
        solve: Callable[[float], Any],
        build: Callable[[Mapping[str, int]], Any],
    ) -> tuple[Any, list[dict[str, float]]]:
        """Solve until the measured ratio lands in the band under ``goal_ratio``.

        Args:
            goal_ratio: the step's target as a fraction of the dense latency.
            dense_ms: the dense latency the table predicts (targets are in the table's milliseconds).
            solve: ``solve(target_ms) -> StepResult`` (the knapsack with refinement).
            build: ``build(widths) -> slim model`` to measure.

        Returns:
            the chosen solve and one record per attempt (target, predicted and measured ratios, and the
            step's factor ``measured / predicted`` after it).
        """
        lo, hi = (1.0 - self.band) * goal_ratio, goal_ratio
        aim = (1.0 - self.band / 2) * goal_ratio
        target = aim * dense_ms / self.correction
        tried: list[tuple[float, Any, float]] = []  # (target_ms, result, predicted ratio)
        records: list[dict[str, float]] = []
        for _ in range(self.attempts):
            try:
                result = solve(target)
            except ValueError as exc:  # below the smallest network the config allows
                log.info("feedback: target %.4g ms not reachable (%s)", target, exc)
                break
            predicted = result.predicted_ms / dense_ms
            if predicted <= 0:
                raise ValueError(f"the table predicts {result.predicted_ms!r} ms for a slim model; a latency table "
                                 "must predict positive times (re-profile it)")
            measured = self.ratio_of(result.widths, build)
            # the factor the step's other readings (else earlier steps', if any) expect of this one
            expected = statistics.median(self._factors(tried)) if tried else self.correction
            if (tried or len(self.readings) > 1) and abs(measured / (expected * predicted) - 1.0) > self.band:
                measured = self._confirm(result.widths, build)
            tried.append((target, result, predicted))
            self.correction = statistics.median(self._factors(tried))
            records.append({"target_ms": target, "predicted_ratio": predicted, "measured_ratio": measured,
                            "factor": self.correction})
            log.info("feedback: target %.4g ms -> predicted %.3f, measured %.3f x dense (goal %.3f, factor %.3f)",
                     target, predicted, measured, goal_ratio, self.correction)
            if lo <= measured <= hi:
                break
            target = self._next_target(tried, aim / self.correction)
            if any(math.isclose(target, t, rel_tol=1e-4) for t, _, _ in tried):
                break
        if not tried:
            return solve(goal_ratio * dense_ms), records
        return self._choose([(t, r, self.lookup(r.widths)) for t, r, _ in tried], lo, hi), records

    @staticmethod
    def _next_target(tried: list[tuple[float, Any, float]], want: float) -> float:
        """The target whose solve the table predicts at ``want`` x dense: interpolated (log scale) between the
        nearest attempts whose predictions bracket it, else the last target scaled by the miss."""
        below = [(t, p) for t, _, p in tried if p <= want]
        above = [(t, p) for t, _, p in tried if p > want]
        if below and above:
            (t0, p0), (t1, p1) = max(below, key=lambda q: q[1]), min(above, key=lambda q: q[1])
            if p1 > p0:
                f = (math.log(want) - math.log(p0)) / (math.log(p1) - math.log(p0))
                return math.exp(math.log(t0) + f * (math.log(t1) - math.log(t0)))
            return 0.5 * (t0 + t1)
        t, _, p = tried[-1]
        return t * want / p

    @staticmethod
    def _choose(tried: list[tuple[float, Any, float]], lo: float, hi: float) -> Any:
        """In the band: the largest measured ratio (most channels kept); else the largest under the goal;
        else the fastest."""
        inside = [p for p in tried if lo <= p[2] <= hi]
        under = [p for p in tried if p[2] <= hi]
        pick = max(inside or under, key=lambda p: p[2]) if (inside or under) else min(tried, key=lambda p: p[2])
        return pick[1]
