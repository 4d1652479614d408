"""Detection accuracy: mAP@0.5 and COCO mAP (IoU 0.5:0.95) from torchmetrics' ``MeanAveragePrecision``.

One evaluation pass feeds torchmetrics (faster-coco-eval backend, bbox IoU); VOC's *difficult* objects
become COCO *crowd* regions, so a detection on one is neither a hit nor a false alarm, as in the VOC
protocol. The VOC2007 11-point metric, which no library has, is :func:`halp.voc_eval.voc_map`.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from halp.detection.core import DetectorCore, detect


def _metric() -> Any:
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="faster_coco_eval")
    metric.warn_on_many_detections = False  # SSD keeps 200 per image; COCO scores the best 100, as it should
    return metric


def _target(t: Mapping[str, Any]) -> dict[str, Tensor]:
    boxes = torch.as_tensor(t["boxes"], dtype=torch.float32).reshape(-1, 4).cpu()
    labels = torch.as_tensor(t["labels"], dtype=torch.int64).reshape(-1).cpu()
    if len(boxes) != len(labels):
        raise ValueError(f"a target has {len(boxes)} boxes but {len(labels)} labels")
    out = {"boxes": boxes, "labels": labels}
    if "difficult" in t:
        out["iscrowd"] = torch.as_tensor(t["difficult"]).reshape(-1).to(torch.int64).cpu()
    return out


def _pred(p: Mapping[str, Any]) -> dict[str, Tensor]:
    return {"boxes": torch.as_tensor(p["boxes"], dtype=torch.float32).reshape(-1, 4).cpu(),
            "scores": torch.as_tensor(p["scores"], dtype=torch.float32).reshape(-1).cpu(),
            "labels": torch.as_tensor(p["labels"], dtype=torch.int64).reshape(-1).cpu()}


def _summary(metric: Any, count: int) -> dict[str, float]:
    res = metric.compute()
    return {"map50": float(res["map_50"]), "map": float(res["map"]), "map75": float(res["map_75"]), "count": count}


def mean_average_precision(
    preds: Sequence[Mapping[str, Any]], targets: Sequence[Mapping[str, Any]]
) -> dict[str, float]:
    """mAP of per-image detections (``boxes`` xyxy, ``scores``, ``labels``) against per-image targets.

    Returns:
        ``{"map50", "map" (COCO 0.5:0.95), "map75", "count" (images)}``; a class without ground truth
        is left out of the mean (torchmetrics reports -1 when no class has any).

    Raises:
        ValueError: different numbers of images, or no image at all.
    """
    if len(preds) != len(targets):
        raise ValueError(f"{len(preds)} predictions but {len(targets)} targets: give one of each per image")
    if not targets:
        raise ValueError("no images to evaluate")
    metric = _metric()
    metric.update([_pred(p) for p in preds], [_target(t) for t in targets])
    return _summary(metric, len(targets))


@torch.no_grad()
def evaluate(
    detector: nn.Module,
    loader: Iterable[tuple[Any, Sequence[Mapping[str, Any]]]],
    core: DetectorCore | None = None,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """mAP of a torchvision SSD (optionally running ``core`` as its per-image network) over a loader.

    The loader yields ``(images, targets)`` as :func:`halp.data.voc_collate` makes them, with boxes in
    pixels of the images given (``box_format="pixel"``). Runs in eval mode; modes are restored after.
    """
    params = next((p for p in (core or detector).parameters()), None)
    device = torch.device(device) if device is not None else (params.device if params is not None else "cpu")
    metric, count = _metric(), 0
    for images, targets in loader:
        dets = detect(detector, [im.to(device) for im in images], core)
        metric.update([_pred(d) for d in dets], [_target(t) for t in targets])
        count += len(targets)
    if count == 0:
        raise ValueError("evaluate: the loader yielded no images")
    return _summary(metric, count)
