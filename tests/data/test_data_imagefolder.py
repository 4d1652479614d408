"""Image-folder trees: labels from folder names, transforms, and clear errors for malformed trees."""

from __future__ import annotations

import pytest
import torch
from halp_data_fixtures import write_image_folder

import halp.data as data
from halp.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD


def test_tree_loads_with_labels_sizes_and_normalisation(tmp_path):
    write_image_folder(tmp_path, {"ant": (3, 2), "bee": (2, 1), "cat": (4, 0)})
    train = data.create("imagefolder", root=tmp_path, split="train", size=12)
    val = data.create("imagefolder", root=tmp_path, split="val", size=12)
    assert train.classes == ["ant", "bee", "cat"] and len(train) == 9 and len(val) == 3
    assert train.info.num_classes == 3 and train.info.input_size == (3, 12, 12)
    assert (train.info.train_len, train.info.test_len) == (9, 3)
    img, label = val[2]  # bee: red channel 40 everywhere
    assert img.shape == (3, 12, 12) and label == 1
    red = img[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    assert torch.allclose(red, torch.full_like(red, 40 / 255), atol=1e-5)
    x1, x2 = train[(4, 11)][0], train[(4, 11)][0]
    assert torch.equal(x1, x2) and x1.shape == (3, 12, 12)
    tr, te, info = data.make_loaders("imagefolder", 4, root=tmp_path, size=12)
    xb, yb = next(iter(tr))
    assert xb.shape == (4, 3, 12, 12) and sorted(y for _, ys in te for y in ys.tolist()) == [0, 0, 1]


def test_malformed_trees_raise_value_errors(tmp_path):
    with pytest.raises(ValueError, match="no train/ folder"):
        data.create("imagefolder", root=tmp_path, split="train")
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        data.create("imagefolder", root=tmp_path, split="train")
    (tmp_path / "train" / "dog").mkdir()
    with pytest.raises(ValueError, match="has no images"):
        data.create("imagefolder", root=tmp_path, split="train")
    write_image_folder(tmp_path / "b", {"dog": (1, 0)})
    with pytest.raises(ValueError, match="has no images"):
        data.create("imagefolder", root=tmp_path / "b", split="val")
    write_image_folder(tmp_path / "c", {"dog": (1, 1)})
    (tmp_path / "c" / "val" / "wolf").mkdir()
    with pytest.raises(ValueError, match=r"classes not in train/: \['wolf'\]"):
        data.create("imagefolder", root=tmp_path / "c", split="val")
    with pytest.raises(ValueError, match="no val/ folder"):
        write_image_folder(tmp_path / "d", {"dog": (1, 0)})
        import shutil

        shutil.rmtree(tmp_path / "d" / "val")
        data.create("imagefolder", root=tmp_path / "d", split="val")
    with pytest.raises(ValueError, match="splits"):
        data.create("imagefolder", root=tmp_path / "c", split="test")
