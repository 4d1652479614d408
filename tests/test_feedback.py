"""The closed loop: the last pruning steps measure the proposed slim models and land the measured budget.

The "device" here is a fake whose costs the table does not know: a fixed overhead, a cost per weight,
and a sawtooth (a conv whose output channels are not a multiple of 8 costs 30% more), so the table's
prediction misses what it measures, and no wall clock is involved.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import halp
from fakes import FakeBackend, TinyNet
from halp.feedback import DeviceFeedback
from test_pruner import X, batches, make_model, run_loop


def device_ms(model: nn.Module) -> float:
    cost = 0.0
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            cost += m.weight.numel() * (1.3 if m.out_channels % 8 else 1.0)
    return 0.4 + 2e-4 * cost


@pytest.fixture(scope="module")
def table():
    torch.manual_seed(0)
    return halp.profile(TinyNet(width=32), X, backend=FakeBackend(), progress=False, grid_points=5, fine_span=16)


def prune(table, feedback=None, target=0.5, steps=3):
    model = make_model()
    dense = device_ms(model)
    cfg = halp.PruneConfig(target=target, steps=steps, interval=2, protect_stem=False)
    pruner = halp.Pruner(model, X, table, cfg, feedback=feedback)
    run_loop(model, pruner, batches(2 * steps + 2))
    return pruner, device_ms(pruner.finalize()) / dense


def counting_measure(dense_ms: float):
    calls: list[float] = []

    def measure(slim: nn.Module) -> float:
        assert not slim.training  # measured as deployed
        calls.append(device_ms(slim) / dense_ms)
        return calls[-1]

    return measure, calls


@pytest.mark.parametrize("target", [0.5, 0.7])
def test_feedback_lands_the_measured_ratio_in_the_band(table, target):
    _, open_loop = prune(table, target=target)
    assert not (1 - 0.05) * target <= open_loop <= target  # the table alone misses on this device

    measure, calls = counting_measure(device_ms(make_model()))
    feedback = DeviceFeedback(measure, steps=2, band=0.05)
    pruner, closed = prune(table, feedback, target=target)
    assert (1 - 0.05) * target <= closed <= target
    last = pruner.history[-1]
    assert last["measured_ratio"] == pytest.approx(closed)
    assert 1 <= len(last["feedback"]) <= feedback.attempts
    # only the last two steps measured, and no width combination twice
    assert "feedback" not in pruner.history[0] and "feedback" in pruner.history[1]
    assert len(calls) == len(feedback.measured) <= 2 * feedback.attempts
    # the correction learned is what the device says of the table's prediction
    assert feedback.correction == pytest.approx(last["feedback"][-1]["measured_ratio"]
                                                / last["feedback"][-1]["predicted_ratio"])


def test_feedback_prefers_the_band_and_never_remeasures():
    seen = []

    class Result:
        def __init__(self, t):
            self.widths = {"g": int(t)}
            self.predicted_ms = t

    def measure(widths_model):
        seen.append(widths_model)
        return 1.3 * widths_model / 100.0  # measured ratio: 1.3 x predicted

    fb = DeviceFeedback(measure, steps=1, band=0.05, attempts=5)
    result, records = fb.run(0.5, 100.0, lambda t: Result(t), lambda w: w["g"])
    assert 0.475 <= fb.lookup(result.widths) <= 0.5
    assert records[0]["measured_ratio"] == pytest.approx(1.3 * records[0]["predicted_ratio"], rel=0.03)
    assert len(seen) == len(set(seen)) == len(records)
    # a second run at the same goal starts from the learned correction: one measurement, already in the band
    before = len(seen)
    fb.run(0.5, 100.0, lambda t: Result(t), lambda w: w["g"])
    assert len(seen) - before <= 1


def test_feedback_settings_are_checked():
    with pytest.raises(ValueError, match="band"):
        DeviceFeedback(lambda m: 1.0, band=1.5)
    with pytest.raises(ValueError, match="steps"):
        DeviceFeedback(lambda m: 1.0, steps=0)
