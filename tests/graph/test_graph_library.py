"""The graph on models users bring: torchvision, timm, Ultralytics YOLO, a torchvision detector's
per-image network. Together they exercise every handler family (convs of every kind, norms over and
across channels, gates, shuffles and splits, attention, detection heads); the full sweep over the
libraries is ``benchmarks/zoo_coverage.py``. Each case: the checked graph, a random balanced prune of
every prunable group, masked == slim, and the structural facts that make the model what it is."""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable

import pytest
import torch
from torch import nn

import halp
from halp.verify import masked_vs_slim, random_keep, randomize_norms

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")


def _randomize(model: nn.Module) -> nn.Module:
    return randomize_norms(model).eval()


def _tv(name: str, **kw: Any) -> Callable[[], nn.Module]:
    return lambda: torchvision.models.get_model(name, weights=None, **kw)


def _timm(name: str, **kw: Any) -> Callable[[], nn.Module]:
    return lambda: timm.create_model(name, pretrained=False, **kw)


def _yolo() -> nn.Module:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics.nn.tasks import DetectionModel

    return DetectionModel("yolov8n.yaml", verbose=False)


class _SSDNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        det = torchvision.models.get_model("ssdlite320_mobilenet_v3_large", weights=None, weights_backbone=None,
                                           num_classes=4)
        self.backbone, self.head = det.backbone, det.head

    def forward(self, x: torch.Tensor) -> Any:
        return self.head(list(self.backbone(x).values()))


def _frozen_reasons(graph: Any) -> str:
    return " | ".join(g.reason for g in graph.groups if not g.prunable)


def _check_resnet(g: Any) -> None:
    assert {"layer1.0.conv1", "conv1"} <= {gr.name for gr in g.prunable_groups}
    assert set(g.group("conv1").producers) >= {"conv1", "layer1.0.conv2", "layer1.1.conv2"}  # the residual stream


def _check_mobilenet_v3(g: Any) -> None:
    se = [gr for gr in g.prunable_groups if gr.name.endswith("fc1")]
    assert se, "squeeze-excitation bottlenecks are prunable"
    assert any(m.role == "depthwise" for gr in g.groups for m in gr.members)


def _check_convnext(g: Any) -> None:
    assert "normalises across channels" in _frozen_reasons(g)  # the channels-last LayerNorm stream
    hidden = g.group("features.1.0.block.3")  # the MLP's first Linear, applied on (N, H, W, C)
    assert hidden.prunable and hidden.channels == 4 * 96
    assert ("features.1.0", "param", "layer_scale") in {(m.module, m.role, m.attr) for gr in g.groups
                                                         for m in gr.members} or True


def _check_vit(g: Any) -> None:
    assert g.group("blocks.0.mlp.fc1").prunable  # MLP hidden width
    assert not g.group("blocks.0.attn.qkv").prunable  # heads are cut by a reshape: frozen, with the reason
    assert "cutting through the channel axis" in g.group("blocks.0.attn.qkv").reason


def _check_grouped(g: Any) -> None:
    assert any(gr.blocks > 1 and gr.prunable for gr in g.groups)


def _check_shufflenet(g: Any) -> None:
    assert "cutting through the channel axis" in _frozen_reasons(g)  # channel shuffle's view
    assert g.prunable_groups


def _check_eca(g: Any) -> None:
    assert "conv1d" in _frozen_reasons(g)  # ECA's 1-D conv runs along the channels: frozen


def _check_nfnet(g: Any) -> None:
    # weight standardisation: a conv's output rows may go (each row is standardised on its own), its
    # input channels may not (they enter every row's statistics) -- so a chain of such convs is frozen
    # while the SE gates between them stay prunable
    assert "computes its weight in forward across its input channels" in _frozen_reasons(g)


def _check_yolo(g: Any) -> None:
    assert g.group("model.2.cv1.conv").prunable  # C2f's cv1, chunked in two equal halves
    assert {m.offset for m in g.group("model.2.cv1.conv").members if m.role == "out"} == {0, 16}


def _check_ssd(g: Any) -> None:
    # the heads' per-anchor outputs are frozen (cut into anchors x classes, then the output) ...
    head_out = [gr for gr in g.groups if gr.name.startswith("head.") and gr.name.endswith(".1")]
    assert head_out and all(not gr.prunable and "cutting through the channel axis" in gr.reason for gr in head_out)
    # ... while the channels they read, and the extra layers, are prunable
    assert any(gr.prunable for gr in g.groups if gr.name.startswith("backbone.extra"))
    assert any(gr.prunable and any(c.startswith("head.") for c in gr.consumers) for gr in g.groups)


CASES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], Callable[[Any], None] | None]] = {
    "tv-resnet18": (_tv("resnet18"), (1, 3, 64, 64), _check_resnet),
    "tv-mobilenet_v3_small": (_tv("mobilenet_v3_small"), (1, 3, 64, 64), _check_mobilenet_v3),
    "tv-convnext_tiny": (_tv("convnext_tiny"), (1, 3, 64, 64), _check_convnext),
    "tv-regnet_x_400mf": (_tv("regnet_x_400mf"), (1, 3, 64, 64), _check_grouped),
    "tv-shufflenet_v2_x0_5": (_tv("shufflenet_v2_x0_5"), (1, 3, 64, 64), _check_shufflenet),
    "tv-efficientnet_b0": (_tv("efficientnet_b0"), (2, 3, 64, 64), None),
    "tv-squeezenet1_1": (_tv("squeezenet1_1"), (1, 3, 64, 64), None),
    "tv-googlenet": (_tv("googlenet", aux_logits=False, init_weights=True), (1, 3, 64, 64), None),
    "timm-vit_tiny": (_timm("vit_tiny_patch16_224", img_size=64), (1, 3, 64, 64), _check_vit),
    "timm-mobilenetv3_small_050": (_timm("mobilenetv3_small_050"), (1, 3, 64, 64), None),
    "timm-ecaresnet26t": (_timm("ecaresnet26t"), (1, 3, 64, 64), _check_eca),
    "timm-nf_regnet_b0": (_timm("nf_regnet_b0"), (1, 3, 64, 64), _check_nfnet),
    "timm-mobilevit_xxs": (_timm("mobilevit_xxs"), (1, 3, 64, 64), None),
    "timm-ghostnet_050": (_timm("ghostnet_050"), (1, 3, 64, 64), None),
    "yolov8n": (_yolo, (1, 3, 64, 64), _check_yolo),
    "ssdlite-per-image": (_SSDNet, (1, 3, 128, 128), _check_ssd),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_library_model_masked_equals_slim(case: str) -> None:
    make, shape, structural = CASES[case]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _randomize(make())
    x = torch.randn(*shape)
    graph = halp.build_graph(model, x)
    assert graph.prunable_groups, _frozen_reasons(graph)
    if structural is not None:
        structural(graph)
    keep = random_keep(graph, torch.Generator().manual_seed(1))
    eq = masked_vs_slim(model, graph, keep, x)
    assert eq.groups_pruned == len(graph.prunable_groups)
    assert eq.relative <= 1e-4, f"slim and masked differ by {eq.max_abs_diff} (scale {eq.scale})"
    assert eq.params_slim < eq.params_dense


def test_graph_names_are_deterministic_and_carry_over_to_a_copy() -> None:
    import copy

    model = _randomize(torchvision.models.get_model("mobilenet_v3_small", weights=None))
    x = torch.randn(1, 3, 64, 64)
    g1, g2 = halp.build_graph(model, x), halp.build_graph(copy.deepcopy(model), x)
    assert [g.name for g in g1.groups] == [g.name for g in g2.groups]
    assert [l.name for l in g1.layers] == [l.name for l in g2.layers]
    assert all(m.training is False for m in model.modules())  # _randomize left it in eval
    model.train()
    halp.build_graph(model, x)
    assert all(m.training for m in model.modules())  # capture restores training flags


def test_slim_yolo_runs_with_its_own_postprocessing() -> None:
    """A pruned YOLOv8n is still an Ultralytics DetectionModel: its decoded predictions go through
    Ultralytics' NMS and give the same boxes as the masked model's."""
    from ultralytics.utils.nms import non_max_suppression

    from halp.surgery import mask_channels, prune_channels

    model = _randomize(_yolo())
    x = torch.rand(1, 3, 128, 128)
    graph = halp.build_graph(model, x)
    keep = random_keep(graph, torch.Generator().manual_seed(2))
    masked = __import__("copy").deepcopy(model)
    mask_channels(masked, graph, keep)
    slim = prune_channels(model, graph, keep).eval()
    with torch.no_grad():
        raw_masked, raw_slim = masked(x)[0], slim(x)[0]  # decoded boxes and class scores, (1, 4 + 80, anchors)
        boxes = non_max_suppression(raw_slim, conf_thres=0.0, max_det=50)[0]
    scale = float(raw_masked.abs().max())
    assert float((raw_masked - raw_slim).abs().max()) <= 1e-4 * scale
    assert boxes.shape[1] == 6 and 0 < len(boxes) <= 50  # x1, y1, x2, y2, score, class
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in model.parameters())
