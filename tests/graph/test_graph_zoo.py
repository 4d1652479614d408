"""build_graph + surgery over every model of the zoo and its library aliases, and resnet50's known structure."""

from __future__ import annotations

import copy
from functools import lru_cache

import pytest
import torch
from toy_models import check_prune_matches_mask, random_keep, randomize, widths_of

import halp
import halp.models
from halp.graph import ChannelGraph, Member, build_graph


@lru_cache(maxsize=2)
def _zoo(name: str) -> tuple[torch.nn.Module, torch.Tensor, ChannelGraph]:
    torch.manual_seed(0)
    model = randomize(halp.models.create(name), seed=1).eval()
    c, h, w = halp.models.input_size(name)
    x = torch.randn(1, c, h, w)
    return model, x, build_graph(model, x)


ZOO = [*halp.models.list_models(zoo_only=True), *halp.models.ALIASES]


@pytest.mark.parametrize("name", ZOO)
def test_zoo_slim_equals_masked(name: str) -> None:
    model, x, graph = _zoo(name)
    assert graph.prunable_groups, f"{name}: nothing prunable"
    assert graph.input_shapes == (tuple(x.shape),)
    # every conv/linear is a layer, each with shapes from the real input
    convs = {n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    assert {l.name for l in graph.layers} == convs
    first = graph.layers[0]
    assert first.shape.in_hw == tuple(x.shape[2:]) and first.in_slices == ((None, x.shape[1]),)
    # the classifier's output is never prunable
    last = graph.layers[-1]
    out_group = graph.group(last.out_slices[0][0])
    assert not out_group.prunable and "output" in out_group.reason
    slim = check_prune_matches_mask(model, graph, random_keep(graph, torch.Generator().manual_seed(7)), x)
    n_dense = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in slim.parameters()) < n_dense


def test_vgg16_flatten_repeat() -> None:
    model, x, graph = _zoo("vgg16_bn")
    first_fc = next(l for l in graph.layers if l.shape.kind == "linear")
    assert first_fc.in_repeat == 49 and first_fc.in_channels == 512
    keep = {first_fc.in_slices[0][0]: torch.arange(0, 512, 2)}
    assert graph.layer_widths(widths_of(keep))[first_fc.name] == (256, 4096)


def test_zoo_graph_deterministic_on_deepcopy() -> None:
    model, x, graph = _zoo("mobilenet_v2")
    other = build_graph(copy.deepcopy(model), x)
    assert other == graph
    keep = random_keep(graph, torch.Generator().manual_seed(3))
    # a keep dict made on one graph applies to the copy's graph and gives the same model
    slim_a = halp.prune_channels(model, graph, keep)
    slim_b = halp.prune_channels(copy.deepcopy(model), other, keep)
    with torch.no_grad():
        assert torch.equal(slim_a(x), slim_b(x))


def test_resnet50_known_structure() -> None:
    model, x, graph = _zoo("resnet50")
    stream = next(g for g in graph.groups if Member("layer1.0.conv3", "out") in g.members)
    assert stream.channels == 256 and stream.prunable
    # named after its first producer in execution order (the model runs the downsample first)
    order = [l.name for l in graph.layers]
    assert stream.name == min(stream.producers, key=order.index)
    assert {"layer1.0.downsample.0", "layer1.0.conv3", "layer1.1.conv3", "layer1.2.conv3"} == set(stream.producers)
    bns = {m.module for m in stream.members if m.role == "norm"}
    assert {"layer1.0.bn3", "layer1.1.bn3", "layer1.2.bn3", "layer1.0.downsample.1"} == bns
    assert {"layer1.1.conv1", "layer1.2.conv1", "layer2.0.conv1", "layer2.0.downsample.0"} == set(stream.consumers)
    stem = graph.group("conv1")
    assert stem.prunable and stem.channels == 64
    assert {Member("conv1", "out"), Member("bn1", "norm"), Member("layer1.0.conv1", "in"),
            Member("layer1.0.downsample.0", "in")} == set(stem.members)
    assert not graph.group("fc").prunable
    # 1 stem + 16 blocks x 2 inner groups + 4 stage streams + fc
    assert len(graph.groups) == 1 + 32 + 4 + 1
    fc = next(l for l in graph.layers if l.name == "fc")
    (last_name, width), = fc.in_slices
    assert width == 2048 and fc.in_repeat == 1
    assert {"layer4.0.conv3", "layer4.2.conv3", "layer4.0.downsample.0"} <= set(graph.group(last_name).producers)
    conv2 = next(l for l in graph.layers if l.name == "layer2.0.conv2").shape
    assert (conv2.stride, conv2.in_hw, conv2.kernel) == ((2, 2), (56, 56), (3, 3))
    # halving every prunable group shrinks the layers exactly as layer_widths says
    widths = {g.name: g.channels // 2 for g in graph.prunable_groups}
    assert graph.layer_widths(widths)["layer1.1.conv1"] == (128, 32)
