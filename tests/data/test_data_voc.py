"""PASCAL VOC: the devkit tree read through torchvision, targets, collate, and the VOC07 mAP by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from halp_data_fixtures import VOC_SIZE, write_voc

import halp.data as data
from halp.data.voc import VOC_CLASSES, parse_annotation
from halp.voc_eval import voc_ap, voc_map


def test_voc_tree_targets_in_both_box_formats(tmp_path):
    write_voc(tmp_path)
    ds = data.create("voc", root=tmp_path, split="test", size=40)
    assert len(ds) == 3 and ds.info.num_classes == 20 and ds.info.task == "detection"
    assert len(VOC_CLASSES) == 20 and VOC_CLASSES[11] == "dog"
    img, t = ds[0]
    assert img.shape == (3, 40, 40) and img.dtype == torch.float32 and t["image_id"] == "000001"
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0  # not normalised: detectors do that
    w, h = VOC_SIZE
    # dog (11, 21, 60, 80) 1-based -> 0-based corners, scaled from 100 x 80 to the 40 x 40 output
    assert torch.allclose(t["boxes"][0], torch.tensor([10 * 40 / w, 20 * 40 / h, 59 * 40 / w, 79 * 40 / h]))
    assert t["boxes"].dtype == torch.float32 and type(t["boxes"]) is torch.Tensor
    # labels count from 1: 0 is torchvision's background class
    assert t["labels"].tolist() == [1 + VOC_CLASSES.index("dog"), 1 + VOC_CLASSES.index("person")]
    assert t["labels"].dtype == torch.int64
    assert t["difficult"].tolist() == [False, True] and t["orig_size"].tolist() == [h, w]
    norm = data.create("voc", root=tmp_path / "VOCdevkit", split="test", size=40, box_format="normalized")
    assert torch.allclose(norm[0][1]["boxes"] * 40, t["boxes"])
    train = data.create("voc", root=tmp_path, split="train", size=40)
    flipped = [train[(0, s)][1]["boxes"][0] for s in range(20)]
    mirrored = torch.tensor([40 - 59 * 40 / w, 20 * 40 / h, 40 - 10 * 40 / w, 79 * 40 / h])
    assert any(torch.allclose(b, mirrored) for b in flipped)  # the v2 flip mirrors boxes with the image
    assert any(torch.allclose(b, t["boxes"][0]) for b in flipped)
    assert all(torch.equal(train[(0, s)][0], train[(0, s)][0]) for s in range(3))  # seeded: reproducible


def test_voc_loaders_collate_variable_box_counts(tmp_path):
    write_voc(tmp_path)
    tr, te, info = data.make_loaders("voc", 3, root=tmp_path, size=32)
    images, targets = next(iter(te))
    assert images.shape == (3, 3, 32, 32) and [len(t["boxes"]) for t in targets] == [2, 1, 3]
    assert len(tr) == 1  # trainval has 3 images


def test_voc_errors(tmp_path):
    with pytest.raises(ValueError, match="no PASCAL VOC tree"):
        data.create("voc", root=tmp_path)
    with pytest.raises(ValueError, match="no test split"):
        data.create("voc", root=tmp_path, split="test", year="2012")
    base = write_voc(tmp_path, splits={"train": ["000001"]})
    with pytest.raises(ValueError, match="split file .* is missing"):
        data.create("voc", root=tmp_path, split="test")
    (base / "Annotations" / "000001.xml").write_text(
        "<annotation><object><name>unicorn</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax>"
        "<ymax>2</ymax></bndbox></object></annotation>"
    )
    with pytest.raises(ValueError, match="unknown class 'unicorn'"):
        data.create("voc", root=tmp_path, split="train")
    (base / "Annotations" / "000001.xml").write_text("<annotation><object>")
    with pytest.raises(ValueError, match="not valid XML"):
        parse_annotation(base / "Annotations" / "000001.xml")


def _gt(boxes, labels, difficult=None):
    return {"boxes": np.asarray(boxes, float), "labels": np.asarray(labels),
            "difficult": np.asarray(difficult if difficult is not None else [0] * len(labels), bool)}


def _det(boxes, scores, labels):
    return {"boxes": np.asarray(boxes, float).reshape(-1, 4), "scores": np.asarray(scores, float),
            "labels": np.asarray(labels)}


A, B, C = [0, 0, 10, 10], [20, 20, 30, 30], [5, 5, 15, 15]


def test_perfect_detections_score_one_and_gt_from_fixture(tmp_path):
    write_voc(tmp_path)
    ds = data.create("voc", root=tmp_path, split="test", size=32)
    gts = [ds[i][1] for i in range(len(ds))]
    dets = [{"boxes": g["boxes"], "scores": torch.ones(len(g["labels"])), "labels": g["labels"]} for g in gts]
    res = voc_map(dets, gts, num_classes=21)
    assert res["map"] == pytest.approx(1.0)
    # person is only a difficult object: it has no AP and is left out of the mean
    assert np.isnan(res["ap"][1 + VOC_CLASSES.index("person")]) and res["num_gt"][1 + VOC_CLASSES.index("cat")] == 2


def test_known_precision_recall_curve():
    # Three objects (A, B in image 0; C in image 1). Ranked detections: TP, FP, TP, duplicate(FP), TP.
    gts = [_gt([A, B], [0, 0]), _gt([C], [0])]
    dets = [
        _det([A, [50, 50, 60, 60], A, B], [0.9, 0.8, 0.6, 0.5], [0, 0, 0, 0]),
        _det([C], [0.7], [0]),
    ]
    # recall 1/3, 1/3, 2/3, 2/3, 1 ; precision 1, 1/2, 2/3, 1/2, 3/5
    # 11-point: recall levels 0, .1, .2, .3 -> best precision at recall >= t is 1; .4 .. .6 -> 2/3;
    # .7 .. 1.0 -> 3/5
    eleven = voc_map(dets, gts)["map"]
    assert eleven == pytest.approx((4 * 1 + 3 * (2 / 3) + 4 * 0.6) / 11)
    # a detection on a difficult object is ignored: neither TP nor FP
    gts_d = [_gt([A, B, [70, 70, 90, 90]], [0, 0, 0], [0, 0, 1]), _gt([C], [0])]
    dets_d = [_det([A, [70, 70, 90, 90], [50, 50, 60, 60], A, B], [0.9, 0.85, 0.8, 0.6, 0.5], [0] * 5), dets[1]]
    assert voc_map(dets_d, gts_d)["map"] == pytest.approx(eleven)


def test_map_is_mean_over_classes_and_iou_threshold_is_strict():
    gts = [_gt([A, B], [0, 1])]
    dets = [_det([A, [40, 40, 50, 50]], [0.9, 0.9], [0, 1])]
    res = voc_map(dets, gts)
    assert res["ap"] == [pytest.approx(1.0), 0.0] and res["map"] == pytest.approx(0.5)
    # [0,0,9,9] vs [5,0,14,9]: inclusive pixels (the devkit) overlap 5 x 10 = 50 of 100 + 100 - 50 -> 1/3;
    # continuous boxes overlap 4 x 9 = 36 of 81 + 81 - 36 = 126 -> 0.286
    g, d = [_gt([[0, 0, 9, 9]], [0])], [_det([[5, 0, 14, 9]], [1.0], [0])]
    assert voc_map(d, g, iou=0.3, pixel_inclusive=True)["map"] == pytest.approx(1.0)
    assert voc_map(d, g, iou=0.3)["map"] == 0.0
    assert voc_map(d, g, iou=1 / 3 - 1e-9, pixel_inclusive=True)["map"] == pytest.approx(1.0)
    assert voc_map(d, g, iou=1 / 3, pixel_inclusive=True)["map"] == 0.0  # strictly above the threshold
    with pytest.raises(ValueError, match="one entry per image"):
        voc_map(d, g + g)
    with pytest.raises(ValueError, match="no non-difficult"):
        voc_map(d, [_gt([[0, 0, 9, 9]], [0], [1])])


def test_voc_ap_edge_cases():
    assert voc_ap(np.array([]), np.array([])) == 0.0
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0])) == pytest.approx(1.0)
    assert voc_ap(np.array([0.5]), np.array([1.0])) == pytest.approx(6 / 11)  # levels 0 .. 0.5
