"""mask_channels / prune_channels: slim == masked on every structure, keep validation, helpers."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from toy_models import (
    TOYS,
    DepthwiseToy,
    GroupedToy,
    check_prune_matches_mask,
    random_keep,
    randomize,
    widths_of,
)
from torch import nn

import halp
from halp.graph import build_graph
from halp.surgery import keep_from_widths, mask_channels, prune_channels, validate_keep


def _setup(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor, halp.ChannelGraph]:
    cls, shape = TOYS[name]
    torch.manual_seed(seed)
    model = randomize(cls(), seed=seed).eval()
    x = torch.randn(shape)
    return model, x, build_graph(model, x)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", sorted(TOYS))
def test_slim_equals_masked_on_random_keeps(name: str, seed: int) -> None:
    model, x, graph = _setup(name, seed)
    keep = random_keep(graph, torch.Generator().manual_seed(100 + seed))
    slim = check_prune_matches_mask(model, graph, keep, x)
    with torch.no_grad():
        dense = model(x)
        assert slim(x).shape == dense.shape
    # the slim model is made of ordinary modules and still trains
    for m in slim.modules():
        if isinstance(m, nn.Conv2d):
            assert type(m) is nn.Conv2d and m.weight.shape[1] == m.in_channels // m.groups
    slim.train()
    slim(x).sum().backward()
    assert all(p.grad is not None for p in slim.parameters() if p.requires_grad)


def test_masking_is_idempotent_and_removes_something() -> None:
    model, x, graph = _setup("se_resnet")
    keep = random_keep(graph, torch.Generator().manual_seed(5))
    masked = copy.deepcopy(model)
    mask_channels(masked, graph, keep)
    with torch.no_grad():
        once = masked(x)
        mask_channels(masked, graph, keep)
        assert torch.equal(masked(x), once)
        assert not torch.allclose(once, model(x))
    # zeroed BN channel: weight = bias = mean = 0, var = 1
    removed = sorted(set(range(16)) - set(keep["stem.0"].tolist()))
    bn = masked.stem[1]
    assert bool((bn.weight[removed] == 0).all() and (bn.bias[removed] == 0).all())
    assert bool((bn.running_mean[removed] == 0).all() and (bn.running_var[removed] == 1).all())
    assert bool((masked.a1[0].weight[:, removed] == 0).all())  # consumer inputs zeroed too


def test_keep_everything_is_identity_and_keeps_widths() -> None:
    model, x, graph = _setup("densenet")
    keep = {g.name: torch.arange(g.channels) for g in graph.groups}  # non-prunable groups whole: allowed
    slim = prune_channels(model, graph, keep)
    with torch.no_grad():
        assert torch.equal(slim(x), model(x))
    assert sum(p.numel() for p in slim.parameters()) == sum(p.numel() for p in model.parameters())


def test_keep_accepts_lists_and_unsorted_indices() -> None:
    model, x, graph = _setup("flatten_mlp")
    a = prune_channels(model, graph, {"features.2.0": [9, 1, 4], "fc1": torch.tensor([3, 0])})
    b = prune_channels(model, graph, {"features.2.0": torch.tensor([1, 4, 9]), "fc1": [0, 3]})
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    assert a.fc1.in_features == 3 * 16 and a.fc1.out_features == 2 and a.bn1.num_features == 2
    assert torch.equal(a.fc1.weight[0], model.fc1.weight[0, torch.cat([torch.arange(16, 32),
                                                                        torch.arange(64, 80),
                                                                        torch.arange(144, 160)])])


def test_depthwise_slim_is_a_real_depthwise_conv() -> None:
    model, x, graph = _setup("depthwise")
    keep = {"stem.0": torch.tensor([0, 3, 5, 8, 13]), "expand.0": torch.arange(0, 64, 3)}
    slim = prune_channels(model, graph, keep)
    assert (slim.dw1[0].in_channels, slim.dw1[0].out_channels, slim.dw1[0].groups) == (5, 5, 5)
    assert slim.dw3[0].groups == slim.dw3[0].out_channels == len(keep["expand.0"])
    check_prune_matches_mask(model, graph, keep, x)


def test_grouped_conv_slim_keeps_its_group_count() -> None:
    model, x, graph = _setup("grouped")
    keep = keep_from_widths(graph, None, {"c1.0": 16, "c2.0": 8, "mult": 16})
    slim = check_prune_matches_mask(model, graph, keep, x)
    assert (slim.c2[0].in_channels, slim.c2[0].out_channels, slim.c2[0].groups) == (16, 8, 4)
    assert (slim.mult.in_channels, slim.mult.out_channels, slim.mult.groups) == (16, 16, 16)


# -- validation ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def grouped() -> tuple[nn.Module, torch.Tensor, halp.ChannelGraph]:
    return _setup("grouped")


@pytest.mark.parametrize(
    "keep, match",
    [
        ({"nope": [0]}, "no channel group named 'nope'"),
        ({"fc": [0, 1]}, "group 'fc' is not prunable"),
        ({"pa": [0, 1, 2]}, "group 'pa' is not prunable .*grouped conv 'mixed.0'"),
        ({"stem.0": []}, r"keep\['stem.0'\] keeps 0 channels but group 'stem.0' needs at least 1"),
        ({"stem.0": [0, 32]}, r"keep\['stem.0'\] has indices outside \[0, 32\)"),
        ({"stem.0": [-1, 3]}, r"outside"),
        ({"stem.0": [1, 1, 2]}, r"keep\['stem.0'\] lists a channel more than once"),
        ({"stem.0": torch.tensor([0.0, 1.0])}, r"keep\['stem.0'\] has dtype torch.float32"),
        ({"stem.0": torch.tensor([True, False])}, "nonzero"),
        ({"stem.0": torch.tensor([[0, 1]])}, "must be 1-D"),
        ({"stem.0": [0, "1"]}, "integer channel indices"),
        ({"stem.0": 3}, "1-D tensor or a list"),
        ({"c1.0": [0, 1, 8, 9, 16, 17]}, r"group 'c1.0' .*multiple of 4"),
        ({"c1.0": [0, 1, 2, 3]}, r"same number of channels in each of the 4 conv groups.*\[4, 0, 0, 0\]"),
        ({"c1.0": [0, 8, 16]}, "needs at least 4"),
        ({"mult": [0, 1] + list(range(4, 32, 2))}, r"same number of channels in each of the 16.*\[2, 0, 1,"),
    ],
)
def test_bad_keep_names_the_group(grouped, keep: dict, match: str) -> None:
    model, _, graph = grouped
    for fn in (prune_channels, mask_channels):
        with pytest.raises(ValueError, match=match):
            fn(copy.deepcopy(model), graph, keep)


def test_keep_must_be_a_mapping(grouped) -> None:
    model, _, graph = grouped
    with pytest.raises(ValueError, match="keep must be a dict"):
        prune_channels(model, graph, [("stem.0", [0])])  # type: ignore[arg-type]


def test_graph_from_another_model_is_rejected() -> None:
    model, x, graph = _setup("depthwise")
    keep = {"pw1.0": torch.arange(8)}
    slim = prune_channels(model, graph, keep)
    with pytest.raises(ValueError, match="graph does not match the model"):
        mask_channels(slim, graph, {"pw1.0": torch.arange(4)})
    with pytest.raises(ValueError, match="has no|graph names module"):
        prune_channels(nn.Sequential(nn.Conv2d(3, 4, 1)), graph, keep)


# -- keep_from_widths ----------------------------------------------------------------------------
def test_keep_from_widths_picks_top_scores_per_conv_group() -> None:
    model, x, graph = _setup("grouped")
    scores = {"c1.0": torch.arange(32.0), "stem.0": -torch.arange(32.0)}
    keep = keep_from_widths(graph, scores, {"c1.0": 8, "stem.0": 3, "head": 24})
    assert keep["c1.0"].tolist() == [6, 7, 14, 15, 22, 23, 30, 31]  # top 2 of each block of 8
    assert keep["stem.0"].tolist() == [0, 1, 2]
    assert keep["head"].tolist() == list(range(24))
    assert widths_of(keep) == {"c1.0": 8, "stem.0": 3, "head": 24}
    validate_keep(graph, keep)
    check_prune_matches_mask(model, graph, keep, x)


@pytest.mark.parametrize(
    "widths, scores, match",
    [
        ({"c1.0": 6}, None, "multiple of 4"),
        ({"stem.0": 33}, None, r"outside \[0, 32\]"),
        ({"stem.0": 0}, None, "needs at least 1"),
        ({"fc": 3}, None, "not prunable"),
        ({"zzz": 3}, None, "no channel group"),
        ({"stem.0": 3}, {"stem.0": torch.ones(5)}, r"expected \(32,\)"),
    ],
)
def test_keep_from_widths_rejects_bad_widths(grouped, widths: dict, scores, match: str) -> None:
    _, _, graph = grouped
    with pytest.raises(ValueError, match=match):
        keep_from_widths(graph, scores, widths)


def test_public_names() -> None:
    assert halp.prune_channels is prune_channels and halp.mask_channels is mask_channels
    from halp import verify

    assert halp.build_graph is verify.build_graph  # the checked graph; halp.graph's is the raw capture
    model = DepthwiseToy()
    assert isinstance(halp.build_graph(model, torch.randn(1, 3, 16, 16)), halp.ChannelGraph)
    assert GroupedToy  # imported for the fixture's structure


def test_slim_model_exports_to_onnx(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model, x, graph = _setup("grouped")
    slim = prune_channels(model, graph, random_keep(graph, torch.Generator().manual_seed(0)))
    path = tmp_path / "slim.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(slim, (x,), str(path), dynamo=False)
    session = ort.InferenceSession(str(path))
    (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert float((torch.from_numpy(y) - slim(x)).abs().max()) < 1e-4
