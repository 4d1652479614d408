"""halp.profile with a deterministic fake backend: coverage, exact calibration, resume, file handling."""

from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pytest
import torch
from torch import nn

import halp
from halp.latency import predict_from_widths, predict_latency, profile
from halp.latency.calibrate import random_widths, slim_variant
from halp.latency.store import partial_path

SETTINGS = dict(grid_points=5, fine_span=6, calibration_samples=5, seed=3)


def test_profile_covers_the_graph_and_is_exact(tiny, fake_backend, true_e2e):
    model, x = tiny
    before = copy.deepcopy(model.state_dict())
    be = fake_backend()
    table = profile(model, x, backend=be, progress=False, **SETTINGS)
    graph = halp.build_graph(model, x)
    assert table.covers(graph) == []
    # shapes deduplicated: one entry per (shape, full widths), all layers listed
    assert sorted(table.layer_names()) == sorted(l.name for l in graph.layers)
    dw = [e for e in table.entries if e.depthwise]
    assert len(dw) == 1 and dw[0].median_ms.ndim == 1
    # each point measured once
    assert len(be.layer_calls) == len(set(be.layer_calls))
    # the fake's latencies are bilinear, its ops linear, its end-to-end a known mix: the calibration
    # recovers it and predictions are exact for unseen widths too
    c = table.calibration
    assert c.method == "split"
    assert (c.a, c.b, c.c) == pytest.approx((1.25, 0.8, 0.03), rel=1e-6)
    rng = np.random.default_rng(11)
    for _ in range(3):
        w = random_widths(graph, rng, 0.25)
        assert predict_from_widths(graph, table, w) == pytest.approx(true_e2e(_slim_graph(model, graph, w, x)), rel=1e-9)
    # the model was not touched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert table.meta["device"] == "fake device" and table.meta["settings"]["grid_points"] == 5


def _slim_graph(model, graph, widths, x):
    return halp.build_graph(slim_variant(model, graph, widths), x)


def test_predict_from_widths_matches_predict_latency_on_slim_models(tiny, fake_backend):
    model, x = tiny
    table = profile(model, x, backend=fake_backend(), progress=False, **SETTINGS)
    graph = halp.build_graph(model, x)
    rng = np.random.default_rng(5)
    for _ in range(4):
        widths = random_widths(graph, rng, 0.2)
        slim = slim_variant(model, graph, widths)
        assert predict_latency(slim, x, table) == pytest.approx(predict_from_widths(graph, table, widths), rel=1e-12)
    assert predict_latency(model, x, table) == pytest.approx(predict_from_widths(graph, table), rel=1e-12)
    with pytest.raises(ValueError, match="batch 2"):
        predict_latency(model, torch.randn(2, 3, 8, 8), table)


def test_interrupted_profile_resumes_without_remeasuring(tiny, fake_backend, tmp_path):
    model, x = tiny
    reference = fake_backend()
    ref_table = profile(model, x, backend=reference, progress=False, **SETTINGS)
    total = len(reference.layer_calls)

    path = tmp_path / "table.json"
    first = fake_backend(fail_after=total // 2 + 3)
    with pytest.raises(KeyboardInterrupt):
        profile(model, x, backend=first, path=path, progress=False, **SETTINGS)
    assert not path.exists() and partial_path(path).exists()
    saved = json.loads(partial_path(path).read_text())["values"]
    assert len([k for k in saved if k.startswith("L|")]) == total // 2 + 3  # flushed on interruption

    second = fake_backend()
    table = profile(model, x, backend=second, path=path, progress=False, **SETTINGS)
    assert not set(first.layer_calls) & set(second.layer_calls)  # nothing measured twice
    assert len(first.layer_calls) + len(second.layer_calls) == total
    assert path.exists() and not partial_path(path).exists()
    assert table.meta["measurements"] == {"new": len(second.layer_calls) + second.op_calls + 6,
                                         "resumed": total // 2 + 3, "retaken": 0}
    assert table.to_dict()["layers"] == ref_table.to_dict()["layers"]

    # a finished table for the same model and settings is reused, measuring nothing
    third = fake_backend()
    again = profile(model, x, backend=third, path=path, progress=False, **SETTINGS)
    assert third.layer_calls == [] and third.op_calls == 0 and third.model_calls == 0
    assert again.to_dict() == halp.LatencyTable.load(path).to_dict()


def test_resume_refuses_other_settings_and_corrupt_partials(tiny, fake_backend, tmp_path):
    model, x = tiny
    path = tmp_path / "t.json"
    with pytest.raises(KeyboardInterrupt):
        profile(model, x, backend=fake_backend(fail_after=4), path=path, progress=False, **SETTINGS)
    with pytest.raises(ValueError, match="other settings.*repeats"):
        profile(model, x, backend=fake_backend(), path=path, progress=False, repeats=3, **SETTINGS)
    partial_path(path).write_text('{"format": "halp-latency-partial", "values": {')
    with pytest.raises(ValueError, match="corrupt.*delete it"):
        profile(model, x, backend=fake_backend(), path=path, progress=False, **SETTINGS)


def test_existing_table_for_another_model_is_not_overwritten(tiny, fake_backend, tmp_path):
    model, x = tiny
    path = tmp_path / "t.json"
    profile(model, x, backend=fake_backend(), path=path, progress=False, **SETTINGS)
    with pytest.raises(ValueError, match="another model or settings"):  # same model, other settings
        profile(model, x, backend=fake_backend(), path=path, progress=False, **{**SETTINGS, "grid_points": 4})
    other = type(model)(width=8)
    with pytest.raises(ValueError, match="another model or settings"):
        profile(other, x, backend=fake_backend(), path=path, progress=False, **SETTINGS)
    t = profile(other, x, backend=fake_backend(), path=path, progress=False, overwrite=True, **SETTINGS)
    assert t.covers(halp.build_graph(other, x)) == []


def test_table_from_an_older_version_without_a_new_setting_is_reused(tiny, fake_backend, tmp_path):
    """A setting added later (here ``statistic``) is absent from older files; at its default it means the
    old behaviour, so the table is reused rather than refused (and refused when asked for another value)."""
    model, x = tiny
    path = tmp_path / "t.json"
    profile(model, x, backend=fake_backend(), path=path, progress=False, **SETTINGS)
    doc = json.loads(path.read_text())
    del doc["meta"]["settings"]["statistic"]
    path.write_text(json.dumps(doc))
    be = fake_backend()
    profile(model, x, backend=be, path=path, progress=False, **SETTINGS)
    assert be.layer_calls == [] and be.model_calls == 0
    with pytest.raises(ValueError, match="another model or settings"):
        profile(model, x, backend=fake_backend(), path=path, progress=False, statistic="p10", **SETTINGS)


def test_bad_settings_are_value_errors(tiny):
    model, x = tiny
    with pytest.raises(ValueError, match="unknown profile setting"):
        profile(model, x, progress=False, repetitions=3)
    with pytest.raises(ValueError, match="grid_points"):
        profile(model, x, progress=False, grid_points=1)
    with pytest.raises(ValueError, match="passes must be a positive integer"):
        profile(model, x, progress=False, passes=0)
    with pytest.raises(ValueError, match="unknown latency backend"):
        profile(model, x, backend="tpu", progress=False)
    with pytest.raises(ValueError, match="threads"):
        profile(model, x, threads=0, progress=False)


def test_batch_argument_rebatches_inputs(tiny, fake_backend):
    model, x = tiny
    table = profile(model, x, backend=fake_backend(), batch=3, progress=False, **SETTINGS)
    assert table.batch == 3 and all(e.shape.batch == 3 for e in table.entries)
    assert predict_latency(model, torch.randn(3, 3, 8, 8), table) > 0


def test_disturbed_points_are_retaken(tiny, fake_backend):
    """Every 13th timing is 10x too slow (another process took the CPU): those points are measured again
    and the table comes out as if nothing had happened."""
    model, x = tiny
    clean = profile(model, x, backend=fake_backend(), progress=False, **SETTINGS)
    be = fake_backend(spike_every=13)
    table = profile(model, x, backend=be, progress=False, **SETTINGS)
    spiked = len(be.layer_calls) // 13
    assert table.meta["measurements"]["retaken"] >= spiked - 1  # a spike on a retake is retaken again
    for a, b in zip(clean.entries, table.entries):
        np.testing.assert_allclose(a.median_ms, b.median_ms, rtol=1e-12)
        np.testing.assert_allclose(a.fine_median_ms, b.fine_median_ms, rtol=1e-12)
    counts = {}
    for call in be.layer_calls:
        counts[call] = counts.get(call, 0) + 1
    assert max(counts.values()) <= 1 + SETTINGS.get("retries", 2)


def test_passes_outvote_a_slow_spell_that_retakes_cannot_see(tiny, fake_backend):
    """A slow spell covering a third of the layer timings: one pass bakes it into those entries; three
    passes, the spell inside the first, give every point the clean median (each point measured once per
    pass), and a partial profile resumes pass by pass."""
    model, x = tiny
    clean_be = fake_backend()
    clean = profile(model, x, backend=clean_be, progress=False, **SETTINGS)
    n = len(clean_be.layer_calls)
    spell = (n // 3, 2 * n // 3)
    one = profile(model, x, backend=fake_backend(slow_spell=spell), progress=False, **SETTINGS)
    hit = [not np.allclose(a.median_ms, b.median_ms, rtol=1e-9) for a, b in zip(clean.entries, one.entries)]
    assert 0 < sum(hit) < len(hit)
    be = fake_backend(slow_spell=spell)
    three = profile(model, x, backend=be, progress=False, passes=3, **SETTINGS)
    assert len(be.layer_calls) == 3 * n and be.op_calls == 3 * clean_be.op_calls
    for a, b in zip(clean.entries, three.entries):
        np.testing.assert_allclose(a.median_ms, b.median_ms, rtol=1e-12)
        np.testing.assert_allclose(a.fine_median_ms, b.fine_median_ms, rtol=1e-12)
    assert three.meta["settings"]["passes"] == 3


def test_a_profile_with_passes_resumes_mid_pass(tiny, fake_backend, tmp_path):
    model, x = tiny
    path = tmp_path / "t.json"
    full_be = fake_backend()
    ref = profile(model, x, backend=full_be, progress=False, passes=2, **SETTINGS)
    n = len(full_be.layer_calls)
    with pytest.raises(KeyboardInterrupt):
        profile(model, x, backend=fake_backend(fail_after=n * 3 // 4), path=path, progress=False, passes=2, **SETTINGS)
    be = fake_backend()
    table = profile(model, x, backend=be, path=path, progress=False, passes=2, **SETTINGS)
    assert len(be.layer_calls) == n - n * 3 // 4
    for a, b in zip(ref.entries, table.entries):
        np.testing.assert_allclose(a.median_ms, b.median_ms, rtol=1e-12)


def test_calibration_uses_the_end_to_end_timing_settings(tiny, fake_backend):
    class Recording(fake_backend):
        def time_models(self, *args, **kwargs):
            self.model_settings = self.settings
            return super().time_models(*args, **kwargs)

    model, x = tiny
    be = Recording()
    profile(model, x, backend=be, progress=False, e2e_warmup=3, e2e_repeats=7, **SETTINGS)
    assert (be.model_settings.warmup, be.model_settings.repeats) == (3, 7)
    assert be.settings.repeats == 15  # single layers keep theirs


def test_refit_recomputes_the_calibration_from_stored_samples(tiny, fake_backend):
    from halp.latency.calibrate import refit

    model, x = tiny
    table = profile(model, x, backend=fake_backend(), progress=False, **SETTINGS)
    table = halp.LatencyTable.from_dict(table.to_dict())  # as loaded from a file
    table.calibration.a = table.calibration.b = table.calibration.c = 0.0
    calib = refit(table, halp.build_graph(model, x))  # measures nothing: no backend involved
    assert (calib.a, calib.b, calib.c) == pytest.approx((1.25, 0.8, 0.03), rel=1e-6)
    with pytest.raises(ValueError, match="graph"):
        refit(table, halp.build_graph(type(model)(width=8), x))


def test_low_percentile_statistic(tiny, fake_backend):
    """With statistic="p10" a point whose repeats were mostly disturbed still gets its undisturbed time."""
    from halp.latency.timing import LatencyStats

    class Disturbed(fake_backend):
        def time_layer(self, *args, **kwargs):
            v = super().time_layer(*args, **kwargs).median_ms
            return LatencyStats.from_samples([v] * 3 + [20 * v] * 7)

    model, x = tiny
    clean = profile(model, x, backend=fake_backend(), progress=False, **SETTINGS)
    low = profile(model, x, backend=Disturbed(), progress=False, statistic="p10", **SETTINGS)
    assert low.meta["settings"]["statistic"] == "p10"
    for a, b in zip(clean.entries, low.entries):
        np.testing.assert_allclose(a.median_ms, b.median_ms, rtol=1e-12)
    with pytest.raises(ValueError, match="statistic"):
        profile(model, x, backend=fake_backend(), progress=False, statistic="mode")


def test_recalibrate_follows_a_machine_that_got_faster_without_reprofiling(tiny, fake_backend, true_e2e):
    model, x = tiny
    table = profile(model, x, backend=fake_backend(), progress=False, **SETTINGS)
    graph = halp.build_graph(model, x)
    widths = random_widths(graph, np.random.default_rng(2), 0.3)
    truth = true_e2e(_slim_graph(model, graph, widths, x))
    assert predict_from_widths(graph, table, widths) == pytest.approx(truth, rel=1e-9)
    drifted = fake_backend()
    drifted.e2e_speed = 0.9  # every whole network now runs 10% faster
    before = {e.id: e.median_ms.copy() for e in table.entries}
    out = halp.recalibrate(table, model, x, backend=drifted)
    assert out is table and "recalibrated" in table.meta
    assert drifted.layer_calls == [] and drifted.op_calls == 0  # only end-to-end runs were taken
    assert drifted.model_calls == SETTINGS["calibration_samples"] + 1
    assert all(np.array_equal(before[e.id], e.median_ms) for e in table.entries)
    assert predict_from_widths(graph, table, widths) == pytest.approx(0.9 * truth, rel=1e-9)
    assert predict_latency(model, x, table) == pytest.approx(0.9 * true_e2e(graph), rel=1e-9)
    first = [s["widths"] for s in table.calibration.samples]
    more = fake_backend()
    halp.recalibrate(table, model, x, backend=more, samples=9)  # more networks than profiled: the first are the same
    assert more.model_calls == 10 and len(table.calibration.samples) == 10 and len(first) == 6
    assert [s["widths"] for s in table.calibration.samples[:6]] == first
    assert predict_from_widths(graph, table, widths) == pytest.approx(truth, rel=1e-9)


def test_recalibrate_refuses_another_model_or_backend(tiny, fake_backend):
    model, x = tiny
    table = profile(model, x, backend=fake_backend(), progress=False, **SETTINGS)
    other = halp.models.create("resnet20").eval()
    with pytest.raises(ValueError, match="profiled on"):
        halp.recalibrate(table, other, torch.randn(1, 3, 32, 32), backend=fake_backend())
    onnx_like = fake_backend()
    onnx_like.name = "onnxruntime"
    with pytest.raises(ValueError, match="onnxruntime"):
        halp.recalibrate(table, model, x, backend=onnx_like)


def test_a_table_with_the_retired_speed_guard_settings_loads_resumes_and_recalibrates(tiny, fake_backend, tmp_path,
                                                                                     caplog):
    """Tables and partial files of an earlier halp record the speed guard's settings (``guard``, ``guard_wait_s``):
    they are read as today's settings (reused, resumed, recalibrated); a guard that was on is logged as no longer
    applied."""
    model, x = tiny
    path = tmp_path / "t.json"
    profile(model, x, backend=fake_backend(), path=path, progress=False, **SETTINGS)
    doc = json.loads(path.read_text())
    for guard in (0.0, 1.2):
        doc["meta"]["settings"].update(guard=guard, guard_wait_s=10.0)
        path.write_text(json.dumps(doc))
        be = fake_backend()
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="halp.latency.serial"):
            table = profile(model, x, backend=be, path=path, progress=False, **SETTINGS)
        assert be.layer_calls == [] and be.model_calls == 0  # reused: the same settings
        assert ("speed guard (guard=1.2), which halp no longer has" in caplog.text) == bool(guard)
        assert "guard" not in table.meta["settings"] and "guard_wait_s" not in table.meta["settings"]
        halp.recalibrate(table, model, x, backend=fake_backend())
    interrupted = tmp_path / "p.json"
    with pytest.raises(KeyboardInterrupt):
        profile(model, x, backend=fake_backend(fail_after=4), path=interrupted, progress=False, **SETTINGS)
    partial = json.loads(partial_path(interrupted).read_text())
    partial["fingerprint"]["guard"] = 0.0
    partial_path(interrupted).write_text(json.dumps(partial))
    table = profile(model, x, backend=fake_backend(), path=interrupted, progress=False, **SETTINGS)
    assert table.meta["measurements"]["resumed"] == 4


def test_profile_calibrates_models_with_grouped_convs(fake_backend):
    """Calibration variants of a grouped conv keep the same channels in every conv group (a prefix keep,
    which the surgery refuses for grouped convs, made halp.profile raise on ResNeXt and RegNet)."""
    from halp.latency.calibrate import calibration_widths, slim_variant

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.Conv2d(32, 32, 3, padding=1, groups=4), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.Conv2d(32, 16, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.randn(1, 3, 16, 16)
    table = halp.profile(model, x, backend=fake_backend(), progress=False, grid_points=3, fine_span=0,
                         calibration_samples=6)
    graph = halp.build_graph(model, x)
    grouped = [g for g in graph.prunable_groups if g.blocks > 1]
    assert grouped, "the test needs a group feeding a grouped conv"
    variants = calibration_widths(graph, table, 6, 0.25, np.random.default_rng(0))
    assert len(table.calibration.samples) == 1 + len(variants)
    for widths in variants:
        for g in grouped:
            assert widths[g.name] % g.blocks == 0
        slim = slim_variant(model, graph, widths)
        assert slim[3].groups == 4 and slim[3].in_channels == widths[grouped[0].name]
