"""The digits task, the seeded sampler, and the registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import halp.data as data
from halp.data import SeededSampler, make_loaders


@pytest.fixture(scope="module")
def digits_sets():
    return data.create("digits", split="train", size=16), data.create("digits", split="test", size=16)


def test_digits_splits_sizes_and_info(digits_sets):
    train, test = digits_sets
    assert len(train) == 1078 and len(test) == 3 * 719 == 2157  # 40% of 1,797 held out per class, 3 copies
    assert train.info.test_len == len(test) and train.info.train_len == len(train)
    assert train.info.input_size == (1, 16, 16) and train.info.num_classes == 10
    assert train.info["num_classes"] == 10  # mapping-style access works too
    # Every class is present in both splits in proportion (stratified).
    counts = np.bincount(test.labels.numpy(), minlength=10)
    assert counts.min() >= 3 * 69 and counts.max() <= 3 * 74


def test_digits_normalisation_recorded_and_applied(digits_sets):
    train, _ = digits_sets
    plain = data.create("digits", split="train", size=16, augment=False)
    xs = torch.stack([plain[i][0] for i in range(len(plain))])
    # The clean train images are normalised with their own statistics: mean 0, std 1.
    assert abs(xs.mean().item()) < 1e-3 and abs(xs.std().item() - 1) < 1e-2
    assert 0 < train.info.mean[0] < 1 and train.info.std[0] > 0


def test_digits_test_split_is_fixed_and_train_augmentation_is_keyed(digits_sets):
    _, test = digits_sets
    again = data.create("digits", split="test", size=16)
    assert torch.equal(test.images, again.images)  # rebuilt from seeds, bitwise equal
    # The three copies of an image differ (distinct fixed augmentations).
    n = len(test) // 3
    assert not torch.equal(test.images[0], test.images[n])
    train, _ = digits_sets
    a, b, c = train[(5, 123)][0], train[(5, 123)][0], train[(5, 124)][0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(0)
    d = train[5][0]
    torch.manual_seed(0)
    assert torch.equal(d, train[5][0])  # plain indices follow torch's global seed


def test_digits_rejects_bad_arguments():
    with pytest.raises(ValueError, match="splits"):
        data.create("digits", split="val")
    with pytest.raises(ValueError, match="no root"):
        data.create("digits", root="/somewhere")
    with pytest.raises(ValueError, match="unknown data set"):
        data.create("mnist")
    with pytest.raises(ValueError, match=r"does not take \['sise'\].*'size'"):
        data.create("digits", sise=16)
    with pytest.raises(ValueError, match="does not take"):
        data.create("shapes10", colour=True)


def test_sampler_order_is_a_function_of_seed_and_epoch():
    s = SeededSampler(50, seed=3)
    s.set_epoch(0)
    e0 = list(s)
    assert sorted(i for i, _ in e0) == list(range(50))
    assert list(s) == e0
    s.set_epoch(1)
    e1 = list(s)
    assert e1 != e0 and sorted(i for i, _ in e1) == list(range(50))
    other = SeededSampler(50, seed=4)
    assert list(other) != e0
    s.set_epoch(0)
    s.set_skip(17)
    assert len(s) == 33 and list(s) == e0[17:]
    s.set_epoch(0)  # a new epoch clears the skip
    assert len(s) == 50


def test_sampler_shards_ranks_without_overlap_and_keeps_seeds():
    full = SeededSampler(11, seed=1)
    keys = dict(full)  # index -> augmentation seed
    shards = [list(SeededSampler(11, seed=1, rank=r, world_size=3)) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]  # padded by wrapping around
    flat = [k for s in shards for k in s]
    assert {i for i, _ in flat} == set(range(11))
    assert all(keys[i] == seed for i, seed in flat)  # the seed belongs to the sample, not to the rank
    evals = [list(SeededSampler(11, shuffle=False, rank=r, world_size=3, pad=False, keyed=False)) for r in range(3)]
    assert sorted(i for s in evals for i in s) == list(range(11))  # each index exactly once
    with pytest.raises(ValueError):
        SeededSampler(10, rank=2, world_size=2)


def test_make_loaders_shapes_and_info():
    train, test, info = make_loaders("digits", 32, seed=0, size=16)
    x, y = next(iter(train))
    assert x.shape == (32, 1, 16, 16) and y.shape == (32,) and y.dtype == torch.int64
    assert len(train) == 1078 // 32  # drop_last
    assert sum(len(b[1]) for b in test) == info.test_len == 2157
    with pytest.raises(ValueError, match="process group"):
        make_loaders("digits", 32, distributed=True)
    with pytest.raises(ValueError, match="batch_size"):
        make_loaders("digits", 0)


def test_worker_processes_give_the_same_batches_as_the_main_process():
    a, _, _ = make_loaders("digits", 64, seed=5, size=16, workers=0)
    b, _, _ = make_loaders("digits", 64, seed=5, size=16, workers=2)
    for loader in (a, b):
        loader.sampler.set_epoch(2)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
