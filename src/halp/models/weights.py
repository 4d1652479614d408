"""Loading a local state dict into a model: safetensors, or ``torch.load(weights_only=True)``; never pickle.

halp downloads nothing, so trained weights arrive as a file the user saved (``torch.save(model.state_dict(),
"m.pth")`` or safetensors' ``save_file``). Loading is strict, and a file that does not fit is a ValueError
that names the missing, unexpected and mis-shaped keys — the usual cause is weights of another variant or
another ``num_classes``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["load_weights", "read_state_dict"]

TORCH_SUFFIXES = (".pth", ".pt", ".bin")
_SHOWN = 5  # keys named per kind of mismatch


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file or of a ``.pth``/``.pt`` state dict.

    A ``.pth`` holding ``{"state_dict": …}`` or ``{"model": …}`` (training checkpoints) is unwrapped.

    Raises:
        ValueError: no such file, an unknown suffix, or a file that is not a plain state dict.
    """
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"weights file {file} does not exist")
    suffix = file.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(file))
        except (SafetensorError, OSError) as exc:
            raise ValueError(f"{file} is not a valid safetensors file ({exc}); save it again") from exc
    if suffix not in TORCH_SUFFIXES:
        raise ValueError(
            f"weights file {file}: unknown suffix {file.suffix!r}; use .safetensors or a state dict saved with "
            f"torch.save(model.state_dict(), path) as {'/'.join(TORCH_SUFFIXES)}"
        )
    try:
        state: Any = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise ValueError(
            f"{file} is not a plain state dict loadable with weights_only=True ({type(exc).__name__}: "
            f"{str(exc)[:300]}); save it with torch.save(model.state_dict(), path)"
        ) from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(
            f"{file} does not hold a state dict (a mapping of parameter names to tensors); save it with "
            "torch.save(model.state_dict(), path)"
        )
    return state


def _few(keys: list[str]) -> str:
    more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Loads the state dict in ``path`` into ``model``, strictly.

    Returns:
        ``model`` (loaded in place).

    Raises:
        ValueError: the file cannot be read (see :func:`read_state_dict`), or its keys or shapes do not
            match the model's; the message names them.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs the model's {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_few(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {_few(shapes)}")
        raise ValueError(
            f"weights in {path} do not fit {type(model).__name__}: {'; '.join(parts)}. Are they of another "
            "architecture, variant or num_classes?"
        )
    model.load_state_dict(state, strict=True)
    return model
