"""Training a detector with its own loss in halp's loop: hooks in order, and a killed run resumes exactly."""

from __future__ import annotations

import math

import pytest
import torch

import halp.data as data
from halp.checkpoint import load_checkpoint, save_checkpoint
from halp.detection import create_detector, make_detection_optimizer, train_detector
from halp.train import TrainConfig, cosine_with_warmup

CFG = TrainConfig(epochs=2, lr=0.01, weight_decay=4e-5, warmup_epochs=0.5, batch_size=2, log_every=0, seed=3)


@pytest.fixture(scope="module")
def loaders(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes-voc")
    tr, te, info = data.make_loaders("shapes-voc", 2, root=root, n_train=4, n_val=1, n_test=2, seed=1)
    return tr, te, info


def _detector(info):
    torch.manual_seed(0)
    return create_detector("ssdlite320_mobilenet_v3_large", info.num_classes)


class Recorder:
    def __init__(self):
        self.calls = []

    def after_backward(self, step):
        self.calls.append(("after_backward", step))

    def after_optimizer_step(self, step):
        self.calls.append(("after_optimizer_step", step))

    def on_checkpoint(self, step):
        self.calls.append(("on_checkpoint", step))


def test_loss_terms_hooks_and_map(loaders):
    tr, te, info = loaders
    det = _detector(info)
    rec = Recorder()
    before = [p.detach().clone() for p in det.parameters()]
    res = train_detector(det, tr, CFG, hooks=rec, test_loader=te, progress=False)
    assert res["step"] == 4 == res["total_steps"] and res["steps_per_epoch"] == 2 and res["nonfinite_steps"] == 0
    h = res["history"]
    assert [r["epoch"] for r in h] == [1, 2]
    for r in h:  # the detector's own loss terms; their sum is what was stepped
        assert r["train_loss"] == pytest.approx(r["classification"] + r["bbox_regression"], rel=1e-5)
        assert math.isfinite(r["train_loss"]) and r["train_loss"] > 0
    assert 0.0 <= res["test"]["map50"] <= 1.0 and res["test"]["count"] == 2 and "map50" in h[1]
    expected = []
    for s in range(4):
        expected += [("after_backward", s), ("after_optimizer_step", s)]
        if s % 2 == 1:
            expected.append(("on_checkpoint", s + 1))
    assert rec.calls == expected
    assert any(not torch.equal(a, b) for a, b in zip(before, det.parameters()))


class StopAndSave:
    """A kill at step 2, with the checkpoint the pruner's run hooks would have written."""

    def __init__(self, path, model, opt, sched):
        self.path, self.model, self.opt, self.sched = path, model, opt, sched

    def on_checkpoint(self, step):
        save_checkpoint(self.path, self.model, self.opt, self.sched, step, extra={"note": "test"})

    def should_stop(self, step):
        return step == 2


def test_killed_training_resumes_bitwise(loaders, tmp_path):
    tr, _, info = loaders
    cfg = TrainConfig(**{**CFG.to_dict(), "checkpoint_every": 2})
    whole = _detector(info)
    train_detector(whole, tr, cfg, progress=False)

    first = _detector(info)
    opt = make_detection_optimizer(first, cfg)
    sched = cosine_with_warmup(opt, 4, 1)
    ckpt = tmp_path / "det.ckpt"
    res = train_detector(first, tr, cfg, hooks=StopAndSave(ckpt, first, opt, sched), optimizer=opt, scheduler=sched,
                         progress=False)
    assert res["stopped"] and res["step"] == 2

    resumed = create_detector("ssdlite320_mobilenet_v3_large", info.num_classes)
    opt2 = make_detection_optimizer(resumed, cfg)
    sched2 = cosine_with_warmup(opt2, 4, 1)
    state = load_checkpoint(ckpt, resumed, opt2, sched2)
    assert state["step"] == 2 and state["extra"] == {"note": "test"}
    res = train_detector(resumed, tr, cfg, start_step=state["step"], optimizer=opt2, scheduler=sched2, progress=False)
    assert res["step"] == 4
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
