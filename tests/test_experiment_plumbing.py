"""The experiments' plumbing: the resumable cell store and the knob matching (no training here)."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import _experiment as ex  # noqa: E402


# ----------------------------------------------------------------------------- cell store


def test_store_skips_finished_cells_across_reruns(tmp_path: Path) -> None:
    path = tmp_path / "cells.json"
    calls: list[dict] = []

    def compute(params: dict) -> dict:
        calls.append(params)
        return {"accuracy": 0.5 + params["budget"]}

    grid = [{"model": "m", "budget": b, "seed": s} for b in (0.3, 0.8) for s in (0, 1)]
    store = ex.CellStore(path, "demo")
    first = [store.run(p, lambda p=p: compute(p)) for p in grid[:3]]  # "killed" after three cells
    assert len(calls) == 3

    rerun = ex.CellStore(path, "demo")  # a fresh process reading the file back
    second = [rerun.run(p, lambda p=p: compute(p)) for p in grid]
    assert len(calls) == 4 and calls[-1] == grid[3]  # only the unfinished cell ran
    assert [r["accuracy"] for r in second[:3]] == [r["accuracy"] for r in first]
    assert len(rerun) == 4
    # parameter order does not matter; records carry params and results together
    assert {"seed": 1, "budget": 0.8, "model": "m"} in rerun
    rec = [r for r in rerun.records() if r["budget"] == 0.8 and r["seed"] == 1][0]
    assert rec["accuracy"] == pytest.approx(1.3) and rec["model"] == "m" and "cell_seconds" in rec


def test_store_writes_complete_json_and_rejects_a_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "cells.json"
    store = ex.CellStore(path, "demo")
    for i in range(5):
        store.put({"i": i}, {"value": i * i})
    data = json.loads(path.read_text())
    assert data["experiment"] == "demo" and len(data["cells"]) == 5
    assert not list(tmp_path.glob("*.tmp"))  # no temporary left behind

    text = path.read_text()
    path.write_text(text[: len(text) // 2])  # what a kill mid-write of a naive writer would leave
    with pytest.raises(ValueError, match="not valid JSON.*truncated"):
        ex.CellStore(path, "demo")


def test_store_refuses_another_experiments_file_and_bad_params(tmp_path: Path) -> None:
    path = tmp_path / "cells.json"
    ex.CellStore(path, "pareto").put({"a": 1}, {"b": 2})
    with pytest.raises(ValueError, match="experiment 'pareto', not 'steps'"):
        ex.CellStore(path, "steps")
    path.write_text(json.dumps([1, 2, 3]))
    with pytest.raises(ValueError, match="not a halp-cells/1 cell store"):
        ex.CellStore(path, "pareto")
    with pytest.raises(ValueError, match="JSON values"):
        ex.CellStore(tmp_path / "other.json", "x").put({"a": object()}, {})


# ----------------------------------------------------------------------------- knob matching


@pytest.mark.parametrize(
    "latency",
    [
        lambda k: 0.2 + 1.6 * k,  # linear in the knob
        lambda k: 2.0 * k**2 + 0.05,  # convex (latency ~ width^2)
        lambda k: math.exp(3 * (k - 0.4)),  # very steep
        lambda k: 0.6 + 0.8 * math.sqrt(k),  # concave, overhead-bound
    ],
)
@pytest.mark.parametrize("start", [None, 0.05, 0.95])
def test_match_knob_converges_within_two_percent(latency, start) -> None:
    reference = 1.0  # the "HALP" latency the baseline must match
    calls: list[float] = []

    def ratio(k: float) -> float:
        calls.append(k)
        return latency(k) / reference

    m = ex.match_knob(ratio, 0.0, 1.0, start=start, tol=0.02, max_probes=12)
    assert m.converged
    assert abs(ratio(m.knob) - 1.0) <= 0.02
    assert m.ratio == pytest.approx(latency(m.knob))
    assert len(m.probes) <= 12 and len(calls) == len(m.probes) + 1


def test_match_knob_on_a_staircase_reports_the_closest_and_no_convergence() -> None:
    # latency only changes in 10% steps: no knob gives a ratio within 2% of 1.0 (0.95 or 1.05 at best)
    stair = lambda k: 0.55 + 0.1 * math.floor(k * 10)  # noqa: E731
    m = ex.match_knob(stair, 0.0, 1.0, tol=0.02, max_probes=20)
    assert not m.converged
    assert abs(m.ratio - 1.0) == pytest.approx(0.05)
    assert m.ratio == pytest.approx(stair(m.knob))


def test_match_knob_stays_in_range_and_validates() -> None:
    seen: list[float] = []
    m = ex.match_knob(lambda k: seen.append(k) or 5.0, 0.2, 0.7, start=3.0)  # always too slow
    assert all(0.2 <= k <= 0.7 for k in seen) and not m.converged
    assert min(seen) == pytest.approx(0.2, abs=1e-3)
    with pytest.raises(ValueError, match="lo < hi"):
        ex.match_knob(lambda k: 1.0, 0.5, 0.5)
    with pytest.raises(ValueError, match="tol"):
        ex.match_knob(lambda k: 1.0, 0.0, 1.0, tol=0.0)


# ----------------------------------------------------------------------------- schedule and presets


def test_schedule_spreads_steps_over_the_span_and_rejects_overfull() -> None:
    p = ex.replace(ex.QUICK, finetune_epochs=2, prune_span=0.5, steps=10)
    assert ex.schedule(p, 62) == (10, 6)  # 124 iterations, half of them for 10 steps
    assert ex.schedule(p, 62, steps=30) == (30, 2)
    assert ex.schedule(p, 62, steps=1) == (1, 62)
    with pytest.raises(ValueError, match="do not fit"):
        ex.schedule(p, 10, steps=30)
    with pytest.raises(ValueError, match="threads"):
        ex.preset(True, threads=0)
    assert ex.preset(True, threads=3).threads == 3 and ex.preset(False).seeds == (0, 1, 2)


def test_store_drop_forgets_matching_cells_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "cells.json"
    store = ex.CellStore(path, "demo")
    store.put({"budget": 0.5, "method": "halp"}, {"accuracy": 0.7})
    store.put({"budget": 0.5, "measure": ["halp"]}, {"dense_ms": 2.0})
    assert store.drop(lambda c: "measure" in c) == 1
    again = ex.CellStore(path, "demo")
    assert len(again) == 1 and {"budget": 0.5, "method": "halp"} in again
    assert again.drop(lambda c: False) == 0


def test_two_runs_of_one_experiment_keep_each_others_cells(tmp_path: Path) -> None:
    """Two processes (say, one model per core) share a store: neither write may clobber the other's cells,
    and a cell one run dropped is not resurrected by the other, which loaded it before the drop."""
    path = tmp_path / "cells.json"
    a = ex.CellStore(path, "demo")
    a.put({"model": "a", "budget": 0.5}, {"accuracy": 0.1})
    b = ex.CellStore(path, "demo")  # sees a's first cell
    a.put({"model": "a", "budget": 0.8}, {"accuracy": 0.2})
    b.put({"model": "b", "budget": 0.5}, {"accuracy": 0.3})  # b never saw a's second cell in memory
    assert len(ex.CellStore(path, "demo")) == 3
    assert {"model": "a", "budget": 0.8} in b  # b's write merged the file
    assert sorted(r["accuracy"] for r in a.records()) == [0.1, 0.2, 0.3]  # records() re-reads the file
    assert a.drop(lambda c: c["model"] == "a" and c["budget"] == 0.5) == 1
    b.put({"model": "b", "budget": 0.8}, {"accuracy": 0.4})
    final = ex.CellStore(path, "demo")
    assert len(final) == 3 and {"model": "a", "budget": 0.5} not in final
    assert final.get({"model": "b", "budget": 0.8}) == {"accuracy": 0.4}


def test_fidelity_metrics_and_noise():
    """The fidelity benchmark's numbers: exact predictions give r = 1 and no error; a uniform 10% over-prediction
    keeps r = 1 (reductions scale alike) and gives a 10% error; a shuffled prediction breaks r."""
    import latency_fidelity as lf

    measured = [40.0, 35.0, 30.0, 22.0, 18.0]
    out = {"dense": {"measured_ms": 50.0, "iqr_ms": 5.0, "exact": 50.0, "high": 55.0, "shuffled": 50.0},
           "variants": [{"measured_ms": m, "iqr_ms": 0.1 * m, "exact": m, "high": 1.1 * m, "shuffled": s}
                        for m, s in zip(measured, [18.0, 40.0, 22.0, 35.0, 30.0])]}
    exact = lf.metrics(out, "exact")
    assert exact["pearson_r_reduction"] == pytest.approx(1.0) and exact["median_abs_rel_error"] == 0.0
    high = lf.metrics(out, "high")
    assert high["pearson_r_reduction"] == pytest.approx(1.0)
    assert high["median_abs_rel_error"] == pytest.approx(0.1) and high["dense_rel_error"] == pytest.approx(0.1)
    assert lf.metrics(out, "shuffled")["pearson_r_reduction"] < 0.5
    assert lf.noise(out) == pytest.approx(0.1)


def test_fidelity_repeatability_is_the_r_between_passes():
    """Two passes that measure the same reductions give r = 1 for their pair; a pass whose reductions are
    shuffled breaks it; one pair per two passes, three for three."""
    import latency_fidelity as lf

    a = [50.0, 40.0, 35.0, 30.0, 22.0, 18.0]
    slower = [v * 1.2 for v in a]  # the whole machine slower in pass 2: reductions scale, r stays 1
    shuffled = [50.0, 18.0, 40.0, 22.0, 35.0, 30.0]
    assert lf.repeatability([a, slower]) == [pytest.approx(1.0)]
    rs = lf.repeatability([a, slower, shuffled])
    assert len(rs) == 3 and rs[0] == pytest.approx(1.0) and max(rs[1:]) < 0.5


def test_per_model_overrides_change_the_recipe_and_the_dense_cache_key(tmp_path: Path, monkeypatch) -> None:
    p = ex.QUICK
    mnv2 = p.for_model("mobilenet_v2_cifar")
    assert (mnv2.dense_lr, mnv2.dense_epochs) == (0.02, 6) and mnv2.name == p.name  # same cells, other recipe
    assert p.for_model("resnet56") is p and mnv2.tag() != p.tag()
    with pytest.raises(ValueError, match="may set only"):
        dataclasses.replace(p, per_model={"resnet56": {"threads": 2}}).for_model("resnet56")
    monkeypatch.setattr(ex, "DENSE_INDEX", tmp_path / "dense_accuracy.json")
    monkeypatch.setattr(ex, "RESULTS", tmp_path)
    assert ex.dense_accuracy("resnet56", "shapes10", p, 0) is None
    ex.record_dense("resnet56", "shapes10", p, 0, 0.5)
    ex.record_dense("mobilenet_v2_cifar", "shapes10", mnv2, 0, 0.25)
    assert ex.dense_accuracy("resnet56", "shapes10", p, 0) == 0.5
    assert ex.dense_accuracy("mobilenet_v2_cifar", "shapes10", mnv2, 0) == 0.25
    assert ex.dense_accuracy("mobilenet_v2_cifar", "shapes10", p, 0) is None  # another recipe, another model


def test_remeasure_forgets_only_the_measurements_of_the_grid_it_runs(tmp_path: Path, monkeypatch) -> None:
    """`pareto.py --models mobilenet_v2_cifar --remeasure` must not drop ResNet-56's joint measurements: taking
    them again would retrain ResNet-56's dense models on a machine that lacks them."""
    monkeypatch.setattr(ex, "RESULTS", tmp_path)
    p = dataclasses.replace(ex.QUICK, models=("mobilenet_v2_cifar",), seeds=(0,))
    store = ex.CellStore(ex.cells_path("pareto", p), "pareto")
    base = {"preset": "quick", "task": "shapes10", "budget": 0.8}
    for model in ("resnet56", "mobilenet_v2_cifar"):
        for seed in (0, 1):
            store.put({**base, "model": model, "seed": seed, "measure": ["halp"]}, {"dense_ms": 1.0})
            store.put({**base, "model": model, "seed": seed, "method": "halp"}, {"accuracy": 0.5})
    kept = ex.open_cells("pareto", p, remeasure=True)
    assert len(kept) == 7
    assert {**base, "model": "mobilenet_v2_cifar", "seed": 0, "measure": ["halp"]} not in kept
    assert {**base, "model": "resnet56", "seed": 0, "measure": ["halp"]} in kept
    ablation = ex.open_cells("pareto", dataclasses.replace(ex.QUICK, ablation_seeds=(1,)), remeasure=True, ablation=True)
    assert len(ablation) == 6 and {**base, "model": "resnet56", "seed": 1, "measure": ["halp"]} not in ablation


def test_quick_grid_covers_both_models_and_tasks_less_the_skipped_pair() -> None:
    assert ex.QUICK.pairs() == [("resnet56", "shapes10"), ("resnet56", "digits"), ("mobilenet_v2_cifar", "shapes10")]
    narrowed = dataclasses.replace(ex.QUICK, models=("mobilenet_v2_cifar",))
    assert narrowed.pairs() == [("mobilenet_v2_cifar", "shapes10")]
    assert ex.FULL.pairs() == [(m, t) for m in ex.FULL.models for t in ex.FULL.tasks]  # the full grid skips nothing


def test_data_options_reach_the_loaders_and_the_dense_cache_key() -> None:
    """The hardware matrix trains digits at 64x64: the size must reach the data set and separate the dense
    cache from the 32x32 models, while presets without data options keep their old cache keys."""
    p = dataclasses.replace(ex.SMOKE, data_kw={"size": 64})
    assert ex.SMOKE.tag() == "n1024-e1-b32-lr0.1" and p.tag() == "n1024-e1-b32-lr0.1-size64"
    _, test, info = ex.loaders("digits", p, 0)
    assert info.input_size == (1, 64, 64) and next(iter(test))[0].shape[1:] == (1, 64, 64)
    assert p.to_dict()["data_kw"] == {"size": 64}


def test_hardware_verdict_names_the_fastest_model_per_backend() -> None:
    import hardware

    rows = [{"pruned_with": "a", "budget": 0.5, "accuracy": 0.90, "latency_ms@a": 1.0, "latency_ms@b": 3.0,
             "vs_dense@a": 0.40, "vs_dense@b": 0.45},
            {"pruned_with": "b", "budget": 0.5, "accuracy": 0.92, "latency_ms@a": 2.0, "latency_ms@b": 4.0,
             "vs_dense@a": 0.80, "vs_dense@b": 0.505}]
    text = hardware.verdict([{"rows": rows}], ["a", "b"])
    assert "on a: fastest is the a table's model (its own: claim holds)" in text
    assert "on b: fastest is the a table's model; its own table's model is 33.3% slower (claim fails here)" in text
    # at equal latency: b's model meets the budget on b (0.505 <= 0.5 x 1.02) and is the more accurate there
    assert ("within 0.510 x dense on b (a, b): most accurate is the b table's model, 92.00% (its own: claim holds)"
            in text)
    assert "within 0.510 x dense on a (a): most accurate is the a table's model" in text
    rows[0]["accuracy"] = 0.95  # now a's model wins on b too, and b's own is 3 points behind
    assert "its own is 3.00 points less accurate: claim fails here" in hardware.verdict([{"rows": rows}], ["a", "b"])
