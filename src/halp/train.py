"""The training / fine-tuning loop the pruner plugs into; single process or torch.distributed (torchrun).

A run is a pure function of its seed: the data order and augmentation of epoch ``e`` come from
``(seed, e)`` (:class:`halp.data.SeededSampler`), and the global RNG is re-seeded from ``(seed, step)``
before every step (dropout and the like). A run stopped at step ``k`` and resumed from a checkpoint with
``start_step=k`` therefore produces bitwise the same weights on CPU as an uninterrupted one.

Hooks are objects with any of these methods, called in this order for every minibatch (``step`` is the
0-based index of the optimizer step being taken):

* ``after_backward(step)`` — gradients are ready (the pruner accumulates importance here);
* ``after_optimizer_step(step)`` — weights were updated (the pruner re-applies its masks here);
* ``on_checkpoint(step)`` — every ``checkpoint_every`` steps and at each epoch end; ``step`` is then the
  number of steps done, i.e. the ``start_step`` to resume from;
* ``should_stop(step) -> bool`` — checked after every step (with the number of steps done).
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable, Mapping

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from halp.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from halp.data._common import mix_seed
from halp.data.sampler import epoch_batches, steps_per_epoch
from halp.distributed import (
    DistInfo,
    _unwrap,
    _world,
    cleanup_distributed,
    is_main_process,
    resolve_device,
    setup_distributed,
)

log = logging.getLogger(__name__)

# the checkpoint and distributed helpers live in their own modules; importing them from here still works
__all__ = [
    "CHECKPOINT_FORMAT", "DistInfo", "TrainConfig", "WarmupCosine", "cleanup_distributed", "cosine_with_warmup",
    "evaluate", "is_main_process", "load_checkpoint", "make_optimizer", "resolve_device", "save_checkpoint",
    "setup_distributed", "train",
]


@dataclass(frozen=True)
class TrainConfig:
    """A training recipe: SGD with cosine LR after a linear warm-up.

    ``batch_size`` is per process (the loader's); it is recorded here so a recipe is one object.
    ``checkpoint_every`` counts steps (0: only at epoch ends); ``eval_every`` counts epochs (0: only at
    the end); ``grad_clip`` is a max gradient norm (0: off).
    """

    epochs: int = 10
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    batch_size: int = 128
    seed: int = 0
    device: str = "cpu"
    log_every: int = 50
    checkpoint_every: int = 0
    eval_every: int = 1
    grad_clip: float = 0.0

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"TrainConfig: {msg}")

        need(isinstance(self.epochs, int) and self.epochs >= 0, f"epochs must be an int >= 0, got {self.epochs!r}")
        need(self.lr > 0 and math.isfinite(self.lr), f"lr must be > 0, got {self.lr}")
        need(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(not (self.nesterov and self.momentum == 0), "nesterov needs momentum > 0")
        need(0 <= self.warmup_epochs <= self.epochs, f"warmup_epochs must be in [0, epochs], got {self.warmup_epochs}")
        need(0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        need(isinstance(self.batch_size, int) and self.batch_size >= 1, f"batch_size must be >= 1: {self.batch_size}")
        need(isinstance(self.seed, int) and self.seed >= 0, f"seed must be an int >= 0, got {self.seed!r}")
        need(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
             f"device must be 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto', got {self.device!r}")
        for name in ("log_every", "checkpoint_every", "eval_every"):
            need(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        need(self.grad_clip >= 0, f"grad_clip must be >= 0 (0 = off), got {self.grad_clip}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"TrainConfig: unknown keys {unknown}; known keys are {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        return cls.from_dict(json.loads(text))


# ----------------------------------------------------------------------------- optimiser and schedule


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD with weight decay on weight matrices and kernels only, not on BatchNorm parameters or biases.

    Decaying BN scales pulls them towards zero for no accuracy benefit and would bias Taylor importance.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


class WarmupCosine:
    """LR factor: linear from ``1/warmup`` to 1 over ``warmup`` steps, then cosine down to 0 at ``total``.

    A class (not a lambda) so the scheduler's state dict carries its numbers and round-trips.
    """

    def __init__(self, total_steps: int, warmup_steps: int) -> None:
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_with_warmup(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int) -> LambdaLR:
    """Per-step scheduler: call ``scheduler.step()`` after every optimizer step."""
    if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"need total_steps >= 1 and 0 <= warmup_steps <= total_steps: {total_steps}, {warmup_steps}")
    return LambdaLR(optimizer, WarmupCosine(total_steps, warmup_steps))


def _fast_forward(scheduler: LambdaLR, step: int) -> None:
    """Position a fresh scheduler at ``step`` without stepping the optimizer."""
    scheduler.last_epoch = step
    for group, base, fn in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * fn(step)
    scheduler._last_lr = [g["lr"] for g in scheduler.optimizer.param_groups]  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[Any], device: str | torch.device | None = None) -> dict[str, float]:
    """Top-1 accuracy (a fraction), mean cross-entropy and count, summed over all ranks when distributed.

    ``device`` defaults to where the model's parameters are. The DDP wrapper is bypassed so ranks may
    hold different numbers of test batches.
    """
    net = _unwrap(model)
    if device is None:
        device = next((p.device for p in net.parameters()), torch.device("cpu"))
    was_training = net.training
    net.eval()
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
    try:
        for x, y in loader:
            out = net(x.to(device))
            y = y.to(out.device)
            totals += torch.tensor([F.cross_entropy(out.float(), y, reduction="sum").item(),
                                    (out.argmax(1) == y).sum().item(), len(y)], dtype=torch.float64)
    finally:
        net.train(was_training)
    if _world() > 1:
        reduced = totals.to(device) if dist.get_backend() == "nccl" else totals
        dist.all_reduce(reduced)
        totals = reduced.cpu()
    if totals[2] == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    return {"accuracy": float(totals[1] / totals[2]), "loss": float(totals[0] / totals[2]), "count": int(totals[2])}


# ----------------------------------------------------------------------------- training


def _hooks(hooks: Any) -> list[Any]:
    if hooks is None:
        return []
    return list(hooks) if isinstance(hooks, (list, tuple)) else [hooks]


def _call(hooks: list[Any], name: str, step: int) -> None:
    for h in hooks:
        fn = getattr(h, name, None)
        if fn is not None:
            fn(step)


def _should_stop(hooks: list[Any], step: int) -> bool:
    for h in hooks:
        stop = getattr(h, "should_stop", None)
        if stop is not None and (stop(step) if callable(stop) else bool(stop)):
            return True
    return False


def _grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return torch.stack(grads).norm() if grads else torch.zeros(())


def train(
    model: nn.Module,
    train_loader: Any,
    cfg: TrainConfig,
    hooks: Any = None,
    start_step: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    test_loader: Any = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``model`` in place for ``cfg.epochs`` epochs (from ``start_step`` when resuming).

    Pass the optimizer and scheduler restored by :func:`load_checkpoint` to resume exactly; when they are
    omitted fresh ones are made (:func:`make_optimizer`, :func:`cosine_with_warmup` positioned at
    ``start_step``). Under an initialised process group the model is wrapped in DDP for the run.

    Returns:
        ``{"step", "total_steps", "steps_per_epoch", "stopped", "nonfinite_steps", "history": [per epoch:
        epoch, train_loss, train_accuracy, lr, test_accuracy, test_loss], "test": final evaluation or None,
        "seconds"}``.
    """
    hook_list = _hooks(hooks)
    device = resolve_device(cfg.device)
    model.to(device)
    spe = steps_per_epoch(train_loader)
    total = cfg.epochs * spe
    if spe < 1:
        raise ValueError("the train loader yields no batches: lower batch_size or use more data")
    if not 0 <= start_step <= total:
        raise ValueError(f"start_step must be in [0, {total}] ({cfg.epochs} epochs x {spe} steps), got {start_step}")
    optimizer = optimizer or make_optimizer(model, cfg)
    if scheduler is None:
        scheduler = cosine_with_warmup(optimizer, max(total, 1), round(cfg.warmup_epochs * spe))
        if start_step:
            _fast_forward(scheduler, start_step)
    net = model
    if _world() > 1 and not isinstance(model, DDP):
        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in model.parameters() if p.requires_grad]
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    main = is_main_process()
    step, stopped, nonfinite, history, t0 = start_step, False, 0, [], time.perf_counter()
    test_result: dict[str, float] | None = None
    for epoch in range(start_step // spe if spe else 0, cfg.epochs):
        skip = step - epoch * spe
        net.train()
        stats = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, seen
        bar = tqdm(total=spe, initial=skip, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not (progress and main))
        for x, y in epoch_batches(train_loader, epoch, skip):
            torch.manual_seed(mix_seed(cfg.seed, step))  # dropout etc.: a function of (seed, step) only
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = net(x)
            loss = criterion(out, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            _call(hook_list, "after_backward", step)
            norm = _grad_norm(params)  # identical on all ranks after DDP's all-reduce
            if torch.isfinite(norm):
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
            else:
                nonfinite += 1
                log.warning("step %d: non-finite gradients (loss %.4g); optimizer step skipped", step, loss.item())
            _call(hook_list, "after_optimizer_step", step)
            with warnings.catch_warnings():  # torch warns when a skipped update precedes the LR step
                warnings.simplefilter("ignore", UserWarning)
                scheduler.step()
            step += 1
            stats += torch.tensor([loss.item() * len(y), (out.argmax(1) == y).sum().item(), len(y)], dtype=stats.dtype)
            bar.update(1)
            if cfg.log_every and step % cfg.log_every == 0 and main:
                log.info("step %d/%d loss %.4f lr %.4g", step, total, loss.item(), optimizer.param_groups[0]["lr"])
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                _call(hook_list, "on_checkpoint", step)
            if _should_stop(hook_list, step):
                stopped = True
                break
        bar.close()
        if stopped:
            break
        seen = max(stats[2].item(), 1.0)
        record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": stats[0].item() / seen,
                                  "train_accuracy": stats[1].item() / seen, "lr": optimizer.param_groups[0]["lr"]}
        last = epoch + 1 == cfg.epochs
        if test_loader is not None and (last or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0)):
            test_result = evaluate(net, test_loader, device)
            record.update(test_accuracy=test_result["accuracy"], test_loss=test_result["loss"])
        history.append(record)
        if main:
            log.info("epoch %d/%d %s", epoch + 1, cfg.epochs,
                     " ".join(f"{k}={v:.4f}" for k, v in record.items() if isinstance(v, float)))
        if not (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
            _call(hook_list, "on_checkpoint", step)
    if test_loader is not None and test_result is None and not stopped:  # e.g. resumed a finished run
        test_result = evaluate(net, test_loader, device)
    return {"step": step, "total_steps": total, "steps_per_epoch": spe, "stopped": stopped,
            "nonfinite_steps": nonfinite, "history": history, "test": test_result,
            "seconds": time.perf_counter() - t0}
