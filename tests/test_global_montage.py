"""Global montage across workers equals one process running the whole global batch.

Two gloo processes each hold half of a global batch. They gather patches, draw the same
permutation, stitch their share of the montages and all-gather the per-patch features with
gradient. Loss and DDP-averaged gradients must match a single process that runs the whole
batch with the same permutation (``benchmarks.harness.montage_check``, which ``make gpu-check``
also runs on CUDA). BatchNorm runs in eval mode here: per-worker batch statistics are the one thing
that legitimately differs between the two setups.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.harness.montage_check import Spec, compare, digits_batch, one_step, two_workers
from jigclu import dist


@pytest.mark.parametrize("method", ["jigclu", "simclr"])
def test_two_workers_match_one_process(method):
    """SimCLR's NT-Xent over the all-gathered views of both workers is the one-process loss too: without the
    gather each worker would contrast its own half only (a different loss, a different gradient)."""
    images, spec = digits_batch(), Spec(method=method)
    agreement = compare(one_step(images, spec=spec), two_workers(images, "gloo", ("cpu", "cpu"), spec=spec),
                        loss_rtol=1e-5, rtol=1e-4, atol=1e-6)
    assert agreement.ok, str(agreement)


def test_gather_is_identity_without_distributed():
    x = torch.randn(4, 3, requires_grad=True)
    assert dist.gather_with_grad(x) is x
    assert dist.gather(x) is x
    assert dist.world_size() == 1 and dist.rank() == 0


def test_local_scope_single_process_is_plain_jigsaw():
    images = digits_batch()
    loss_g, _ = one_step(images, "global")
    loss_l, _ = one_step(images, "local")
    # in one process the two scopes are the same computation
    assert loss_g == pytest.approx(loss_l, rel=1e-6)
