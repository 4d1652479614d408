"""The per-image network of any torchvision detector, named as in the detector itself.

A torchvision detector wraps a network (backbone, feature pyramid, dense head) between a transform and
a postprocessing with data-dependent shapes (anchor decoding, NMS). :func:`per_image_network` returns that
network as a module whose submodules are the detector's own, *at the same qualified names*
(``backbone.body.layer1.0.conv1``, ``head.classification_head.conv.0.0``, ``rpn.head.conv.0.0``). So the
channel graph built on it names the detector's modules, and ``halp.prune_channels(detector, graph, keep)``
slims the detector directly: the slim detector keeps its transform, anchors and NMS, and
``slim(images)`` gives boxes. For SSD, :class:`halp.detection.DetectorCore` is the same network with the
two outputs its loss and postprocessing take.

Two-stage detectors (Faster/Mask/Keypoint R-CNN) contribute backbone + FPN + the RPN head: the box head
after RoI pooling runs per proposal, not per image, and reads the feature maps, so they are outputs of
this network (their channels stay; the backbone's inside are pruned).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def _flat(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in _flat(out[k])]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _flat(v)]
    return []


class PerImageNetwork(nn.Module):
    """Backbone (+ FPN) and dense head of a torchvision detector: ``(N, 3, H, W)`` → the head's tensors.

    Args:
        detector: a torchvision SSD, RetinaNet, FCOS or R-CNN; its modules are shared, not copied.
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        if not isinstance(getattr(detector, "backbone", None), nn.Module):
            raise ValueError(
                f"{type(detector).__name__} has no .backbone: expected a torchvision detector (SSD, RetinaNet, "
                "FCOS, Faster/Mask/Keypoint R-CNN); an Ultralytics DetectionModel is a per-image network itself"
            )
        self.backbone = detector.backbone
        if isinstance(getattr(detector, "head", None), nn.Module):
            self.head = detector.head
            self._two_stage = False
        elif isinstance(getattr(getattr(detector, "rpn", None), "head", None), nn.Module):
            self.rpn = nn.ModuleDict({"head": detector.rpn.head})
            self._two_stage = True
        else:
            raise ValueError(f"{type(detector).__name__} has neither a dense .head nor an .rpn.head")

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        feats = self.backbone(x)
        feats = [feats] if isinstance(feats, Tensor) else list(feats.values())
        if self._two_stage:  # the box head reads the feature maps too: they are outputs (never pruned)
            return tuple(feats) + tuple(_flat(self.rpn["head"](feats)))
        return tuple(_flat(self.head(feats)))


def is_detector(model: nn.Module) -> bool:
    """A torchvision detector (its forward takes a list of images, not a batch tensor)."""
    mod = type(model).__module__
    return mod.startswith("torchvision.models.detection") and hasattr(model, "backbone") and hasattr(model, "transform")


def per_image_network(detector: nn.Module) -> PerImageNetwork:
    """The network :func:`halp.build_graph` captures for a torchvision detector (see the module doc)."""
    return PerImageNetwork(detector)


def network_input(detector: nn.Module, height: int, width: int, batch: int = 1) -> Tensor:
    """An example input of the size the detector's transform produces for ``height`` x ``width`` images."""
    with torch.no_grad():
        images, _ = detector.transform([torch.zeros(3, height, width) for _ in range(batch)])
    return torch.randn_like(images.tensors)


def prunable_network(model: nn.Module) -> nn.Module:
    """The module the channel graph is built on: a torchvision detector's per-image network, else ``model``.

    For SSD it is :class:`halp.detection.DetectorCore` (the two outputs its loss and postprocessing take),
    for the other families :func:`per_image_network`; both hold the detector's modules at the detector's
    names, so a graph of either slims the detector (``halp.prune_channels(detector, graph, keep)``).
    """
    if not is_detector(model):
        return model
    from torchvision.models.detection.ssd import SSD

    if isinstance(model, SSD):
        from halp.detection.core import DetectorCore

        return DetectorCore(model)
    return per_image_network(model)
