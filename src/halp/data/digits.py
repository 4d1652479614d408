"""The embedded default task: scikit-learn's bundled 8x8 handwritten digits, upscaled and augmented.

The set ships inside scikit-learn (no download) but has only 1,797 images, and a small CNN learns the
clean images almost perfectly, which would hide the accuracy differences pruning methods make. So:

* a stratified, seeded split holds out ``test_fraction`` (40%) of the originals per class;
* the **test split** is ``test_copies`` (3) augmented copies of every held-out image, each made with a
  fixed seed (``data_seed``, copy, index), so it is identical on every machine and run: 3 x 719 = 2,157
  images;
* the **train split** is the remaining 1,078 originals, augmented on the fly (random rotation, shift,
  scale, shear, and pixel noise) with the per-sample seed the sampler hands out;
* images are upscaled 8x8 -> ``size`` x ``size`` (32) bilinearly, scaled to [0, 1], then normalised with
  the mean/std of the clean training originals (recorded in the info).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from halp.data._common import (
    DatasetInfo,
    check_split,
    mix_seed,
    affine_theta,
    normalize,
    sample_rng,
    split_key,
    warp,
)

_AUG = dict(degrees=12.0, translate=0.08, scale=(0.85, 1.1), shear=10.0)
_NOISE = 0.12  # std of Gaussian pixel noise on the [0, 1] image


def _read_bundled() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits as (N, 8, 8) values 0..16 and labels.

    Reads scikit-learn's bundled ``datasets/data/digits.csv.gz`` directly when it is where scikit-learn
    keeps it (importing scikit-learn costs seconds), else asks ``sklearn.datasets.load_digits``.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the 'digits' data set needs scikit-learn installed: pip install 'halp[data]'")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    if path.is_file():
        table = np.loadtxt(path, delimiter=",", dtype=np.float32)
        if table.shape == (1797, 65):
            return table[:, :64].reshape(-1, 8, 8), table[:, 64].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


@functools.lru_cache(maxsize=4)
def _load_upscaled(size: int) -> tuple[torch.Tensor, np.ndarray]:
    raw, labels = _read_bundled()
    images = torch.from_numpy(raw / 16.0)[:, None]  # (N, 1, 8, 8) in [0, 1]
    up = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return up.clamp_(0.0, 1.0), labels


def _stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        k = int(round(fraction * len(idx)))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _draw(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample's augmentation: an affine map, then pixel noise (drawn in that order)."""
    theta = affine_theta(rng, **_AUG)
    noise = torch.from_numpy(rng.standard_normal(shape).astype(np.float32)) * _NOISE
    return theta, noise


def _augment(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    theta, noise = _draw(rng, tuple(image.shape))
    return warp(image[None], theta[None])[0] + noise


@functools.lru_cache(maxsize=4)
def _test_images(size: int, data_seed: int, fraction: float, copies: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed test split: every held-out image warped once per copy, seeded by (data_seed, copy, index)."""
    images, labels = _load_upscaled(size)
    _, test_idx = _stratified_split(labels, fraction, data_seed)
    draws = [
        _draw(np.random.default_rng(mix_seed(data_seed, 1, copy, i)), (1, size, size))
        for copy in range(copies)
        for i in test_idx.tolist()
    ]
    thetas = torch.stack([t for t, _ in draws])
    noise = torch.stack([n for _, n in draws])
    originals = images[torch.from_numpy(np.tile(test_idx, copies))]
    return warp(originals, thetas) + noise, torch.from_numpy(np.tile(labels[test_idx], copies))


class Digits(Dataset):
    """Upscaled, augmented scikit-learn digits; items are ``(image (1, S, S), label)``.

    Args:
        split: ``"train"`` (augmented on the fly) or ``"test"`` (fixed augmented copies).
        size: output side in pixels.
        data_seed: seeds the split and the test augmentations; keep the default so every run shares
            one test set.
        test_fraction: share of each class held out for the test split.
        test_copies: augmented copies of each held-out image in the test split.
        augment: turn the train split's on-the-fly augmentation off (for debugging).
    """

    def __init__(
        self,
        split: str = "train",
        *,
        size: int = 32,
        data_seed: int = 0,
        test_fraction: float = 0.4,
        test_copies: int = 3,
        augment: bool = True,
    ) -> None:
        check_split(split, ("train", "test"), "digits")
        if size < 8:
            raise ValueError(f"digits size must be >= 8 pixels, got {size}")
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        if test_copies < 1:
            raise ValueError(f"test_copies must be >= 1, got {test_copies}")
        self.split = split
        self.augment = augment
        images, labels = _load_upscaled(size)
        train_idx, test_idx = _stratified_split(labels, test_fraction, data_seed)
        clean = images[train_idx]
        self.mean = (round(float(clean.mean()), 4),)
        self.std = (round(float(clean.std()), 4),)
        if split == "train":
            self.images, self.labels = images[train_idx], torch.from_numpy(labels[train_idx])
        else:
            self.images, self.labels = _test_images(size, data_seed, float(test_fraction), test_copies)
        n_test = len(test_idx) * test_copies
        self.info = DatasetInfo(
            name="digits",
            num_classes=10,
            input_size=(1, size, size),
            train_len=len(train_idx),
            test_len=n_test,
            mean=self.mean,
            std=self.std,
            class_names=tuple(str(d) for d in range(10)),
            notes=(
                f"scikit-learn digits upscaled to {size}x{size}; test = {test_copies} fixed augmented copies "
                f"of {len(test_idx)} held-out originals (data_seed={data_seed}); train = {len(train_idx)} "
                "originals augmented on the fly"
            ),
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: Any) -> tuple[torch.Tensor, int]:
        i, seed = split_key(key)
        image = self.images[i]
        if self.split == "train" and self.augment:
            image = _augment(image, sample_rng(seed))
        return normalize(image, self.mean, self.std), int(self.labels[i])
