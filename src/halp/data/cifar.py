"""CIFAR-10 from a local copy of the official batches, in either published format.

* ``cifar-10-batches-py``: ``data_batch_1..5`` and ``test_batch`` are Python pickles of a dict with
  ``data`` (N x 3072 uint8, channel-major) and ``labels``. Unpickling can run arbitrary code, so they are
  read with :class:`_ArrayOnlyUnpickler`, which resolves only the globals numpy needs to rebuild an
  array (and ``_codecs.encode``, used by Python 3 pickles of bytes); anything else is refused with a
  ``ValueError`` before it can run.
* ``cifar-10-batches-bin``: ``data_batch_1..5.bin`` and ``test_batch.bin``, records of one label byte and
  3072 pixel bytes. No pickle involved.

``root`` may be the batches folder itself or a folder containing it. Nothing is downloaded.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from halp.data._common import DatasetInfo, check_split, normalize, random_crop_flip, sample_rng, split_key

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# The commonly published per-channel statistics of the CIFAR-10 training set.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST = ("test_batch",)
_RECORD = 1 + 3072

_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy's array-rebuild function, whatever module holds it
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,  # pickles written by numpy < 2 (the official files)
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,  # pickles written by numpy >= 2
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # protocol-2 pickles of bytes written by Python 3
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild dicts, lists, strings, numbers and numpy arrays, and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch") from None


def _read_pickle_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as fh:
            obj = _ArrayOnlyUnpickler(io.BytesIO(fh.read()), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, TypeError, AttributeError, IndexError) as exc:
        raise ValueError(f"{path} is not a valid CIFAR-10 python batch: {exc}") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    get = lambda k: obj.get(k, obj.get(k.encode()))  # noqa: E731 - keys are str (latin1) or bytes
    data, labels = get("data"), get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: 'data' must be a uint8 array of shape (N, 3072)")
    if labels is None:
        raise ValueError(f"{path}: no 'labels' entry")
    labels_arr = np.asarray(labels)
    if labels_arr.dtype.kind not in "iu" or labels_arr.shape != (data.shape[0],):
        raise ValueError(f"{path}: 'labels' must be {data.shape[0]} integers")
    return data.reshape(-1, 3, 32, 32), labels_arr.astype(np.int64)


def _read_bin_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _RECORD:
        raise ValueError(f"{path}: size {raw.size} bytes is not a multiple of the {_RECORD}-byte CIFAR-10 record")
    rec = raw.reshape(-1, _RECORD)
    return rec[:, 1:].reshape(-1, 3, 32, 32), rec[:, 0].astype(np.int64)


def _find_batches(root: str | os.PathLike[str] | None) -> tuple[Path, str]:
    if root is None:
        raise ValueError("cifar10 needs root=<folder with cifar-10-batches-py or cifar-10-batches-bin> (no download)")
    base = Path(root).expanduser()
    for cand, fmt in ((base, None), (base / "cifar-10-batches-py", "py"), (base / "cifar-10-batches-bin", "bin")):
        if (cand / "data_batch_1").is_file():
            return cand, fmt or "py"
        if (cand / "data_batch_1.bin").is_file():
            return cand, fmt or "bin"
    raise ValueError(
        f"no CIFAR-10 batches under {base}: expected data_batch_1..5 and test_batch (python format) or "
        "data_batch_1..5.bin and test_batch.bin (binary format), in that folder or in "
        "cifar-10-batches-py/ or cifar-10-batches-bin/ below it"
    )


def load_cifar10(root: str | os.PathLike[str] | None, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 3, 32, 32) and int64 labels of one split, from either format."""
    folder, fmt = _find_batches(root)
    names = _TRAIN if split == "train" else _TEST
    images, labels = [], []
    for name in names:
        path = folder / (name + ".bin" if fmt == "bin" else name)
        if not path.is_file():
            raise ValueError(f"missing CIFAR-10 batch {path}")
        x, y = _read_bin_batch(path) if fmt == "bin" else _read_pickle_batch(path)
        images.append(x)
        labels.append(y)
    y_all = np.concatenate(labels)
    if y_all.min() < 0 or y_all.max() > 9:
        raise ValueError(f"CIFAR-10 labels must be in 0..9, found {y_all.min()}..{y_all.max()} in {folder}")
    return np.concatenate(images), y_all


class Cifar10(Dataset):
    """CIFAR-10 from local batches; items are ``(image (3, 32, 32), label)``.

    Args:
        root: the batches folder or a folder containing ``cifar-10-batches-py``/``-bin``.
        split: ``"train"`` (pad-4 random crop and flip, seeded per sample) or ``"test"``.
        augment: turn the train augmentation off.
    """

    def __init__(self, root: str | os.PathLike[str] | None, split: str = "train", *, augment: bool = True) -> None:
        check_split(split, ("train", "test"), "cifar10")
        x, y = load_cifar10(root, split)
        self.split = split
        self.augment = augment
        self.images = torch.from_numpy(np.ascontiguousarray(x))
        self.labels = torch.from_numpy(y)
        other = "test" if split == "train" else "train"
        try:
            other_len = _count(root, other)
        except ValueError:  # the other split is broken or absent: it fails loudly when it is loaded
            other_len = 0
        lens = {split: len(y), other: other_len}
        self.info = DatasetInfo(
            name="cifar10", num_classes=10, input_size=(3, 32, 32), train_len=lens["train"],
            test_len=lens["test"], mean=MEAN, std=STD, class_names=CLASSES,
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: Any) -> tuple[torch.Tensor, int]:
        i, seed = split_key(key)
        image = self.images[i].float() / 255.0
        if self.split == "train" and self.augment:
            image = random_crop_flip(image, sample_rng(seed), pad=4)
        return normalize(image, MEAN, STD), int(self.labels[i])


def _count(root: str | os.PathLike[str] | None, split: str) -> int:
    """Number of images in a split (the binary format needs no decoding; a pickle is just parsed)."""
    folder, fmt = _find_batches(root)
    names = _TRAIN if split == "train" else _TEST
    if fmt == "bin":
        return sum((folder / f"{n}.bin").stat().st_size // _RECORD for n in names if (folder / f"{n}.bin").is_file())
    return sum(len(_read_pickle_batch(folder / n)[1]) for n in names if (folder / n).is_file())
