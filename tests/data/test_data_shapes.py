"""shapes10: deterministic generation, balanced classes, class-specific structure, caching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import halp.data as data
from halp.data.shapes import CLASSES, generate


def test_generation_is_deterministic_balanced_and_uint8():
    x1, y1 = generate(200, seed=5)
    x2, y2 = generate(200, seed=5)
    assert x1.shape == (200, 3, 32, 32) and x1.dtype == np.uint8
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert np.bincount(y1, minlength=10).tolist() == [20] * 10
    x3, _ = generate(200, seed=6)
    assert not np.array_equal(x1, x3)
    assert len(CLASSES) == 10


def test_stripe_classes_have_their_orientation():
    x, y = generate(600, seed=0)
    g = x.astype(np.float32).mean(axis=1)  # (N, 32, 32) grey
    dy = np.abs(np.diff(g, axis=1)).mean(axis=(1, 2))  # changes down the rows
    dx = np.abs(np.diff(g, axis=2)).mean(axis=(1, 2))
    h, v = CLASSES.index("hstripes"), CLASSES.index("vstripes")
    assert (dy[y == h] > dx[y == h]).mean() > 0.9  # horizontal stripes vary along y
    assert (dx[y == v] > dy[y == v]).mean() > 0.9


def test_dataset_caches_to_root_and_reloads_identically(tmp_path):
    a = data.create("shapes10", root=tmp_path, split="test", n_train=60, n_test=40)
    files = list(tmp_path.glob("shapes10-*.npz"))
    assert len(files) == 1
    b = data.create("shapes10", root=tmp_path, split="test", n_train=60, n_test=40)
    assert torch.equal(a.images, b.images) and len(a) == 40
    assert a.info.input_size == (3, 32, 32) and a.info.train_len == 60 and a.info.test_len == 40
    x, label = a[0]
    assert x.shape == (3, 32, 32) and label == int(a.labels[0])
    # normalisation statistics are those of the train split
    train = data.create("shapes10", root=tmp_path, split="train", n_train=60, n_test=40, augment=False)
    xs = torch.stack([train[i][0] for i in range(len(train))])
    assert torch.allclose(xs.mean(dim=(0, 2, 3)), torch.zeros(3), atol=2e-3)
    assert torch.allclose(xs.std(dim=(0, 2, 3)), torch.ones(3), atol=2e-2)
    t1 = data.create("shapes10", root=tmp_path, split="train", n_train=60, n_test=40)
    assert torch.equal(t1[(3, 8)][0], t1[(3, 8)][0])
    with pytest.raises(ValueError, match="at least 10"):
        data.create("shapes10", root=tmp_path, n_train=5)
