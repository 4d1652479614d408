"""The channel graph on a detector's per-image network: masked == slim on the raw outputs before NMS."""

from __future__ import annotations

import copy

import pytest
import torch
from detection_helpers import lively

import halp
from halp.detection import DetectorCore, create_detector, detect, with_core


@pytest.fixture(scope="module")
def ssdlite():
    torch.manual_seed(0)
    det = lively(create_detector("ssdlite320_mobilenet_v3_large", 3))
    core = DetectorCore(det).eval()
    x = torch.randn(1, 3, 320, 320, generator=torch.Generator().manual_seed(1))
    return det, core, x, halp.build_graph(core, x)


def test_graph_freezes_head_outputs_and_prunes_backbone_and_extras(ssdlite):
    _, _, _, graph = ssdlite
    frozen = {g.name for g in graph.groups if not g.prunable}
    prunable = [g for g in graph.groups if g.prunable]
    # every head's output conv (anchors x classes / x 4 channels) keeps its channels
    for head in ("classification_head", "regression_head"):
        assert all(any(f"head.{head}.module_list.{i}" in n for n in frozen) for i in range(6))
    assert any("backbone.extra" in g.name for g in prunable) and any("backbone.features" in g.name for g in prunable)


def test_masked_core_equals_slim_core_before_and_after_nms(ssdlite):
    det, core, x, graph = ssdlite
    g = torch.Generator().manual_seed(2)
    keep = {}
    for group in graph.groups:
        if group.prunable and group.channels >= 8:
            n = max(1, group.channels // 2)
            keep[group.name] = torch.randperm(group.channels, generator=g)[:n].sort().values
    assert len(keep) >= 10
    masked = copy.deepcopy(core)
    halp.mask_channels(masked, graph, keep)
    slim = halp.prune_channels(core, graph, keep).eval()
    assert sum(p.numel() for p in slim.parameters()) < 0.8 * sum(p.numel() for p in core.parameters())
    with torch.no_grad():
        cls_m, box_m = masked.eval()(x)
        cls_s, box_s = slim(x)
        cls_d, _ = core(x)
    assert cls_s.shape == cls_d.shape and not torch.allclose(cls_m, cls_d, atol=1e-3)  # pruning changed them
    torch.testing.assert_close(cls_s, cls_m, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(box_s, box_m, atol=1e-4, rtol=1e-4)
    images = [torch.rand(3, 320, 320, generator=g)]
    a, b = detect(det, images, masked)[0], with_core(det, slim).eval()(images)[0]
    torch.testing.assert_close(a["scores"][:20], b["scores"][:20], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a["boxes"][:20], b["boxes"][:20], atol=1e-3, rtol=1e-4)
