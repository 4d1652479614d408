"""Training checkpoints: model, optimizer, scheduler, step and JSON extras in one file, without pickle.

Written atomically (a crash mid-write leaves the previous checkpoint) and read back with
``torch.load(weights_only=True)``, so a checkpoint from elsewhere cannot run code when loaded.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from typing import Any

import torch
import torch.nn as nn

from halp.distributed import _unwrap

CHECKPOINT_FORMAT = "halp-checkpoint/1"


def _check_extra(obj: Any, where: str = "extra") -> None:
    """Extras may hold JSON values and tensors: exactly what ``torch.load(weights_only=True)`` reads back."""
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_extra(v, f"{where}[{i}]")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ValueError(f"{where}: keys must be strings, got {k!r}")
            _check_extra(v, f"{where}[{k!r}]")
        return
    raise ValueError(f"{where} is a {type(obj).__name__}: checkpoints hold only JSON values and torch tensors")


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    step: int = 0,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint atomically (a temporary file renamed into place). Call on the main process only."""
    extra = dict(extra or {})
    _check_extra(extra)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "step": int(step),
        "model": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "extra": extra,
    }
    target = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(target))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".ckpt-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Restore what was saved into the given objects; returns ``{"step": int, "extra": dict}``.

    Loaded with ``weights_only=True``: a file that would need arbitrary objects is refused.
    """
    if not os.path.isfile(path):
        raise ValueError(f"no checkpoint file at {os.fspath(path)}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise ValueError(f"{os.fspath(path)} is not a loadable halp checkpoint: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{os.fspath(path)} is not a halp checkpoint (format {CHECKPOINT_FORMAT})")
    if model is not None:
        _unwrap(model).load_state_dict(payload["model"])
    for obj, key in ((optimizer, "optimizer"), (scheduler, "scheduler")):
        if obj is not None:
            if payload[key] is None:
                raise ValueError(f"{os.fspath(path)} holds no {key} state")
            obj.load_state_dict(payload[key])
    return {"step": int(payload["step"]), "extra": payload["extra"]}
