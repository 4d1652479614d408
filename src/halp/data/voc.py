"""PASCAL VOC detection data in the devkit layout (``VOCdevkit/VOC2007``).

Reads ``ImageSets/Main/<split>.txt`` for the image ids, ``Annotations/<id>.xml`` for the objects and
``JPEGImages/<id>.jpg`` for the pixels. Each item is ``(image, target)``: the image resized to
``size`` x ``size`` (no aspect-preserving letterbox: SSD's recipe) and normalised with the ImageNet
statistics, and a target dict with

* ``boxes``: float32 (N, 4) ``x1, y1, x2, y2``, normalised to [0, 1] (``box_format="normalized"``) or in
  pixels of the resized image (``"pixel"``). VOC's 1-based inclusive pixel corners become 0-based
  (``x - 1``), the convention of the devkit's own evaluation code;
* ``labels``: int64 (N,), indices into :data:`VOC_CLASSES` (no background class);
* ``difficult``: bool (N,), objects the VOC metric ignores;
* ``image_id`` (str) and ``orig_size`` (int64 ``(H, W)``).

Training images are flipped horizontally half the time, seeded per sample. Batches need
:func:`voc_collate` (images stacked, targets kept as a list), which :func:`halp.data.make_loaders` uses.
The XML is read with the standard library's expat parser, which (since expat 2.4.1) limits entity
expansion, so a hostile annotation cannot blow up memory.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from halp.data._common import DatasetInfo, check_split, normalize, sample_rng, split_key
from halp.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
_INDEX = {c: i for i, c in enumerate(VOC_CLASSES)}
SPLITS = ("train", "val", "trainval", "test")


@dataclass(frozen=True)
class Annotation:
    """One image's objects in original pixel coordinates (0-based corners)."""

    image_id: str
    width: int
    height: int
    boxes: np.ndarray  # (N, 4) float32
    labels: np.ndarray  # (N,) int64
    difficult: np.ndarray  # (N,) bool


def parse_annotation(path: str | os.PathLike[str]) -> Annotation:
    """Read one VOC XML file.

    Raises:
        ValueError: malformed XML, an unknown class name, or a box without its four corners.
    """
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"{path}: not valid XML ({exc})") from exc

    def number(node: ET.Element | None, tag: str, default: float | None = None) -> float:
        text = node.findtext(tag) if node is not None else None
        if text is None or not text.strip():
            if default is None:
                raise ValueError(f"{path}: missing <{tag}>")
            return default
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{path}: <{tag}> is not a number: {text!r}") from None

    size = root.find("size")
    width, height = int(number(size, "width", 0)), int(number(size, "height", 0))
    boxes, labels, difficult = [], [], []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in _INDEX:
            raise ValueError(f"{path}: unknown VOC class {name!r}; expected one of {list(VOC_CLASSES)}")
        bb = obj.find("bndbox")
        if bb is None:
            raise ValueError(f"{path}: object {name!r} has no <bndbox>")
        x1, y1, x2, y2 = (number(bb, t) for t in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append((x1 - 1, y1 - 1, x2 - 1, y2 - 1))
        labels.append(_INDEX[name])
        difficult.append(bool(int(number(obj, "difficult", 0))))
    return Annotation(
        image_id=Path(path).stem,
        width=width,
        height=height,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
        difficult=np.asarray(difficult, dtype=bool),
    )


def find_voc_root(root: str | os.PathLike[str] | None, year: str = "2007") -> Path:
    """Locate ``VOC<year>`` given it, its ``VOCdevkit`` parent, or the folder holding ``VOCdevkit``."""
    if root is None:
        raise ValueError("voc needs root=<VOCdevkit/VOC2007 folder or a parent of it> (no download)")
    base = Path(root).expanduser()
    for cand in (base, base / f"VOC{year}", base / "VOCdevkit" / f"VOC{year}"):
        if (cand / "Annotations").is_dir() and (cand / "ImageSets" / "Main").is_dir():
            return cand
    raise ValueError(
        f"no PASCAL VOC tree under {base}: expected VOCdevkit/VOC{year}/ with Annotations/, JPEGImages/ "
        "and ImageSets/Main/<split>.txt"
    )


def voc_collate(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Stack images (all the same size); keep targets as a list, since box counts differ."""
    images = torch.stack([b[0] for b in batch])
    return images, [b[1] for b in batch]


class VOCDetection(Dataset):
    """PASCAL VOC detection; see the module docstring for the item format.

    Args:
        root: ``VOC2007`` folder, ``VOCdevkit``, or the folder holding ``VOCdevkit``.
        split: ``train``, ``val``, ``trainval`` or ``test`` (a file in ``ImageSets/Main``).
        size: output side in pixels (SSD300: 300).
        year: devkit year folder.
        box_format: ``"normalized"`` (divide by the image size) or ``"pixel"`` (resized pixels).
        augment: random horizontal flip on the ``train``/``trainval`` splits.
    """

    collate_fn = staticmethod(voc_collate)

    def __init__(
        self,
        root: str | os.PathLike[str] | None,
        split: str = "trainval",
        *,
        size: int = 300,
        year: str = "2007",
        box_format: str = "normalized",
        augment: bool = True,
    ) -> None:
        check_split(split, SPLITS, "voc")
        if box_format not in ("normalized", "pixel"):
            raise ValueError(f"box_format must be 'normalized' or 'pixel', got {box_format!r}")
        if size < 1:
            raise ValueError(f"size must be >= 1 pixel, got {size}")
        self.root = find_voc_root(root, year)
        self.split, self.size, self.box_format = split, size, box_format
        self.augment = augment and split in ("train", "trainval")
        ids = self._read_ids(split)
        self.annotations = [parse_annotation(self.root / "Annotations" / f"{i}.xml") for i in ids]
        other_len = {}
        for s in ("train", "test"):
            path = self.root / "ImageSets" / "Main" / f"{s}.txt"
            other_len[s] = len(self._read_ids(s)) if path.is_file() else 0
        self.info = DatasetInfo(
            name="voc", num_classes=len(VOC_CLASSES), input_size=(3, size, size), train_len=other_len["train"],
            test_len=other_len["test"], mean=IMAGENET_MEAN, std=IMAGENET_STD, class_names=VOC_CLASSES,
            task="detection", notes=f"{self.root} split={split} boxes={box_format}",
        )

    def _read_ids(self, split: str) -> list[str]:
        path = self.root / "ImageSets" / "Main" / f"{split}.txt"
        if not path.is_file():
            raise ValueError(f"VOC split file {path} is missing")
        ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
        if not ids:
            raise ValueError(f"VOC split file {path} lists no images")
        return ids

    def __len__(self) -> int:
        return len(self.annotations)

    def __getitem__(self, key: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        from PIL import Image

        i, seed = split_key(key)
        ann = self.annotations[i]
        path = self.root / "JPEGImages" / f"{ann.image_id}.jpg"
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except OSError as exc:
            raise ValueError(f"cannot read VOC image {path}: {exc}") from exc
        w, h = img.size
        img = img.resize((self.size, self.size), resample=Image.Resampling.BILINEAR)
        image = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
        boxes = torch.from_numpy(ann.boxes.copy())
        boxes[:, 0::2] /= w
        boxes[:, 1::2] /= h
        if self.augment and sample_rng(seed).random() < 0.5:
            image = image.flip(-1)
            boxes = torch.stack([1 - boxes[:, 2], boxes[:, 1], 1 - boxes[:, 0], boxes[:, 3]], dim=1)
        if self.box_format == "pixel":
            boxes = boxes * self.size
        target = {
            "boxes": boxes,
            "labels": torch.from_numpy(ann.labels.copy()),
            "difficult": torch.from_numpy(ann.difficult.copy()),
            "image_id": ann.image_id,
            "orig_size": torch.tensor([h, w], dtype=torch.int64),
        }
        return normalize(image, IMAGENET_MEAN, IMAGENET_STD), target
