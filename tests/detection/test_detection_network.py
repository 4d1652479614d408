"""The per-image network of every torchvision detector family: captured, pruned exactly, and the slim
detector (pruned through the network's graph, names shared) still detects with its own postprocessing."""

from __future__ import annotations

import warnings

import pytest
import torch

import halp
from halp.detection.network import is_detector, network_input, per_image_network
from halp.surgery import prune_channels
from halp.verify import masked_vs_slim, random_keep

torchvision = pytest.importorskip("torchvision")

FAMILIES = {
    "ssdlite320_mobilenet_v3_large": {},
    "retinanet_resnet50_fpn": {"min_size": 128, "max_size": 128},
    "fcos_resnet50_fpn": {"min_size": 128, "max_size": 128},
    "fasterrcnn_resnet50_fpn": {"min_size": 128, "max_size": 128},
    "ssd300_vgg16": {},
}


def _detector(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=4,
                                           **FAMILIES[name])
    with torch.no_grad():  # random batch-norm statistics: a zeroed channel must not be trivially zero
        for m in det.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.5)
    return det.eval()


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "ssd300_vgg16" else n
                                  for n in FAMILIES])
def test_detector_network_prunes_exactly_and_the_slim_detector_detects(name: str) -> None:
    det = _detector(name)
    assert is_detector(det)
    net = per_image_network(det)
    x = network_input(det, 128, 128)
    graph = halp.build_graph(net, x)
    # the heads' outputs are frozen; the backbone (and FPN) are prunable
    assert any(g.name.startswith("backbone.") for g in graph.prunable_groups)
    keep = random_keep(graph, torch.Generator().manual_seed(0))
    eq = masked_vs_slim(net, graph, keep, x)
    assert eq.relative <= 1e-4 and eq.groups_pruned == len(graph.prunable_groups)
    # the graph names the detector's own modules: surgery slims the detector itself
    slim = prune_channels(det, graph, keep).eval()
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in det.parameters())
    with torch.no_grad():
        out = slim([torch.rand(3, 128, 128)])
    assert len(out) == 1 and out[0]["boxes"].shape[1] == 4
    assert len(out[0]["boxes"]) == len(out[0]["scores"]) == len(out[0]["labels"])


def test_a_classifier_is_not_a_detector() -> None:
    model = torchvision.models.get_model("resnet18", weights=None)
    assert not is_detector(model)
    with pytest.raises(ValueError, match="torchvision detector"):
        per_image_network(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1)))
