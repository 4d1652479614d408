"""mAP through torchmetrics (faster-coco-eval) on cases computed by hand."""

from __future__ import annotations

import pytest
import torch

from halp.detection import mean_average_precision


def _t(boxes, labels, difficult=None):
    out = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels)}
    if difficult is not None:
        out["difficult"] = torch.tensor(difficult, dtype=torch.bool)
    return out


def _p(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels)}


G1, G2 = [0, 0, 10, 10], [50, 50, 70, 70]


def test_perfect_predictions_score_one():
    targets = [_t([G1, G2], [1, 2]), _t([[5, 5, 40, 30]], [1])]
    preds = [_p([G1, G2], [0.9, 0.8], [1, 2]), _p([[5, 5, 40, 30]], [0.7], [1])]
    res = mean_average_precision(preds, targets)
    assert res["map50"] == pytest.approx(1.0) and res["map"] == pytest.approx(1.0) and res["count"] == 2


def test_one_of_two_objects_found():
    # One class, two objects; one detection on G1 at IoU 0.6 ([0,0,10,6]: 60 / 100).
    # COCO AP samples the precision envelope at 101 recall levels 0, 0.01, ..., 1. The detection brings
    # recall 0.5 at precision 1, so levels 0 .. 0.50 (51 of them) score 1 and the other 50 score 0:
    # AP@0.5 = 51/101.
    targets = [_t([G1, G2], [1, 1])]
    res = mean_average_precision([_p([[0, 0, 10, 6]], [0.9], [1])], targets)
    assert res["map50"] == pytest.approx(51 / 101)
    # At IoU 0.62 ([0,0,10,6.2]) the match holds at the thresholds 0.5, 0.55, 0.6 and fails at 0.65 .. 0.95,
    # so COCO mAP (mean over 10 thresholds) = 3/10 * 51/101.
    res = mean_average_precision([_p([[0, 0, 10, 6.2]], [0.9], [1])], targets)
    assert res["map"] == pytest.approx(0.3 * 51 / 101) and res["map50"] == pytest.approx(51 / 101)
    # A higher-scored false alarm first: precision is 1/2 when recall reaches 0.5, so AP@0.5 = 0.5 * 51/101.
    res = mean_average_precision([_p([[80, 0, 90, 10], [0, 0, 10, 6]], [0.95, 0.9], [1, 1])], targets)
    assert res["map50"] == pytest.approx(0.5 * 51 / 101)


def test_difficult_objects_are_ignored_and_classes_averaged():
    # A detection on a difficult (crowd) object is neither a hit nor a false alarm.
    targets = [_t([G1, G2], [1, 1], difficult=[False, True])]
    res = mean_average_precision([_p([G2, G1], [0.95, 0.9], [1, 1])], targets)
    assert res["map50"] == pytest.approx(1.0)
    # Two classes: class 1 found (AP 1), class 2 missed (AP 0) -> mean 0.5.
    res = mean_average_precision([_p([G1], [0.9], [1])], [_t([G1, G2], [1, 2])])
    assert res["map50"] == pytest.approx(0.5) and res["map"] == pytest.approx(0.5)


def test_bad_input():
    with pytest.raises(ValueError, match="one of each per image"):
        mean_average_precision([], [_t([G1], [1])])
    with pytest.raises(ValueError, match="2 boxes but 1 labels"):
        mean_average_precision([_p([G1], [0.9], [1])], [_t([G1, G2], [1])])
