"""Small-input ResNets: He et al. (2016)'s CIFAR ResNet-20/56 and the demo's digits ResNet.

No max-pool and a stride-1 3×3 stem keep the 32×32 map; each later stage halves it. Shortcuts that change
shape are "option B" (1×1 conv + BN) rather than the paper's zero-padding "option A", so every residual
sum's channels come from convs the pruner can see — a zero-padded identity would pin channel positions.
That costs 2,752 extra parameters over option A for ResNet-20/56 (272,474 vs 269,722 for ResNet-20).

Neither torchvision nor timm has these: their ResNets are ImageNet's (7×7/2 stem, max-pool, four stages
of 64–512 channels); ``timm.list_models("*cifar*")`` is empty.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from halp.models._layers import check_bool, check_positive_int, init_conv_bn, zero_init_residuals
from halp.models.registry import register_model

__all__ = ["BasicBlock", "CifarResNet", "digits_resnet", "make_stage", "resnet20", "resnet56"]


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    """1×1 conv + BN projection when the residual's shape changes, else None (identity)."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
    )


class BasicBlock(nn.Module):
    """Two 3×3 convs and a residual sum, with torchvision's ``BasicBlock`` names (conv1, bn1, conv2, bn2,
    downsample).

    Kept here rather than imported from torchvision so the zoo — and the demo built on it — needs only
    torch.
    """

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = shortcut(in_channels, planes, stride)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)

    def zero_init_last_bn(self) -> None:
        nn.init.zeros_(self.bn2.weight)


def make_stage(in_channels: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """``blocks`` BasicBlocks; only the first one strides and changes the width."""
    layers = [BasicBlock(in_channels, planes, stride)]
    layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class CifarResNet(nn.Module):
    """3×3 stem → stages of BasicBlocks (the first one stride 1, the rest stride 2) → global pool → fc.

    Modules are named ``conv1``, ``bn1``, ``layer1`` … ``layer{len(widths)}``, ``avgpool``, ``fc``.
    """

    def __init__(
        self,
        widths: Sequence[int],
        blocks: Sequence[int],
        num_classes: int = 10,
        in_chans: int = 3,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if len(widths) != len(blocks) or not widths:
            raise ValueError(
                f"CifarResNet: widths {tuple(widths)} and blocks {tuple(blocks)} must be non-empty "
                "and of equal length (one entry per stage)"
            )
        for arg, values in (("widths", widths), ("blocks", blocks)):
            for value in values:
                check_positive_int("CifarResNet", arg, value)
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        channels = widths[0]
        for index, (width, count) in enumerate(zip(widths, blocks), start=1):
            stride = 1 if index == 1 else 2
            self.add_module(f"layer{index}", make_stage(channels, width, count, stride))
            channels = width
        self.num_stages = len(widths)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(channels, num_classes)
        init_conv_bn(self)
        if zero_init_residual:
            zero_init_residuals(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # (N, widths[0], H, W)
        for index in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{index}")(x)  # stage i: (N, widths[i-1], H/2^(i-1), W/2^(i-1))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def _build(
    name: str,
    widths: tuple[int, ...],
    blocks: tuple[int, ...],
    num_classes: int,
    in_chans: int,
    zero_init_residual: bool,
) -> CifarResNet:
    return CifarResNet(
        widths,
        blocks,
        num_classes=check_positive_int(name, "num_classes", num_classes),
        in_chans=check_positive_int(name, "in_chans", in_chans),
        zero_init_residual=check_bool(name, "zero_init_residual", zero_init_residual),
    )


@register_model("resnet20", input_size=(3, 32, 32))
def resnet20(
    *, num_classes: int = 10, in_chans: int = 3, zero_init_residual: bool = False
) -> CifarResNet:
    """CIFAR ResNet-20: 16/32/64 channels, 3 BasicBlocks per stage (272,474 parameters at 10 classes)."""
    return _build("resnet20", (16, 32, 64), (3, 3, 3), num_classes, in_chans, zero_init_residual)


@register_model("resnet56", input_size=(3, 32, 32))
def resnet56(
    *, num_classes: int = 10, in_chans: int = 3, zero_init_residual: bool = False
) -> CifarResNet:
    """CIFAR ResNet-56: 16/32/64 channels, 9 BasicBlocks per stage (855,770 parameters at 10 classes)."""
    return _build("resnet56", (16, 32, 64), (9, 9, 9), num_classes, in_chans, zero_init_residual)


@register_model("digits_resnet", input_size=(1, 32, 32))
def digits_resnet(
    *,
    num_classes: int = 10,
    in_chans: int = 1,
    widths: tuple[int, ...] = (48, 96, 192),
    blocks: tuple[int, ...] = (1, 1, 1),
    zero_init_residual: bool = False,
) -> CifarResNet:
    """The embedded demo's network: scikit-learn's 8×8 digits upscaled to 1×32×32.

    Few, wide layers (48/96/192 channels on 32×32/16×16/8×8 maps, one BasicBlock per stage, ~0.69 M
    parameters) so that channel counts — not per-op overhead — set the CPU latency at batch 1, which is
    what makes latency-aware pruning visible in a minutes-long demo.
    """
    for arg, value in (("widths", widths), ("blocks", blocks)):
        if not isinstance(value, (tuple, list)):
            raise ValueError(
                f"digits_resnet: {arg} must be a tuple of ints (one per stage), got {value!r}"
            )
    return _build(
        "digits_resnet", tuple(widths), tuple(blocks), num_classes, in_chans, zero_init_residual
    )
