"""A tiny network and a deterministic, counting fake latency backend, shared by the test suites.

The fake backend's layer latency is exactly bilinear in (cin, cout) and its op latency exactly linear in
volume, and its "end-to-end" time is a known combination of those sums; so a table profiled with it must
reproduce every number exactly (interpolation, op fits, calibration), and every call is counted.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from halp.graph.types import LayerShape
from halp.latency.backends import Backend, as_inputs
from halp.latency.timing import LatencyStats

TRUE_A, TRUE_B, TRUE_C = 1.25, 0.8, 0.03


class TinyNet(nn.Module):
    """conv-bn-relu stem, a residual pair, a depthwise-separable block, global pool, linear."""

    def __init__(self, width: int = 16, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.conv1 = nn.Conv2d(width, 24, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.conv2 = nn.Conv2d(24, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.dw = nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.pw = nn.Conv2d(width, 32, 1, bias=False)
        self.bn4 = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(x + self.bn2(self.conv2(y)))
        x = torch.relu(self.bn3(self.dw(x)))
        x = torch.relu(self.bn4(self.pw(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def fake_layer_ms(shape: LayerShape, cin: int, cout: int, in_repeat: int = 1) -> float:
    hw = shape.in_hw[0] * shape.in_hw[1] * shape.batch
    k = shape.kernel[0] * shape.kernel[1]
    if shape.depthwise:
        return 0.004 + 2e-7 * cout * hw * k
    return 0.005 + 1e-5 * cin * in_repeat + 2e-5 * cout + 3e-8 * cin * in_repeat * cout * k * hw


def fake_op_ms(kind: str, batch: int, channels: int, hw: tuple[int, int]) -> float:
    return 0.002 + 4e-7 * batch * channels * hw[0] * hw[1]


class FakeBackend(Backend):
    """Deterministic latencies, call counters and an optional injected failure."""

    name = "torch-cpu"

    def __init__(self, fail_after: int | None = None, spike_every: int = 0,
                 slow_spell: tuple[int, int] | None = None) -> None:
        super().__init__(threads=1)
        self.fail_after = fail_after
        self.spike_every = spike_every  # every n-th layer timing is 10x too slow (a disturbed run)
        # layer timings number start..stop-1 read 30% slow: a spell of a shared machine, too mild and too
        # long for the outlier retakes (every neighbour is slow too)
        self.slow_spell = slow_spell
        self.layer_calls: list[tuple[str, int, int]] = []
        self.op_calls = 0
        self.model_calls = 0
        self.e2e_speed = 1.0  # whole networks run this many times the true latency (a machine that drifted)

    def device_name(self) -> str:
        return "fake device"

    def time_layer(self, shape: LayerShape, cin: int, cout: int, in_repeat: int = 1) -> LatencyStats:
        if self.fail_after is not None and len(self.layer_calls) >= self.fail_after:
            raise KeyboardInterrupt("injected interruption")
        self.layer_calls.append((shape.key(), cin, cout))
        v = fake_layer_ms(shape, cin, cout, in_repeat)
        if self.spike_every and len(self.layer_calls) % self.spike_every == 0:
            v *= 10.0
        if self.slow_spell and self.slow_spell[0] <= len(self.layer_calls) - 1 < self.slow_spell[1]:
            v *= 1.3
        return LatencyStats(v, 0.0001, v, [v])

    def time_op(self, kind: str, batch: int, channels: int, hw: tuple[int, int]) -> LatencyStats:
        self.op_calls += 1
        v = fake_op_ms(kind, batch, channels, hw)
        return LatencyStats(v, 0.0001, v, [v])

    def time_models(self, models: Sequence[nn.Module], example_inputs: Any, rounds: int = 5) -> list[LatencyStats]:
        from halp.graph import build_graph

        out = []
        for m in models:
            self.model_calls += 1
            v = self.e2e_speed * true_e2e_ms(build_graph(m, as_inputs(example_inputs)))
            out.append(LatencyStats(v, 0.0, v, [v]))
        return out


def true_e2e_ms(graph: Any) -> float:
    layers = sum(fake_layer_ms(l.shape, l.in_channels, l.out_channels, l.in_repeat) for l in graph.layers)
    ops = sum(fake_op_ms(o.kind, o.batch, sum(n for _, n in o.slices), o.hw) for o in graph.others)
    return TRUE_A * layers + TRUE_B * ops + TRUE_C
