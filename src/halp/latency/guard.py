"""Waiting out spells when a shared machine runs slow: a reference kernel timed between measurements.

On a shared host (a cloud VM) other tenants slow our cores for seconds to minutes at a time. On our
2-core EPYC VM the same MobileNet-V2 forward at 2 threads ran 19 ms and 28 ms in alternating spells of
10–20 s, with nothing else running inside the VM (invisible to ``top`` and to steal time). Measured
twice, the same 30 pruned networks then gave reductions that agreed only to r = 0.91 with each other,
and a table whose entries fall into different spells describes two machines at once.

:class:`SpeedGuard` times a small fixed convolution (the *probe*, well under a millisecond) around
each measurement. The machine's speed is a low percentile of the probes so far; a measurement taken while the
probe runs more than ``tolerance`` times slower than that is taken again once the probe is fast
again. So every number describes the machine unslowed, which is the only state a later measurement
can reproduce. On a dedicated machine the probe is always fast and the guard only costs the probes.
A slow spell that outlasts ``max_wait_s`` is measured anyway (with a warning) rather than stalling a
profile, and after ``adopt_after`` such timeouts in a row the slower speed becomes the reference until
a faster probe is seen (a lasting neighbour, not a spell).

Measured on that VM: the pass-to-pass r of MobileNet-V2's measured reductions rose from 0.87–0.93 to
0.96–0.99, and profiling its table took 627 s instead of 270 s (403 s of waiting), which is why
``halp.profile`` leaves the guard off unless asked (``guard=1.2``).
"""

from __future__ import annotations

import logging
import time
from bisect import insort
from typing import Any, Callable, TypeVar

import numpy as np

logger = logging.getLogger(__name__)

T = TypeVar("T")


def conv_probe(channels: int = 32) -> Callable[[], float]:
    """A probe: the median of five runs (ms) of a 32→32 3×3 convolution at 28×28 on the CPU, after two
    unmeasured ones, with the current torch thread count (the measured work's own parallelism, so a
    slowed core shows). The two first runs matter: right after a pause or a big layer, worker threads
    are asleep and the probe's data evicted, which read up to 1.4x slow on our VM at full speed."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, channels, 28, 28, generator=gen)
    w = torch.randn(channels, channels, 3, 3, generator=gen)

    def probe() -> float:
        times = []
        with torch.inference_mode():
            for _ in range(2):  # wake the worker threads and bring the probe's data back into cache
                F.conv2d(x, w, padding=1)
            for _ in range(5):
                start = time.perf_counter_ns()
                F.conv2d(x, w, padding=1)
                times.append((time.perf_counter_ns() - start) / 1e6)
        return float(np.median(times))

    with torch.inference_mode():
        for _ in range(5):  # oneDNN primitive creation
            F.conv2d(x, w, padding=1)
    return probe


class SpeedGuard:
    """Keeps measurements to the spells when the machine runs at its best speed.

    Args:
        probe: times the reference work once, in ms (:func:`conv_probe` by default).
        tolerance: a probe more than this many times slower than the machine's best (:attr:`best`) means
            "slowed".
        max_wait_s: longest wait for a slow spell to end before measuring anyway.
        poll_s: pause between probes while waiting.
        adopt_after: after this many waits in a row that time out, the slowdown is taken for the machine's
            new speed (a lasting neighbour rather than a spell), so that a profile does not stall on every
            point; the first faster probe restores the old reference.
        sleep, clock: injectable for tests (default ``time.sleep`` and ``time.monotonic``).
    """

    def __init__(
        self,
        probe: Callable[[], float] | None = None,
        *,
        tolerance: float = 1.2,
        max_wait_s: float = 10.0,
        poll_s: float = 0.25,
        adopt_after: int = 3,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not tolerance > 1.0:
            raise ValueError(f"the speed guard's tolerance must be > 1 (a ratio to the best probe time), got {tolerance}")
        if not max_wait_s >= 0 or not poll_s > 0:
            raise ValueError(f"max_wait_s must be >= 0 and poll_s > 0 seconds, got {max_wait_s}, {poll_s}")
        self._probe = probe if probe is not None else conv_probe()
        self.tolerance = float(tolerance)
        self.max_wait_s = float(max_wait_s)
        self.poll_s = float(poll_s)
        self.adopt_after = max(int(adopt_after), 1)
        self._sleep, self._clock = sleep, clock
        self._probes: list[float] = []  # every probe time so far, sorted
        self._scale = 1.0  # > 1 while a lasting slowdown is taken for the machine's speed
        self.waited_s = 0.0  # total time spent waiting for slow spells to end
        self.retaken = 0  # measurements taken again because the machine slowed during them
        self.timeouts = 0  # slow spells accepted after max_wait_s
        self._fast_at: float | None = None  # when a probe last found the machine at speed
        self._in_a_row = 0  # waits in a row that timed out

    @property
    def best(self) -> float:
        """The machine's speed in probe time (ms): the 5th percentile of all probes so far (the minimum
        while there are fewer than 21), so that one lucky probe does not set the bar; scaled up while a
        lasting slowdown is adopted."""
        if not self._probes:
            return float("inf")
        return self._probes[int(0.05 * (len(self._probes) - 1))] * self._scale

    def ratio(self) -> float:
        """Probe once; the time relative to the machine's best speed (1.0 = at speed)."""
        t = float(self._probe())
        insort(self._probes, t)
        if t <= self.tolerance * self.best / self._scale:
            self._scale = 1.0  # back at full speed: an adopted slowdown is over
        r = t / self.best
        self._fast_at = self._clock() if r <= self.tolerance else None
        return r

    def settle(self) -> float:
        """Wait (up to ``max_wait_s``) until the probe is fast; the last ratio. A probe that found the
        machine at speed less than ``poll_s`` ago is trusted (measurements in a row need one probe each)."""
        if self._fast_at is not None and self._clock() - self._fast_at < self.poll_s:
            return 1.0
        r = self.ratio()
        start = self._clock()
        while r > self.tolerance:
            waited = self._clock() - start
            if waited >= self.max_wait_s:
                self.timeouts += 1
                self._in_a_row += 1
                if self._in_a_row >= self.adopt_after:  # not a spell: adopt the slower speed until a faster probe
                    self._scale *= r / self.tolerance
                    self._in_a_row = 0
                logger.warning(
                    "this machine has run %.0f%% slower than its best for %.0f s (another tenant of a shared "
                    "host?); measuring anyway. Profile on an idle machine for reproducible tables.",
                    100 * (r - 1), waited)
                break
            self._sleep(self.poll_s)
            r = self.ratio()
        if r <= self.tolerance:
            self._in_a_row = 0
        self.waited_s += self._clock() - start
        return r

    def measure(self, run: Callable[[], T], faster: Callable[[T, T], bool]) -> T:
        """``run()`` with the machine at speed before it; taken again (keeping the faster by ``faster(a, b)``:
        is ``a`` faster than ``b``) when the machine slowed down while it ran."""
        self.settle()
        result = run()
        if self.ratio() <= self.tolerance:
            return result
        self.retaken += 1
        self.settle()
        again = run()
        return again if faster(again, result) else result

    def summary(self) -> dict[str, Any]:
        """What the guard did, for a table's metadata."""
        return {"probe_best_ms": round(self.best, 4) if np.isfinite(self.best) else None,
                "tolerance": self.tolerance, "waited_s": round(self.waited_s, 2), "retaken": self.retaken,
                "timeouts": self.timeouts}


def guard_for(backend_name: str, tolerance: float | None, max_wait_s: float = 10.0) -> SpeedGuard | None:
    """The guard a measurement on ``backend_name`` gets: none when ``tolerance`` is None or 0 (off) or on
    ``torch-cuda`` (a GPU is timed by its own events; the probe would time the host)."""
    if not tolerance or backend_name == "torch-cuda":
        return None
    return SpeedGuard(tolerance=tolerance, max_wait_s=max_wait_s)
