"""torch.distributed plumbing for training under torchrun: joining the group, ranks, the device.

Kept apart from the training loop so that code which only needs to know "am I rank 0?" (writing
files, logging) does not import the loop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run (rank 0 of 1 outside torch.distributed)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; under torchrun, CUDA means this process's ``LOCAL_RANK`` GPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
    return torch.device(device)


def setup_distributed(device: str = "auto", backend: str | None = None) -> DistInfo:
    """Join the torchrun process group (gloo on CPU, nccl on CUDA); a no-op without ``WORLD_SIZE`` > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world <= 1:
        return DistInfo(0, 1, 0, dev)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise ValueError(f"WORLD_SIZE={world} but {missing} are unset: launch with torchrun --nproc_per_node N")
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend or ("nccl" if dev.type == "cuda" else "gloo"), init_method="env://")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, dev)


def is_main_process() -> bool:
    """True outside torch.distributed and on rank 0: the process that logs and writes files."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DDP) else model
