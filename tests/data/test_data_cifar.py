"""CIFAR-10 batches in both published formats, and the refusal of pickles that would run code."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from halp_data_fixtures import cifar_arrays, write_cifar_bin, write_cifar_py

import halp.data as data
from halp.data.cifar import MEAN, STD, load_cifar10


@pytest.mark.parametrize("writer", [write_cifar_py, write_cifar_bin])
def test_both_formats_load_the_same_pixels_and_labels(tmp_path, writer):
    folder = writer(tmp_path, n_per_batch=20, seed=1)
    arrays = cifar_arrays(20, seed=1)
    x, y = load_cifar10(tmp_path, "train")
    assert x.shape == (100, 3, 32, 32) and x.dtype == np.uint8
    expected = np.concatenate([arrays[f"data_batch_{i}"][0] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    assert np.array_equal(x, expected)
    assert np.array_equal(y, np.concatenate([arrays[f"data_batch_{i}"][1] for i in range(1, 6)]))
    xt, yt = load_cifar10(folder, "test")  # the batches folder itself works as root too
    assert np.array_equal(xt, arrays["test_batch"][0].reshape(-1, 3, 32, 32))
    assert np.array_equal(yt, arrays["test_batch"][1])


def test_dataset_items_are_normalised_and_info_complete(tmp_path):
    write_cifar_py(tmp_path, n_per_batch=20, seed=2)
    test = data.create("cifar10", root=tmp_path, split="test")
    assert test.info.train_len == 100 and test.info.test_len == 20 and test.info.num_classes == 10
    img, label = test[3]
    raw = torch.from_numpy(cifar_arrays(20, 2)["test_batch"][0][3].reshape(3, 32, 32)).float() / 255
    expected = (raw - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    assert torch.allclose(img, expected) and label == int(cifar_arrays(20, 2)["test_batch"][1][3])
    train = data.create("cifar10", root=tmp_path, split="train")
    a, b = train[(7, 99)][0], train[(7, 99)][0]
    assert torch.equal(a, b) and a.shape == (3, 32, 32)
    tr, te, info = data.make_loaders("cifar10", 10, root=tmp_path)
    assert len(tr) == 10 and sum(len(y) for _, y in te) == 20


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch HALP_PWNED",))


def test_pickle_with_foreign_globals_is_refused_before_running(tmp_path, monkeypatch):
    folder = write_cifar_py(tmp_path)
    monkeypatch.chdir(tmp_path)
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}, protocol=2))
    with pytest.raises(ValueError, match="not allowed"):
        load_cifar10(tmp_path, "train")
    assert not (tmp_path / "HALP_PWNED").exists()
    # builtins such as eval are refused just the same
    payload = b"cbuiltins\neval\n(S'1+1'\ntR."
    (folder / "data_batch_3").write_bytes(payload)
    with pytest.raises(ValueError, match="builtins.eval is not allowed"):
        load_cifar10(tmp_path, "train")


def test_malformed_batches_and_missing_folders_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="no CIFAR-10 batches"):
        load_cifar10(tmp_path, "train")
    with pytest.raises(ValueError, match="needs root"):
        data.create("cifar10")
    folder = write_cifar_py(tmp_path / "a")
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(ValueError, match=r"\(N, 3072\)"):
        load_cifar10(folder, "test")
    (folder / "data_batch_5").unlink()
    with pytest.raises(ValueError, match="missing CIFAR-10 batch"):
        load_cifar10(folder, "train")
    binf = write_cifar_bin(tmp_path / "b")
    (binf / "test_batch.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="3073-byte"):
        load_cifar10(binf, "test")
    bad = np.zeros((1, 3073), np.uint8)
    bad[0, 0] = 12  # label out of range
    (binf / "test_batch.bin").write_bytes(bad.tobytes())
    with pytest.raises(ValueError, match="0..9"):
        load_cifar10(binf, "test")


def test_pickles_written_by_old_numpy_load(tmp_path):
    # The official files name numpy's array rebuilder numpy.core.multiarray (numpy < 2).
    folder = write_cifar_py(tmp_path, n_per_batch=4)
    raw = (folder / "test_batch").read_bytes()
    assert b"numpy._core.multiarray" in raw
    (folder / "test_batch").write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    x, y = load_cifar10(folder, "test")
    assert np.array_equal(x.reshape(4, -1), cifar_arrays(4)["test_batch"][0])
