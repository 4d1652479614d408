"""The torchvision detectors halp prunes, built from scratch for a data set's classes.

Nothing is downloaded: ``weights=None`` and ``weights_backbone=None`` always. ``num_classes`` counts
the object classes; the detector gets one more output for the background (label 0), as torchvision's
detectors and :mod:`halp.data.voc` targets number them.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn
from torchvision.models import detection as tvdet

DETECTORS: dict[str, Callable[..., nn.Module]] = {
    "ssdlite320_mobilenet_v3_large": tvdet.ssdlite320_mobilenet_v3_large,
    "ssd300_vgg16": tvdet.ssd300_vgg16,
}
# the square input side each detector resizes to (its transform's fixed size)
INPUT_SIZE = {"ssdlite320_mobilenet_v3_large": 320, "ssd300_vgg16": 300}


def list_detectors() -> list[str]:
    """Names :func:`create_detector` accepts."""
    return sorted(DETECTORS)


def create_detector(name: str, num_classes: int, *, bn_momentum: float | None = None, **kwargs: Any) -> nn.Module:
    """A randomly initialised torchvision detector for ``num_classes`` object classes (+ background).

    Extra keywords go to torchvision's builder (e.g. ``score_thresh``, ``detections_per_img``,
    ``width_mult`` for SSDlite). ``torchvision:`` in front of the name is accepted.

    ``bn_momentum`` replaces the BatchNorm momentum (SSDlite's is 0.03, tuned for 600-epoch runs): in a
    run of a few hundred steps the running statistics then trail the weights so far that eval-mode
    outputs are wrong (shapes-voc, SSDlite320, AdamW 2e-3/3e-3, epoch 2: test mAP@0.5 0.0014 at 0.03
    vs 0.087 at 0.1). Use 0.1 for short runs.

    Raises:
        ValueError: an unknown name, fewer than one class, or a request for pretrained weights.
    """
    key = name.removeprefix("torchvision:")
    if key not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; choose one of {list_detectors()}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes counts object classes and must be an int >= 1, got {num_classes!r}")
    for w in ("weights", "weights_backbone"):
        if kwargs.pop(w, None) is not None:
            raise ValueError(f"{w} cannot be set: halp builds detectors from scratch (nothing is downloaded)")
    if bn_momentum is not None and not 0.0 < bn_momentum <= 1.0:
        raise ValueError(f"bn_momentum must be in (0, 1], got {bn_momentum}")
    from halp.models import create

    # through the model registry, so the detector records ``halp_arch`` and halp.save_pruned can rebuild it
    det = create(f"torchvision:{key}", num_classes=num_classes + 1, **kwargs)
    if bn_momentum is not None:
        set_bn_momentum(det, bn_momentum)
    return det


def set_bn_momentum(model: nn.Module, momentum: float) -> None:
    """Every BatchNorm's running-statistics momentum (not saved in a state dict: set it again after loading)."""
    if not 0.0 < momentum <= 1.0:
        raise ValueError(f"bn_momentum must be in (0, 1], got {momentum}")
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum
