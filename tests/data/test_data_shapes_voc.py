"""The generated detection set: a real VOC tree, read back (by halp and by torchvision) as written."""

from __future__ import annotations

import pytest
import torch
from torchvision.datasets import VOCDetection as TorchvisionVOC

import halp.data as data
from halp.data.shapes_voc import SHAPE_CLASSES, ensure_tree, render, write_tree
from halp.data._common import mix_seed


def test_tree_round_trips_boxes_and_labels(tmp_path):
    base = write_tree(tmp_path, n_train=3, n_val=2, n_test=2, seed=5)
    assert sorted(p.name for p in (base / "ImageSets" / "Main").iterdir()) == [
        "test.txt", "train.txt", "trainval.txt", "val.txt"]
    assert len(list((base / "JPEGImages").glob("*.jpg"))) == 7 == len(list((base / "Annotations").glob("*.xml")))
    from halp.data.voc import VOCDetection

    test = VOCDetection(tmp_path, "test", size=320, classes=SHAPE_CLASSES)
    assert len(test) == 2 and test.info.num_classes == 6 and test.info.class_names == SHAPE_CLASSES
    for k in range(2):
        index = 3 + 2 + k  # test images come after train and val
        _, objects = render(mix_seed(5, index))
        _, target = test[k]
        assert target["image_id"] == f"{index:06d}"
        assert target["boxes"].tolist() == [list(map(float, b)) for _, b in objects]  # 320 px: no rescale
        assert target["labels"].tolist() == [1 + SHAPE_CLASSES.index(n) for n, _ in objects]
    # torchvision's own reader sees the same objects in the XML (1-based corners there)
    raw = TorchvisionVOC(str(tmp_path), year="2007", image_set="test")[0][1]["annotation"]
    _, objects = render(mix_seed(5, 5))
    assert [o["name"] for o in raw["object"]] == [n for n, _ in objects]
    assert int(raw["object"][0]["bndbox"]["xmin"]) == objects[0][1][0] + 1


def test_generation_is_deterministic_and_varied():
    a, objs_a = render(123)
    b, objs_b = render(123)
    assert torch.equal(torch.from_numpy(a), torch.from_numpy(b)) and objs_a == objs_b
    sizes, names = [], set()
    for s in range(40):
        _, objs = render(s)
        assert 1 <= len(objs) <= 6
        sizes += [x2 - x1 for _, (x1, _, x2, _) in objs]
        names |= {n for n, _ in objs}
    assert names == set(SHAPE_CLASSES)
    assert min(sizes) < 32 and max(sizes) > 150  # small to large objects


def test_cached_tree_is_reused_and_bad_sizes_refused(tmp_path):
    first = ensure_tree(tmp_path, n_train=2, n_val=1, n_test=1)
    stamp = (first / "VOCdevkit/VOC2007/JPEGImages/000000.jpg").stat().st_mtime_ns
    assert ensure_tree(tmp_path, n_train=2, n_val=1, n_test=1) == first
    assert (first / "VOCdevkit/VOC2007/JPEGImages/000000.jpg").stat().st_mtime_ns == stamp
    tr, te, info = data.make_loaders("shapes-voc", 2, root=tmp_path, n_train=2, n_val=1, n_test=1)
    images, targets = next(iter(tr))
    assert images.shape == (2, 3, 320, 320) and info.num_classes == 6 and len(te.dataset) == 1
    with pytest.raises(ValueError, match="n_train must be an int >= 1"):
        write_tree(tmp_path / "x", n_train=0)
