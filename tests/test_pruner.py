"""The pruner in a training loop, on a deterministic latency table (the fake backend's exact latencies)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

import halp
from fakes import FakeBackend, TinyNet
from halp.baselines import FlopsTaylorPruner, UniformPruner
from halp.flops import count_macs

X = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def table():
    torch.manual_seed(0)
    return halp.profile(TinyNet(width=32), X, backend=FakeBackend(), progress=False, grid_points=5, fine_span=16)


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return TinyNet(width=32)


def batches(n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 5, (8,), generator=g)) for _ in range(n)]


def run_loop(model, pruner, data, opt=None):
    opt = opt or torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    model.train()
    for x, y in data:
        F.cross_entropy(model(x), y).backward()
        pruner.step()
        opt.step()
        opt.zero_grad()
        pruner.apply_masks()
    return opt


def test_budget_met_and_slim_equals_masked(table):
    model = make_model()
    cfg = halp.PruneConfig(target=0.5, steps=3, interval=2, protect_stem=False)
    pruner = halp.Pruner(model, X, table, cfg)
    run_loop(model, pruner, batches(8))
    assert pruner.done and len(pruner.history) == 3
    report = pruner.report()
    # every step lands under its target, the last within the refinement band
    for step, target in zip(report["steps"], pruner.targets):
        assert step["predicted_ms"] <= target * (1 + 1e-9)
    assert report["predicted_ms"] >= (1 - cfg.refine_tolerance - 0.05) * pruner.final_ms
    slim = pruner.finalize().eval()
    model.eval()
    x = torch.randn(4, 3, 16, 16)
    assert torch.allclose(model(x), slim(x), atol=1e-5)
    # the slim model's latency, re-predicted from its own trace, equals the pruner's prediction
    assert halp.predict_latency(slim, X, table) == pytest.approx(report["predicted_ms"], rel=1e-9)
    assert halp.predict_latency(slim, X, table) <= pruner.final_ms


def test_masks_stay_zero_through_momentum_and_weight_decay(table):
    model = make_model()
    pruner = halp.Pruner(model, X, table, halp.PruneConfig(target=0.4, steps=2, interval=2, protect_stem=False))
    opt = run_loop(model, pruner, batches(4))  # both pruning steps done
    run_loop(model, pruner, batches(6, seed=5), opt)  # momentum keeps pushing pruned weights
    graph = pruner.graph
    modules = dict(model.named_modules())
    pruned_any = False
    for name, keep in pruner.keep.items():
        group = graph.group(name)
        dropped = torch.ones(group.channels, dtype=torch.bool)
        dropped[keep] = False
        if not dropped.any():
            continue
        pruned_any = True
        for m in group.members:
            mod = modules[m.module]
            idx = torch.nonzero(dropped).flatten() + m.offset
            if m.role in ("out", "depthwise", "norm"):
                assert mod.weight.detach()[idx].abs().max() == 0
            if m.role == "norm":
                assert mod.bias.detach()[idx].abs().max() == 0
            if m.role == "in":
                assert mod.weight.detach()[:, idx].abs().max() == 0
    assert pruned_any


def _resumed_and_uninterrupted(make, table, cfg, edit=lambda state: None):
    """The same run twice: once straight through, once stopped mid-schedule and mid-accumulation, its state
    passed through ``edit`` and resumed in a fresh model and pruner. Returns (resumed, uninterrupted) pruners."""
    data = batches(8)
    ref_model = make()
    ref = halp.Pruner(ref_model, X, table, cfg)
    run_loop(ref_model, ref, data)

    model = make()
    first = halp.Pruner(model, X, table, cfg)
    opt = run_loop(model, first, data[:3])
    state = copy.deepcopy(first.state_dict())
    edit(state)
    model_state, opt_state = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())

    model2 = make(seed=123)
    model2.load_state_dict(model_state)
    second = halp.Pruner(model2, X, table, cfg)
    second.load_state_dict(state)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    opt2.load_state_dict(opt_state)
    run_loop(model2, second, data[3:], opt2)
    return second, ref


def test_resume_from_state_dict_gives_identical_masks(table):
    cfg = halp.PruneConfig(target=0.5, steps=3, interval=2, protect_stem=False)
    second, ref = _resumed_and_uninterrupted(make_model, table, cfg)
    assert second.keep.keys() == ref.keep.keys()
    for name in ref.keep:
        assert torch.equal(second.keep[name], ref.keep[name]), name


def test_state_from_another_config_is_refused(table):
    p = halp.Pruner(make_model(), X, table, halp.PruneConfig(target=0.5, steps=3, interval=2))
    other = halp.Pruner(make_model(), X, table, halp.PruneConfig(target=0.6, steps=3, interval=2))
    with pytest.raises(ValueError, match=r"different PruneConfig: target=0.5 \(this run: 0.6\).*"
                                         r"`prune: \{target: 0.5\}`.*--target 0.5"):
        other.load_state_dict(p.state_dict())
    # a default that changed between releases (detection's floor, 0.1 -> 0.25): every changed field and its fix
    floor = halp.Pruner(make_model(), X, table, halp.PruneConfig(target=0.5, steps=4, interval=2, min_fraction=0.02))
    with pytest.raises(ValueError, match=r"steps=4 \(this run: 3\), min_fraction=0.02 \(this run: 0\).*"
                                         r"`prune: \{steps: 4, min_fraction: 0.02\}`.*--steps 4 --min-fraction 0.02"):
        p.load_state_dict(floor.state_dict())


def test_unreachable_budget_raises_before_training(table):
    with pytest.raises(ValueError, match="unreachable"):
        halp.Pruner(make_model(), X, table, halp.PruneConfig(target_ms=1e-4, steps=2, interval=1))
    with pytest.raises(ValueError, match="unreachable"):
        halp.Pruner(make_model(), X, table, halp.PruneConfig(target=0.05, min_fraction=0.9, steps=2, interval=1))


def test_wrong_batch_table_is_refused(table):
    with pytest.raises(ValueError, match="batch"):
        halp.Pruner(make_model(), torch.randn(2, 3, 16, 16), table, halp.PruneConfig())


def test_nonfinite_minibatch_is_skipped_and_counted(table):
    model = make_model()
    pruner = halp.Pruner(model, X, table, halp.PruneConfig(target=0.5, steps=1, interval=3, protect_stem=False))
    x, y = batches(1)[0]
    F.cross_entropy(model(x), y).backward()
    pruner.step()
    before = {n: t.clone() for n, t in pruner.importance.total.items()}
    next(model.parameters()).grad[0].fill_(float("nan"))
    model.bn1.weight.grad[0] = float("inf")
    pruner.step()
    assert pruner.importance.skipped == 1 and pruner.importance.batches == 1
    for n, t in pruner.importance.total.items():
        assert torch.equal(t, before[n])
    assert pruner.report()["skipped_batches"] == 1


def test_protected_groups_keep_every_channel(table):
    model = make_model()
    pruner = halp.Pruner(model, X, table, halp.PruneConfig(target=0.9, steps=2, interval=1, protect=("pw",)))
    run_loop(model, pruner, batches(2))
    names = {g.name for g in pruner.groups}
    assert names == {"conv1"}  # pw by pattern, the stem (and its residual stream) by default
    assert pruner.widths()["conv1"] < 24
    assert pruner.predict(pruner.widths()) <= pruner.final_ms


def test_knapsack_beats_uniform_on_importance_at_equal_budget(table):
    """Same scores, same budget: HALP's allocation keeps at least the importance uniform scaling keeps."""
    cfg = halp.PruneConfig(target=0.5, steps=1, interval=2, protect_stem=False)
    data = batches(2)
    m1, m2 = make_model(), make_model()
    halp_p, uni_p = halp.Pruner(m1, X, table, cfg), UniformPruner(m2, X, table, cfg)
    run_loop(m1, halp_p, data)
    run_loop(m2, uni_p, data)
    assert uni_p.history[0]["predicted_ms"] <= uni_p.final_ms
    assert halp_p.history[0]["importance_kept"] >= uni_p.history[0]["importance_kept"] - 1e-12
    # uniform: every group keeps (about) the same fraction of its channels
    fractions = [w / uni_p.graph.group(n).channels for n, w in uni_p.widths().items()]
    assert max(fractions) - min(fractions) <= 0.1


def test_flops_baseline_meets_its_macs_target(table):
    model = make_model()
    p = FlopsTaylorPruner(model, X, table, halp.PruneConfig(steps=2, interval=1, protect_stem=False), flops_target=0.5)
    run_loop(model, p, batches(2))
    assert count_macs(p.graph, p.widths()) <= 0.5 * p.dense_macs
    # removing one channel less would be over the target somewhere: it stops as soon as it is met
    assert count_macs(p.graph, p.widths()) >= 0.4 * p.dense_macs


def test_floor_check_uses_the_grouping_blocks(table):
    """With a fixed block size the narrowest reachable width is one block: the constructor must know it."""
    cfg = halp.PruneConfig(target=0.5, steps=1, interval=1, grouping=16, protect_stem=False)
    pruner_floor = halp.Pruner(make_model(), X, table, halp.PruneConfig(target=0.99, grouping=16, protect_stem=False))
    floor = {g.name: pruner_floor._floor_width(g) for g in pruner_floor.groups}
    assert all(w == min(16, pruner_floor.graph.group(n).channels) for n, w in floor.items())
    floor_ratio = pruner_floor.predict(floor) / pruner_floor.dense_ms
    if floor_ratio > 0.5:
        with pytest.raises(ValueError, match="unreachable"):
            halp.Pruner(make_model(), X, table, cfg)
    tight = halp.PruneConfig(target=floor_ratio * 0.999, steps=1, interval=1, grouping=16, protect_stem=False)
    with pytest.raises(ValueError, match="unreachable"):
        halp.Pruner(make_model(), X, table, tight)
    ok = halp.PruneConfig(target=min(1.0, floor_ratio * 1.01), steps=1, interval=1, grouping=16, protect_stem=False)
    model = make_model()
    pruner = halp.Pruner(model, X, table, ok)
    run_loop(model, pruner, batches(1))  # the step the constructor admitted is solvable
    assert pruner.predict(pruner.widths()) <= pruner.final_ms


def test_width_curves_agree_with_full_predictions_under_an_interp_calibration():
    """The pruner's fast per-group curves must give what a full prediction gives, including the separate
    weight of layer time read between measured grid points."""
    import numpy as np

    from halp.curves import WidthPredictor
    from halp.latency import predict_from_widths
    from halp.latency.table import Calibration

    model, x = TinyNet().eval(), torch.randn(1, 3, 8, 8)
    table = halp.profile(model, x, backend=FakeBackend(), progress=False, grid_points=4, fine_span=3,
                         calibration_samples=4)
    table.calibration = Calibration(1.1, 0.8, 0.02, "interp", [], {}, 1.7)
    graph = halp.build_graph(model, x)
    wp = WidthPredictor(graph, table)
    rng = np.random.default_rng(0)
    for g in graph.prunable_groups:
        widths = {h.name: int(rng.integers(1, h.channels + 1)) for h in graph.prunable_groups}
        cands = np.arange(1, g.channels + 1)
        curve = wp.curve(widths, g.name, cands)
        full = [predict_from_widths(graph, table, {**widths, g.name: int(c)}) for c in cands]
        np.testing.assert_allclose(curve, full, rtol=1e-9)
    assert any(table.layer_interpolated(l, *graph.layer_widths(widths)[l.name]) for l in graph.layers)


@pytest.mark.parametrize("target,fraction", [(0.4, 0.25), (0.5, 0.4)])
def test_min_fraction_floors_every_width_through_the_knapsack(table, target, fraction):
    """A tight budget drives some group under ``fraction`` of its width without the floor; with it, no group
    (knapsack steps, refinement, the slim model) keeps fewer than ceil(fraction x channels)."""
    import math

    free = halp.Pruner(model := make_model(), X, table, halp.PruneConfig(target=target, steps=2, interval=1,
                                                                          protect_stem=False))
    run_loop(model, free, batches(2))
    floors = {n: math.ceil(fraction * free.graph.group(n).channels) for n in free.widths()}
    assert any(w < floors[n] for n, w in free.widths().items()), free.widths()  # the floor has work to do

    model = make_model()
    cfg = halp.PruneConfig(target=target, steps=2, interval=1, protect_stem=False, min_fraction=fraction)
    pruner = halp.Pruner(model, X, table, cfg)
    run_loop(model, pruner, batches(2))
    assert pruner.done
    for step in pruner.history:  # every step's solve, not only the last
        assert all(w >= floors[n] for n, w in step["widths"].items()), step["widths"]
        assert step["predicted_ms"] <= step["target_ms"] * (1 + 1e-9)
    widths = pruner.widths()
    assert all(w >= floors[n] for n, w in widths.items()), (widths, floors)
    assert pruner.predict(widths) <= pruner.final_ms * (1 + 1e-9)
    slim = pruner.finalize()
    convs = {n: m.out_channels for n, m in slim.named_modules() if isinstance(m, torch.nn.Conv2d)}
    for name, w in widths.items():
        if name in convs:
            assert convs[name] == w >= floors[name]


@pytest.fixture(scope="module")
def se_table():
    from toy_models import SEResToy

    torch.manual_seed(0)
    return halp.profile(SEResToy(), X, backend=FakeBackend(), progress=False, grid_points=5, fine_span=16)


def _se_model(seed: int = 0) -> torch.nn.Module:
    from toy_models import SEResToy

    torch.manual_seed(seed)
    return SEResToy()


def _savings(pruner: halp.Pruner, groups) -> dict[str, float]:
    """Each group's predicted saving at its narrowest width, all others dense, as a fraction of dense."""
    return {g.name: 1 - pruner.predict({g.name: pruner._floor_width(g)}) / pruner.dense_ms for g in groups}


def test_groups_that_save_no_latency_are_not_pruned(se_table):
    """min_saving leaves exactly the groups under it alone (the SE squeezes here), and the budget still holds."""
    free = halp.Pruner(_se_model(), X, se_table, halp.PruneConfig(target=0.75, steps=2, interval=1, min_saving=0.0))
    saving = _savings(free, free.groups)
    squeezes = {n for n in saving if n.startswith(("se_a.", "se_b."))}
    assert squeezes and max(saving[n] for n in squeezes) < 0.0025 < min(v for n, v in saving.items() if n not in squeezes)
    assert free.negligible == {}
    model = _se_model()
    pruner = halp.Pruner(model, X, se_table, halp.PruneConfig(target=0.75, steps=2, interval=1))
    assert set(pruner.negligible) == squeezes
    assert {g.name for g in pruner.groups} == set(saving) - squeezes
    for name, ms in pruner.negligible.items():
        assert ms == pytest.approx(saving[name] * pruner.dense_ms, rel=1e-9)
    run_loop(model, pruner, batches(2))
    assert pruner.predict(pruner.widths()) <= pruner.final_ms * (1 + 1e-9)
    slim = pruner.finalize()
    assert slim.se_a.reduce.out_channels == 4 and slim.se_b.fc1.out_features == 6  # untouched
    # a threshold between two groups' savings moves exactly the groups below it
    mid = sorted(saving.values())[len(saving) // 2]
    cut = halp.Pruner(_se_model(), X, se_table, halp.PruneConfig(target=0.9, steps=2, interval=1, min_saving=mid))
    assert set(cut.negligible) == {n for n, v in saving.items() if v < mid}


def test_baselines_scale_every_group_and_a_too_high_min_saving_is_explained(se_table):
    uni = UniformPruner(_se_model(), X, se_table, halp.PruneConfig(target=0.75, steps=2, interval=1))
    assert uni.negligible == {} and any(g.name.startswith("se_a.") for g in uni.groups)
    with pytest.raises(ValueError, match="lower min_saving"):
        halp.Pruner(_se_model(), X, se_table, halp.PruneConfig(target=0.75, min_saving=0.9))
    for bad in (-0.1, 1.0, True):
        with pytest.raises(ValueError, match="min_saving"):
            halp.PruneConfig(min_saving=bad)


def test_a_checkpoint_from_before_min_saving_resumes_with_it_off_and_says_so_otherwise(se_table):
    """Checkpoints written before the setting pruned every group: they resume with min_saving 0 to the masks
    of an uninterrupted run, and resuming one under the default names the fix instead of missing groups."""
    cfg = halp.PruneConfig(target=0.75, steps=3, interval=2, min_saving=0.0)

    def to_old_format(state):
        del state["config"]["min_saving"]  # the format before the setting existed
        assert any(n.startswith(("se_a.", "se_b.")) for n in state["keep"])
        with pytest.raises(ValueError, match=r"min_saving=0 .*--min-saving 0"):
            halp.Pruner(_se_model(), X, se_table, dataclasses.replace(cfg, min_saving=0.0025)).load_state_dict(state)

    second, ref = _resumed_and_uninterrupted(_se_model, se_table, cfg, edit=to_old_format)
    assert {n: k.tolist() for n, k in second.keep.items()} == {n: k.tolist() for n, k in ref.keep.items()}
