"""Data sets by name, and loaders whose order is reproducible and resumable.

``create(name, root, split, **kw)`` builds one split; ``make_loaders(name, batch_size, ...)`` builds the
train and test loaders plus a :class:`DatasetInfo`. Registered names:

* ``digits`` — the embedded default (scikit-learn's digits, upscaled and augmented; no download).
* ``shapes10`` — generated 3-channel shapes and textures, a harder 10-class task (cached under ``root``).
* ``cifar10`` — a local ``cifar-10-batches-py`` (read without running pickle code) or ``-bin`` folder.
* ``imagefolder`` — a ``train/`` and ``val/`` tree of class folders.
* ``voc`` — PASCAL VOC detection (``VOCdevkit/VOC2007`` or ``VOC2012``, read through torchvision);
  batches need :func:`voc_collate`.
* ``shapes-voc`` — a generated detection set written as a VOC tree (cached under ``root``).
"""

from __future__ import annotations

import os
from typing import Any, Callable

from torch.utils.data import DataLoader, Dataset

from halp.data._common import DatasetInfo, cache_dir
from halp.data.sampler import SeededSampler

__all__ = [
    "DatasetInfo",
    "SeededSampler",
    "cache_dir",
    "create",
    "list_datasets",
    "make_loaders",
    "register",
    "voc_collate",
]

_REGISTRY: dict[str, Callable[..., Dataset]] = {}
# The splits each data set trains and evaluates on (image folders and VOC name them differently).
_SPLITS: dict[str, tuple[str, str]] = {}


def register(
    name: str, *, train_split: str = "train", eval_split: str = "test"
) -> Callable[[Callable[..., Dataset]], Callable[..., Dataset]]:
    """Add a data set builder ``fn(root, split, **kw) -> Dataset`` (the Dataset must carry ``.info``).

    ``train_split``/``eval_split`` name the splits :func:`make_loaders` uses.
    """

    def wrap(fn: Callable[..., Dataset]) -> Callable[..., Dataset]:
        if name in _REGISTRY:
            raise ValueError(f"data set {name!r} is already registered")
        _REGISTRY[name] = fn
        _SPLITS[name] = (train_split, eval_split)
        return fn

    return wrap


def list_datasets() -> list[str]:
    """Registered data set names."""
    return sorted(_REGISTRY)


def create(name: str, root: str | os.PathLike[str] | None = None, split: str = "train", **kw: Any) -> Dataset:
    """Build one split of a registered data set; the result has an ``info`` attribute (DatasetInfo)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown data set {name!r}; choose one of {list_datasets()}")
    return _REGISTRY[name](root=root, split=split, **kw)


def _rank_world(distributed: bool) -> tuple[int, int]:
    if not distributed:
        return 0, 1
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("distributed=True needs an initialised process group: call halp.train.setup_distributed()")
    return dist.get_rank(), dist.get_world_size()


def make_loaders(
    name: str,
    batch_size: int,
    root: str | os.PathLike[str] | None = None,
    *,
    seed: int = 0,
    workers: int = 0,
    distributed: bool = False,
    eval_batch_size: int | None = None,
    **kw: Any,
) -> tuple[DataLoader, DataLoader, DatasetInfo]:
    """Train and test loaders for a registered data set, plus its info.

    The train loader shuffles with a :class:`SeededSampler` (order and augmentation derived from
    ``(seed, epoch)``; ``halp.train.train`` sets the epoch and resumes mid-epoch) and drops the last
    partial batch so every step has ``batch_size`` samples per rank. ``batch_size`` is per process when
    ``distributed``; the test split is sharded without duplicates so an all-reduced evaluation counts each
    image once. Extra keywords go to the data set builder (e.g. ``size=`` for image folders).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    rank, world = _rank_world(distributed)
    if name not in _REGISTRY:
        raise ValueError(f"unknown data set {name!r}; choose one of {list_datasets()}")
    train_split, eval_split = _SPLITS[name]
    train_set = create(name, root, train_split, **kw)
    test_set = create(name, root, eval_split, **kw)
    collate = getattr(train_set, "collate_fn", None)
    train_sampler = SeededSampler(len(train_set), seed=seed, shuffle=True, rank=rank, world_size=world, pad=True)
    test_sampler = SeededSampler(
        len(test_set), seed=seed, shuffle=False, rank=rank, world_size=world, pad=False, keyed=False
    )
    common: dict[str, Any] = dict(num_workers=workers, collate_fn=collate, persistent_workers=False)
    if len(train_sampler) < batch_size:
        raise ValueError(
            f"{name}: the train split has {len(train_sampler)} samples per process, fewer than batch_size="
            f"{batch_size}; lower the batch size"
        )
    train_loader = DataLoader(train_set, batch_size=batch_size, sampler=train_sampler, drop_last=True, **common)
    test_loader = DataLoader(
        test_set, batch_size=eval_batch_size or batch_size, sampler=test_sampler, drop_last=False, **common
    )
    info: DatasetInfo = train_set.info  # type: ignore[attr-defined]
    return train_loader, test_loader, info


def _check_keywords(klass: type, kw: dict[str, Any]) -> None:
    """Misspelt options are a ValueError naming the accepted ones, not a TypeError from deep inside."""
    import inspect

    accepted = [p.name for p in inspect.signature(klass).parameters.values() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(kw) - set(accepted))
    if unknown:
        raise ValueError(f"{klass.__name__} does not take {unknown}; its options are {accepted}")


def _lazy(module: str, cls: str, *, root_kw: bool) -> Callable[..., Dataset]:
    """A builder that imports its module on first use, so ``import halp.data`` stays cheap."""

    def build(root: Any = None, split: str = "train", **kw: Any) -> Dataset:
        import importlib

        klass = getattr(importlib.import_module(f"halp.data.{module}"), cls)
        _check_keywords(klass, kw)
        return klass(split, root=root, **kw) if root_kw else klass(root, split, **kw)

    return build


def _register_builtins() -> None:
    def digits(root: Any = None, split: str = "train", **kw: Any) -> Dataset:
        from halp.data.digits import Digits

        if root is not None:
            raise ValueError("digits is bundled with scikit-learn and takes no root folder; drop root/--data-root")
        _check_keywords(Digits, kw)
        return Digits(split, **kw)

    register("digits")(digits)
    register("shapes10")(_lazy("shapes", "Shapes10", root_kw=True))
    register("cifar10")(_lazy("cifar", "Cifar10", root_kw=False))
    register("imagefolder", eval_split="val")(_lazy("imagefolder", "ImageFolder", root_kw=False))
    register("voc", train_split="trainval", eval_split="test")(_lazy("voc", "VOCDetection", root_kw=False))
    register("shapes-voc")(_lazy("shapes_voc", "ShapesVOC", root_kw=True))


_register_builtins()


def voc_collate(batch: list[tuple[Any, dict[str, Any]]]) -> tuple[Any, list[dict[str, Any]]]:
    """Stack a VOC batch's images; keep the per-image targets (different box counts) as a list."""
    from halp.data.voc import voc_collate as _collate

    return _collate(batch)
