"""A whole recipe run (halp prune): outputs, loadable models, kill-and-resume reproducibility."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import halp
from fakes import FakeBackend
from halp.cli.main import main
from halp.recipe import Recipe
from halp.run import _PrunerHooks, run

SMALL = {"widths": [8, 16, 32]}  # a narrow digits_resnet: the pipeline, not the accuracy, is under test


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Dense weights and a deterministic latency table for the small digits model."""
    root = tmp_path_factory.mktemp("assets")
    torch.manual_seed(0)
    model = halp.models.create("digits_resnet", num_classes=10, in_chans=1, **SMALL)
    weights = root / "dense.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    table = halp.profile(model.eval(), torch.randn(1, 1, 32, 32), backend=FakeBackend(), progress=False,
                         grid_points=4, fine_span=8)
    table.save(root / "table.json")
    return str(weights), str(root / "table.json")


def recipe(assets, out, extra=None, **prune) -> Recipe:
    extra = extra or {}
    weights, table = assets
    return Recipe.from_dict({
        "model": "digits_resnet", "model_kwargs": SMALL, "weights": weights, "data": "digits", "table": table,
        "threads": 1, "prune": {"target": 0.5, "steps": 3, "interval": 3, **prune},
        "train": {"epochs": 1, "lr": 0.02, "batch_size": 64, "warmup_epochs": 0.0, "checkpoint_every": 2,
                  "log_every": 0},
        "measure_repeats": 3, "plots": True, "out": str(out), "corrections": 0,
        "feedback_steps": 0,  # a fake table: no device check, no measured feedback (tests below fake the device)
        **extra,
    })


def test_run_writes_a_loadable_slim_model_meeting_the_predicted_budget(assets, tmp_path):
    report = run(recipe(assets, tmp_path), progress=False)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["pruned"]["accuracy"] == pytest.approx(report["pruned"]["accuracy"])
    assert set(on_disk) >= {"input_shape", "dense", "pruned", "target"}
    assert report["input_shape"] == [1, 1, 32, 32] and report["target"] == 0.5
    assert report["pruned"]["predicted_ms"] <= report["final_target_ms"] * (1 + 1e-9)
    assert 0 <= report["pruned"]["accuracy"] <= 1
    # the masked model in the loop and the slim one agree on the test set
    assert report["pruned"]["accuracy"] == pytest.approx(report["pruned"]["masked_accuracy"], abs=1e-9)
    slim = halp.load_pruned(tmp_path / "pruned").eval()
    dense = halp.load_pruned(tmp_path / "dense").eval()
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in dense.parameters())
    table = halp.LatencyTable.load(assets[1])
    assert halp.predict_latency(slim, torch.zeros(1, 1, 32, 32), table) == pytest.approx(
        report["pruned"]["predicted_ms"], rel=1e-9)
    for name in ("summary.md", "latency_per_step.png", "widths.png"):
        assert (tmp_path / name).stat().st_size > 0
    # the CLI works on what the run wrote: replot the report, export the slim model to ONNX
    figs = tmp_path / "figs"
    assert main(["plot", str(tmp_path / "report.json"), "-o", str(figs)]) == 0
    assert (figs / "widths.png").stat().st_size > 0
    assert main(["export", str(tmp_path / "pruned"), "--onnx", str(tmp_path / "slim.onnx")]) == 0
    import onnxruntime as ort

    x = torch.randn(1, 1, 32, 32)
    sess = ort.InferenceSession(str(tmp_path / "slim.onnx"), providers=["CPUExecutionProvider"])
    (onnx_out,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch_out = slim(x).numpy()
    assert abs(onnx_out - torch_out).max() <= 1e-4 * max(1.0, abs(torch_out).max())


class _Killed(Exception):
    pass


def test_killed_run_resumes_to_the_same_masks(assets, tmp_path, monkeypatch):
    full = run(recipe(assets, tmp_path / "full"), progress=False)

    original = _PrunerHooks.after_backward

    def dying(self, step):
        original(self, step)
        if step == 7:  # the checkpoint is at step 6: mid-schedule and mid-accumulation
            raise _Killed()

    monkeypatch.setattr(_PrunerHooks, "after_backward", dying)
    with pytest.raises(_Killed):
        run(recipe(assets, tmp_path / "killed"), progress=False)
    monkeypatch.setattr(_PrunerHooks, "after_backward", original)
    resumed = run(recipe(assets, tmp_path / "killed"), progress=False)
    assert resumed["widths"] == full["widths"]
    assert [s["widths"] for s in resumed["steps"]] == [s["widths"] for s in full["steps"]]
    a = halp.load_pruned(tmp_path / "full" / "pruned")
    b = halp.load_pruned(tmp_path / "killed" / "pruned")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka


def test_cli_prune_reports_bad_recipes_clearly(tmp_path, capsys):
    bad = tmp_path / "r.yaml"
    bad.write_text("model: digits_resnet\nprune: {target: 2.0}\n")
    assert main(["prune", "--config", str(bad)]) == 2
    assert "target" in capsys.readouterr().err
    bad.write_text("modle: digits_resnet\n")
    assert main(["prune", "--config", str(bad)]) == 2
    assert "unknown recipe key" in capsys.readouterr().err


def test_schedule_longer_than_training_is_refused_before_training(assets, tmp_path):
    with pytest.raises(ValueError, match="schedule prunes until iteration"):
        run(recipe(assets, tmp_path, steps=30, interval=40), progress=False)


def test_device_check_prunes_further_when_the_measured_ratio_misses(assets, tmp_path, monkeypatch):
    """The table predicts, the device decides: a slim model measured over budget triggers a correction step."""
    import halp.latency
    from halp.latency.timing import LatencyStats

    calls = []

    def fake_measure(models, *args, **kwargs):  # dense 10 ms; the slim model 0.9 of dense (three times), then 0.6
        calls.append(len(models))
        slim_ms = 9.0 if len(calls) <= 3 else 6.0
        return [LatencyStats(10.0, 0.1, 10.0, [10.0]), LatencyStats(slim_ms, 0.1, slim_ms, [slim_ms])]

    monkeypatch.setattr(halp.latency, "measure_many", fake_measure)
    report = run(recipe(assets, tmp_path, extra={"corrections": 1, "correction_epochs": 1}, target=0.7),
                 progress=False)
    first, second = report["corrections"]
    assert first["measured_ratio"] == pytest.approx(0.9) and first["budget_ratio"] == pytest.approx(0.7)
    assert first["measurements"] == pytest.approx([0.9, 0.9, 0.9])  # the miss confirmed before correcting
    # the correction target scales the prediction by the measured miss, and the solve lands under it
    assert first["corrected_target_ms"] == pytest.approx(first["predicted_ms"] * 0.7 / 0.9 * 0.99)
    assert first["corrected_predicted_ms"] <= first["corrected_target_ms"] * (1 + 1e-9)
    assert second["measured_ratio"] == pytest.approx(0.6)  # within budget: no further step
    assert len(report["steps"]) == 4  # the 3 scheduled steps + 1 correction
    assert report["pruned"]["accuracy"] == pytest.approx(report["pruned"]["masked_accuracy"], abs=1e-9)


@pytest.mark.parametrize("name", ["torchvision:mobilenet_v3_small", "timm:mobilenetv3_small_050"])
def test_library_model_prunes_end_to_end_and_reloads(name, tmp_path):
    """`halp prune --model torchvision:... / timm:...` on the bundled digits, a short schedule, a fake
    table (the pipeline is under test, not the device): a slim model halp.load_pruned rebuilds by name."""
    torch.manual_seed(0)
    model = halp.models.create(name, num_classes=10, in_chans=1)
    table = halp.profile(model.eval(), torch.randn(1, 1, 32, 32), backend=FakeBackend(), progress=False,
                         grid_points=3, fine_span=0)
    table.save(tmp_path / "table.json")
    out = tmp_path / "run"
    cfg = tmp_path / "recipe.yaml"
    cfg.write_text(json.dumps({  # YAML is a superset of JSON
        "model": name, "data": "digits", "table": str(tmp_path / "table.json"), "threads": 1,
        "dense_train": {"epochs": 1, "lr": 0.05, "batch_size": 64, "log_every": 0},
        "prune": {"target": 0.8, "steps": 2, "interval": 3},
        "train": {"epochs": 1, "lr": 0.01, "batch_size": 64, "log_every": 0},
        "measure_repeats": 3, "corrections": 0, "feedback_steps": 0, "plots": False, "out": str(out)}))
    code = main(["-q", "prune", "--config", str(cfg)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["pruned"]["predicted_ms"] <= report["final_target_ms"] * (1 + 1e-9)
    slim = halp.load_pruned(out / "pruned").eval()
    assert slim.halp_arch["name"] == name
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        assert slim(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_feedback_lands_the_measured_budget_and_the_report_states_it(assets, tmp_path, monkeypatch):
    """The last pruning steps measure their slim models (a fake device: cost per weight plus overhead, which
    the table does not predict) and the schedule ends inside [0.95, 1] x budget measured, no correction."""
    import halp.latency
    from halp.latency.timing import LatencyStats

    def device_ms(m):
        return 0.3 + 1e-4 * sum(p.numel() for p in m.parameters() if p.dim() == 4)

    def fake_measure(models, *args, **kwargs):
        return [LatencyStats(v, 0.0, v, [v], [v]) for v in map(device_ms, models)]

    monkeypatch.setattr(halp.latency, "measure_many", fake_measure)
    report = run(recipe(assets, tmp_path, extra={"feedback_steps": 2, "corrections": 1}, target=0.6),
                 progress=False)
    assert 0.95 * 0.6 <= report["schedule_end_measured_ratio"] <= 0.6
    assert report["latency_ratio"] == pytest.approx(report["schedule_end_measured_ratio"])
    assert len(report["corrections"]) == 1  # no correction step was needed
    assert report["budget_ratio"] == pytest.approx(0.6)
    assert report["predicted_ratio"] == pytest.approx(report["pruned"]["predicted_ms"] / report["dense"]["predicted_ms"])
    assert report["steps"][-1]["measured_ratio"] == pytest.approx(report["latency_ratio"])
    assert "feedback" in report["steps"][-1] and "feedback" not in report["steps"][0]
    assert "budget 0.600" in (tmp_path / "summary.md").read_text()


def test_by_default_every_pruning_step_is_measured_and_each_lands_its_own_target(assets, tmp_path, monkeypatch):
    """Recipe.feedback_steps None (the default): every step measures its slim model on the (fake) device, so
    the measured ratio follows the schedule's targets from the first step, not only the last two."""
    import halp.latency
    from halp.latency.timing import LatencyStats

    def device_ms(m):  # per-op overhead the table does not know: the table is optimistic at every width
        return 0.3 + 1e-4 * sum(p.numel() for p in m.parameters() if p.dim() == 4)

    def fake_measure(models, *args, **kwargs):
        return [LatencyStats(v, 0.0, v, [v], [v]) for v in map(device_ms, models)]

    monkeypatch.setattr(halp.latency, "measure_many", fake_measure)
    assert Recipe().feedback_steps is None
    report = run(recipe(assets, tmp_path, extra={"feedback_steps": None}, target=0.6), progress=False)
    steps = report["steps"]
    assert len(steps) == 3 and all(s.get("feedback") for s in steps)
    dense_ms = report["dense"]["predicted_ms"]
    for s in steps:  # each step's measured ratio inside [0.95, 1] x its own goal (the exponential schedule)
        goal = s["target_ms"] / dense_ms
        assert 0.95 * goal - 1e-9 <= s["measured_ratio"] <= goal + 1e-9, (s["measured_ratio"], goal)
    assert 0.95 * 0.6 <= report["schedule_end_measured_ratio"] <= 0.6


def test_an_unconfirmed_miss_triggers_no_correction(assets, tmp_path, monkeypatch):
    """One high reading of the ratio (a noisy shared machine) is outvoted by two that meet the budget."""
    import halp.latency
    from halp.latency.timing import LatencyStats

    readings = iter([9.0, 6.5, 6.8] + [6.6] * 10)

    def fake_measure(models, *args, **kwargs):
        v = next(readings)
        return [LatencyStats(10.0, 0.1, 10.0, [10.0]), LatencyStats(v, 0.1, v, [v])]

    monkeypatch.setattr(halp.latency, "measure_many", fake_measure)
    report = run(recipe(assets, tmp_path, extra={"corrections": 1, "correction_epochs": 1}, target=0.7),
                 progress=False)
    (only,) = report["corrections"]
    assert only["measurements"] == pytest.approx([0.9, 0.65, 0.68]) and only["measured_ratio"] == pytest.approx(0.68)
    assert len(report["steps"]) == 3  # no correction step


def test_budget_measurements_last_about_measure_seconds(monkeypatch):
    """A ratio of two small models is measured for ~measure_seconds (sized from the table's dense latency),
    never fewer forwards than measure_repeats, never more than the cap; one round per ~10 forwards."""
    import halp.latency
    from halp.latency.timing import LatencyStats
    from halp.run import MAX_MEASURE_REPEATS, measure_pair, ratio_measure

    seen = []

    def fake_measure(models, *args, repeats, rounds, **kwargs):
        seen.append((repeats, rounds))
        return [LatencyStats(10.0, 0.1, 10.0, [10.0]), LatencyStats(4.0, 0.1, 4.0, [4.0])]

    monkeypatch.setattr(halp.latency, "measure_many", fake_measure)
    r = Recipe(measure_repeats=50, measure_seconds=1.0)
    assert ratio_measure(r, None, None, expected_ms=2.0)(None) == pytest.approx(0.4)
    measure_pair(r, None, None, expected_ms=100.0)(None)
    measure_pair(r, None, None, expected_ms=1e-4)(None)
    measure_pair(Recipe(measure_repeats=50, measure_seconds=0.0), None, None, expected_ms=2.0)(None)
    assert seen == [(500, 50), (50, 8), (MAX_MEASURE_REPEATS, MAX_MEASURE_REPEATS // 10), (50, 8)]
    with pytest.raises(ValueError, match="measure_seconds"):
        Recipe(measure_seconds=-1)
    with pytest.raises(ValueError, match="measure_repeats"):
        Recipe(measure_repeats=0)
