"""Turning an :class:`ImageDataset` into batches, identically on 1 or N workers.

Elastic training (``scaling.workers=[min, max]``, :mod:`jigclu.ray_train`) restarts the worker
group at a new size, so sampling must not depend on the world size: :class:`ShardSampler` draws
one *global* permutation per epoch from ``seed + epoch`` and deals it out to ranks round-robin.
With a fixed global batch ``B`` (each rank taking ``B / world_size``), global batch ``k`` always
holds the same images whatever the world size, and a run resumed mid-epoch at a new size
continues the same order (``set_epoch(e, start)``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from jigclu.errors import DataError
from jigclu.preempt import ignore_in_loader_worker


class ShardSampler(Sampler[int]):
    """World-size-independent distributed sampler.

    Each epoch's global order is ``randperm(dataset_len)`` from a generator seeded with
    ``seed + epoch`` (or ``arange`` without shuffling), optionally starting at ``start``. With
    ``drop_last`` it is cut to a multiple of ``num_replicas``; otherwise it is padded by wrapping
    around, so every rank yields the same number of indices. Rank ``r`` yields
    ``order[r::num_replicas]``; interleaving the ranks' outputs gives back ``order``.

    Args:
        dataset_len: number of items.
        num_replicas: world size.
        rank: this worker's rank in ``[0, num_replicas)``.
        seed: base seed, the same on every rank.
        shuffle: permute each epoch (else natural order).
        drop_last: drop the tail that does not fill one index per rank (else pad by wrapping).
    """

    def __init__(self, dataset_len: int, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = True) -> None:
        if dataset_len < 0:
            raise ValueError(f"dataset_len must be >= 0, got {dataset_len}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas=}, {rank=}")
        self.dataset_len = int(dataset_len)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's permutation; skip its first ``start`` global samples (mid-epoch resume).

        ``start`` counts samples of the global order already consumed (steps x global batch),
        which is a world-size-independent quantity, unlike per-rank step counts.
        """
        if not 0 <= start <= self.dataset_len:
            raise ValueError(f"start must lie in [0, {self.dataset_len}], got {start}")
        self.epoch = int(epoch)
        self.start = int(start)

    def global_order(self) -> torch.Tensor:
        """The epoch's global index order (after ``start``, truncated or padded), same on every rank."""
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.dataset_len, generator=generator)
        else:
            order = torch.arange(self.dataset_len)
        full, order = order, order[self.start :]
        remainder = len(order) % self.num_replicas
        if self.drop_last:
            return order[: len(order) - remainder]
        if remainder and len(full):
            # padded from the epoch's start (not from ``start``): a run resumed mid-epoch at the same
            # world size pads its last batch with the very images the uninterrupted run would
            pad = self.num_replicas - remainder
            repeats = -(-pad // len(full))  # ceil: tiny datasets may need several wraps
            order = torch.cat([order, full.repeat(repeats)[:pad]])
        return order

    def __iter__(self) -> Iterator[int]:
        return iter(self.global_order()[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        remaining = self.dataset_len - self.start
        if self.drop_last:
            return remaining // self.num_replicas
        return -(-remaining // self.num_replicas)


def collate_uint8(batch: Sequence[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(uint8 [C, H, W], label)`` pairs into ``(uint8 [B, C, H, W], LongTensor [B])``."""
    if not batch:
        raise ValueError("cannot collate an empty batch")
    images = [item[0] for item in batch]
    shape = images[0].shape
    if any(img.shape != shape for img in images):
        shapes = sorted({tuple(img.shape) for img in images})
        raise DataError(f"cannot batch images of different shapes {shapes}; load the dataset with image_size=...")
    return torch.stack(images), torch.tensor([int(item[1]) for item in batch], dtype=torch.long)


def make_loader(
    dataset: Dataset[tuple[torch.Tensor, int]],
    batch_size: int,
    *,
    num_replicas: int = 1,
    rank: int = 0,
    seed: int = 0,
    shuffle: bool = True,
    drop_last: bool = True,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> tuple[DataLoader[tuple[torch.Tensor, int]], ShardSampler]:
    """A :class:`DataLoader` of uint8 batches over this rank's shard, and its sampler.

    ``batch_size`` is per rank (global batch / ``num_replicas``). Call ``sampler.set_epoch(e)``
    before iterating each epoch. ``drop_last`` applies to both the sampler and the last partial
    batch, so every step on every rank sees a full batch.
    """
    sampler = ShardSampler(len(dataset), num_replicas, rank, seed, shuffle, drop_last)  # type: ignore[arg-type]
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_uint8,
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        worker_init_fn=ignore_in_loader_worker if num_workers > 0 else None,
    )
    return loader, sampler
