"""The one timing helper every benchmark uses: callables timed side by side, interleaved.

Interleaving (round-robin, rotating the order each round) spreads machine noise — other processes,
frequency changes, thermal drift — evenly over the contenders instead of penalising whichever ran
last. Each callable is warmed up first (first calls pay for allocation, caches, lazy imports). A time
budget lets a slow contender stop after fewer samples while the fast ones keep collecting theirs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np


@dataclass(frozen=True)
class Timing:
    """Samples of one callable, in seconds, with robust summaries."""

    name: str
    samples: tuple[float, ...]
    result: Any  # what the last call returned, so callers can check outputs

    @property
    def median(self) -> float:
        return float(np.median(self.samples))

    @property
    def q1(self) -> float:
        return float(np.percentile(self.samples, 25))

    @property
    def q3(self) -> float:
        return float(np.percentile(self.samples, 75))

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    def to_dict(self) -> dict[str, Any]:
        return {
            "median_s": self.median,
            "q1_s": self.q1,
            "q3_s": self.q3,
            "iqr_s": self.iqr,
            "n": len(self.samples),
            "samples_s": list(self.samples),
        }


def _per_name(value: int | Mapping[str, int], name: str, what: str) -> int:
    n = value.get(name, 1) if isinstance(value, Mapping) else value
    if n < 0:
        raise ValueError(f"{what} for {name!r} must be >= 0, got {n}")
    return int(n)


def compare(
    fns: Mapping[str, Callable[[], Any]],
    *,
    repeats: int | Mapping[str, int] = 5,
    warmup: int | Mapping[str, int] = 1,
    budget_s: float | None = None,
) -> dict[str, Timing]:
    """Time ``fns`` side by side.

    Args:
        fns: name -> zero-argument callable.
        repeats: samples per callable (or per name; names missing from a mapping get 1).
        warmup: untimed calls per callable before sampling (same forms as ``repeats``).
        budget_s: a callable stops sampling once its samples add up to this many seconds (it always
            keeps at least one), so one slow contender does not stretch the whole run.

    Returns:
        name -> :class:`Timing`, in the order of ``fns``.
    """
    names = list(fns)
    want = {n: max(1, _per_name(repeats, n, "repeats")) for n in names}
    results: dict[str, Any] = {}
    for n in names:
        for _ in range(_per_name(warmup, n, "warmup")):
            results[n] = fns[n]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    for rnd in range(max(want.values(), default=0)):
        shift = rnd % max(len(names), 1)
        for n in names[shift:] + names[:shift]:
            done = len(samples[n]) >= want[n]
            over = budget_s is not None and samples[n] and sum(samples[n]) >= budget_s
            if done or over:
                continue
            t0 = time.perf_counter()
            results[n] = fns[n]()
            samples[n].append(time.perf_counter() - t0)
    return {n: Timing(n, tuple(samples[n]), results.get(n)) for n in names}
