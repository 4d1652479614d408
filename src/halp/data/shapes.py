"""``shapes10``: a generated, harder 10-class task (3 x 32 x 32) with no download.

Each image is one of ten classes drawn with numpy, vectorised over the whole split:

    0 disc   1 ring   2 square   3 triangle   4 star   5 cross   6 crescent
    7 horizontal stripes   8 vertical stripes   9 checkerboard

Shapes get a random position, size (down to a few pixels) and full rotation; textures fill a rotated
window with a random period, phase and a small tilt (so horizontal and vertical stripes stay distinct).
Colours of the object and the background (with a gradient) are random with a bounded minimum contrast;
small discs and bars of random colour clutter the scene and may occlude the object; Gaussian noise of a
random strength is added. Everything is drawn from ``numpy.random.default_rng`` seeded by ``data_seed``
and the split, so the data are identical on every machine. Both splits are generated together (a few
seconds) and cached as one ``.npz`` of uint8 images under ``root`` (default ``~/.cache/halp``). The
normalisation mean/std are measured on the train split. Train images are further augmented on the fly
with the CIFAR recipe (pad-4 random crop and horizontal flip), seeded per sample.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from halp.data._common import DatasetInfo, cache_dir, check_split, mix_seed, normalize, random_crop_flip
from halp.data._common import sample_rng, split_key

log = logging.getLogger(__name__)

CLASSES = (
    "disc", "ring", "square", "triangle", "star", "cross", "crescent", "hstripes", "vstripes", "checker",
)
_VERSION = 1  # bump when the generator changes: it names the cache file
SIZE = 32


def _shape_field(c: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed inside-ness (> 0 inside, roughly a distance in shape units) of shape class ``c``."""
    r = np.hypot(u, v)
    if c == 0:  # disc
        return 1.0 - r
    if c == 1:  # ring, outer radius 1, inner 0.45
        return 0.275 - np.abs(r - 0.725)
    if c == 2:  # square
        return 0.8 - np.maximum(np.abs(u), np.abs(v))
    if c == 3:  # equilateral triangle, circumradius 1
        angles = np.pi / 2 + 2 * np.pi * np.arange(3) / 3 + np.pi  # outward normals of the three sides
        proj = np.stack([u * np.cos(a) + v * np.sin(a) for a in angles])
        return 0.5 - proj.max(axis=0)
    if c == 4:  # five-pointed star
        phi = np.arctan2(v, u)
        edge = 0.42 + 0.58 * ((1 + np.cos(5 * phi)) / 2) ** 2
        return (edge - r) * 0.6
    if c == 5:  # plus-shaped cross
        arm1 = np.minimum(0.28 - np.abs(u), 1.0 - np.abs(v))
        arm2 = np.minimum(0.28 - np.abs(v), 1.0 - np.abs(u))
        return np.maximum(arm1, arm2)
    if c == 6:  # crescent: a disc with a shifted disc cut out
        return np.minimum(1.0 - r, np.hypot(u - 0.5, v) - 0.8)
    raise ValueError(f"not a shape class: {c}")


def _texture_field(c: int, x: np.ndarray, y: np.ndarray, period: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Texture inside-ness in [-1, 1] on pixel coordinates (x along the width, y along the height)."""
    w = 2 * np.pi / period
    if c == 7:  # horizontal stripes vary along y
        return np.cos(w * y + phase)
    if c == 8:
        return np.cos(w * x + phase)
    if c == 9:
        return np.sign(np.cos(w * x + phase) * np.cos(w * y + phase)) * 0.8
    raise ValueError(f"not a texture class: {c}")


def _colours(rng: np.random.Generator, n: int, min_dist: float) -> tuple[np.ndarray, np.ndarray]:
    """Background and foreground RGB colours at least ``min_dist`` apart (Euclidean in [0, 1]^3)."""
    bg = rng.random((n, 3))
    fg = rng.random((n, 3))
    for _ in range(50):
        bad = np.linalg.norm(fg - bg, axis=1) < min_dist
        if not bad.any():
            break
        fg[bad] = rng.random((int(bad.sum()), 3))
    return bg, fg


_CHUNK = 1024  # images rendered at once: keeps the float32 work arrays in cache (fixed: it orders the draws)
_CLUTTER = 4


def _draw_params(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Every random choice except the pixel noise, drawn up front in a fixed order."""
    p: dict[str, np.ndarray] = {}
    p["label"] = rng.permutation(np.arange(n) % len(CLASSES)).astype(np.int64)
    p["bg"], p["fg"] = _colours(rng, n, min_dist=0.35)
    p["gdir"] = rng.uniform(0, 2 * np.pi, n)
    p["gamp"] = rng.uniform(0.0, 0.25, n)
    p["cx"], p["cy"] = rng.uniform(-7, 7, (2, n))
    p["radius"] = rng.uniform(4.0, 12.0, n)  # shape radius in pixels
    p["theta"] = rng.uniform(0, 2 * np.pi, n)
    p["tilt"] = np.deg2rad(rng.uniform(-20, 20, n))
    p["period"] = rng.uniform(4.0, 8.0, n)
    p["phase"] = rng.uniform(0, 2 * np.pi, n)
    p["k_present"] = rng.random((_CLUTTER, n)) < 0.6
    p["k_pos"] = rng.uniform(-15, 15, (_CLUTTER, 2, n))
    p["k_size"] = rng.uniform(1.0, 3.5, (_CLUTTER, n))
    p["k_bar"] = rng.random((_CLUTTER, n)) < 0.5
    p["k_angle"] = rng.uniform(0, np.pi, (_CLUTTER, n))
    p["k_colour"] = rng.random((_CLUTTER, n, 3))
    p["sigma"] = rng.uniform(0.02, 0.12, n)
    return p


def _render(p: dict[str, np.ndarray], sl: slice, noise: np.ndarray) -> np.ndarray:
    """Draw images ``sl`` of the parameter set as float32 (m, 3, 32, 32) in [0, 1]."""

    def col(name: str) -> np.ndarray:  # (m,) -> (m, 1, 1) float32 for broadcasting over pixels
        return p[name][sl].astype(np.float32)[:, None, None]

    labels = p["label"][sl]
    m = len(labels)
    coords = (np.arange(SIZE, dtype=np.float32) + 0.5) - SIZE / 2  # pixel centres, origin in the middle
    gy, gx = np.meshgrid(coords, coords, indexing="ij")
    gx, gy = gx[None], gy[None]  # (1, 32, 32)

    gdir = col("gdir")
    grad = (gx * np.cos(gdir) + gy * np.sin(gdir)) / SIZE * col("gamp")  # (m, 32, 32)
    image = p["bg"][sl].astype(np.float32)[:, :, None, None] + grad[:, None]

    alpha = np.zeros((m, SIZE, SIZE), dtype=np.float32)
    dx, dy = gx - col("cx"), gy - col("cy")
    radius, theta, tilt = col("radius"), col("theta"), col("tilt")
    period, phase = col("period"), col("phase")
    for c in range(len(CLASSES)):
        sel = np.flatnonzero(labels == c)
        if not len(sel):
            continue
        sx, sy, rad = dx[sel], dy[sel], radius[sel]
        if c < 7:
            t = theta[sel]
            u = (sx * np.cos(t) + sy * np.sin(t)) / rad
            v = (-sx * np.sin(t) + sy * np.cos(t)) / rad
            field = _shape_field(c, u, v) * rad  # in pixels
            alpha[sel] = np.clip(0.5 + field, 0.0, 1.0)
        else:
            t = tilt[sel]
            x = sx * np.cos(t) + sy * np.sin(t)
            y = -sx * np.sin(t) + sy * np.cos(t)
            window = np.clip(0.5 + (rad + 3.0) - np.maximum(np.abs(x), np.abs(y)), 0.0, 1.0)
            pattern = np.clip(0.5 + 1.5 * _texture_field(c, x, y, period[sel], phase[sel]), 0.0, 1.0)
            alpha[sel] = window * pattern
    fg = p["fg"][sl].astype(np.float32)[:, :, None, None]
    image = image + (fg - image) * alpha[:, None]

    # Clutter: small discs or bars of random colour, anywhere (they may occlude the object).
    for k in range(_CLUTTER):
        px = p["k_pos"][k, 0, sl].astype(np.float32)[:, None, None]
        py = p["k_pos"][k, 1, sl].astype(np.float32)[:, None, None]
        ang = p["k_angle"][k, sl].astype(np.float32)[:, None, None]
        size = p["k_size"][k, sl].astype(np.float32)[:, None, None]
        ux = (gx - px) * np.cos(ang) + (gy - py) * np.sin(ang)
        uy = -(gx - px) * np.sin(ang) + (gy - py) * np.cos(ang)
        field = np.where(p["k_bar"][k, sl][:, None, None], np.minimum(size * 2.5 - np.abs(ux), 0.9 - np.abs(uy)),
                         size - np.hypot(ux, uy))
        a = np.clip(0.5 + field, 0.0, 1.0) * p["k_present"][k, sl][:, None, None]
        colour = p["k_colour"][k, sl].astype(np.float32)[:, :, None, None]
        image = image + (colour - image) * a[:, None]

    image = image + noise * p["sigma"][sl].astype(np.float32)[:, None, None, None]
    return np.clip(image, 0.0, 1.0)


def generate(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` images, balanced over classes: returns uint8 (n, 3, 32, 32) images and int64 labels."""
    rng = np.random.default_rng(seed)
    params = _draw_params(rng, n)
    out = np.empty((n, 3, SIZE, SIZE), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(n, start + _CHUNK))
        noise = rng.standard_normal((sl.stop - sl.start, 3, SIZE, SIZE), dtype=np.float32)
        out[sl] = (_render(params, sl, noise) * 255 + 0.5).astype(np.uint8)
    return out, params["label"]


def _load_or_generate(root: str | os.PathLike[str] | None, data_seed: int, n_train: int, n_test: int) -> dict:
    path = cache_dir(root) / f"shapes10-v{_VERSION}-seed{data_seed}-{n_train}-{n_test}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            log.warning("regenerating unreadable cache %s (%s)", path, exc)
    log.info("generating shapes10 (%d train + %d test images) into %s", n_train, n_test, path)
    x_train, y_train = generate(n_train, mix_seed(data_seed, 0))
    x_test, y_test = generate(n_test, mix_seed(data_seed, 1))
    as_float = x_train.reshape(n_train, 3, -1) / 255.0
    data = dict(
        x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
        mean=as_float.mean(axis=(0, 2)).round(4), std=as_float.std(axis=(0, 2)).round(4),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    # Atomic: concurrent processes may generate at once; each renames a complete file into place.
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return data


class Shapes10(Dataset):
    """Generated shapes and textures; items are ``(image (3, 32, 32), label)``.

    Args:
        split: ``"train"`` or ``"test"``.
        root: cache folder for the generated ``.npz`` (default ``~/.cache/halp``).
        data_seed: seeds the generator; keep the default so every run shares one test set.
        n_train, n_test: split sizes (default 20,000 and 4,000).
        augment: random crop and flip on the train split.
    """

    def __init__(
        self,
        split: str = "train",
        *,
        root: str | os.PathLike[str] | None = None,
        data_seed: int = 0,
        n_train: int = 20000,
        n_test: int = 4000,
        augment: bool = True,
    ) -> None:
        check_split(split, ("train", "test"), "shapes10")
        if n_train < 10 or n_test < 10:
            raise ValueError(f"shapes10 needs at least 10 images per split, got n_train={n_train}, n_test={n_test}")
        data = _load_or_generate(root, data_seed, n_train, n_test)
        self.split = split
        self.augment = augment
        self.images = torch.from_numpy(data[f"x_{split}"])
        self.labels = torch.from_numpy(data[f"y_{split}"])
        self.mean = tuple(float(m) for m in data["mean"])
        self.std = tuple(float(s) for s in data["std"])
        self.info = DatasetInfo(
            name="shapes10",
            num_classes=10,
            input_size=(3, SIZE, SIZE),
            train_len=n_train,
            test_len=n_test,
            mean=self.mean,
            std=self.std,
            class_names=CLASSES,
            notes=f"generated shapes/textures v{_VERSION}, data_seed={data_seed}",
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: Any) -> tuple[torch.Tensor, int]:
        i, seed = split_key(key)
        image = self.images[i].float() / 255.0
        if self.split == "train" and self.augment:
            image = random_crop_flip(image, sample_rng(seed), pad=4)
        return normalize(image, self.mean, self.std), int(self.labels[i])


def cache_path(root: str | os.PathLike[str] | None = None) -> Path:
    """Where the default-size cache file lives (for users who want to delete it)."""
    return cache_dir(root) / f"shapes10-v{_VERSION}-seed0-20000-4000.npz"
