"""An image classification tree: ``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``.

Classes are the sub-folders of ``train/`` in sorted order; ``val/`` may hold a subset of them. Images are
decoded with Pillow and converted to RGB. Train images get the ImageNet recipe (random-resized crop and
horizontal flip, seeded per sample); validation images are resized (shorter side to ``size * 256/224``)
and centre-cropped. Normalisation defaults to the ImageNet mean/std.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from halp.data._common import DatasetInfo, check_split, normalize, sample_rng, split_key

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".gif", ".webp", ".tif", ".tiff"})


def _classes(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)


def scan(root: str | os.PathLike[str] | None, split: str) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (from ``train/``) and the ``(path, class index)`` samples of one split.

    Raises:
        ValueError: the tree is missing a folder, has no classes, or a class or split has no images.
    """
    if root is None:
        raise ValueError("imagefolder needs root=<folder containing train/ and val/>")
    base = Path(root).expanduser()
    train_dir, split_dir = base / "train", base / split
    for d in (train_dir, split_dir):
        if not d.is_dir():
            raise ValueError(
                f"image folder {base} has no {d.name}/ folder: expected {base}/train/<class>/<images> and "
                f"{base}/val/<class>/<images>"
            )
    classes = _classes(train_dir)
    if not classes:
        raise ValueError(f"{train_dir} has no class sub-folders: put each class's images in train/<class name>/")
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(_classes(split_dir)) - set(classes))
    if unknown:
        raise ValueError(f"{split_dir} has classes not in train/: {unknown}")
    samples: list[tuple[Path, int]] = []
    for c in _classes(split_dir):
        files = _images(split_dir / c)
        if not files and split == "train":
            raise ValueError(f"class folder {split_dir / c} has no images (extensions: {sorted(EXTENSIONS)})")
        samples.extend((f, index[c]) for f in files)
    if not samples:
        raise ValueError(f"{split_dir} has no images (extensions: {sorted(EXTENSIONS)})")
    return classes, samples


def _to_tensor(img: Any) -> torch.Tensor:
    arr = np.asarray(img, dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0


def _random_resized_crop(img: Any, size: int, rng: np.random.Generator, scale: tuple[float, float]) -> Any:
    w, h = img.size
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            return img.resize((size, size), box=(x0, y0, x0 + cw, y0 + ch), resample=_bilinear())
    side = min(w, h)  # fall back to the central square
    x0, y0 = (w - side) // 2, (h - side) // 2
    return img.resize((size, size), box=(x0, y0, x0 + side, y0 + side), resample=_bilinear())


def _resize_center_crop(img: Any, size: int, resize: int) -> Any:
    w, h = img.size
    s = resize / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    img = img.resize((nw, nh), resample=_bilinear())
    x0, y0 = (nw - size) // 2, (nh - size) // 2
    return img.crop((x0, y0, x0 + size, y0 + size))


def _bilinear() -> Any:
    from PIL import Image

    return Image.Resampling.BILINEAR


class ImageFolder(Dataset):
    """Images from class sub-folders; items are ``(image (3, size, size), label)``.

    Args:
        root: folder holding ``train/`` and ``val/``.
        split: ``"train"`` or ``"val"``.
        size: output side in pixels.
        resize: shorter side before the validation centre crop (default ``round(size * 256 / 224)``).
        train_scale: area range of the train random-resized crop.
        mean, std: normalisation (ImageNet's by default).
        augment: turn the train augmentation off (then train images are processed like validation).
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None,
        split: str = "train",
        *,
        size: int = 224,
        resize: int | None = None,
        train_scale: tuple[float, float] = (0.08, 1.0),
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        augment: bool = True,
    ) -> None:
        check_split(split, ("train", "val"), "imagefolder")
        if size < 1:
            raise ValueError(f"size must be >= 1 pixel, got {size}")
        if not 0 < train_scale[0] <= train_scale[1] <= 1:
            raise ValueError(f"train_scale must satisfy 0 < low <= high <= 1, got {train_scale}")
        try:
            import PIL  # noqa: F401
        except ImportError as exc:  # pragma: no cover - Pillow comes with matplotlib
            raise ValueError("imagefolder needs Pillow: pip install pillow") from exc
        self.classes, self.samples = scan(root, split)
        self.split, self.size, self.augment = split, size, augment
        self.resize = resize or round(size * 256 / 224)
        self.train_scale, self.mean, self.std = train_scale, tuple(mean), tuple(std)
        other = "val" if split == "train" else "train"
        try:
            other_len = len(scan(root, other)[1])
        except ValueError:
            other_len = 0
        lens = {split: len(self.samples), other: other_len}
        self.info = DatasetInfo(
            name="imagefolder", num_classes=len(self.classes), input_size=(3, size, size),
            train_len=lens["train"], test_len=lens["val"], mean=self.mean, std=self.std,
            class_names=tuple(self.classes), notes=str(Path(root).expanduser()) if root else "",
        )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: Any) -> tuple[torch.Tensor, int]:
        from PIL import Image

        i, seed = split_key(key)
        path, label = self.samples[i]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except OSError as exc:
            raise ValueError(f"cannot decode image {path}: {exc}") from exc
        if self.split == "train" and self.augment:
            rng = sample_rng(seed)
            img = _random_resized_crop(img, self.size, rng, self.train_scale)
            if rng.random() < 0.5:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        else:
            img = _resize_center_crop(img, self.size, self.resize)
        return normalize(_to_tensor(img), self.mean, self.std), label
