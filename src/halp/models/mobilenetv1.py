"""MobileNet-V1 (Howard et al., 2017), the second architecture of the HALP paper.

A 3×3/2 stem and 13 depthwise-separable blocks (3×3 depthwise + BN + ReLU, 1×1 pointwise + BN + ReLU)
to 1024 channels, global pool and a linear classifier: 4,231,976 parameters at 1000 classes. Each
depthwise conv ties its input and output channels to the previous pointwise conv, so every block is one
prunable group — the structure HALP's MobileNet results exercise.

Module names: ``features.0`` is the stem (``features.0.0`` conv, ``.1`` BN), ``features.1`` …
``features.13`` are the blocks with children ``dw`` and ``pw`` (``features.5.pw.0.weight``), then
``avgpool`` and ``fc``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from halp.models._layers import (
    ConvBNAct,
    check_positive_float,
    check_positive_int,
    init_conv_bn,
    init_linear_normal,
    make_divisible,
)
from halp.models.registry import register_model

__all__ = ["DepthwiseSeparable", "MobileNetV1", "mobilenet_v1"]

# (output channels, stride) of the 13 depthwise-separable blocks, Howard et al. (2017), Table 1.
BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


class DepthwiseSeparable(nn.Sequential):
    """``dw``: 3×3 depthwise conv-BN-ReLU (carries the stride), then ``pw``: 1×1 conv-BN-ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__(
            OrderedDict(
                dw=ConvBNAct(in_channels, in_channels, stride=stride, groups=in_channels),
                pw=ConvBNAct(in_channels, out_channels, kernel_size=1),
            )
        )


class MobileNetV1(nn.Module):
    """Stem, 13 depthwise-separable blocks, global average pool, ``fc``.

    Args:
        num_classes: Classifier outputs.
        in_chans: Input image channels.
        width_mult: Scales every width; rounded to multiples of 8 by :func:`make_divisible`, so 1.0
            gives the paper's network exactly.
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0) -> None:
        super().__init__()
        channels = make_divisible(32 * width_mult)
        layers: list[nn.Module] = [ConvBNAct(in_chans, channels, stride=2)]
        for out_channels, stride in BLOCKS:
            width = make_divisible(out_channels * width_mult)
            layers.append(DepthwiseSeparable(channels, width, stride))
            channels = width
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(channels, num_classes)
        init_conv_bn(self)
        init_linear_normal(self, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, 1024·w, H/32, W/32)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


@register_model("mobilenet_v1", input_size=(3, 224, 224))
def mobilenet_v1(
    *, num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0
) -> MobileNetV1:
    """MobileNet-V1 (4,231,976 parameters at 1000 classes, width 1.0)."""
    name = "mobilenet_v1"
    return MobileNetV1(
        num_classes=check_positive_int(name, "num_classes", num_classes),
        in_chans=check_positive_int(name, "in_chans", in_chans),
        width_mult=check_positive_float(name, "width_mult", width_mult),
    )
