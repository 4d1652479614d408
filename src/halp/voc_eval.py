"""PASCAL VOC2007 11-point mean average precision, written from the metric's definition.

Kept here only because no library computes it: mAP@0.5 and COCO mAP come from torchmetrics
(:func:`halp.detection.evaluate`), and the VOC2010+ area-under-the-envelope variant this module used to
offer is gone (torchmetrics' 101-point COCO interpolation is the maintained equivalent).

For each class, detections from all images are ranked by score. Walking down the ranking, a detection
is a true positive when its best-overlapping ground-truth box of that class in the same image has IoU
strictly above the threshold and was not matched before; a match to a *difficult* box counts as neither
true nor false positive; everything else is a false positive. Recall is measured against the
non-difficult boxes. AP is the VOC2007 **11-point** interpolation: the mean over recall levels
0, 0.1, ..., 1 of the best precision reached at that recall or beyond. Overlaps are torchvision's
:func:`~torchvision.ops.box_iou`.

mAP is the mean over classes that have at least one non-difficult ground-truth box. Ties in score are
broken by image order (a stable sort), so results are deterministic.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torchvision.ops import box_iou


def _np(x: Any, dtype: Any, shape_tail: tuple[int, ...] = ()) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=dtype)
    if shape_tail:
        arr = arr.reshape((-1, *shape_tail))
    return arr


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """11-point average precision from a ranked list's recall and precision after each detection."""
    recall, precision = np.asarray(recall, dtype=np.float64), np.asarray(precision, dtype=np.float64)
    total = 0.0
    for t in np.linspace(0.0, 1.0, 11):
        above = precision[recall >= t]
        total += float(above.max()) if above.size else 0.0
    return total / 11.0


def _iou(box: np.ndarray, boxes: np.ndarray, plus_one: float) -> np.ndarray:
    # inclusive pixel corners (the devkit's widths x2 - x1 + 1) are box_iou on boxes grown by one pixel
    grow = torch.tensor([0.0, 0.0, plus_one, plus_one], dtype=torch.float64)
    a = torch.from_numpy(box).reshape(1, 4) + grow
    return box_iou(a, torch.from_numpy(boxes) + grow)[0].numpy()


def voc_map(
    dets: Sequence[Mapping[str, Any]],
    gts: Sequence[Mapping[str, Any]],
    iou: float = 0.5,
    *,
    num_classes: int | None = None,
    pixel_inclusive: bool = False,
) -> dict[str, Any]:
    """VOC2007 11-point mAP of per-image detections against per-image ground truth.

    Args:
        dets: one mapping per image: ``boxes`` (M, 4) xyxy, ``scores`` (M,), ``labels`` (M,) class indices.
        gts: one mapping per image, same order: ``boxes`` (N, 4), ``labels`` (N,), optional
            ``difficult`` (N,) booleans.
        iou: a match needs IoU strictly greater than this.
        num_classes: number of classes (default: one more than the largest label seen).
        pixel_inclusive: treat box corners as inclusive pixel indices (widths ``x2 - x1 + 1``), as the
            devkit does; use it with pixel boxes to reproduce official numbers exactly, and leave it off
            for normalised boxes.

    Returns:
        ``{"map": float, "ap": [per class, nan where a class has no ground truth], "num_gt": [...],
        "num_det": [...]}``.

    Raises:
        ValueError: mismatched lengths, malformed boxes, or no non-difficult ground truth at all.
    """
    if not gts:
        raise ValueError("gts is empty: give one ground-truth mapping per image")
    if len(dets) != len(gts):
        raise ValueError(f"dets has {len(dets)} images but gts has {len(gts)}: give one entry per image, same order")
    if not 0.0 <= iou < 1.0:
        raise ValueError(f"iou threshold must be in [0, 1), got {iou}")
    plus_one = 1.0 if pixel_inclusive else 0.0
    gt_boxes, gt_labels, gt_diff, d_img, d_box, d_score, d_label = [], [], [], [], [], [], []
    for i, (d, g) in enumerate(zip(dets, gts)):
        gb, gl = _np(g["boxes"], np.float64, (4,)), _np(g["labels"], np.int64).reshape(-1)
        gd = _np(g["difficult"], bool).reshape(-1) if "difficult" in g else np.zeros(len(gl), dtype=bool)
        if not len(gb) == len(gl) == len(gd):
            raise ValueError(f"gts[{i}]: boxes, labels and difficult must have the same length")
        gt_boxes.append(gb)
        gt_labels.append(gl)
        gt_diff.append(gd)
        db, ds, dl = _np(d["boxes"], np.float64, (4,)), _np(d["scores"], np.float64), _np(d["labels"], np.int64)
        ds, dl = ds.reshape(-1), dl.reshape(-1)
        if not len(db) == len(ds) == len(dl):
            raise ValueError(f"dets[{i}]: boxes, scores and labels must have the same length")
        d_img.append(np.full(len(ds), i))
        d_box.append(db)
        d_score.append(ds)
        d_label.append(dl)
    all_gl = np.concatenate(gt_labels) if gt_labels else np.zeros(0, np.int64)
    all_dl = np.concatenate(d_label) if d_label else np.zeros(0, np.int64)
    if (all_gl < 0).any() or (all_dl < 0).any():
        raise ValueError("class labels must be >= 0")
    if num_classes is None:
        num_classes = int(max(all_gl.max(initial=-1), all_dl.max(initial=-1))) + 1
    img, box = np.concatenate(d_img) if d_img else np.zeros(0, np.int64), np.concatenate(d_box).reshape(-1, 4)
    score = np.concatenate(d_score) if d_score else np.zeros(0)

    aps, num_gt, num_det = [], [], []
    for c in range(num_classes):
        npos = int(sum(int(((gl == c) & ~gd).sum()) for gl, gd in zip(gt_labels, gt_diff)))
        sel = np.flatnonzero(all_dl == c)
        num_gt.append(npos)
        num_det.append(int(len(sel)))
        if npos == 0:
            aps.append(float("nan"))
            continue
        order = sel[np.argsort(-score[sel], kind="stable")]
        cls_boxes = [gb[gl == c] for gb, gl in zip(gt_boxes, gt_labels)]
        cls_diff = [gd[gl == c] for gd, gl in zip(gt_diff, gt_labels)]
        used = [np.zeros(len(b), dtype=bool) for b in cls_boxes]
        tp = np.zeros(len(order))
        fp = np.zeros(len(order))
        for k, j in enumerate(order):
            cand = cls_boxes[img[j]]
            if len(cand):
                overlaps = _iou(box[j], cand, plus_one)
                best = int(np.argmax(overlaps))
                if overlaps[best] > iou:
                    if cls_diff[img[j]][best]:
                        continue  # matched a difficult object: ignored
                    if not used[img[j]][best]:
                        used[img[j]][best] = True
                        tp[k] = 1
                    else:
                        fp[k] = 1  # duplicate detection
                    continue
            fp[k] = 1
        ctp, cfp = np.cumsum(tp), np.cumsum(fp)
        recall = ctp / npos
        precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
        aps.append(voc_ap(recall, precision))
    valid = [a for a in aps if not np.isnan(a)]
    if not valid:
        raise ValueError("no non-difficult ground-truth boxes in gts: mAP is undefined")
    return {"map": float(np.mean(valid)), "ap": aps, "num_gt": num_gt, "num_det": num_det}
