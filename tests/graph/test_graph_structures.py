"""build_graph on small networks with known structure: groups, members, offsets, shapes."""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch
from toy_models import (
    TOYS,
    ChunkGateToy,
    DenseNetToy,
    DepthwiseToy,
    FlattenMLPToy,
    FunctionalResToy,
    GroupedToy,
    InputResidualToy,
    SEResToy,
    ShuffleInceptionToy,
    UNetToy,
    randomize,
)

from halp.graph import ChannelGraph, Member, build_graph


def _build(cls: type, shape: tuple[int, ...]) -> ChannelGraph:
    torch.manual_seed(0)
    return build_graph(cls().eval(), torch.randn(shape))


def _members(graph: ChannelGraph, name: str) -> set[tuple[str, str, int]]:
    return {(m.module, m.role, m.offset) for m in graph.group(name).members}


def _layer(graph: ChannelGraph, name: str):
    return next(l for l in graph.layers if l.name == name)


def test_densenet_preactivation_bn_and_concat_offsets() -> None:
    g = _build(DenseNetToy, TOYS["densenet"][1])
    # the stem's channels sit at offset 0 of every later concatenation, BNs included
    stem = _members(g, "stem")
    assert {("block1.0.0", "norm", 0), ("block1.1.0", "norm", 0), ("block1.2.0", "norm", 0),
            ("trans.0", "norm", 0), ("block1.2.2", "in", 0), ("trans.2", "in", 0)} <= stem
    # the first growth layer lands after the 12 stem channels, the second after 12 + 6 ...
    assert {("block1.1.0", "norm", 12), ("block1.2.0", "norm", 12), ("trans.0", "norm", 12),
            ("block1.2.2", "in", 12)} <= _members(g, "block1.0.5")
    assert ("trans.0", "norm", 18) in _members(g, "block1.1.5")
    assert ("trans.0", "norm", 24) in _members(g, "block1.2.5")
    assert _layer(g, "trans.2").in_slices == (("stem", 12), ("block1.0.5", 6), ("block1.1.5", 6), ("block1.2.5", 6))
    assert _layer(g, "fc").in_slices == (("trans.2", 16), ("block2.0.5", 6), ("block2.1.5", 6))
    assert all(gr.prunable for gr in g.groups if gr.name != "fc")
    assert not g.group("fc").prunable and "output" in g.group("fc").reason
    kinds = {o.kind for o in g.others}
    assert {"batchnorm", "relu", "cat", "avgpool", "adaptive_avgpool"} <= kinds
    cat = next(o for o in g.others if o.kind == "cat")
    assert cat.slices == (("stem", 12), ("block1.0.5", 6)) and cat.hw == (16, 16) and cat.batch == 2


def test_squeeze_excitation_couples_scale_with_stream() -> None:
    g = _build(SEResToy, TOYS["se_resnet"][1])
    stream = g.group("stem.0")
    assert {"stem.0", "a2.0", "se_a.expand"} <= set(stream.producers)
    assert {"se_a.reduce", "a1.0", "b1.0", "down.0"} <= set(stream.consumers)
    assert g.group("se_a.reduce").channels == 4 and g.group("se_a.reduce").prunable
    # linear SE: pool -> view(n, c) -> fc1 -> fc2 -> view(n, c, 1, 1) * x
    b = g.group("b2.0")
    assert {"b2.0", "down.0", "se_b.fc2"} <= set(b.producers) and "se_b.fc1" in b.consumers
    assert _layer(g, "se_b.fc1").in_repeat == 1 and b.channels == 24


def test_grouped_convs_balanced_or_not_prunable() -> None:
    g = _build(GroupedToy, TOYS["grouped"][1])
    for name in ("c1.0", "c2.0"):
        gr = g.group(name)
        assert gr.prunable and gr.blocks == 4 and gr.multiple_of == 4 and gr.min_channels == 4
    for name in ("pa", "pb"):
        assert not g.group(name).prunable and "mixed.0" in g.group(name).reason
    assert not g.group("mixed.0").prunable and "one channel per conv group" in g.group("mixed.0").reason
    mult = g.group("mult")
    assert mult.prunable and mult.blocks == 16 and mult.channels == 32
    assert _layer(g, "c2.0").shape.groups == 4 and _layer(g, "mult").shape.groups == 16
    assert _layer(g, "stem.0").shape.groups == 1


def test_depthwise_joins_its_input_group() -> None:
    g = _build(DepthwiseToy, TOYS["depthwise"][1])
    assert ("dw1.0", "depthwise", 0) in _members(g, "stem.0")
    dw1 = _layer(g, "dw1.0")
    assert dw1.shape.groups == 0 and dw1.shape.depthwise
    assert dw1.in_slices == dw1.out_slices == (("stem.0", 16),)
    assert ("dw3.0", "depthwise", 0) in _members(g, "expand.0")
    assert {"pw2.0", "project.0"} <= set(g.group("pw2.0").producers)
    dw2 = _layer(g, "dw2.0").shape
    assert (dw2.kernel, dw2.stride, dw2.padding, dw2.dilation, dw2.in_hw) == ((3, 3), (2, 2), (1, 1), (1, 1), (8, 8))
    assert (dw2.batch, dw2.dtype, dw2.bias) == (2, "float32", False)
    assert _layer(g, "head.0").shape.bias and _layer(g, "head.5").in_repeat == 1
    assert _layer(g, "head.5").shape.kind == "linear"


def test_chunk_gate_one_group_at_two_offsets() -> None:
    g = _build(ChunkGateToy, TOYS["chunk_gate"][1])
    gate = g.group("gate")
    assert gate.channels == 16 and gate.prunable
    assert {("gate", "out", 0), ("gate", "out", 16), ("bn", "norm", 0), ("splitter", "in", 0)} <= _members(g, "gate")
    assert _layer(g, "gate").out_slices == (("gate", 16), ("gate", 16))
    assert g.layer_widths({"gate": 5})["gate"] == (16, 10)
    # F.glu along channels: same coupling
    assert {("glu_conv", "out", 0), ("glu_conv", "out", 10)} <= _members(g, "glu_conv")
    # split at sizes written in the code: both pieces become separate groups, frozen
    for name in ("splitter", "splitter@8"):
        assert not g.group(name).prunable and "fixed sizes" in g.group(name).reason
    assert g.group("splitter@8").channels == 16


def test_unet_skip_concat_after_upsampling() -> None:
    g = _build(UNetToy, TOYS["unet"][1])
    assert _layer(g, "dec2.0").in_slices == (("bott.0", 24), ("enc2.0", 16))
    assert _layer(g, "dec1.0").in_slices == (("dec2.0", 16), ("enc1.1.0", 8))
    assert _layer(g, "dec2.0").shape.in_hw == (8, 8) and _layer(g, "dec1.0").shape.in_hw == (16, 16)
    assert not g.group("head").prunable
    ups = [o for o in g.others if o.kind == "upsample"]
    assert [o.hw for o in ups] == [(8, 8), (16, 16)] and ups[0].slices == (("bott.0", 24),)


def test_flatten_into_linear_repeats_each_channel() -> None:
    g = _build(FlattenMLPToy, TOYS["flatten_mlp"][1])
    fc1 = _layer(g, "fc1")
    assert fc1.in_slices == (("features.2.0", 16),) and fc1.in_repeat == 16
    assert Member("fc1", "in", 0, 16) in g.group("features.2.0").members
    assert ("bn1", "norm", 0) in _members(g, "fc1")
    assert g.layer_widths({"features.2.0": 3})["fc1"] == (3, 32)


def test_functional_residual_params_and_shared_conv() -> None:
    g = _build(FunctionalResToy, TOYS["functional_res"][1])
    # y[:, :8] hard-codes positions 0..7: that piece is frozen, the rest stays prunable
    assert not g.group("c1").prunable and "fixed positions" in g.group("c1").reason
    rest = g.group("c1@8")
    assert rest.prunable and rest.channels == 8
    members = set(rest.members)
    assert {Member("", "param", 8, 1, "scale", 1), Member("", "param", 8, 1, "shift", 0),
            Member("act", "param", 8, 1, "weight", 0), Member("shared", "in", 8)} <= members
    assert [l.name for l in g.layers].count("shared#2") == 1
    # concatenation along the height axis couples the two producers
    assert set(g.group("c3").producers) == {"c3", "c4"}
    assert {"add", "mul", "prelu", "maxpool", "upsample", "sigmoid", "mean"} <= {o.kind for o in g.others}


def test_network_input_and_output_groups_are_frozen() -> None:
    g = _build(InputResidualToy, TOYS["input_residual"][1])
    assert not g.group("c1").prunable and "network input" in g.group("c1").reason
    assert g.group("c2").prunable and not g.group("fc").prunable
    assert _layer(g, "c1").in_slices == (("c1", 3),) and g.input_shapes == ((2, 3, 10, 10),)


def test_channel_shuffle_freezes_and_branches_stay_prunable() -> None:
    g = _build(ShuffleInceptionToy, TOYS["shuffle_inception"][1])
    assert not g.group("c2.0").prunable and "view" in g.group("c2.0").reason
    assert not g.group("c1.0").prunable  # summed with the shuffled channels
    dw = _layer(g, "dw.0")  # reads 4 frozen source channels spread over 16 positions
    assert dw.in_slices == ((None, 16),) and g.layer_widths({})["dw.0"] == (16, 16)
    fc = _layer(g, "fc")
    assert fc.in_slices == (("branches.0.0", 8), ("branches.1.0", 8), ("branches.2.0", 6))
    assert all(g.group(n).prunable for n, _ in fc.in_slices)


@pytest.mark.parametrize("name", sorted(TOYS))
def test_deterministic_and_side_effect_free(name: str) -> None:
    cls, shape = TOYS[name]
    torch.manual_seed(0)
    model = randomize(cls())
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(shape)
    g1 = build_graph(model, x)
    g2 = build_graph(model, (x,))
    g3 = build_graph(copy.deepcopy(model), x)
    assert g1 == g2 == g3
    assert [gr.name for gr in g1.groups] == [gr.name for gr in g3.groups]
    assert all(m.training for m in model.modules()), "training flags must be restored"
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"build_graph changed {k}"
    # every conv/linear appears once per call, in execution order
    convs = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert sorted(l.name for l in g1.layers if "#" not in l.name) == sorted(convs)
    # the channel count of each group matches the producer's real output width
    for gr in g1.groups:
        for mem in gr.members:
            if mem.role == "out":
                module = model.get_submodule(mem.module)
                width = module.out_channels if isinstance(module, torch.nn.Conv2d) else module.out_features
                assert mem.offset + gr.channels <= width


def test_graph_does_not_retain_the_model() -> None:
    model = DenseNetToy()
    ref = weakref.ref(model)
    build_graph(model, torch.randn(1, 3, 16, 16))
    del model
    gc.collect()
    assert ref() is None


class _ReversedHalves(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(8, 4, 1), torch.nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        return self.c(torch.cat(y.chunk(2, 1)[::-1], 1) + self.b(y).repeat(1, 2, 1, 1))


def test_tuple_of_tensors_passed_whole_and_ignored_conv() -> None:
    model = _ReversedHalves()
    g = build_graph(model, torch.randn(1, 3, 5, 5))
    # chunk halves are coupled; the reversed cat still reads the same group twice
    assert _layer(g, "c").in_slices == (("a", 4), ("a", 4))
    # repeat() tiles b's channels: frozen with the reason, never guessed
    assert not g.group("b").prunable and "tiles" in g.group("b").reason
    g2 = build_graph(model, torch.randn(1, 3, 5, 5), ignore=["c"])
    assert [l.name for l in g2.layers] == ["a", "b", "c"]
    assert not g2.group("a").prunable and "ignore" in g2.group("a").reason
