"""PASCAL VOC detection trees (``VOCdevkit/VOC2007`` or ``VOC2012``), read through torchvision.

torchvision's :class:`torchvision.datasets.VOCDetection` finds the split file, the images and the XML
annotations (``download=False`` always: nothing is fetched); this module turns its parsed XML into the
targets torchvision's detectors train on and applies :mod:`torchvision.transforms.v2` to the image and
its :class:`~torchvision.tv_tensors.BoundingBoxes` together. Each item is ``(image, target)``:

* ``image``: float32 (3, size, size) in [0, 1], resized without a letterbox (SSD's recipe). It is not
  normalised: torchvision's detectors normalise inside their own transform.
* ``target["boxes"]``: float32 (N, 4) ``x1, y1, x2, y2`` in pixels of the resized image
  (``box_format="pixel"``, what the detectors want) or divided by the size (``"normalized"``). VOC's
  1-based pixel corners become 0-based (``x - 1``), the devkit's own convention;
* ``target["labels"]``: int64 (N,), ``1 + `` the index into the class names: 0 is the background,
  as torchvision's detectors expect (build them with ``num_classes=len(classes) + 1``);
* ``target["difficult"]``: bool (N,), objects the VOC metric ignores;
* ``target["image_id"]`` (str) and ``target["orig_size"]`` (int64 ``(H, W)``).

Training splits flip horizontally half the time. The random draws of the v2 transforms are made from a
per-sample seed when the sampler gives one (:class:`halp.data.SeededSampler`), so augmentation is
reproducible after a restart. Batches need :func:`voc_collate` (images stacked, targets kept as a list).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.datasets import VOCDetection as _TorchvisionVOC
from torchvision.transforms import v2

from halp.data._common import DatasetInfo, check_split, split_key

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
SPLITS = ("train", "val", "trainval", "test")
YEARS = tuple(str(y) for y in range(2007, 2013))  # the devkit years torchvision knows


@dataclass(frozen=True)
class Annotation:
    """One image's objects in original pixel coordinates (0-based corners)."""

    image_id: str
    width: int
    height: int
    boxes: np.ndarray  # (N, 4) float32
    labels: np.ndarray  # (N,) int64, index into the class names (no background)
    difficult: np.ndarray  # (N,) bool


def _number(node: dict[str, Any], tag: str, where: str, default: float | None = None) -> float:
    text = node.get(tag)
    if not isinstance(text, str) or not text.strip():
        if default is None:
            raise ValueError(f"{where}: missing <{tag}>")
        return default
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{where}: <{tag}> is not a number: {text!r}") from None


def parse_annotation(path: str | os.PathLike[str], classes: Sequence[str] = VOC_CLASSES) -> Annotation:
    """Read one VOC XML file with torchvision's parser (:meth:`VOCDetection.parse_voc_xml`).

    Raises:
        ValueError: malformed XML, an unknown class name, or a box without its four corners.
    """
    index = {c: i for i, c in enumerate(classes)}
    try:
        tree = _TorchvisionVOC.parse_voc_xml(ET.parse(path).getroot())
    except ET.ParseError as exc:
        raise ValueError(f"{path}: not valid XML ({exc})") from exc
    ann = tree.get("annotation")
    if not isinstance(ann, dict):
        raise ValueError(f"{path}: no <annotation> element")
    size = ann.get("size") if isinstance(ann.get("size"), dict) else {}
    width, height = int(_number(size, "width", str(path), 0)), int(_number(size, "height", str(path), 0))
    boxes, labels, difficult = [], [], []
    for obj in ann.get("object", []):
        if not isinstance(obj, dict):
            continue  # an empty <object/>
        name = (obj.get("name") or "").strip()
        if name not in index:
            raise ValueError(f"{path}: unknown class {name!r}; expected one of {list(classes)}")
        bb = obj.get("bndbox")
        if not isinstance(bb, dict):
            raise ValueError(f"{path}: object {name!r} has no <bndbox>")
        x1, y1, x2, y2 = (_number(bb, t, str(path)) for t in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append((x1 - 1, y1 - 1, x2 - 1, y2 - 1))
        labels.append(index[name])
        difficult.append(bool(int(_number(obj, "difficult", str(path), 0))))
    return Annotation(
        image_id=Path(path).stem,
        width=width,
        height=height,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
        difficult=np.asarray(difficult, dtype=bool),
    )


def find_voc_root(root: str | os.PathLike[str] | None, year: str = "2007") -> Path:
    """Locate ``VOCdevkit/VOC<year>`` given it, its ``VOCdevkit`` parent, or the folder holding ``VOCdevkit``."""
    if root is None:
        raise ValueError("voc needs root=<VOCdevkit/VOC2007 folder or a parent of it> (nothing is downloaded)")
    base = Path(root).expanduser()
    for cand in (base, base / f"VOC{year}", base / "VOCdevkit" / f"VOC{year}"):
        if (cand / "Annotations").is_dir() and (cand / "ImageSets" / "Main").is_dir():
            if cand.name != f"VOC{year}" or cand.parent.name != "VOCdevkit":
                raise ValueError(
                    f"{cand} looks like a VOC tree but is not at VOCdevkit/VOC{year}: move or link it there "
                    f"(torchvision reads <root>/VOCdevkit/VOC{year}), or pass the matching year="
                )
            return cand
    raise ValueError(
        f"no PASCAL VOC tree under {base}: expected VOCdevkit/VOC{year}/ with Annotations/, JPEGImages/ "
        "and ImageSets/Main/<split>.txt"
    )


def voc_collate(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Stack images (all the same size); keep targets as a list, since box counts differ."""
    images = torch.stack([b[0] for b in batch])
    return images, [b[1] for b in batch]


def default_transforms(size: int, train: bool) -> v2.Compose:
    """SSD's light recipe: horizontal flip (train only), resize to ``size`` x ``size``, float in [0, 1]."""
    steps: list[Any] = [v2.RandomHorizontalFlip(0.5)] if train else []
    steps += [v2.Resize((size, size), antialias=True), v2.ToDtype(torch.float32, scale=True)]
    return v2.Compose(steps)


class VOCDetection(Dataset):
    """A VOC-layout detection tree; see the module docstring for the item format.

    Args:
        root: ``VOCdevkit/VOC<year>``, ``VOCdevkit``, or the folder holding ``VOCdevkit``.
        split: ``train``, ``val``, ``trainval`` or ``test`` (a file in ``ImageSets/Main``; 2007 only has test).
        size: output side in pixels (SSD300: 300, SSDlite: 320).
        year: devkit year folder, ``"2007"`` to ``"2012"``.
        box_format: ``"pixel"`` (resized pixels, for torchvision's detectors) or ``"normalized"``.
        augment: random horizontal flip on the ``train``/``trainval`` splits.
        classes: the class names in label order (default: the 20 VOC classes).
        transforms: a v2 transform of ``(image, target)`` replacing the default resize/flip recipe; it
            must leave images of one size (for :func:`voc_collate`) as float tensors.
    """

    collate_fn = staticmethod(voc_collate)
    name = "voc"

    def __init__(
        self,
        root: str | os.PathLike[str] | None,
        split: str = "trainval",
        *,
        size: int = 300,
        year: str = "2007",
        box_format: str = "pixel",
        augment: bool = True,
        classes: Sequence[str] = VOC_CLASSES,
        transforms: Callable[..., Any] | None = None,
    ) -> None:
        check_split(split, SPLITS, self.name)
        if year not in YEARS:
            raise ValueError(f"year must be one of {list(YEARS)}, got {year!r}")
        if split == "test" and year != "2007":
            raise ValueError(f"VOC{year} has no test split (only VOC2007 does); use split='val'")
        if box_format not in ("normalized", "pixel"):
            raise ValueError(f"box_format must be 'pixel' or 'normalized', got {box_format!r}")
        if size < 1:
            raise ValueError(f"size must be >= 1 pixel, got {size}")
        if not classes or len(set(classes)) != len(classes):
            raise ValueError(f"classes must be distinct names, got {list(classes)}")
        self.root = find_voc_root(root, year)
        split_file = self.root / "ImageSets" / "Main" / f"{split}.txt"
        if not split_file.is_file():
            raise ValueError(f"VOC split file {split_file} is missing")
        self.reader = _TorchvisionVOC(str(self.root.parent.parent), year=year, image_set=split, download=False)
        keep = [i for i, p in enumerate(self.reader.images) if os.path.basename(p) != ".jpg"]  # blank lines
        if not keep:
            raise ValueError(f"VOC split file {split_file} lists no images")
        self.reader.images = [self.reader.images[i] for i in keep]
        self.reader.targets = [self.reader.targets[i] for i in keep]
        self.classes = tuple(classes)
        self.split, self.size, self.box_format = split, size, box_format
        self.annotations = [parse_annotation(p, self.classes) for p in self.reader.annotations]
        self.transforms = transforms or default_transforms(size, train=augment and split in ("train", "trainval"))
        counts = {}
        for s in ("train", "test"):
            path = self.root / "ImageSets" / "Main" / f"{s}.txt"
            counts[s] = sum(1 for line in path.read_text().splitlines() if line.strip()) if path.is_file() else 0
        self.info = DatasetInfo(
            name=self.name, num_classes=len(self.classes), input_size=(3, size, size), train_len=counts["train"],
            test_len=counts["test"], mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), class_names=self.classes,
            task="detection", notes=f"{self.root} split={split} boxes={box_format}; labels 1..K, 0 = background",
        )

    def __len__(self) -> int:
        return len(self.annotations)

    def __getitem__(self, key: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        from PIL import Image

        i, seed = split_key(key)
        ann = self.annotations[i]
        path = self.reader.images[i]
        try:
            with Image.open(path) as im:
                pil = im.convert("RGB")
        except OSError as exc:
            raise ValueError(f"cannot read VOC image {path}: {exc}") from exc
        w, h = pil.size
        image = tv_tensors.Image(v2.functional.pil_to_tensor(pil))
        target = {
            "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(ann.boxes.copy()), format="XYXY", canvas_size=(h, w)),
            "labels": torch.from_numpy(ann.labels + 1),
            "difficult": torch.from_numpy(ann.difficult.copy()),
        }
        if seed is None:
            image, target = self.transforms(image, target)
        else:
            with torch.random.fork_rng(devices=[]):  # the v2 transforms draw from torch's global RNG
                torch.manual_seed(seed)
                image, target = self.transforms(image, target)
        boxes = target["boxes"].as_subclass(torch.Tensor).float()
        out_h, out_w = image.shape[-2:]
        if self.box_format == "normalized":
            boxes = boxes / torch.tensor([out_w, out_h, out_w, out_h], dtype=boxes.dtype)
        target.update(boxes=boxes, image_id=ann.image_id, orig_size=torch.tensor([h, w], dtype=torch.int64))
        return image.as_subclass(torch.Tensor), target
