"""ResNet-18/34/50/101 with torchvision's module names, shapes and initialisation.

Keys match torchvision's ``resnet*`` state_dicts one-to-one (``layer3.4.conv2.weight``, ``layer2.0.
downsample.0.weight`` …), so a torchvision checkpoint loads with ``strict=True``. The Bottleneck strides
on its 3×3 conv (torchvision's "ResNet v1.5"), the variant HALP's ResNet-50 results use.
"""

from __future__ import annotations

import torch
from torch import nn

from halp.models._layers import check_bool, check_positive_int, init_conv_bn, zero_init_residuals
from halp.models.registry import register_model

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50", "resnet101"]


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    """1×1 conv + BN projection when the residual's shape changes, else None (identity)."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    """Two 3×3 convs and a residual sum (ResNet-18/34 and the CIFAR ResNets)."""

    expansion = 1

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


class Bottleneck(nn.Module):
    """1×1 reduce → 3×3 (strided) → 1×1 expand ×4, plus a residual sum (ResNet-50/101)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = conv1x1(in_channels, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = shortcut(in_channels, out_channels, stride)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)

    def zero_init_last_bn(self) -> None:
        nn.init.zeros_(self.bn3.weight)


def make_stage(
    block: type[BasicBlock] | type[Bottleneck],
    in_channels: int,
    planes: int,
    blocks: int,
    stride: int,
) -> nn.Sequential:
    """``blocks`` residual blocks; only the first one strides and changes the width."""
    layers = [block(in_channels, planes, stride)]
    layers += [block(planes * block.expansion, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet(nn.Module):
    """ImageNet ResNet: 7×7/2 stem, 3×3/2 max-pool, four stages (64–512 planes), global pool, fc."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        num_classes: int = 1000,
        in_chans: int = 3,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        channels = 64
        for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers), start=1):
            stride = 1 if index == 1 else 2
            self.add_module(f"layer{index}", make_stage(block, channels, planes, blocks, stride))
            channels = planes * block.expansion
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(channels, num_classes)  # PyTorch's default Linear init, as torchvision
        init_conv_bn(self)
        if zero_init_residual:
            zero_init_residuals(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, 64, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (N, 512·e, H/32, W/32)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def _resnet(
    name: str,
    block: type[BasicBlock] | type[Bottleneck],
    layers: tuple[int, int, int, int],
    num_classes: int,
    in_chans: int,
    zero_init_residual: bool,
) -> ResNet:
    return ResNet(
        block,
        layers,
        num_classes=check_positive_int(name, "num_classes", num_classes),
        in_chans=check_positive_int(name, "in_chans", in_chans),
        zero_init_residual=check_bool(name, "zero_init_residual", zero_init_residual),
    )


@register_model("resnet18", input_size=(3, 224, 224))
def resnet18(
    *, num_classes: int = 1000, in_chans: int = 3, zero_init_residual: bool = False
) -> ResNet:
    """ResNet-18 (11.7 M parameters at 1000 classes)."""
    return _resnet("resnet18", BasicBlock, (2, 2, 2, 2), num_classes, in_chans, zero_init_residual)


@register_model("resnet34", input_size=(3, 224, 224))
def resnet34(
    *, num_classes: int = 1000, in_chans: int = 3, zero_init_residual: bool = False
) -> ResNet:
    """ResNet-34 (21.8 M parameters at 1000 classes)."""
    return _resnet("resnet34", BasicBlock, (3, 4, 6, 3), num_classes, in_chans, zero_init_residual)


@register_model("resnet50", input_size=(3, 224, 224))
def resnet50(
    *, num_classes: int = 1000, in_chans: int = 3, zero_init_residual: bool = False
) -> ResNet:
    """ResNet-50 v1.5 (25.6 M parameters at 1000 classes), HALP's main benchmark."""
    return _resnet("resnet50", Bottleneck, (3, 4, 6, 3), num_classes, in_chans, zero_init_residual)


@register_model("resnet101", input_size=(3, 224, 224))
def resnet101(
    *, num_classes: int = 1000, in_chans: int = 3, zero_init_residual: bool = False
) -> ResNet:
    """ResNet-101 v1.5 (44.5 M parameters at 1000 classes)."""
    layers = (3, 4, 23, 3)
    return _resnet("resnet101", Bottleneck, layers, num_classes, in_chans, zero_init_residual)
