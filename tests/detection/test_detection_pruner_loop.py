"""A HALP Pruner driven by the detector's own loss in train_detector, and a killed prune resuming."""

from __future__ import annotations

import copy

import pytest
import torch
from fakes import FakeBackend

import halp
import halp.data as data
from halp.checkpoint import load_checkpoint, save_checkpoint
from halp.config import PruneConfig
from halp.detection import DetectorCore, create_detector, evaluate, train_detector, with_core
from halp.train import TrainConfig, cosine_with_warmup, make_optimizer

X = torch.zeros(1, 3, 320, 320)
CFG = TrainConfig(epochs=1, lr=0.01, weight_decay=4e-5, warmup_epochs=0.0, batch_size=2, log_every=0, seed=0)
PRUNE = PruneConfig(target=0.7, steps=2, interval=2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes-voc")
    tr, te, info = data.make_loaders("shapes-voc", 2, root=root, n_train=8, n_val=1, n_test=2, seed=2)
    torch.manual_seed(0)
    det = create_detector("ssdlite320_mobilenet_v3_large", info.num_classes)
    table = halp.profile(DetectorCore(det).eval(), X, backend=FakeBackend(), progress=False, grid_points=2,
                         fine_span=0, calibration_samples=2)
    return tr, te, det, table


class Hooks:
    def __init__(self, pruner, path=None, opt=None, sched=None, stop_at=None):
        self.pruner, self.path, self.opt, self.sched, self.stop_at = pruner, path, opt, sched, stop_at

    def after_backward(self, step):
        self.pruner.step()

    def after_optimizer_step(self, step):
        self.pruner.apply_masks()

    def on_checkpoint(self, step):
        if self.path is not None:
            save_checkpoint(self.path, self.pruner.model, self.opt, self.sched, step,
                            extra={"pruner": self.pruner.state_dict()})

    def should_stop(self, step):
        return step == self.stop_at


def _run(setup, path=None, stop_at=None):
    tr, _, det0, table = setup
    det = copy.deepcopy(det0)
    core = DetectorCore(det)
    pruner = halp.Pruner(core, X, table, PRUNE)
    opt = make_optimizer(det, CFG)
    sched = cosine_with_warmup(opt, 4, 0)
    cfg = TrainConfig(**{**CFG.to_dict(), "checkpoint_every": 2})
    res = train_detector(det, tr, cfg, hooks=Hooks(pruner, path, opt, sched, stop_at), optimizer=opt, scheduler=sched,
                         progress=False)
    return det, pruner, res


def test_detection_loss_drives_the_pruner_to_its_budget(setup):
    _, te, _, _ = setup
    det, pruner, res = _run(setup)
    assert res["step"] == 4 and pruner.done
    widths = pruner.widths()
    dense = {g.name: g.channels for g in pruner.graph.groups}
    assert sum(w < dense[n] for n, w in widths.items()) >= 3  # several backbone/extra groups got narrower
    assert pruner.predict(widths) <= pruner.final_ms * 1.0001 < pruner.dense_ms
    slim = pruner.finalize().eval()
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in DetectorCore(det).parameters())
    result = evaluate(with_core(det, slim), te)
    assert result["count"] == 2 and 0.0 <= result["map50"] <= 1.0


def test_killed_detection_prune_resumes_to_the_same_masks(setup, tmp_path):
    tr, _, det0, table = setup
    whole_det, whole, _ = _run(setup)
    ckpt = tmp_path / "prune.ckpt"
    _, first, res = _run(setup, path=ckpt, stop_at=2)
    assert res["stopped"] and first.pruning_step == 1  # killed after the first pruning step
    det = copy.deepcopy(det0)
    core = DetectorCore(det)
    pruner = halp.Pruner(core, X, table, PRUNE)
    opt = make_optimizer(det, CFG)
    sched = cosine_with_warmup(opt, 4, 0)
    state = load_checkpoint(ckpt, det, opt, sched)
    pruner.load_state_dict(state["extra"]["pruner"])
    train_detector(det, tr, CFG, hooks=Hooks(pruner), start_step=state["step"], optimizer=opt, scheduler=sched,
                   progress=False)
    assert pruner.done and pruner.widths() == whole.widths()
    for name, idx in whole.keep.items():
        assert torch.equal(pruner.keep[name], idx), name
    for (name, a), b in zip(whole_det.state_dict().items(), det.state_dict().values()):
        assert torch.equal(a, b), name  # and the weights are bitwise those of the uninterrupted run
