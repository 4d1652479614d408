"""VGG-11-BN for 32×32 inputs (``vgg11_cifar``): torchvision's ``vgg11_bn`` features with a one-layer head.

torchvision's and timm's VGGs are ImageNet's (a 7×7 pool into 4096-wide linears, 129 M parameters); the
ImageNet VGG-16-BN is torchvision's own (``torchvision:vgg16_bn``, alias ``vgg16_bn``). Here five pools
leave 512×1×1 and one Linear classifies. ``features`` is one flat Sequential — conv (with bias) / BN /
ReLU triples and max-pools — with torchvision's keys (``features.0.weight`` … ``features.26.running_var``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from halp.models._layers import (
    check_positive_int,
    init_conv_bn,
    init_linear_normal,
)
from halp.models.registry import register_model

__all__ = ["VGG", "make_features", "vgg11_cifar"]

# Simonyan & Zisserman (2015): numbers are 3×3 conv widths, "M" a 2×2/2 max-pool.
CFG_A: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def make_features(cfg: Sequence[int | str], in_chans: int) -> nn.Sequential:
    """Flat Sequential of conv(bias)-BN-ReLU triples and max-pools, indexed like torchvision's."""
    layers: list[nn.Module] = []
    channels = in_chans
    for item in cfg:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            width = int(item)
            layers += [
                nn.Conv2d(channels, width, kernel_size=3, padding=1),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """``features`` → ``avgpool`` → flatten → ``classifier``.

    Args:
        features: From :func:`make_features`.
        avgpool_size: Output side of the adaptive pool (1 for 32×32 inputs).
        classifier: The head; its first Linear must take ``512 * avgpool_size**2`` features.
    """

    def __init__(self, features: nn.Sequential, avgpool_size: int, classifier: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((avgpool_size, avgpool_size))
        self.classifier = classifier
        init_conv_bn(self)
        init_linear_normal(self, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))  # (N, 512, s, s)
        return self.classifier(torch.flatten(x, 1))  # flatten: channel c → features [c·s², (c+1)·s²)


@register_model("vgg11_cifar", input_size=(3, 32, 32))
def vgg11_cifar(*, num_classes: int = 10, in_chans: int = 3) -> VGG:
    """VGG-11 with BatchNorm for 32×32 inputs: five pools leave 512×1×1, then one Linear ``classifier``.

    ``features`` has torchvision ``vgg11_bn``'s keys and shapes (9,231,114 parameters at 10 classes).
    """
    name = "vgg11_cifar"
    num_classes = check_positive_int(name, "num_classes", num_classes)
    features = make_features(CFG_A, check_positive_int(name, "in_chans", in_chans))
    return VGG(features, 1, nn.Linear(512, num_classes))
