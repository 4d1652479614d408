"""A detector's per-image network as its own module, and the detector's pre- and postprocessing around it.

torchvision's SSD runs ``transform`` (resize, normalise) → ``backbone`` → ``head`` → anchors → box
decoding and NMS → ``transform.postprocess`` (boxes back to the input size). Only backbone + head are a
network whose channels can be pruned and whose latency is a table lookup; the rest is fixed work with
data-dependent shapes. :class:`DetectorCore` is exactly that network: a plain ``nn.Module`` from a
normalised, resized batch ``(N, 3, H, W)`` to the raw head outputs, which the channel graph can capture
and surgery can slim. Its submodules *are* the detector's (no copy), so a mask on the core masks the
detector; after surgery (which copies), :func:`with_core` puts the slim network back into a detector.

:func:`preprocess`, :func:`postprocess` and :func:`detect` run the detector's own transform, anchor
generator and ``postprocess_detections`` (torchvision's box coder and batched NMS) around a core, so
``detect(detector, images, core)`` gives the boxes ``detector.eval()(images)`` gives.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.image_list import ImageList

Detections = list[dict[str, Tensor]]


def _check_ssd(detector: nn.Module) -> SSD:
    if not isinstance(detector, SSD):
        raise ValueError(
            f"expected a torchvision SSD detector (ssd300_vgg16, ssdlite320_mobilenet_v3_large), got "
            f"{type(detector).__name__}; other detector families are not supported yet"
        )
    return detector


class DetectorCore(nn.Module):
    """Backbone + head of a torchvision SSD: ``(N, 3, H, W)`` → ``(cls_logits, bbox_regression)``.

    ``cls_logits`` is ``(N, A, num_classes)`` and ``bbox_regression`` ``(N, A, 4)`` over the ``A``
    anchors, the tensors SSD's loss and postprocessing consume. The input is what the detector's
    ``transform`` produces (resized to the detector's size and normalised with its mean and std).

    Args:
        detector: a torchvision :class:`~torchvision.models.detection.SSD`; its backbone and head are
            shared, not copied.
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        ssd = _check_ssd(detector)
        self.backbone = ssd.backbone
        self.head = ssd.head

    def features(self, x: Tensor) -> list[Tensor]:
        """The backbone's feature maps, in the order the head and the anchor generator take them."""
        feats = self.backbone(x)
        return [feats] if isinstance(feats, Tensor) else list(feats.values())

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.head(self.features(x))
        return out["cls_logits"], out["bbox_regression"]


def with_core(detector: nn.Module, core: DetectorCore) -> SSD:
    """A copy of ``detector`` whose backbone and head are ``core``'s (e.g. a slim core after surgery).

    The anchors, box coder, transform and thresholds are the detector's; the core must keep the
    number of anchors per location and of classes (surgery never prunes a head's outputs).
    """
    ssd = _check_ssd(detector)
    if not isinstance(core, DetectorCore):
        raise ValueError(f"core must be a DetectorCore, got {type(core).__name__}")
    out = copy.copy(ssd)  # shallow: shares transform, anchor generator and box coder
    out._modules = dict(ssd._modules)
    out.backbone, out.head = core.backbone, core.head
    return out


def preprocess(detector: nn.Module, images: Sequence[Tensor] | Tensor) -> tuple[ImageList, list[tuple[int, int]]]:
    """The detector's transform: ``(batch as ImageList, original (H, W) of every image)``.

    ``images`` are float (3, H, W) in [0, 1], a list or a stacked batch, as the detector takes them.
    """
    ssd = _check_ssd(detector)
    images = list(images)
    if not images:
        raise ValueError("images is empty: give at least one (3, H, W) image")
    original = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    batch, _ = ssd.transform(images)
    return batch, original


def anchors_for(detector: nn.Module, batch: ImageList, feature_shapes: Sequence[tuple[int, int]]) -> list[Tensor]:
    """The detector's default boxes for a batch, from the spatial sizes of its feature maps.

    Only the sizes matter to the anchor generator, so empty stand-ins replace the features: a pruned
    core (same strides, fewer channels) gets the same anchors as the dense one.
    """
    ssd = _check_ssd(detector)
    dtype = batch.tensors.dtype
    stand_ins = [torch.empty((0, 0, h, w), dtype=dtype, device=batch.tensors.device) for h, w in feature_shapes]
    return ssd.anchor_generator(batch, stand_ins)


def postprocess(
    detector: nn.Module,
    cls_logits: Tensor,
    bbox_regression: Tensor,
    batch: ImageList,
    feature_shapes: Sequence[tuple[int, int]],
    original_sizes: Sequence[tuple[int, int]],
) -> Detections:
    """Raw head outputs → detections in input-image pixels (decode, score threshold, top-k, NMS, rescale).

    This is the fixed, data-dependent cost a latency table does not cover.
    """
    ssd = _check_ssd(detector)
    anchors = anchors_for(ssd, batch, feature_shapes)
    raw = {"cls_logits": cls_logits, "bbox_regression": bbox_regression}
    dets = ssd.postprocess_detections(raw, anchors, batch.image_sizes)
    return ssd.transform.postprocess(dets, batch.image_sizes, list(original_sizes))


@contextmanager
def _eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Every module in eval mode inside, each one's own flag put back after (a fresh DetectorCore wrapper says
    training=True whatever its parts are in, so the parts' flags are saved, not the wrappers')."""
    modes = [(m, m.training) for module in modules for m in module.modules()]
    try:
        for module in modules:
            module.eval()
        yield
    finally:
        for m, training in modes:
            m.training = training


@torch.no_grad()
def postprocess_ms(detector: nn.Module, core: nn.Module, image: Tensor, repeats: int = 30) -> float:
    """Latency (ms) of decoding + NMS + rescaling for one image: halp's statistic (the median of timed calls
    after warm-up, :func:`halp.latency.timing.time_callable`), like every other latency halp reports.

    The cost depends on how many anchors pass the score threshold, so it is timed on ``core``'s own
    outputs for ``image`` (a trained detector is the honest case; an untrained one sends every anchor to
    NMS). A plain mean of the first calls includes their one-time costs.
    """
    from halp.latency.timing import TimingSettings, time_callable

    ssd = _check_ssd(detector)
    n = max(int(repeats), 1)
    with _eval_mode(ssd, core):
        batch, original = preprocess(ssd, [image])
        raw = core(batch.tensors)
        shapes = feature_shapes(core, *batch.tensors.shape[-2:])
        settings = TimingSettings(warmup=3, repeats=n, min_time_ms=0.0, max_repeats=n)
        return time_callable(lambda: postprocess(ssd, *raw, batch, shapes, original), settings).latency_ms


@torch.no_grad()
def detect(detector: nn.Module, images: Sequence[Tensor] | Tensor, core: DetectorCore | None = None) -> Detections:
    """Detections of ``detector`` with its per-image network replaced by ``core`` (default: its own).

    Equal to ``detector.eval()(images)`` when ``core`` is the detector's own network; with a masked or
    slim core it is the pruned detector's output. Runs in eval mode and restores the modes after.
    """
    ssd = _check_ssd(detector)
    core = core if core is not None else DetectorCore(ssd)
    with _eval_mode(ssd, core):
        batch, original = preprocess(ssd, images)
        feats = core.features(batch.tensors)
        out = core.head(feats)
        shapes = [(int(f.shape[-2]), int(f.shape[-1])) for f in feats]
        return postprocess(ssd, out["cls_logits"], out["bbox_regression"], batch, shapes, original)


@torch.no_grad()
def feature_shapes(core: DetectorCore, height: int, width: int) -> list[tuple[int, int]]:
    """Spatial sizes of the core's feature maps for an input of ``height`` x ``width`` (one cheap forward)."""
    p = next(core.parameters())
    feats = core.features(torch.zeros(1, 3, height, width, dtype=p.dtype, device=p.device))
    return [(int(f.shape[-2]), int(f.shape[-1])) for f in feats]
