"""DetectorCore is exactly the detector's backbone + head; detect() around it is the detector's forward."""

from __future__ import annotations

import copy

import pytest
import torch

from halp.detection import DetectorCore, create_detector, detect, feature_shapes, postprocess_ms, preprocess, with_core

from detection_helpers import lively


def _images(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, 96, 128, generator=g), torch.rand(3, 80, 80, generator=g)]  # the transform resizes


def _run_with_head_hook(det, images):
    """The detector's own forward, recording what its head computed on the transformed batch."""
    seen = {}
    hooks = [det.head.register_forward_hook(lambda m, i, o: seen.update(out=o)),
             det.backbone.register_forward_pre_hook(lambda m, i: seen.update(x=i[0]))]
    try:
        with torch.no_grad():
            dets = det.eval()(images)
    finally:
        for h in hooks:
            h.remove()
    return seen, dets


@pytest.mark.parametrize("name,size,k", [
    ("ssdlite320_mobilenet_v3_large", 320, 6),
    pytest.param("ssd300_vgg16", 300, 3, marks=pytest.mark.slow),  # same check, a 30 GFLOP network
])
def test_core_equals_detector_internals_and_anchors_match_num_classes(name, size, k):
    torch.manual_seed(0)
    det = lively(create_detector(name, k))
    images = _images()[: 2 if "lite" in name else 1]
    seen, _ = _run_with_head_hook(det, images)
    core = DetectorCore(det).eval()
    batch, original = preprocess(det, images)
    assert batch.tensors.shape == (len(images), 3, size, size) and original[0] == (96, 128)
    assert torch.equal(batch.tensors, seen["x"])  # the same transformed input the detector fed its backbone
    with torch.no_grad():
        cls_logits, bbox_regression = core(batch.tensors)
    assert torch.equal(cls_logits, seen["out"]["cls_logits"])
    assert torch.equal(bbox_regression, seen["out"]["bbox_regression"])
    # torchvision's anchors and heads agree with num_classes = K + 1 (background)
    shapes = feature_shapes(core, size, size)
    per_location = det.anchor_generator.num_anchors_per_location()
    anchors = sum(h * w * a for (h, w), a in zip(shapes, per_location))
    assert float(cls_logits.abs().max()) > 0.1  # not a degenerate all-zero output
    assert cls_logits.shape == (len(images), anchors, k + 1) and bbox_regression.shape == (len(images), anchors, 4)


def test_detect_equals_the_detectors_forward_and_restores_modes():
    torch.manual_seed(1)
    det = lively(create_detector("ssdlite320_mobilenet_v3_large", 4))
    images = _images(3)
    _, ref = _run_with_head_hook(det, images)
    det.train()
    got = detect(det, images)
    assert det.training  # detect() ran in eval mode and put the mode back
    assert [len(r["boxes"]) for r in ref] == [len(g["boxes"]) for g in got] and len(ref[0]["boxes"]) > 0
    assert float(ref[0]["scores"].max() - ref[0]["scores"].min()) > 0.01
    for r, g in zip(ref, got):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(r[key], g[key])
    assert float(got[0]["boxes"][:, 2].max()) <= 128 and float(got[0]["boxes"][:, 3].max()) <= 96  # input pixels


def test_postprocess_is_timed_with_the_median_after_warm_up_and_restores_modes(monkeypatch):
    """The fixed cost is timed like every halp latency: warm-up calls are not timed and the median is reported.
    A fake clock: the three warm-up calls take 50 ms each (one-time costs), timed calls 1 ms, one of them 200 ms."""
    import types

    import halp.detection.core as core_module
    import halp.latency.timing as timing

    torch.manual_seed(5)
    det = lively(create_detector("ssdlite320_mobilenet_v3_large", 4))
    core = DetectorCore(det)
    det.train()
    now = [0]
    durations_ms = [50, 50, 50] + [1] * 4 + [200] + [1] * 4
    real = core_module.postprocess
    calls = []

    def timed_postprocess(*args):
        now[0] += durations_ms[len(calls)] * 1_000_000
        calls.append(real(*args))  # the real work, on the real outputs

    fake_time = types.SimpleNamespace(perf_counter_ns=lambda: now[0], perf_counter=lambda: now[0] / 1e9,
                                      thread_time_ns=lambda: now[0])
    monkeypatch.setattr(core_module, "postprocess", timed_postprocess)
    monkeypatch.setattr(timing, "time", fake_time)
    ms = postprocess_ms(det, core, _images(6)[0], repeats=9)
    assert len(calls) == 3 + 9 and all(len(c) == 1 and "boxes" in c[0] for c in calls)
    assert ms == pytest.approx(1.0)  # the median of the nine timed calls; their mean is 23 ms
    assert det.training and core.training  # eval inside, the modes put back


def test_a_replaced_core_runs_inside_its_detector():
    torch.manual_seed(2)
    det = lively(create_detector("ssdlite320_mobilenet_v3_large", 4))
    other = copy.deepcopy(DetectorCore(det))
    with torch.no_grad():
        for p in other.head.parameters():
            p.add_(0.05 * torch.randn_like(p))
    images = _images(4)
    rebuilt = with_core(det, other).eval()
    assert rebuilt.head is other.head and det.head is not other.head and rebuilt.transform is det.transform
    with torch.no_grad():
        via_detector = rebuilt(images)
    via_core = detect(det, images, other)
    own = detect(det, images)
    assert [len(d["boxes"]) for d in via_detector] == [len(d["boxes"]) for d in via_core]
    for a, b in zip(via_detector, via_core):
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])
    assert not torch.equal(own[0]["scores"], via_core[0]["scores"])  # the new weights are what ran


def test_bad_detectors_are_refused():
    with pytest.raises(ValueError, match="unknown detector"):
        create_detector("yolo", 3)
    with pytest.raises(ValueError, match="num_classes counts object classes"):
        create_detector("ssd300_vgg16", 0)
    with pytest.raises(ValueError, match="bn_momentum must be in"):
        create_detector("ssd300_vgg16", 3, bn_momentum=0.0)
    assert {m.momentum for m in create_detector("ssdlite320_mobilenet_v3_large", 2, bn_momentum=0.1).modules()
            if isinstance(m, torch.nn.BatchNorm2d)} == {0.1}
    with pytest.raises(ValueError, match="from scratch"):
        create_detector("ssd300_vgg16", 3, weights="DEFAULT")
    with pytest.raises(ValueError, match="torchvision SSD"):
        DetectorCore(torch.nn.Linear(2, 2))
