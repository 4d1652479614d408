"""The speed guard: measurements taken in a slow spell of a shared machine are taken again at speed.

A scripted probe and a fake clock make every decision deterministic (no wall-clock assertion)."""

from __future__ import annotations

import logging

import pytest
import torch

from halp.latency import measure_many
from halp.latency.backends import TorchBackend
from halp.latency.guard import SpeedGuard, conv_probe
from halp.latency.profile import ProfileSettings
from halp.latency.timing import LatencyStats, TimingSettings, time_interleaved


class Script:
    """A probe that returns the listed times in turn (the last one forever) and a clock that each probe
    and each sleep moves forward."""

    def __init__(self, times: list[float], probe_s: float = 1.0) -> None:
        self.times, self.probe_s, self.now, self.calls, self.slept = list(times), probe_s, 0.0, 0, 0.0

    def probe(self) -> float:
        self.calls += 1
        self.now += self.probe_s
        return self.times.pop(0) if len(self.times) > 1 else self.times[0]

    def sleep(self, s: float) -> None:
        self.now += s
        self.slept += s

    def guard(self, **kw: float) -> SpeedGuard:
        return SpeedGuard(self.probe, sleep=self.sleep, clock=lambda: self.now, **kw)


def test_settle_waits_for_the_slow_spell_to_end():
    s = Script([1.0, 2.0, 1.9, 1.05])
    g = s.guard(tolerance=1.2, poll_s=0.25)
    assert g.ratio() == 1.0 and g.best == 1.0
    s.now += 5.0  # a measurement ran
    assert g.settle() == pytest.approx(1.05)  # two slow probes, then at speed
    assert s.calls == 4 and s.slept == pytest.approx(0.5) and g.timeouts == 0
    assert g.settle() == 1.0 and s.calls == 4  # a fast probe under poll_s ago is trusted: no new probe


def test_a_measurement_the_machine_slowed_during_is_taken_again_and_the_faster_kept():
    s = Script([1.0, 1.6, 1.0])  # fast before, slow after the first run, fast again
    g = s.guard(tolerance=1.2)
    runs = iter([30.0, 20.0])
    got = g.measure(lambda: next(runs), lambda a, b: a < b)
    assert got == 20.0 and g.retaken == 1
    s2 = Script([1.0, 1.0, 1.0])  # never slow: one run, no retake
    g2 = s2.guard(tolerance=1.2)
    runs2 = iter([30.0, 20.0])
    assert g2.measure(lambda: next(runs2), lambda a, b: a < b) == 30.0 and g2.retaken == 0


def test_a_spell_longer_than_the_wait_is_accepted_with_a_warning(caplog):
    s = Script([1.0, 2.0])  # slow for good after the first probe
    g = s.guard(tolerance=1.2, max_wait_s=3.0, poll_s=1.0, adopt_after=2)
    g.ratio()
    s.now += 5.0
    with caplog.at_level(logging.WARNING, logger="halp.latency.guard"):
        assert g.settle() == pytest.approx(2.0)
    assert g.timeouts == 1 and "slower than its best" in caplog.text
    assert s.slept == pytest.approx(2.0)  # 1 s sleeps and 1 s probes: gave up once 3 s had passed
    s.now += 10.0
    assert g.settle() == pytest.approx(2.0) and g.timeouts == 2  # a second spell: waited again, then adopted
    s.now += 10.0
    slept = s.slept
    assert g.settle() <= 1.2 and g.timeouts == 2 and s.slept == slept  # the slower speed is the reference now
    assert g.summary()["timeouts"] == 2 and g.summary()["waited_s"] >= 6.0


def test_interleaved_blocks_timed_in_a_slow_spell_are_replaced():
    """Model 0's first block runs while the machine is slow (the probe after it says so): its samples are
    the retaken block's, so its median is the fast one."""
    s = Script([1.0, 1.5, 1.0])  # probes: before model 0's first block, after it (slow), then fast for good
    g = s.guard(tolerance=1.2, poll_s=1.0)
    slow = iter([50.0, 50.0])  # model 0's warm-up call and the first sample of its first block: slow spell
    calls = {0: 0, 1: 0}

    def timer_for(i):
        def fn():
            calls[i] += 1
        return fn

    def timer(fn):
        fn()
        return next(slow, 10.0) if fn is fns[0] else 20.0

    fns = [timer_for(0), timer_for(1)]
    stats = time_interleaved(fns, TimingSettings(0, 0.0, 4, 0.0, 4), rounds=2, timer=timer, guard=g)
    assert g.retaken == 1
    assert stats[0].samples == [10.0, 10.0, 10.0, 10.0]  # the slow block was replaced, not appended
    assert stats[1].samples == [20.0] * 4


def test_guard_settings_are_checked_and_off_on_a_gpu():
    with pytest.raises(ValueError, match="tolerance must be > 1"):
        SpeedGuard(lambda: 1.0, tolerance=1.0)
    with pytest.raises(ValueError, match="guard must be 0"):
        ProfileSettings(guard=0.9)
    assert ProfileSettings(guard=0).speed_guard(TorchBackend("cpu")) is None
    assert ProfileSettings().speed_guard(TorchBackend("cpu")) is None  # off by default
    assert isinstance(ProfileSettings(guard=1.2).speed_guard(TorchBackend("cpu")), SpeedGuard)
    with pytest.raises(ValueError, match="guard must be a slowdown ratio"):
        measure_many([torch.nn.Identity()], torch.zeros(1, 3), guard=1.0)


def test_the_real_probe_times_a_convolution():
    p = conv_probe()
    assert 0.0 < p() < 1000.0
    g = SpeedGuard(p)
    r = g.ratio()
    assert r == 1.0 and g.best > 0
    m = torch.nn.Conv2d(3, 4, 3).eval()
    stats = measure_many([m], torch.randn(1, 3, 16, 16), warmup=1, repeats=4, rounds=2, guard=1.5)
    assert len(stats[0].samples) == 4 and isinstance(stats[0], LatencyStats)
