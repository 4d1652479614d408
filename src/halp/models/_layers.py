"""Building blocks and argument checks shared by the zoo's architectures.

The blocks mirror torchvision's layout (a ``Conv2dNormActivation`` is a ``Sequential`` indexed 0/1/2) so
that state_dict keys of the zoo and of torchvision line up; the initialisers reproduce torchvision's
schemes so that a model trained from scratch here behaves like one built there.
"""

from __future__ import annotations

from torch import nn


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a width-scaled channel count to a multiple of ``divisor`` (torchvision's rule).

    Hardware kernels run fastest on multiples of 8; rounding to the nearest multiple could shrink a layer a
    lot for small widths, so the result never falls below 90% of ``value`` (nor below ``min_value``,
    which defaults to ``divisor``).

    Args:
        value: The scaled channel count, e.g. ``32 * width_mult``.
        divisor: The multiple to round to.
        min_value: The smallest count returned; defaults to ``divisor``.

    Returns:
        The rounded channel count.
    """
    floor = divisor if min_value is None else min_value
    rounded = max(floor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvBNAct(nn.Sequential):
    """Conv (no bias) → BatchNorm → activation, children named ``0``, ``1``, ``2``.

    Same layout as torchvision's ``Conv2dNormActivation`` so MobileNet keys such as
    ``features.0.0.weight`` match.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=padding,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
            activation(inplace=True),
        )


def init_conv_bn(model: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU gain) conv weights, zero conv biases, BatchNorm γ=1 and β=0.

    This is the scheme every torchvision CNN used here applies; ``fan_out`` keeps the backward signal's
    variance steady, which matters more than the forward one for training from scratch.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def init_linear_normal(model: nn.Module, std: float = 0.01) -> None:
    """N(0, std²) weights and zero biases for every Linear (torchvision's MobileNet and VGG heads)."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, std)
            nn.init.zeros_(module.bias)


def check_positive_int(model: str, arg: str, value: object) -> int:
    """Return ``value`` if it is an int ≥ 1, else raise a ValueError that names the model and argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{model}: {arg} must be a positive integer, got {value!r}")
    return value


def check_positive_float(model: str, arg: str, value: object) -> float:
    """Return ``value`` as float if it is a real number > 0, else raise a ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{model}: {arg} must be a number > 0, got {value!r}")
    return float(value)


def check_probability(model: str, arg: str, value: object) -> float:
    """Return ``value`` as float if it lies in [0, 1), else raise a ValueError (dropout rates)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{model}: {arg} must be a number in [0, 1), got {value!r}")
    return float(value)


def check_bool(model: str, arg: str, value: object) -> bool:
    """Return ``value`` if it is a bool, else raise a ValueError (catches strings such as 'False')."""
    if not isinstance(value, bool):
        raise ValueError(f"{model}: {arg} must be True or False, got {value!r}")
    return value


def zero_init_residuals(model: nn.Module) -> None:
    """Zero the last BN γ of every residual block, so each block starts as the identity.

    A block opts in by defining ``zero_init_last_bn`` (ResNet's BasicBlock and Bottleneck, MobileNet-V2's
    InvertedResidual, which zeroes only when it has a residual sum). Goyal et al. (2017) report +0.2–0.3%
    top-1 for large-batch training; torchvision's ``zero_init_residual`` does the same.
    """
    for module in model.modules():
        zero = getattr(module, "zero_init_last_bn", None)
        if callable(zero):
            zero()
