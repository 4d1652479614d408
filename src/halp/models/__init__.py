"""Models by name: ``halp.models.create(name, num_classes=..., weights=FILE, **kw)`` and ``list_models()``.

Names are library models — ``"torchvision:resnet50"``, ``"torchvision:ssdlite320_mobilenet_v3_large"``,
``"timm:mobilenetv3_large_100"``, ``"yolo:yolov8n"`` — built by the libraries themselves, offline; the
zoo's own architectures, the ones no library has (``resnet20``, ``resnet56``, ``mobilenet_v2_cifar`` and
``vgg11_cifar`` for 32×32 inputs, ``digits_resnet`` for the demo's 1×32×32 digits); and aliases of library
models kept from the zoo's former copies (``resnet18/34/50/101``, ``mobilenet_v2``, ``vgg16_bn`` →
torchvision, ``mobilenet_v1`` → ``timm:mobilenetv1_100``). Every model carries ``default_input_size`` and
``halp_arch``.
"""

from __future__ import annotations

# Importing the architecture modules registers their constructors.
from halp.models import cifar_resnet, mobilenetv2, vgg  # noqa: F401
from halp.models._layers import make_divisible
from halp.models.cifar_resnet import CifarResNet, digits_resnet, resnet20, resnet56
from halp.models.mobilenetv2 import MobileNetV2, mobilenet_v2_cifar
from halp.models.registry import ALIASES, create, input_size, list_models, register_model, resolve
from halp.models.vgg import VGG, vgg11_cifar
from halp.models.weights import load_weights, read_state_dict

__all__ = [
    "ALIASES",
    "VGG",
    "CifarResNet",
    "MobileNetV2",
    "create",
    "digits_resnet",
    "input_size",
    "list_models",
    "load_weights",
    "make_divisible",
    "mobilenet_v2_cifar",
    "read_state_dict",
    "register_model",
    "resnet20",
    "resnet56",
    "resolve",
    "vgg11_cifar",
]
