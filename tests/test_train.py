"""The training loop: config, optimiser groups, LR schedule, evaluation, hooks, checkpoints and exact resume."""

from __future__ import annotations

import json
import math
import os
import pickle
import textwrap

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from halp.data import make_loaders
from halp.train import (
    TrainConfig,
    cosine_with_warmup,
    evaluate,
    load_checkpoint,
    make_optimizer,
    save_checkpoint,
    train,
)

from distributed import torchrun


def tiny_cnn(size: int = 8, dropout: float = 0.0) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(dropout), nn.Linear(16 * (size // 4) ** 2, 10),
    )


# ----------------------------------------------------------------------------- config


def test_config_validation_and_json_round_trip():
    cfg = TrainConfig(epochs=3, lr=0.05, warmup_epochs=0.5, label_smoothing=0.1, seed=7)
    again = TrainConfig.from_json(cfg.to_json())
    assert again == cfg and json.loads(cfg.to_json())["lr"] == 0.05
    for bad in (dict(lr=0), dict(epochs=-1), dict(momentum=1.0), dict(label_smoothing=1.0),
                dict(warmup_epochs=5, epochs=2), dict(device="tpu"), dict(batch_size=0),
                dict(momentum=0.0, nesterov=True), dict(weight_decay=-1e-4), dict(grad_clip=-1)):
        with pytest.raises(ValueError, match="TrainConfig"):
            TrainConfig(**bad)
    with pytest.raises(ValueError, match="unknown keys"):
        TrainConfig.from_dict({"epochs": 1, "learning_rate": 0.1})
    with pytest.raises(AttributeError):
        cfg.lr = 1.0  # frozen


# ----------------------------------------------------------------------------- optimiser and schedule


def test_no_weight_decay_on_batchnorm_and_biases():
    model = tiny_cnn()
    opt = make_optimizer(model, TrainConfig(weight_decay=0.1, lr=1.0, momentum=0.5, nesterov=False))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == ["0.weight", "10.weight", "4.weight"]
    assert {names[id(p)] for p in no_decay["params"]} == {"1.weight", "1.bias", "4.bias", "5.weight", "5.bias", "10.bias"}
    # Behaviour: with zero gradients a step shrinks conv weights by lr*wd and leaves BN untouched.
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    params = dict(model.named_parameters())
    assert torch.allclose(params["0.weight"], before["0.weight"] * 0.9)
    assert torch.equal(params["1.weight"], before["1.weight"]) and torch.equal(params["4.bias"], before["4.bias"])


def test_lr_schedule_warms_up_then_follows_cosine_to_zero():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.4)
    sched = cosine_with_warmup(opt, total_steps=100, warmup_steps=10)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:10] == pytest.approx([0.4 * (i + 1) / 10 for i in range(10)])  # linear warm-up
    assert lrs[9] == pytest.approx(0.4) and lrs[10] == pytest.approx(0.4)  # peak
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then non-increasing
    assert lrs[55] == pytest.approx(0.2)  # half-way through the cosine: half the peak
    assert lrs[-1] < 1e-3 and opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        cosine_with_warmup(opt, total_steps=10, warmup_steps=11)


# ----------------------------------------------------------------------------- evaluation


def test_evaluate_matches_hand_computed_accuracy_and_loss():
    model = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
    x = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, -1.0], [1.0, 0.0], [0.0, 0.5]])
    y = torch.tensor([0, 1, 2, 1, 2])  # the last two are misclassified
    loader = DataLoader(TensorDataset(x, y), batch_size=2)  # uneven last batch
    res = evaluate(model, loader, "cpu")
    logits = x @ model.weight.T
    expected = sum(-torch.log_softmax(logits[i], 0)[y[i]].item() for i in range(5)) / 5
    assert res["accuracy"] == pytest.approx(3 / 5) and res["count"] == 5
    assert res["loss"] == pytest.approx(expected, rel=1e-6)
    model.train()
    evaluate(model, loader, "cpu")
    assert model.training  # mode restored


# ----------------------------------------------------------------------------- training, hooks, resume


@pytest.fixture(scope="module")
def digits8():
    return make_loaders("digits", 32, seed=3, size=8)


class Recorder:
    def __init__(self, stop_at: int | None = None) -> None:
        self.calls: list[tuple[str, int]] = []
        self.stop_at = stop_at

    def after_backward(self, step: int) -> None:
        self.calls.append(("backward", step))

    def after_optimizer_step(self, step: int) -> None:
        self.calls.append(("optimizer", step))

    def on_checkpoint(self, step: int) -> None:
        self.calls.append(("checkpoint", step))

    def should_stop(self, step: int) -> bool:
        return self.stop_at is not None and step >= self.stop_at


def test_hooks_are_called_in_order_and_stop_works(digits8):
    train_loader, _, _ = digits8
    spe = len(train_loader)  # 1078 // 32 = 33
    rec = Recorder(stop_at=spe + 4)
    torch.manual_seed(0)
    out = train(tiny_cnn(), train_loader, TrainConfig(epochs=2, checkpoint_every=10, lr=0.05), hooks=rec,
                progress=False)
    assert out["stopped"] and out["step"] == spe + 4 and out["steps_per_epoch"] == spe
    assert rec.calls[:4] == [("backward", 0), ("optimizer", 0), ("backward", 1), ("optimizer", 1)]
    ckpts = [s for name, s in rec.calls if name == "checkpoint"]
    assert ckpts == [10, 20, 30, spe]  # every 10 steps and at the epoch end


def _state(model, opt):
    return {**{f"m.{k}": v.clone() for k, v in model.state_dict().items()},
            **{f"o.{i}": s["momentum_buffer"].clone() for i, s in enumerate(opt.state.values())}}


def test_interrupted_and_resumed_run_is_bitwise_identical(digits8, tmp_path):
    train_loader, test_loader, _ = digits8
    cfg = TrainConfig(epochs=2, lr=0.05, warmup_epochs=0.5, seed=11, label_smoothing=0.1)
    torch.manual_seed(0)
    init = tiny_cnn(dropout=0.3).state_dict()

    ref = tiny_cnn(dropout=0.3)
    ref.load_state_dict(init)
    ref_opt = make_optimizer(ref, cfg)
    ref_out = train(ref, train_loader, cfg, optimizer=ref_opt, progress=False)

    # Run 1 stops mid-epoch 2 and saves; run 2 starts from fresh objects and the file only.
    spe = len(train_loader)
    model = tiny_cnn(dropout=0.3)
    model.load_state_dict(init)
    opt = make_optimizer(model, cfg)
    sched = cosine_with_warmup(opt, 2 * spe, round(0.5 * spe))
    stop = spe + 7
    first = train(model, train_loader, cfg, hooks=Recorder(stop_at=stop), optimizer=opt, scheduler=sched,
                  progress=False)
    assert first["step"] == stop
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, opt, sched, first["step"], extra={"note": "mid-epoch", "mask": torch.ones(3)})

    torch.manual_seed(123)  # a different global RNG state must not matter
    resumed = tiny_cnn(dropout=0.3)
    opt2 = make_optimizer(resumed, cfg)
    sched2 = cosine_with_warmup(opt2, 2 * spe, round(0.5 * spe))
    state = load_checkpoint(path, resumed, opt2, sched2)
    assert state["step"] == stop and state["extra"]["note"] == "mid-epoch"
    assert torch.equal(state["extra"]["mask"], torch.ones(3))
    out = train(resumed, train_loader, cfg, start_step=state["step"], optimizer=opt2, scheduler=sched2,
                progress=False)
    assert out["step"] == ref_out["step"] == 2 * spe
    a, b = _state(ref, ref_opt), _state(resumed, opt2)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert opt2.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"]
    assert evaluate(resumed, test_loader) == evaluate(ref, test_loader)


def test_tiny_model_learns_digits():
    train_loader, test_loader, info = make_loaders("digits", 32, seed=0, size=16)
    torch.manual_seed(0)
    model = tiny_cnn(size=16)
    cfg = TrainConfig(epochs=4, lr=0.1, warmup_epochs=0.5, eval_every=0)
    out = train(model, train_loader, cfg, test_loader=test_loader, progress=False)
    assert out["test"]["count"] == info.test_len == 2157
    assert out["test"]["accuracy"] > 0.80
    assert out["history"][-1]["train_loss"] < out["history"][0]["train_loss"]


def test_nonfinite_gradients_skip_the_update():
    model = nn.Linear(2, 2)
    x = torch.tensor([[1.0, float("nan")], [1.0, 2.0]])
    loader = DataLoader(TensorDataset(x, torch.tensor([0, 1])), batch_size=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = train(model, loader, TrainConfig(epochs=1, warmup_epochs=0, momentum=0.0, nesterov=False), progress=False)
    assert out["nonfinite_steps"] == 1 and out["step"] == 2
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert not torch.equal(model.weight, before["weight"])  # the finite batch still trained


# ----------------------------------------------------------------------------- checkpoints


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch HALP_PWNED",))


def test_checkpoint_extras_are_checked_and_unsafe_files_refused(tmp_path, monkeypatch):
    model = tiny_cnn()
    with pytest.raises(ValueError, match=r"extra\['bad'\] is a set"):
        save_checkpoint(tmp_path / "a.pt", model, extra={"bad": {1, 2}})
    with pytest.raises(ValueError, match="keys must be strings"):
        save_checkpoint(tmp_path / "a.pt", model, extra={"nested": {1: 2}})
    save_checkpoint(tmp_path / "sub" / "a.pt", model, step=5, extra={"cfg": {"lr": 0.1, "ids": [1, 2]}})
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["a.pt"]  # no temporary left behind
    other = tiny_cnn()
    state = load_checkpoint(tmp_path / "sub" / "a.pt", other)
    assert state == {"step": 5, "extra": {"cfg": {"lr": 0.1, "ids": [1, 2]}}}
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    with pytest.raises(ValueError, match="no optimizer state"):
        load_checkpoint(tmp_path / "sub" / "a.pt", other, optimizer=make_optimizer(other, TrainConfig()))
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"format": "halp-checkpoint/1", "x": _Evil()}, fh, protocol=2)
    with pytest.raises(ValueError, match="not a loadable halp checkpoint"):
        load_checkpoint(tmp_path / "evil.pt", other)
    assert not (tmp_path / "HALP_PWNED").exists()
    torch.save({"model": {}}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a halp checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="no checkpoint file"):
        load_checkpoint(tmp_path / "missing.pt")


# ----------------------------------------------------------------------------- torch.distributed


_WORKER = textwrap.dedent(
    """
    import sys, torch, torch.nn as nn
    from halp.data import make_loaders
    from halp.train import TrainConfig, cleanup_distributed, evaluate, is_main_process, setup_distributed, train
    torch.set_num_threads(1)
    info = setup_distributed("cpu")
    train_loader, test_loader, _ = make_loaders("digits", 16, seed=0, size=8, distributed=True)
    torch.manual_seed(info.rank)  # different initial weights per rank: DDP must broadcast rank 0's
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(256, 10))
    out = train(model, train_loader, TrainConfig(epochs=1, lr=0.05, warmup_epochs=0), progress=False)
    res = evaluate(model, test_loader)
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.save({"params": params, "eval": res, "steps": out["step"], "main": is_main_process(),
                "world": info.world_size, "batches": len(train_loader)}, sys.argv[1] + f"/rank{info.rank}.pt")
    cleanup_distributed()
    """
)


def test_two_process_gloo_run_keeps_ranks_identical(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    proc = torchrun(script, str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2 and r0["main"] and not r1["main"]
    assert r0["batches"] == r1["batches"] == math.ceil(1078 / 2) // 16 and r0["steps"] == r0["batches"]
    assert torch.equal(r0["params"], r1["params"])  # DDP: same weights on every rank
    assert r0["eval"] == r1["eval"] and r0["eval"]["count"] == 2157  # all-reduced over disjoint shards
