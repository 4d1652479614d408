"""A sampler whose order is a pure function of (seed, epoch), shardable across ranks and resumable mid-epoch.

Why not ``RandomSampler``/``DistributedSampler``: a run that is killed and restarted must see exactly the
batches (and augmentations) an uninterrupted run would have seen. Here the permutation of epoch ``e`` is
drawn from a generator seeded by ``(seed, e)``, each position also gets a per-sample augmentation seed,
and :meth:`SeededSampler.set_skip` drops the first samples of an epoch without loading them.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

import torch
from torch.utils.data import Sampler

from halp.data._common import mix_seed

log = logging.getLogger(__name__)


class SeededSampler(Sampler):
    """Yield ``(index, sample_seed)`` keys (or plain indices with ``keyed=False``) for one rank.

    Args:
        n: size of the data set.
        seed: base seed; the order of epoch ``e`` depends only on ``(seed, e)``.
        shuffle: permute each epoch (train) or keep the natural order (evaluation).
        rank, world_size: this process's shard. With ``pad=True`` the order is padded by wrapping
            around so every rank gets the same number of samples (needed for lock-step DDP training);
            with ``pad=False`` ranks get ``n // world_size`` or one more (evaluation: nothing counted twice).
        keyed: yield ``(index, seed)`` pairs that the halp data sets use to seed their augmentation.
    """

    def __init__(
        self,
        n: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = True,
        keyed: bool = True,
    ) -> None:
        if n < 0:
            raise ValueError(f"data set size must be >= 0, got {n}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.n = n
        self.seed = int(seed)
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.pad = pad
        self.keyed = keyed
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order is produced next (also resets any skip)."""
        self.epoch = int(epoch)
        self.skip = 0

    def set_skip(self, samples: int) -> None:
        """Drop this rank's first ``samples`` samples of the current epoch (resume mid-epoch)."""
        if samples < 0:
            raise ValueError(f"skip must be >= 0, got {samples}")
        self.skip = int(samples)

    def _full_len(self) -> int:
        if self.pad:
            return -(-self.n // self.world_size) if self.n else 0
        return len(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return max(0, self._full_len() - self.skip)

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
        order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        # One augmentation seed per position of the global order, so the seeds do not depend on the
        # number of ranks: ranks only decide who processes which position.
        seeds = torch.randint(0, 2**62, (self.n,), generator=g)
        positions = torch.arange(self.n)
        if self.pad and self.n:
            total = -(-self.n // self.world_size) * self.world_size
            positions = torch.arange(total) % self.n  # wrap around so every rank gets the same count
        mine = positions[self.rank :: self.world_size][self.skip :]
        # Built eagerly (not a generator) so the skip in force when iteration starts is the one used.
        order_l, seeds_l = order.tolist(), seeds.tolist()
        if self.keyed:
            keys: list[int | tuple[int, int]] = [(order_l[p], seeds_l[p]) for p in mine.tolist()]
        else:
            keys = [order_l[p] for p in mine.tolist()]
        return iter(keys)


def steps_per_epoch(loader: Any) -> int:
    """Batches in a full epoch of ``loader`` (clearing any skip left on a :class:`SeededSampler`)."""
    if isinstance(getattr(loader, "sampler", None), SeededSampler):
        loader.sampler.set_skip(0)
    return len(loader)


def epoch_batches(loader: Any, epoch: int, skip: int = 0) -> Iterator[Any]:
    """The batches of ``epoch`` after its first ``skip``, without loading the skipped ones when possible.

    With a :class:`SeededSampler` (what :func:`halp.data.make_loaders` builds) the skip is free and exact.
    Other loaders get ``set_epoch`` if they have it, then their first batches are loaded and dropped,
    which reproduces the interrupted run only if their order is itself deterministic.
    """
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    if skip and isinstance(sampler, SeededSampler) and getattr(loader, "batch_size", None):
        sampler.set_skip(skip * loader.batch_size)
        skip = 0
    elif skip:
        log.warning("resuming by loading and dropping %d batches; halp.data loaders skip for free", skip)
    it = iter(loader)
    for _ in range(skip):
        next(it)
    return it
