"""Detection: torchvision SSD detectors, their per-image network as a prunable module, mAP, training.

* :func:`create_detector` — ``ssdlite320_mobilenet_v3_large`` / ``ssd300_vgg16`` from scratch.
* :class:`DetectorCore` — backbone + head, ``(N, 3, H, W)`` → raw ``(cls_logits, bbox_regression)``:
  the network the channel graph captures, the latency table covers and surgery slims.
* :func:`detect`, :func:`preprocess`, :func:`postprocess`, :func:`with_core` — the detector's own
  transform, anchors and NMS around a (possibly slim) core; :func:`postprocess_ms` times that fixed cost.
* :func:`evaluate`, :func:`mean_average_precision` — mAP@0.5 and COCO mAP through torchmetrics.
* :func:`train_detector` — the detector's loss in :mod:`halp.train`'s loop, hooks and checkpoints.
"""

from __future__ import annotations

from halp.detection.core import (DetectorCore, detect, feature_shapes, postprocess, postprocess_ms, preprocess,
                                 with_core)
from halp.detection.metrics import evaluate, mean_average_precision
from halp.detection.models import INPUT_SIZE, create_detector, list_detectors
from halp.detection.train import DETECTION_RECIPE, detection_loss, make_detection_optimizer, train_detector

__all__ = [
    "DETECTION_RECIPE", "INPUT_SIZE", "DetectorCore", "create_detector", "detect", "detection_loss", "evaluate", "feature_shapes",
    "list_detectors", "make_detection_optimizer", "mean_average_precision", "postprocess", "postprocess_ms", "preprocess", "train_detector", "with_core",
]
