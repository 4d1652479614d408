"""``halp prune --task detection`` end to end on a tiny shapes-voc, its slim detector reloaded and exported,
and a killed detection prune resumed through the same command."""

from __future__ import annotations

import json
import math

import pytest
import torch
from fakes import FakeBackend

import halp
import halp.data as data
from halp.cli.main import main
from halp.detection import DetectorCore, create_detector, detect, evaluate
from halp.cli.main import build_parser
from halp.cli.prune import recipe_from_args
from halp.detection.run import MIN_FRACTION, prune_recipe
from halp.recipe import Recipe
from halp.run import _PrunerHooks

MODEL = "torchvision:ssdlite320_mobilenet_v3_large"
TINY = {"n_train": 4, "n_val": 1, "n_test": 2}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny shapes-voc root and a fake-backend latency table of SSDlite320's per-image network."""
    root = tmp_path_factory.mktemp("voc")
    _, _, info = data.make_loaders("shapes-voc", 2, root=root, **TINY)
    det = create_detector(MODEL, info.num_classes)
    table = halp.profile(DetectorCore(det).eval(), torch.zeros(1, 3, 320, 320), backend=FakeBackend(), progress=False,
                         grid_points=2, fine_span=0, calibration_samples=2)
    table.save(root / "table.json")
    return root, info


def _config(assets, out, **extra) -> str:
    root, _ = assets
    # a fake table and no measured feedback: the masks depend only on the seed (the resume test needs that)
    cfg = {"model": MODEL, "data": "shapes-voc", "data_root": str(root), "data_kwargs": TINY,
           "table": str(root / "table.json"), "threads": 1, "measure_repeats": 2, "measure_seconds": 0,
           "feedback_steps": 0,
           "dense_train": {"epochs": 1, "batch_size": 2, "warmup_epochs": 0.0},
           "prune": {"target": 0.6, "steps": 2, "interval": 1},
           "train": {"epochs": 2, "batch_size": 2, "warmup_epochs": 0.0, "checkpoint_every": 1}, **extra}
    path = out.parent / f"{out.name}.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return str(path)


def _prune(assets, out, **extra) -> dict:
    assert main(["--quiet", "prune", "--task", "detection", "--config", _config(assets, out, **extra),
                 "-o", str(out)]) == 0
    return json.loads((out / "report.json").read_text())


def test_cli_prunes_a_detector_whose_slim_form_reloads_detects_and_exports(assets, tmp_path):
    root, _ = assets
    out = tmp_path / "run"
    report = _prune(assets, out)
    assert report["task"] == "detection" and report["input_shape"] == [1, 3, 320, 320]
    assert report["pruned"]["predicted_ms"] <= report["final_target_ms"] * (1 + 1e-9) < report["dense"]["predicted_ms"]
    for part in ("dense", "pruned"):
        r = report[part]
        assert 0 <= r["map50"] <= 1 and 0 <= r["map"] <= r["map50"] + 1e-9
        assert r["latency_ms"] > 0 and r["postprocess_ms"] > 0
    assert sum(w < report["dense_widths"][n] for n, w in report["widths"].items()) >= 3
    # detection's default width floor: no group under 25% of its channels
    assert report["config"]["min_fraction"] == MIN_FRACTION == 0.25
    assert all(w >= math.ceil(0.25 * report["dense_widths"][n]) for n, w in report["widths"].items())
    # the slim *detector* comes back from JSON + safetensors and gives the run's own mAP
    slim = halp.load_pruned(out / "pruned").eval()
    dense = halp.load_pruned(out / "dense").eval()
    assert type(slim).__name__ == "SSD"
    assert sum(p.numel() for p in slim.parameters()) < 0.9 * sum(p.numel() for p in dense.parameters())
    _, test_loader, _ = data.make_loaders("shapes-voc", 2, root=root, **TINY)
    again = evaluate(slim, test_loader)
    assert again["map50"] == pytest.approx(report["pruned"]["map50"], abs=1e-9)
    images = [test_loader.dataset[0][0]]
    boxes = slim(images)[0]
    assert boxes["boxes"].shape[1] == 4 and len(boxes["boxes"]) == len(boxes["scores"]) > 0
    torch.testing.assert_close(boxes["scores"], detect(slim, images)[0]["scores"])
    # halp export on the saved detector writes its per-image network; onnxruntime agrees with torch
    onnx_path = tmp_path / "slim.onnx"
    assert main(["export", str(out / "pruned"), "--onnx", str(onnx_path)]) == 0
    import onnxruntime as ort

    x = torch.randn(1, 3, 320, 320, generator=torch.Generator().manual_seed(4))
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = DetectorCore(slim).eval()(x)
    assert len(got) == 2
    for g, w in zip(got, want):
        assert g.shape == tuple(w.shape)
        assert abs(g - w.numpy()).max() <= 1e-4 * max(1.0, float(w.abs().max()))


class _Killed(Exception):
    pass


def test_killed_cli_detection_prune_resumes_to_the_same_masks(assets, tmp_path, monkeypatch):
    full = _prune(assets, tmp_path / "full")
    original = _PrunerHooks.after_backward

    def dying(self, step):
        original(self, step)
        if step == 2:  # checkpointed at step 1, after the first pruning step
            raise _Killed()

    monkeypatch.setattr(_PrunerHooks, "after_backward", dying)
    with pytest.raises(_Killed):
        _prune(assets, tmp_path / "killed")
    assert (tmp_path / "killed" / "prune_ckpt.pt").is_file() and not (tmp_path / "killed" / "report.json").exists()
    monkeypatch.setattr(_PrunerHooks, "after_backward", original)
    resumed = _prune(assets, tmp_path / "killed")
    assert resumed["widths"] == full["widths"]
    assert [s["widths"] for s in resumed["steps"]] == [s["widths"] for s in full["steps"]]
    a = halp.load_pruned(tmp_path / "full" / "pruned").state_dict()
    b = halp.load_pruned(tmp_path / "killed" / "pruned").state_dict()
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_min_fraction_defaults_for_detection_and_the_cli_sets_or_refuses_it():
    base = {"task": "detection", "model": MODEL, "data": "shapes-voc"}
    assert prune_recipe(Recipe.from_dict({**base, "prune": {"target": 0.5}})).prune_config().min_fraction == 0.25
    chosen = Recipe.from_dict({**base, "prune": {"min_fraction": 0.0}})
    assert prune_recipe(chosen).prune_config().min_fraction == 0.0  # the recipe's own choice wins
    # the closed loop is the recipe's: every pruning step unless it says how many (0: off)
    eight = {**base, "prune": {"target": 0.5, "steps": 8}}
    assert prune_recipe(Recipe.from_dict(eight)).feedback_steps is None
    assert prune_recipe(Recipe.from_dict({**eight, "feedback_steps": 2})).feedback_steps == 2
    assert prune_recipe(Recipe.from_dict({**eight, "feedback_steps": 0})).feedback_steps == 0
    args = build_parser().parse_args(["prune", "--task", "detection", "--model", MODEL, "--min-fraction", "0.4"])
    assert recipe_from_args(args).prune_config().min_fraction == 0.4
    bad = build_parser().parse_args(["prune", "--model", MODEL, "--min-fraction", "1.5"])
    with pytest.raises(ValueError, match="min_fraction must be in"):
        recipe_from_args(bad)


def test_detection_budget_holds_as_measured_through_the_closed_loop(assets, tmp_path, monkeypatch):
    """A device whose latency the fake table gets wrong (a fixed overhead plus conv weights): the last two
    steps measure the proposed slim network against the dense one, and the schedule ends inside
    [0.95, 1.00] x the budget as measured; the report says budget, predicted and measured."""
    import halp.latency
    from halp.latency.timing import LatencyStats

    def device_ms(m):
        return 4.0 + 1e-5 * sum(p.numel() for p in m.parameters() if p.dim() == 4)

    calls = []

    def fake_measure(models, *args, **kwargs):
        calls.append(len(models))
        return [LatencyStats(v, 0.0, v, [v], [v]) for v in map(device_ms, models)]

    monkeypatch.setattr(halp.latency, "measure_many", fake_measure)
    report = _prune(assets, tmp_path / "run", feedback_steps=2)
    budget = 0.6
    assert report["budget_ratio"] == pytest.approx(budget)
    assert (1 - 0.05) * budget <= report["latency_ratio"] <= budget
    assert report["steps"][-1]["measured_ratio"] == pytest.approx(report["latency_ratio"])
    assert "feedback" in report["steps"][-1] and report["steps"][-1]["feedback"]
    # the table alone would have missed: its prediction of the final widths is not what the device says
    assert abs(report["predicted_ratio"] - report["latency_ratio"]) > 0.02
    assert report["pruned"]["latency_ms"] == pytest.approx(report["latency_ratio"] * report["dense"]["latency_ms"])
    assert set(calls) == {2}  # every measurement is dense and slim side by side
