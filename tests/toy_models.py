"""Small networks covering every channel-coupling structure the graph must understand, and helpers
that check pruning against masking on them.

Each ``TOYS`` entry is ``name -> (constructor, input shape)``; all models are tiny (a forward takes
milliseconds) so that tests can afford many random keep sets.
"""

from __future__ import annotations

import copy
import operator
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from halp.graph import ChannelGraph
from halp.surgery import mask_channels, prune_channels


def cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class DenseNetToy(nn.Module):
    """Pre-activation dense blocks: bn(cat(...)) -> relu -> conv, so BNs precede their consumer."""

    def __init__(self, growth: int = 6) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1, bias=False)
        self.block1 = nn.ModuleList([self._layer(12 + i * growth, growth) for i in range(3)])
        c = 12 + 3 * growth
        self.trans = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, 16, 1, bias=False), nn.AvgPool2d(2))
        self.block2 = nn.ModuleList([self._layer(16 + i * growth, growth) for i in range(2)])
        c = 16 + 2 * growth
        self.norm = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, 10)

    @staticmethod
    def _layer(cin: int, growth: int) -> nn.Sequential:
        return nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, 8, 1, bias=False),
            nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, growth, 3, padding=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.block1:
            x = torch.cat([x, layer(x)], 1)
        x = self.trans(x)
        for layer in self.block2:
            x = torch.cat((x, layer(x)), dim=1)
        x = F.relu(self.norm(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class SEBlock(nn.Module):
    def __init__(self, c: int, r: int = 4, linear: bool = False) -> None:
        super().__init__()
        self.linear = linear
        if linear:
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc1, self.fc2 = nn.Linear(c, c // r), nn.Linear(c // r, c)
        else:
            self.reduce, self.expand = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.linear:
            n, c = x.shape[0], x.shape[1]
            s = torch.sigmoid(self.fc2(F.relu(self.fc1(self.pool(x).view(n, c)))))
            return x * s.view(n, c, 1, 1)
        s = x.mean((2, 3), keepdim=True)
        return x * self.expand(F.relu(self.reduce(s))).sigmoid()


class SEResToy(nn.Module):
    """Residual blocks with squeeze-excitation (conv- and linear-based), one with a downsample."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 16)
        self.a1, self.a2 = cbr(16, 16), nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.se_a = SEBlock(16)
        self.b1 = cbr(16, 24, stride=2)
        self.b2 = nn.Sequential(nn.Conv2d(24, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24))
        self.se_b = SEBlock(24, linear=True)
        self.down = nn.Sequential(nn.Conv2d(16, 24, 1, stride=2, bias=False), nn.BatchNorm2d(24))
        self.fc = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(self.se_a(self.a2(self.a1(x))) + x)
        x = F.relu(self.se_b(self.b2(self.b1(x))) + self.down(x))
        return self.fc(F.adaptive_avg_pool2d(x, (1, 1)).flatten(1))


class GroupedToy(nn.Module):
    """ResNeXt-style grouped conv (prunable, balanced), a grouped conv fed by a concatenation of two
    groups (not prunable) and a depthwise conv with channel multiplier 2."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 32)
        self.c1, self.c2 = cbr(32, 32, 1), cbr(32, 32, 3, groups=4)
        self.c3 = nn.Sequential(nn.Conv2d(32, 32, 1, bias=False), nn.BatchNorm2d(32))
        self.pa, self.pb = nn.Conv2d(32, 8, 1), nn.Conv2d(32, 8, 1)
        self.mixed = cbr(16, 16, 3, groups=4)
        self.mult = nn.Conv2d(16, 32, 3, padding=1, groups=16)
        self.bn = nn.BatchNorm2d(32)
        self.head = nn.Conv2d(32, 24, 1)
        self.fc = nn.Linear(24, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(self.c3(self.c2(self.c1(x))) + x)
        x = self.mixed(torch.cat([self.pa(x), self.pb(x)], 1))
        x = F.relu(self.head(F.relu(self.bn(self.mult(x)))))
        return self.fc(x.mean((2, 3)))


class DepthwiseToy(nn.Module):
    """Depthwise-separable stack (MobileNet-V1) and an inverted residual (MobileNet-V2)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.dw1, self.pw1 = cbr(16, 16, 3, groups=16), cbr(16, 32, 1)
        self.dw2 = nn.Sequential(nn.Conv2d(32, 32, 3, 2, 1, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.pw2 = cbr(32, 32, 1)
        self.expand = nn.Sequential(nn.Conv2d(32, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU6())
        self.dw3 = nn.Sequential(nn.Conv2d(64, 64, 3, 1, 1, groups=64, bias=False), nn.BatchNorm2d(64),
                                 nn.Hardswish())
        self.project = nn.Sequential(nn.Conv2d(64, 32, 1, bias=False), nn.BatchNorm2d(32))
        self.head = nn.Sequential(nn.Conv2d(32, 48, 1), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Dropout(0.2), nn.Linear(48, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pw2(self.dw2(self.pw1(self.dw1(self.stem(x)))))
        x = x + self.project(self.dw3(self.expand(x)))
        return self.head(x)


class ChunkGateToy(nn.Module):
    """chunk + gate (one group at two offsets of one conv), an uneven split into independent
    consumers (two groups of one conv), and F.glu along channels."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 16)
        self.gate = nn.Conv2d(16, 32, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.splitter = nn.Conv2d(16, 24, 1)
        self.ca, self.cb = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(16, 8, 3, padding=1)
        self.glu_conv = nn.Conv2d(16, 20, 1)
        self.fc = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        a, b = self.gate(x).chunk(2, dim=1)
        x = self.bn(a * torch.sigmoid(b))
        p, q = torch.split(self.splitter(x), [8, 16], dim=1)
        x = torch.cat([self.ca(F.relu(p)), self.cb(q)], 1)
        x = F.glu(self.glu_conv(x), dim=1)
        return self.fc(F.adaptive_max_pool2d(x, 1).flatten(1))


class UNetToy(nn.Module):
    """Encoder/decoder with skip concatenations after upsampling (F.interpolate and nn.Upsample)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(cbr(3, 8), cbr(8, 8))
        self.enc2 = cbr(8, 16)
        self.bott = cbr(16, 24)
        self.dec2 = cbr(24 + 16, 16)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.dec1 = cbr(16 + 8, 8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        b = self.bott(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([F.interpolate(b, scale_factor=2, mode="nearest"), e2], 1))
        d1 = self.dec1(torch.cat([self.up(d2), e1], 1))
        return self.head(d1)


class FlattenMLPToy(nn.Module):
    """Conv features flattened (C*H*W) into an MLP head with BatchNorm1d."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(cbr(3, 8), nn.MaxPool2d(2), cbr(8, 16), nn.MaxPool2d(2))
        self.fc1, self.bn1 = nn.Linear(16 * 4 * 4, 32), nn.BatchNorm1d(32)
        self.fc2, self.fc3 = nn.Linear(32, 24), nn.Linear(24, 10)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = x.view(x.size(0), -1)
        x = self.drop(F.relu(self.bn1(self.fc1(x))))
        return self.fc3(torch.relu(self.fc2(x)))


class FunctionalResToy(nn.Module):
    """Residuals written with functional ops (torch.add, operator.add, +), a per-channel scale read
    as a parameter, a per-channel PReLU, channel slicing by indexing, a weight-shared conv called
    twice, and concatenation along the height axis."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.scale = nn.Parameter(torch.rand(1, 16, 1, 1) + 0.5)
        self.shift = nn.Parameter(torch.randn(16, 1, 1))
        self.act = nn.PReLU(16)
        self.shared = nn.Conv2d(16, 16, 1)
        self.c3 = nn.Conv2d(16, 12, 1)
        self.c4 = nn.Conv2d(8, 12, 3, padding=1)
        self.fc = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.c1(x))
        y = torch.add(x, self.bn2(self.c2(x)) * self.scale + self.shift)
        y = self.act(y)
        y = operator.add(y, self.shared(y))
        z = self.shared(F.max_pool2d(y, 2, 2))
        z = F.interpolate(z, size=y.shape[-2:])
        y = y + z
        h = self.c3(y)
        w = self.c4(y[:, :8])
        h = torch.cat([h, w], dim=2).sigmoid()  # height concat: h and w share channels
        return self.fc(h.mean((2, 3)))


class InputResidualToy(nn.Module):
    """A conv whose output is added to the network input: its group carries input channels."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 8, 3), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.c1(x)
        return self.fc(self.c2(x).amax((2, 3)))


class ShuffleInceptionToy(nn.Module):
    """ShuffleNet channel shuffle (view/transpose/reshape: frozen, with the reason), then
    Inception-style parallel branches concatenated and a self-gate on their pooled mean."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = cbr(3, 16), cbr(16, 16, 1, groups=4)
        self.dw = cbr(16, 16, 3, groups=16)
        self.branches = nn.ModuleList([cbr(16, 8, 1), cbr(16, 8, 3), cbr(16, 6, 5)])
        self.fc = nn.Linear(22, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c1(x)
        y = self.c2(x)
        n, c, h, w = y.shape
        y = y.view(n, 4, c // 4, h, w).transpose(1, 2).reshape(n, c, h, w)
        y = self.dw(y) + x
        y = torch.cat([b(y) for b in self.branches], 1)
        y = y * F.hardsigmoid(y.mean((2, 3), keepdim=True))
        return self.fc(F.adaptive_avg_pool2d(y, 1).view(n, -1))


TOYS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "densenet": (DenseNetToy, (2, 3, 16, 16)),
    "se_resnet": (SEResToy, (2, 3, 16, 16)),
    "grouped": (GroupedToy, (2, 3, 12, 12)),
    "depthwise": (DepthwiseToy, (2, 3, 16, 16)),
    "chunk_gate": (ChunkGateToy, (2, 3, 12, 12)),
    "unet": (UNetToy, (2, 3, 16, 16)),
    "flatten_mlp": (FlattenMLPToy, (2, 3, 16, 16)),
    "functional_res": (FunctionalResToy, (2, 3, 12, 12)),
    "input_residual": (InputResidualToy, (2, 3, 10, 10)),
    "shuffle_inception": (ShuffleInceptionToy, (2, 3, 8, 8)),
}


# -- helpers shared by the graph and surgery tests -----------------------------------------------
@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine terms (beta != 0) so that a zeroed channel is not trivially 0."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.copy_(torch.randn(m.weight.shape, generator=g))
            m.bias.copy_(torch.randn(m.bias.shape, generator=g))
    return model


def random_keep(graph: ChannelGraph, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A random subset of every prunable group, respecting min_channels, multiple_of and blocks."""
    keep = {}
    for group in graph.prunable_groups:
        n, b = group.channels, group.blocks
        per = n // b
        lo = max(group.min_channels, group.multiple_of) // b
        k = int(torch.randint(max(1, lo), per + 1, (1,), generator=gen))
        picks = [torch.randperm(per, generator=gen)[:k] + j * per for j in range(b)]
        keep[group.name] = torch.cat(picks)
    return keep


def widths_of(keep: dict[str, torch.Tensor]) -> dict[str, int]:
    return {name: int(len(idx)) for name, idx in keep.items()}


def module_channels(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Conv2d):
        return module.in_channels, module.out_channels
    return module.in_features, module.out_features


@torch.no_grad()
def check_prune_matches_mask(
    model: nn.Module, graph: ChannelGraph, keep: dict[str, torch.Tensor], x: torch.Tensor, tol: float = 1e-4
) -> nn.Module:
    """Assert slim == masked (relative to the output scale) and every layer has the kept widths."""
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masked = copy.deepcopy(model)
    mask_channels(masked, graph, keep)
    slim = prune_channels(model, graph, keep)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"prune_channels modified the original model ({k})"
    y_mask, y_slim = masked(x), slim(x)
    scale = max(1.0, float(y_mask.abs().max()))
    diff = float((y_mask - y_slim).abs().max())
    assert diff <= tol * scale, f"slim and masked outputs differ by {diff} (scale {scale})"
    expected = graph.layer_widths(widths_of(keep))
    slim_modules = dict(slim.named_modules())
    for layer in graph.layers:
        if "#" in layer.name:
            continue
        cin, cout = module_channels(slim_modules[layer.name])
        exp_in, exp_out = expected[layer.name]
        assert (cin, cout) == (exp_in * layer.in_repeat, exp_out), (
            f"{layer.name}: slim has ({cin}, {cout}), graph says ({exp_in}x{layer.in_repeat}, {exp_out})"
        )
    return slim
