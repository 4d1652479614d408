"""MobileNet-V2 for 32×32 inputs (``mobilenet_v2_cifar``), with torchvision's module names and initialisation.

The ImageNet MobileNet-V2 is torchvision's own (``torchvision:mobilenet_v2``, alias ``mobilenet_v2``); this
variant keeps the 32×32 map through the stem and the 24-channel stage, which neither torchvision (its
stem stride is fixed at 2) nor timm offers. Keys follow torchvision's (``features.1.conv.0.0.weight``,
``features.18.0.weight``, ``classifier.1.weight`` …). It stays torch-only so the zoo needs no library.
For the pruner the interesting parts are the depthwise convs (their input and output channels are one
group) and the residual sums between blocks of equal width.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from halp.models._layers import (
    ConvBNAct,
    check_bool,
    check_positive_float,
    check_positive_int,
    check_probability,
    init_conv_bn,
    init_linear_normal,
    make_divisible,
    zero_init_residuals,
)
from halp.models.registry import register_model

__all__ = ["CIFAR_SETTING", "InvertedResidual", "MobileNetV2", "mobilenet_v2_cifar"]

# (expand ratio t, output channels c, repeats n, first stride s): Sandler et al. (2018), Table 2, except
# that for 32×32 inputs the stem and the first stride-2 stage (24 channels) keep stride 1, so the maps go
# 32 → 32 → 16 → 8 → 4 instead of shrinking to 1×1.
CIFAR_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """1×1 expand (skipped when t = 1) → 3×3 depthwise → 1×1 linear projection, residual when shapes match.

    Children live in ``self.conv`` (a Sequential) exactly as torchvision lays them out.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidual: stride must be 1 or 2, got {stride}")
        hidden = int(round(in_channels * expand_ratio))
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(in_channels, hidden, kernel_size=1, activation=nn.ReLU6))
        layers += [
            ConvBNAct(hidden, hidden, stride=stride, groups=hidden, activation=nn.ReLU6),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = out_channels

    def zero_init_last_bn(self) -> None:
        """Start the residual branch at zero (the block is then the identity), as for ResNets."""
        if self.use_res_connect:
            nn.init.zeros_(self.conv[-1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """``features`` (stem, 17 inverted residuals, 1×1 to ``last_channel``) → global pool → ``classifier``.

    Args:
        num_classes: Classifier outputs.
        in_chans: Input image channels.
        width_mult: Scales every width (rounded by :func:`make_divisible`); the last 1×1 conv is only
            scaled up, never down, as in torchvision.
        dropout: Dropout before the classifier.
        stem_stride: 1 keeps 32×32 inputs' resolution (2 would be ImageNet's).
        setting: ``(t, c, n, s)`` rows, see :data:`CIFAR_SETTING`.
        round_nearest: Channel multiple for :func:`make_divisible`.
        zero_init_residual: Zero the last BN of every residual block; from scratch on a few thousand
            images the network then trains at a learning rate where it otherwise stays at chance.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        width_mult: float = 1.0,
        dropout: float = 0.2,
        stem_stride: int = 1,
        setting: Sequence[tuple[int, int, int, int]] = CIFAR_SETTING,
        round_nearest: int = 8,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        channels = make_divisible(32 * width_mult, round_nearest)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult), round_nearest)
        features: list[nn.Module] = [
            ConvBNAct(in_chans, channels, stride=stem_stride, activation=nn.ReLU6)
        ]
        for expand_ratio, c, repeats, first_stride in setting:
            out_channels = make_divisible(c * width_mult, round_nearest)
            for i in range(repeats):
                stride = first_stride if i == 0 else 1
                features.append(InvertedResidual(channels, out_channels, stride, expand_ratio))
                channels = out_channels
        features.append(ConvBNAct(channels, self.last_channel, kernel_size=1, activation=nn.ReLU6))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes)
        )
        init_conv_bn(self)
        init_linear_normal(self, std=0.01)
        if zero_init_residual:
            zero_init_residuals(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, last_channel, H/8, W/8) with the CIFAR setting
        x = torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)
        return self.classifier(x)


def _build(
    name: str,
    setting: Sequence[tuple[int, int, int, int]],
    stem_stride: int,
    num_classes: int,
    in_chans: int,
    width_mult: float,
    dropout: float,
    zero_init_residual: bool,
) -> MobileNetV2:
    return MobileNetV2(
        num_classes=check_positive_int(name, "num_classes", num_classes),
        in_chans=check_positive_int(name, "in_chans", in_chans),
        width_mult=check_positive_float(name, "width_mult", width_mult),
        dropout=check_probability(name, "dropout", dropout),
        stem_stride=stem_stride,
        setting=setting,
        zero_init_residual=check_bool(name, "zero_init_residual", zero_init_residual),
    )


@register_model("mobilenet_v2_cifar", input_size=(3, 32, 32))
def mobilenet_v2_cifar(
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    width_mult: float = 1.0,
    dropout: float = 0.2,
    zero_init_residual: bool = False,
) -> MobileNetV2:
    """MobileNet-V2 for 32×32 inputs: stride-1 stem and stride-1 24-channel stage; same names."""
    return _build(
        "mobilenet_v2_cifar", CIFAR_SETTING, 1, num_classes, in_chans, width_mult, dropout, zero_init_residual
    )
