"""Shared pieces of the data sets: their description, the cache folder, seeding and augmentation.

Augmentation is a pure function of a per-sample seed. A data set's ``__getitem__`` accepts either an
index or an ``(index, seed)`` key; :class:`halp.data.SeededSampler` yields the latter, with seeds derived
from ``(seed, epoch, position)``, so every augmented image of a run is reproducible after a restart and
does not depend on worker processes or on the global random state.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and a training recipe need to know about a data set.

    ``mean``/``std`` are the per-channel normalisation already applied to every image, recorded so that
    an exported model can document (or fold in) its preprocessing.
    """

    name: str
    num_classes: int
    input_size: tuple[int, int, int]  # (C, H, W)
    train_len: int
    test_len: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = ()
    task: str = "classification"  # or "detection"
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able copy (tuples become lists)."""
        return asdict(self)

    def __getitem__(self, key: str) -> Any:
        # Lets callers treat the info as the mapping the README shows (info["num_classes"]).
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)


def cache_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """The folder for generated data: ``root`` if given, else ``$XDG_CACHE_HOME/halp`` or ``~/.cache/halp``."""
    if root is not None:
        return Path(root).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "halp"


def split_key(key: Any) -> tuple[int, int | None]:
    """Return ``(index, seed or None)`` from a sampler key (an int or an ``(index, seed)`` pair)."""
    if isinstance(key, (tuple, list)):
        if len(key) != 2:
            raise ValueError(f"a data set key is an index or an (index, seed) pair, got {key!r}")
        return int(key[0]), int(key[1])
    if isinstance(key, torch.Tensor):
        key = key.item()
    return int(key), None


def sample_rng(seed: int | None) -> np.random.Generator:
    """A generator for one sample's augmentation; an unseeded key draws its seed from torch's global RNG.

    Drawing from torch's global state (instead of fresh OS entropy) keeps plain ``dataset[i]`` access
    reproducible under ``torch.manual_seed``.
    """
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    return np.random.default_rng(seed)


def mix_seed(*parts: int) -> int:
    """Combine integers into one well-mixed 63-bit seed (used for per-epoch permutations)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]).generate_state(1, np.uint64)[0]) >> 1


def affine_theta(
    rng: np.random.Generator,
    *,
    degrees: float,
    translate: float,
    scale: tuple[float, float],
    shear: float = 0.0,
) -> torch.Tensor:
    """Draw a random rotation/shift/scale/shear as the (2, 3) inverse map ``affine_grid`` expects.

    ``translate`` is a fraction of the image side.
    """
    angle = math.radians(rng.uniform(-degrees, degrees))
    sh = math.radians(rng.uniform(-shear, shear)) if shear > 0 else 0.0
    s = rng.uniform(scale[0], scale[1])
    tx, ty = rng.uniform(-translate, translate, size=2) * 2.0  # grid coordinates span [-1, 1]
    # Inverse map (output pixel -> input pixel): rotate by -angle, shear, scale by 1/s.
    cos, sin = math.cos(angle), math.sin(angle)
    rot = np.array([[cos, sin], [-sin, cos]])
    shear_m = np.array([[1.0, math.tan(sh)], [0.0, 1.0]])
    theta = np.concatenate([(shear_m @ rot) / s, [[-tx], [-ty]]], axis=1)
    return torch.from_numpy(theta.astype(np.float32))


def warp(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Apply (N, 2, 3) affine maps to (N, C, H, W) images; pixels from outside are zero."""
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_crop_flip(image: torch.Tensor, rng: np.random.Generator, pad: int, flip: bool = True) -> torch.Tensor:
    """The CIFAR recipe: zero-pad by ``pad``, crop back to size at a random offset, flip half the time."""
    c, h, w = image.shape
    if pad > 0:
        padded = F.pad(image, (pad, pad, pad, pad))
        dy, dx = rng.integers(0, 2 * pad + 1, size=2)
        image = padded[:, dy : dy + h, dx : dx + w]
    if flip and rng.random() < 0.5:
        image = image.flip(-1)
    return image


def normalize(image: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Per-channel ``(x - mean) / std`` on a (C, H, W) or (N, C, H, W) tensor."""
    shape = (-1, 1, 1)
    m = torch.tensor(mean, dtype=image.dtype).view(shape)
    s = torch.tensor(std, dtype=image.dtype).view(shape)
    return (image - m) / s


def check_split(split: str, allowed: tuple[str, ...], name: str) -> str:
    """Validate a split name against what a data set offers."""
    if split not in allowed:
        raise ValueError(f"{name} has splits {list(allowed)}, got split={split!r}")
    return split
