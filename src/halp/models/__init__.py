"""The model zoo: ``halp.models.create(name, num_classes=..., **kw)`` and ``list_models()``.

ImageNet models (``resnet18/34/50/101``, ``mobilenet_v2``, ``vgg16_bn``) use torchvision's module names,
shapes and initialisation so torchvision checkpoints load with ``strict=True``; ``mobilenet_v1`` is the
HALP paper's; ``resnet20``, ``resnet56``, ``mobilenet_v2_cifar`` and ``vgg11_cifar`` take 32×32 inputs;
``digits_resnet`` is the embedded demo's network (1×32×32). Every model carries ``default_input_size``.
"""

from __future__ import annotations

# Importing the architecture modules registers their constructors.
from halp.models import cifar_resnet, mobilenetv1, mobilenetv2, resnet, vgg  # noqa: F401
from halp.models._layers import make_divisible
from halp.models.cifar_resnet import CifarResNet, digits_resnet, resnet20, resnet56
from halp.models.mobilenetv1 import MobileNetV1, mobilenet_v1
from halp.models.mobilenetv2 import MobileNetV2, mobilenet_v2, mobilenet_v2_cifar
from halp.models.registry import create, input_size, list_models, register_model
from halp.models.resnet import ResNet, resnet18, resnet34, resnet50, resnet101
from halp.models.vgg import VGG, vgg11_cifar, vgg16_bn

__all__ = [
    "VGG",
    "CifarResNet",
    "MobileNetV1",
    "MobileNetV2",
    "ResNet",
    "create",
    "digits_resnet",
    "input_size",
    "list_models",
    "make_divisible",
    "mobilenet_v1",
    "mobilenet_v2",
    "mobilenet_v2_cifar",
    "register_model",
    "resnet18",
    "resnet20",
    "resnet34",
    "resnet50",
    "resnet56",
    "resnet101",
    "vgg11_cifar",
    "vgg16_bn",
]
