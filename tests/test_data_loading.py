"""Tests for jigclu.data's loading side: the world-size-independent ShardSampler (resumable
mid-epoch), collate_uint8 and make_loader, balanced subsets and dataset subsets, on scikit-learn's digits."""

from __future__ import annotations

import pytest
import torch

from jigclu.data import (
    ImageDataset,
    ShardSampler,
    balanced_subset_indices,
    collate_uint8,
    load_dataset,
    make_loader,
)
from jigclu.errors import DataError

# --------------------------------------------------------------------------------------------
# Sampler, collate, loader
# --------------------------------------------------------------------------------------------


def _interleave(per_rank: list[list[int]]) -> list[int]:
    """Global order back from the ranks: position j * R + r is rank r's j-th index."""
    return [idx for step in zip(*per_rank, strict=True) for idx in step]


@pytest.mark.parametrize("n", [0, 1, 12, 100, 101])
def test_shard_sampler_is_world_size_independent(n: int) -> None:
    epoch_order = {}
    for world in (1, 2, 3):
        samplers = [ShardSampler(n, num_replicas=world, rank=r, seed=7) for r in range(world)]
        for s in samplers:
            s.set_epoch(4)
        per_rank = [list(s) for s in samplers]
        assert all(len(p) == len(s) == n // world for p, s in zip(per_rank, samplers, strict=True))
        order = _interleave(per_rank)
        # Union over ranks is exactly the epoch permutation, truncated to a multiple of world.
        generator = torch.Generator()
        generator.manual_seed(7 + 4)
        perm = torch.randperm(n, generator=generator).tolist()
        assert order == perm[: n - n % world]
        assert len(set(order)) == len(order)
        epoch_order[world] = order
    # Same global order for every world size (up to the truncated tail).
    common = min(len(o) for o in epoch_order.values())
    assert epoch_order[1][:common] == epoch_order[2][:common] == epoch_order[3][:common]


def test_shard_sampler_epochs_differ_and_resume_mid_epoch() -> None:
    s = ShardSampler(50, seed=0)
    s.set_epoch(0)
    first = list(s)
    s.set_epoch(1)
    second = list(s)
    assert first != second and sorted(first) == sorted(second) == list(range(50))
    # Resuming after 20 global samples at a new world size continues the same order.
    resumed = [ShardSampler(50, num_replicas=3, rank=r, seed=0) for r in range(3)]
    for r in resumed:
        r.set_epoch(1, start=20)
    assert _interleave([list(r) for r in resumed]) == second[20:50][:30]


def test_shard_sampler_without_drop_last_pads_and_without_shuffle_is_ordered() -> None:
    ranks = [ShardSampler(5, num_replicas=4, rank=r, shuffle=False, drop_last=False) for r in range(4)]
    per_rank = [list(r) for r in ranks]
    assert [len(p) for p in per_rank] == [2, 2, 2, 2]
    assert _interleave(per_rank) == [0, 1, 2, 3, 4, 0, 1, 2]
    with pytest.raises(ValueError):
        ShardSampler(10, num_replicas=2, rank=2)


def test_collate_uint8_and_make_loader() -> None:
    ds = load_dataset("digits", split="test")
    loader, sampler = make_loader(ds, batch_size=32, num_replicas=2, rank=1, seed=3)
    sampler.set_epoch(0)
    batches = list(loader)
    assert len(batches) == 180 // 32  # rank 1 holds 180 items; last partial batch dropped
    images, labels = batches[0]
    assert images.dtype == torch.uint8 and images.shape == (32, 1, 8, 8)
    assert labels.dtype == torch.long and labels.shape == (32,)
    expected = list(sampler)[:32]
    assert torch.equal(labels, ds.labels[expected])
    assert torch.equal(images, ds.images[expected])
    with pytest.raises(DataError, match="different shapes"):
        collate_uint8([(torch.zeros(1, 2, 2, dtype=torch.uint8), 0), (torch.zeros(1, 3, 3, dtype=torch.uint8), 1)])


def test_balanced_subset_and_dataset_subset() -> None:
    ds = load_dataset("digits")
    idx = balanced_subset_indices(ds.labels, per_class=5, seed=1)
    assert torch.bincount(ds.labels[idx], minlength=10).tolist() == [5] * 10
    assert torch.equal(idx, balanced_subset_indices(ds.labels, per_class=5, seed=1))
    assert not torch.equal(idx, balanced_subset_indices(ds.labels, per_class=5, seed=2))
    frac = balanced_subset_indices(ds.labels, fraction=0.1)
    counts = torch.bincount(ds.labels, minlength=10)
    assert torch.bincount(ds.labels[frac], minlength=10).tolist() == [round(0.1 * int(c)) for c in counts]
    sub = ds.subset(idx)
    assert len(sub) == 50 and sub.classes == ds.classes and sub.images is not None
    assert torch.equal(sub[7][0], ds[int(idx[7])][0])
    view = ImageDataset.subset(ds, idx)  # the generic version any subclass inherits
    assert torch.equal(view.labels, sub.labels) and torch.equal(view[49][0], sub[49][0])
