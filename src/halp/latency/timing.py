"""Robust timing of one callable: warm-up, repeats, median and spread.

Every latency number in halp goes through :func:`time_callable` so that single layers, elementwise ops
and whole networks are measured the same way. The first forwards of a freshly built module are much
slower (kernel selection, buffer allocation, oneDNN primitive creation: up to ~45% on our CPU), so
warm-up is counted both in iterations and in time.

One statistic is the latency everywhere (tables, calibration, ``halp latency``, the demo, reports,
benchmarks): the **median of all timed forwards**. Samples are taken in rounds (:func:`time_interleaved`
alternates the models compared, round by round) so that a ratio of two latencies compares them at the
same speed of the machine; the median drops the one-sided outliers of a shared machine. The fastest
round's median was the statistic before: on this 2-core VM it catches the rare fast spells of the host
(ResNet-18 at 160², six measurements a second apart: 23.9–28.4 ms, 18.5% apart, against 28.2–29.1 ms,
3.1%, for the median of the same forwards), so repeated measurements disagreed with each other.
Nor are blocks timed in a slow spell taken again: the median over interleaved rounds does not chase the
host's fast and slow spells, so the probe-driven retakes halp once offered (off by default) were dropped.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np


CLOCKS = ("wall", "thread")


def parse_statistic(statistic: str) -> float:
    """``"median"`` → 50, ``"p10"`` → 10; ``ValueError`` for anything else."""
    if statistic == "median":
        return 50.0
    try:
        q = float(statistic[1:]) if statistic.startswith("p") else float("nan")
    except ValueError:
        q = float("nan")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"statistic must be 'median' or a percentile like 'p10', got {statistic!r}")
    return q


@dataclass(frozen=True)
class TimingSettings:
    """How much to warm up and repeat.

    Attributes:
        warmup: warm-up calls before timing (at least this many).
        warmup_ms: keep warming up until this much time has passed too (small layers need many calls
            before their timings settle; big ones reach it in a few).
        repeats: timed calls (at least this many).
        min_time_ms: keep repeating until the timed calls add up to this much, so fast ops get enough
            samples for a stable median.
        max_repeats: upper bound on timed calls, whatever ``min_time_ms`` asks.
        clock: ``"wall"`` (latency, the default) or ``"thread"``: the calling thread's CPU time, which
            time stolen by other processes does not inflate. Only meaningful single-threaded on a CPU
            (work on other threads is not counted); a diagnostic for shared machines, not a latency.
    """

    warmup: int = 5
    warmup_ms: float = 20.0
    repeats: int = 15
    min_time_ms: float = 30.0
    max_repeats: int = 200
    clock: str = "wall"

    def __post_init__(self) -> None:
        for name in ("warmup", "repeats", "max_repeats"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be at least 1, got {self.repeats}")
        if self.max_repeats < self.repeats:
            raise ValueError(
                f"max_repeats ({self.max_repeats}) must be >= repeats ({self.repeats}); raise max_repeats"
            )
        if self.clock not in CLOCKS:
            raise ValueError(f"clock must be one of {CLOCKS}, got {self.clock!r}")
        for name in ("warmup_ms", "min_time_ms"):
            if not float(getattr(self, name)) >= 0:
                raise ValueError(f"{name} must be >= 0 milliseconds, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LatencyStats:
    """Robust statistics of repeated latency samples, in milliseconds.

    ``float(stats)`` is :attr:`latency_ms` (the median over all samples), so a stats object can be used
    wherever a number is expected; ``round_medians_ms`` keeps each round's median for diagnostics.
    """

    median_ms: float
    iqr_ms: float
    mean_ms: float
    samples: list[float] = field(default_factory=list, repr=False)
    round_medians_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def latency_ms(self) -> float:
        """The latency halp reports: the median of all timed forwards."""
        return float(self.median_ms)

    def __float__(self) -> float:
        return self.latency_ms

    def quantile(self, q: float) -> float:
        """The ``q``-th percentile of the samples (``q`` in [0, 100])."""
        if not self.samples:
            return float(self.median_ms)
        return float(np.percentile(np.asarray(self.samples, dtype=np.float64), q))

    def summary(self, statistic: str = "median") -> float:
        """The statistic a table or benchmark reports: ``"median"`` (:attr:`latency_ms`) or a percentile
        of all samples such as ``"p10"``.
        """
        return self.latency_ms if statistic == "median" else self.quantile(parse_statistic(statistic))

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float], rounds: Sequence[Sequence[float]] | None = None
                     ) -> "LatencyStats":
        """Summarise ``samples_ms``; ``rounds`` (the same samples split by round) gives each round's median."""
        values = np.asarray(samples_ms, dtype=np.float64)
        if values.size == 0:
            raise ValueError("no latency samples to summarise; repeats must be at least 1")
        q1, median, q3 = np.percentile(values, [25.0, 50.0, 75.0])
        medians = [float(np.median(np.asarray(r, dtype=np.float64))) for r in (rounds or []) if len(r)]
        return cls(float(median), float(q3 - q1), float(values.mean()), [float(v) for v in values], medians)


def time_callable(
    fn: Callable[[], Any],
    settings: TimingSettings,
    *,
    sync: Callable[[], None] | None = None,
    timer: Callable[[Callable[[], Any]], float] | None = None,
) -> LatencyStats:
    """Time ``fn()`` after warm-up; one sample per call.

    Args:
        fn: the work to time; its result is discarded.
        settings: warm-up and repeat policy.
        sync: called after each call and before reading the clock (e.g. CUDA synchronise) so that
            asynchronous devices are timed to completion.
        timer: replaces the wall clock: ``timer(fn) -> ms`` times one call itself (CUDA events).
    """

    clock = time.thread_time_ns if settings.clock == "thread" else time.perf_counter_ns

    def one() -> float:
        if timer is not None:
            return timer(fn)
        start = clock()
        fn()
        if sync is not None:
            sync()
        return (clock() - start) / 1e6

    warm_start = time.perf_counter()
    done = 0
    while done < settings.warmup or (time.perf_counter() - warm_start) * 1e3 < settings.warmup_ms:
        fn()
        done += 1
        if done >= 10 * max(settings.warmup, 1) + 1000:  # a no-op fn must not spin forever
            break
    if sync is not None:
        sync()
    samples: list[float] = []
    total = 0.0
    while len(samples) < settings.repeats or (
        total < settings.min_time_ms and len(samples) < settings.max_repeats
    ):
        ms = one()
        samples.append(ms)
        total += ms
    return LatencyStats.from_samples(samples)


def time_interleaved(
    fns: Sequence[Callable[[], Any]],
    settings: TimingSettings,
    *,
    rounds: int = 5,
    sync: Callable[[], None] | None = None,
    timer: Callable[[Callable[[], Any]], float] | None = None,
) -> list[LatencyStats]:
    """Time several callables in interleaved rounds so that slow drift of the machine (other jobs,
    frequency changes) hits all of them alike instead of biasing whichever ran during a busy spell.

    Each callable is fully warmed up once, then every round takes ``ceil(repeats / rounds)`` samples
    of each in turn (preceded by a single re-warm call, since another model has just evicted caches).
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    per_round = max(1, -(-settings.repeats // rounds))
    warm = TimingSettings(settings.warmup, settings.warmup_ms, 1, 0.0, 1, settings.clock)
    for fn in fns:
        time_callable(fn, warm, sync=sync, timer=timer)
    one_round = TimingSettings(1, 0.0, per_round, 0.0, per_round, settings.clock)
    blocks: list[list[list[float]]] = [[] for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            blocks[i].append(time_callable(fn, one_round, sync=sync, timer=timer).samples)
    return [LatencyStats.from_samples([v for b in bs for v in b], rounds=bs) for bs in blocks]
