"""``shapes-voc``: a generated detection set written as a real PASCAL VOC tree (no download).

Six classes of filled or outlined shapes — circle, square, triangle, cross, ring, star — in random
colours, drawn at sizes from about 20 to 200 pixels (log-uniform in the circumradius, so small objects
are common) on 320 x 320 images, one to six objects each, overlapping up to IoU 0.35 (later shapes
occlude earlier ones; boxes keep the full extent). Backgrounds are random two-colour gradients with
Gaussian noise and clutter that is not an object: thin lines, small blobs, and irregular polygons. The
task is hard enough that a small detector trained for minutes on a CPU is far from mAP 1. The smallest
objects are below the smallest default box of SSDlite320 (64 px; SSD300's is 21 px), as small VOC
objects are.

The tree is the devkit layout, so anything that reads VOC reads it (including
:class:`halp.data.voc.VOCDetection` and torchvision's own reader)::

    <root>/shapes-voc-v2-seed0-400-100-100/VOCdevkit/VOC2007/
        JPEGImages/000000.jpg ...  Annotations/000000.xml ...  ImageSets/Main/{train,val,trainval,test}.txt

Every image is drawn from ``numpy.random.default_rng`` seeded by ``(seed, image index)``, so the tree is
identical on every machine; it is written once (a few seconds) into a temporary folder renamed into
place, then reused.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from halp.data._common import cache_dir, mix_seed
from halp.data.voc import VOCDetection

log = logging.getLogger(__name__)

SHAPE_CLASSES = ("circle", "square", "triangle", "cross", "ring", "star")
_VERSION = 2  # bump when the generator changes: it names the cache folder
_MAX_IOU = 0.35


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape of circumradius ``r`` rotated by ``angle`` radians."""
    if kind == "square":
        pts = [(math.cos(a), math.sin(a)) for a in (math.pi / 4 + k * math.pi / 2 for k in range(4))]
    elif kind == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))]
    elif kind == "cross":  # a plus sign with arms of half-width 0.3
        t = 0.3
        pts = [(t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1),
               (-t, 1), (-t, t), (-1, t), (-1, -t), (-t, -t), (-t, -1)]
        pts = [(x / math.hypot(1, t), y / math.hypot(1, t)) for x, y in pts]
    elif kind == "star":
        pts = [((1.0 if k % 2 == 0 else 0.42) * math.cos(a), (1.0 if k % 2 == 0 else 0.42) * math.sin(a))
               for k, a in enumerate(-math.pi / 2 + k * math.pi / 5 for k in range(10))]
    else:
        raise ValueError(f"no polygon for {kind!r}")
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def _iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _colour(rng: np.random.Generator, avoid: np.ndarray, min_dist: float = 70.0) -> tuple[int, int, int]:
    """A random colour at least ``min_dist`` (RGB Euclidean) from ``avoid`` (the local background)."""
    for _ in range(50):
        c = rng.integers(0, 256, 3)
        if np.linalg.norm(c - avoid) >= min_dist:
            break
    return tuple(int(v) for v in c)


def render(seed: int, size: int = 320) -> tuple[np.ndarray, list[tuple[str, tuple[int, int, int, int]]]]:
    """One image (H, W, 3) uint8 and its objects ``(class name, (x1, y1, x2, y2))`` in 0-based pixels."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    c0, c1 = rng.integers(0, 256, 3).astype(np.float32), rng.integers(0, 256, 3).astype(np.float32)
    direction = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    t = np.clip((xx - 0.5) * math.cos(direction) + (yy - 0.5) * math.sin(direction) + 0.5, 0, 1)[..., None]
    canvas = (c0 * (1 - t) + c1 * t).astype(np.uint8)
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 12))):  # clutter: thin lines
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, size, 4))
        draw.line([(x0, y0), (x1, y1)], fill=tuple(int(v) for v in rng.integers(0, 256, 3)),
                  width=int(rng.integers(1, 4)))
    for _ in range(int(rng.integers(2, 9))):  # clutter: small blobs and irregular polygons
        cx, cy, r = float(rng.uniform(0, size)), float(rng.uniform(0, size)), float(rng.uniform(2, 9))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse([cx - r, cy - r * rng.uniform(0.4, 1), cx + r, cy + r], fill=fill)
        else:
            k = int(rng.integers(4, 8))
            angles = np.sort(rng.uniform(0, 2 * math.pi, k))
            radii = rng.uniform(0.3, 1.0, k) * r * 2.5
            draw.polygon([(cx + q * math.cos(a), cy + q * math.sin(a)) for a, q in zip(angles, radii)], fill=fill)

    objects: list[tuple[str, tuple[int, int, int, int]]] = []
    for _ in range(int(rng.integers(1, 7))):
        for _attempt in range(20):
            kind = SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))]
            r = float(math.exp(rng.uniform(math.log(12), math.log(100))))  # circumradius: ~20 to 200 px wide
            cx, cy = (float(v) for v in rng.uniform(r + 1, size - r - 1, 2))
            angle = float(rng.uniform(-math.pi / 9, math.pi / 9) if kind == "square" else rng.uniform(0, 2 * math.pi))
            if kind in ("circle", "ring"):
                pts = None
                rx, ry = r, r * float(rng.uniform(0.85, 1.0))
                box = (math.floor(cx - rx), math.floor(cy - ry), math.ceil(cx + rx), math.ceil(cy + ry))
            else:
                pts = _polygon(kind, cx, cy, r, angle)
                xs, ys = [p[0] for p in pts], [p[1] for p in pts]
                box = (math.floor(min(xs)), math.floor(min(ys)), math.ceil(max(xs)), math.ceil(max(ys)))
            box = (max(box[0], 0), max(box[1], 0), min(box[2], size - 1), min(box[3], size - 1))
            if box[2] - box[0] < 4 or box[3] - box[1] < 4:
                continue
            if all(_iou(box, b) <= _MAX_IOU for _, b in objects):
                break
        else:
            continue  # no free spot: fewer objects in this image
        local = canvas[int(cy), int(cx)].astype(np.float32)
        colour = _colour(rng, local)
        if pts is None:
            ellipse = [cx - rx, cy - ry, cx + rx, cy + ry]
            if kind == "circle":
                draw.ellipse(ellipse, fill=colour)
            else:
                draw.ellipse(ellipse, outline=colour, width=max(2, int(r * 0.35)))
        elif rng.random() < 0.25 and r > 12:  # sometimes only the outline of a polygon
            draw.polygon(pts, outline=colour, width=max(2, int(r * 0.2)))
        else:
            draw.polygon(pts, fill=colour)
        objects.append((kind, box))

    pixels = np.asarray(img, dtype=np.float32)
    pixels += rng.normal(0.0, float(rng.uniform(4, 20)), pixels.shape).astype(np.float32)
    return np.clip(pixels, 0, 255).astype(np.uint8), objects


def _annotation_xml(image_id: str, size: int, objects: list[tuple[str, tuple[int, int, int, int]]]) -> bytes:
    """VOC XML for one image; corners written 1-based as the devkit does (``x + 1``)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2007"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    ET.SubElement(ET.SubElement(root, "source"), "database").text = "halp shapes-voc"
    sz = ET.SubElement(root, "size")
    for tag, v in (("width", size), ("height", size), ("depth", 3)):
        ET.SubElement(sz, tag).text = str(v)
    ET.SubElement(root, "segmented").text = "0"
    for name, box in objects:
        obj = ET.SubElement(root, "object")
        for tag, v in (("name", name), ("pose", "Unspecified"), ("truncated", "0"), ("difficult", "0")):
            ET.SubElement(obj, tag).text = v
        bb = ET.SubElement(obj, "bndbox")
        for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ET.SubElement(bb, tag).text = str(int(v) + 1)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8")


def write_tree(
    out: str | os.PathLike[str], *, n_train: int = 400, n_val: int = 100, n_test: int = 100, seed: int = 0,
    size: int = 320,
) -> Path:
    """Write the set as ``<out>/VOCdevkit/VOC2007`` (images ``000000`` ... in train, val, test order).

    Returns the ``VOC2007`` folder. ``trainval`` lists train and val together.
    """
    from PIL import Image

    for name, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be an int >= 1, got {n!r}")
    if size < 64:
        raise ValueError(f"size must be >= 64 pixels for shapes to fit, got {size}")
    base = Path(out) / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    ids = [f"{i:06d}" for i in range(n_train + n_val + n_test)]
    for i, image_id in enumerate(ids):
        pixels, objects = render(mix_seed(seed, i), size)
        Image.fromarray(pixels).save(base / "JPEGImages" / f"{image_id}.jpg", quality=90)
        (base / "Annotations" / f"{image_id}.xml").write_bytes(_annotation_xml(image_id, size, objects))
    splits = {"train": ids[:n_train], "val": ids[n_train : n_train + n_val], "test": ids[n_train + n_val :]}
    splits["trainval"] = splits["train"] + splits["val"]
    for split, members in splits.items():
        (base / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{m}\n" for m in members))
    return base


def ensure_tree(
    root: str | os.PathLike[str] | None = None, *, n_train: int = 400, n_val: int = 100, n_test: int = 100,
    seed: int = 0,
) -> Path:
    """The cached tree's folder (the one holding ``VOCdevkit``), written first if it is not there yet."""
    folder = cache_dir(root) / f"shapes-voc-v{_VERSION}-seed{seed}-{n_train}-{n_val}-{n_test}"
    if (folder / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "test.txt").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    log.info("writing the shapes-voc tree to %s", folder)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".shapes-voc-"))
    try:
        write_tree(tmp, n_train=n_train, n_val=n_val, n_test=n_test, seed=seed)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished first
            if not folder.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


class ShapesVOC(VOCDetection):
    """The generated set, read back through :class:`~halp.data.voc.VOCDetection` (same item format).

    Args:
        split: ``train``, ``val``, ``trainval`` or ``test``.
        root: cache folder (default ``~/.cache/halp``); the tree is written there on first use.
        size: output side in pixels (the images are 320 x 320; SSDlite320 takes them as they are).
        n_train, n_val, n_test: images per split; seed: the generator's seed. Each combination is its own tree.
        augment, box_format, transforms: as for :class:`~halp.data.voc.VOCDetection`.
    """

    name = "shapes-voc"

    def __init__(
        self,
        split: str = "train",
        *,
        root: str | os.PathLike[str] | None = None,
        size: int = 320,
        n_train: int = 400,
        n_val: int = 100,
        n_test: int = 100,
        seed: int = 0,
        augment: bool = True,
        box_format: str = "pixel",
        transforms: Any = None,
    ) -> None:
        tree = ensure_tree(root, n_train=n_train, n_val=n_val, n_test=n_test, seed=seed)
        super().__init__(tree, split, size=size, year="2007", box_format=box_format, augment=augment,
                         classes=SHAPE_CLASSES, transforms=transforms)
