"""Latency-aware grouping: staircase steps from noisy sweeps, group steps, knapsack blocks."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from halp.graph.types import ChannelGraph, ChannelGroup, Layer, LayerShape
from halp.grouping import NO_STAIRCASE, block_sizes, detect_step, find_cliffs, group_steps


def staircase(rng, step, full, span, offset, snr, outliers=3, slope=0.0):
    """Latency of a layer whose cost grows by one tile every ``step`` channels, with noise and outliers.

    The cliffs are at ``offset + 1 + j * step`` (first channel count on the slower stair); ``snr`` is the
    noise sd as a fraction of one stair's height; outliers are isolated (at least 3 points apart),
    up or down by 2 to 10 stair heights.
    """
    ch = np.arange(full - span, full + 1)
    jump = step / full
    lat = 0.2 + np.ceil((ch - offset) / step) * jump + slope * jump * (ch - ch[0])
    sigma = snr * jump
    lat = lat + rng.normal(0.0, sigma, len(ch))
    while True:
        idx = np.sort(rng.choice(len(ch), outliers, replace=False))
        if outliers < 2 or np.all(np.diff(idx) >= 3):
            break
    lat[idx] += rng.choice([-1.0, 1.0], outliers) * rng.uniform(2, 10, outliers) * jump
    return ch, lat, sigma


@pytest.mark.parametrize("step", [8, 16, 32])
@pytest.mark.parametrize("noise_scale", [1.0, 8.0])
def test_detect_step_on_noisy_staircases(step, noise_scale):
    """30 random staircases per case: noise at 10% of a stair, 3 outliers, random offsets and widths.

    ``noise_scale`` 8 passes an overstated noise, as a profiler's IQR of repeats is for a median.
    """
    rng = np.random.default_rng(step)
    found = []
    for _ in range(30):
        full = int(rng.integers(200, 2048))
        span = max(64, 3 * step + 8)  # three stairs: two measurable cliffs whatever the offset
        ch, lat, sigma = staircase(rng, step, full, span, int(rng.integers(0, step)), snr=0.1)
        found.append(detect_step(ch, lat, noise_scale * sigma))
    assert found == [step] * 30


@pytest.mark.parametrize("step", [8, 16])
def test_detect_step_with_a_slope_within_stairs(step):
    rng = np.random.default_rng(7)
    for _ in range(10):
        ch, lat, sigma = staircase(rng, step, 512, 64, int(rng.integers(0, step)), snr=0.1, slope=0.02)
        assert detect_step(ch, lat, sigma) == step


def test_cliffs_exact_and_one_outlier_changes_nothing():
    rng = np.random.default_rng(3)
    ch, lat, sigma = staircase(rng, 16, 256, 64, 4, snr=0.05, outliers=0)
    assert find_cliffs(ch, lat, sigma).tolist() == [197, 213, 229, 245]
    for i in (10, 24, 25, 40):  # in a plateau, and right at a cliff's either side
        spiky = lat.copy()
        spiky[i] += 0.5  # about eight stairs high
        assert detect_step(ch, spiky, sigma) == 16
        assert find_cliffs(ch, spiky, sigma).tolist() == [197, 213, 229, 245]


def test_spec_cpu_example_step_16():
    # HALP-SPEC: 3x3 conv 256->cout at 14x14 on this CPU: 224 -> 0.93 ms, 225..240 -> 1.00 ms, 241 -> 1.07 ms
    rng = np.random.default_rng(0)
    ch = np.arange(192, 257)
    lat = 0.93 + 0.07 * np.ceil((ch - 224) / 16) + rng.normal(0, 0.004, len(ch))
    assert find_cliffs(ch, lat, 0.01).tolist() == [209, 225, 241]
    assert detect_step(ch, lat, 0.01) == 16


def test_interrupted_points_do_not_hide_cliffs():
    # On a busy machine some points' IQRs are dominated by interruptions (here 20x the rest), which
    # their medians ignore: the detector must not let those IQRs mask the cliffs next to them.
    rng = np.random.default_rng(5)
    ch, lat, sigma = staircase(rng, 16, 256, 64, 0, snr=0.1, outliers=0)
    iqr = np.full(len(ch), 8 * sigma)
    iqr[rng.random(len(ch)) < 0.3] *= 20
    assert find_cliffs(ch, lat, iqr).tolist() == [209, 225, 241]
    assert detect_step(ch, lat, iqr) == 16
    # every IQR a scheduler time slice (here 40 stairs high), as we saw with other jobs running
    assert detect_step(ch, lat, 40 * 16 / 256) == 16


# 3x3 conv 256 -> 192..256 at 14x14, batch 1, one thread, medians of 41 interleaved repeats on this
# project's CPU (benchmarks/grouping_step.py); the median IQR of the repeats was 0.19 ms.
RECORDED_MS = [
    1.347, 1.403, 1.398, 1.406, 1.395, 1.386, 1.406, 1.393, 1.385, 1.407, 1.407, 1.4, 1.397, 1.395, 1.39,
    1.404, 1.436, 1.521, 1.519, 1.525, 1.508, 1.5, 1.499, 1.504, 1.505, 1.516, 1.547, 1.506, 1.498, 1.507,
    1.508, 1.503, 1.509, 1.672, 1.62, 1.64, 1.604, 1.638, 1.614, 1.637, 1.629, 1.591, 1.609, 1.609, 1.629,
    1.627, 1.644, 1.635, 1.6, 1.791, 1.741, 1.736, 1.694, 1.681, 1.714, 1.713, 1.705, 1.697, 1.72, 1.709,
    1.717, 1.716, 1.709, 1.719, 1.694,
]


def test_recorded_cpu_sweep():
    ch = np.arange(192, 257)
    assert find_cliffs(ch, np.array(RECORDED_MS), 0.19).tolist() == [209, 225, 241]
    assert detect_step(ch, np.array(RECORDED_MS), 0.19) == 16


def test_unordered_and_every_second_channel():
    rng = np.random.default_rng(1)
    ch = np.arange(128, 257, 2)
    lat = np.ceil(ch / 32) * 0.1 + rng.normal(0, 0.005, len(ch))
    order = rng.permutation(len(ch))
    assert detect_step(ch[order], lat[order], 0.005) == 32


def test_no_staircase_gives_one():
    rng = np.random.default_rng(2)
    ch = np.arange(192, 257)
    for slope in (0.002, 0.004, 0.01):  # linear: every channel costs the same
        assert detect_step(ch, 0.5 + slope * ch + rng.normal(0, 0.001, len(ch)), 0.001) == NO_STAIRCASE
    assert detect_step(ch, 1.0 + rng.normal(0, 0.001, len(ch)), 0.001) == NO_STAIRCASE  # flat
    assert detect_step(ch[:5], np.arange(5.0), 0.1) == NO_STAIRCASE  # too short to tell


def test_exact_staircase_without_noise():
    ch = np.arange(100, 201)
    assert detect_step(ch, np.ceil(ch / 8) * 1.0, 0.0) == 8
    assert detect_step(ch, np.ceil(ch / 8) * 1.0, 0.0, calibrate=False) == 8


def test_one_measurable_cliff_uses_its_alignment():
    # step 32 over channels 192..256: the cliff at 193 is at the sweep's edge, only 225 is measurable
    rng = np.random.default_rng(4)
    ch = np.arange(192, 257)
    lat = np.ceil(ch / 32) * 0.1 + rng.normal(0, 0.005, len(ch))
    assert find_cliffs(ch, lat, 0.005).tolist() == [225]
    assert detect_step(ch, lat, 0.005) == 32


@pytest.mark.parametrize(
    "args, message",
    [
        ((np.arange(10), np.ones(9), 0.1), "equal length"),
        ((np.arange(10), np.ones(10), np.ones(3)), "one value per point"),
        ((np.arange(10), np.r_[np.ones(9), np.nan], 0.1), "finite"),
        ((np.arange(10), np.ones(10), -0.1), "non-negative"),
        ((np.r_[np.arange(9), 8], np.ones(10), 0.1), "repeat"),
    ],
)
def test_detect_step_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        detect_step(*args)
    with pytest.raises(ValueError, match="window"):
        detect_step(np.arange(10), np.ones(10), 0.1, window=1)


# -- group_steps ------------------------------------------------------------------------------------


def conv(name, cin, group, cout):
    return Layer(name, LayerShape("conv2d", kernel=(3, 3), in_hw=(14, 14)), ((None, cin),), ((group, cout),))


def group(name, channels, producers, prunable=True, multiple_of=1):
    return ChannelGroup(name, channels, prunable, members=(), producers=producers, multiple_of=multiple_of)


class FakeTable:
    """Sweeps with a known step per layer; unknown layers raise KeyError like a real table."""

    def __init__(self, steps):
        self.steps = steps
        self.calls = []

    def cout_sweep(self, layer):
        self.calls.append(layer.name)
        step = self.steps[layer.name]  # KeyError when "not profiled"
        full = layer.out_channels
        ch = np.arange(full - 64, full + 1)
        rng = np.random.default_rng(len(layer.name))
        lat = 0.1 + np.ceil(ch / step) * step / full + rng.normal(0, 0.002 * step / full, len(ch))
        return ch, lat, np.full(len(ch), 0.02 * step / full)


@pytest.fixture
def graph():
    layers = (
        conv("stem", 3, "res", 256),
        conv("block.conv1", 256, "mid", 200),
        conv("block.conv2", 200, "res", 256),  # coupled with the stem through the residual add
        conv("block.conv3", 256, "tail", 96),
        conv("head", 96, None, 10),
    )
    groups = (
        group("res", 256, ("stem", "block.conv2")),
        group("mid", 200, ("block.conv1",)),
        group("tail", 96, ("block.conv3",), multiple_of=12),
        group("out", 10, ("head",), prunable=False),
    )
    return ChannelGraph(groups, layers)


def test_group_steps_auto_coupled_takes_largest(graph):
    table = FakeTable({"stem": 8, "block.conv2": 16, "block.conv1": 8, "block.conv3": 8})
    steps = group_steps(graph, table)
    assert steps == {"res": 16, "mid": 8, "tail": 12}  # tail: 8 rounded up to its multiple of 12
    assert "head" not in table.calls  # non-prunable groups are not asked for


def test_group_steps_unprofiled_layer_is_step_one(graph, caplog):
    table = FakeTable({"stem": 8, "block.conv2": 16, "block.conv3": 8})
    with caplog.at_level(logging.WARNING, logger="halp.grouping"):
        steps = group_steps(graph, table)
    assert steps["mid"] == 1
    assert "block.conv1" in caplog.text and "not profiled" in caplog.text


def test_group_steps_fixed_size_and_overrides(graph):
    assert group_steps(graph, None, mode=32) == {"res": 32, "mid": 32, "tail": 36}
    assert group_steps(graph, None, mode=512) == {"res": 256, "mid": 200, "tail": 96}  # capped at the width
    table = FakeTable({"stem": 8, "block.conv2": 16, "block.conv1": 8, "block.conv3": 8})
    by_group = group_steps(graph, table, overrides={"mid": 4, "r*": 2})
    assert by_group == {"res": 2, "mid": 4, "tail": 12}
    # a layer pattern sets that layer's step; the coupled group still takes the largest
    by_layer = group_steps(graph, table, overrides={"stem": 64})
    assert by_layer["res"] == 64
    by_layer = group_steps(graph, table, overrides={"block.*": 4})
    assert by_layer == {"res": 8, "mid": 4, "tail": 12}
    # first matching pattern wins
    assert group_steps(graph, None, mode=8, overrides={"mid": 2, "m*": 16})["mid"] == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mode="fixed"), "'auto' or a positive integer"),
        (dict(mode=0), "positive whole number"),
        (dict(mode=True), "positive whole number"),
        (dict(mode=8, overrides={"mid": 0}), "override 'mid'"),
        (dict(mode="auto"), "needs a latency table"),
    ],
)
def test_group_steps_bad_input(graph, kwargs, message):
    with pytest.raises(ValueError, match=message):
        group_steps(graph, None, **kwargs)


# -- block_sizes ------------------------------------------------------------------------------------


def test_block_sizes_examples():
    assert block_sizes(256, 16) == [16] * 16
    assert block_sizes(250, 16) == [16] * 15 + [10]
    assert block_sizes(250, 16, min_keep=20) == [32] + [16] * 13 + [10]
    assert block_sizes(250, 16, min_keep=0) == [16] * 15 + [10]
    assert block_sizes(8, 16) == [8]
    assert block_sizes(40, 16, min_keep=40) == [40]
    assert block_sizes(7, 1) == [1] * 7


@pytest.mark.parametrize("width, step, min_keep", [(250, 16, 1), (257, 32, 33), (64, 8, 0), (100, 7, 13), (5, 9, 2)])
def test_block_sizes_reachable_widths(width, step, min_keep):
    blocks = block_sizes(width, step, min_keep)
    widths = np.cumsum(blocks)
    assert widths[-1] == width and all(b > 0 for b in blocks)
    assert widths[0] >= max(min_keep, 1)  # one block is the least a group keeps
    # every reachable width below the full one is a whole number of steps
    assert all(w % step == 0 for w in widths[:-1])
    # and shrinking from the full width goes in whole steps after the remainder
    assert all(b == step for b in blocks[1:-1])


@pytest.mark.parametrize("args", [(0, 16), (16, 0), (16, 4, 17), (16, 4, -1), (16.0, 4)])
def test_block_sizes_bad_input(args):
    with pytest.raises(ValueError):
        block_sizes(*args)
