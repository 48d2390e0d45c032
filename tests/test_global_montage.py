"""Global montage across workers equals one process running the whole global batch.

Two gloo processes each hold half of a global batch. They gather patches, draw the same
permutation, stitch their share of the montages and all-gather the per-patch features with
gradient. Loss and DDP-averaged gradients must match a single process that runs the whole
batch with the same permutation. BatchNorm runs in eval mode here: per-worker batch
statistics are the one thing that legitimately differs between the two setups.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from jigclu import dist
from jigclu.augment import PatchAugment
from jigclu.losses import JigCluLoss
from jigclu.models import JigCluModel
from jigclu.trainers.pretrain import jigclu_losses, make_montages

GRID, N, WORLD, SEED = 2, 8, 2, 1234


def global_batch() -> torch.Tensor:
    from sklearn.datasets import load_digits

    images = torch.from_numpy(load_digits().images[:N] * 15).to(torch.uint8)[:, None]
    return torch.nn.functional.interpolate(images.float(), size=16).to(torch.uint8)


def one_step(images: torch.Tensor, scope: str = "global") -> tuple[float, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = JigCluModel("resnet18_small", width=4, grid=GRID, proj_dim=8).eval()
    model.gather_features = scope == "global"
    augment = PatchAugment(8, enabled=False)
    montages, perm, total = make_montages(images, augment, GRID, 0.3, SEED, scope)
    out = jigclu_losses(model, JigCluLoss(1.0, 1.0, 0.3), montages, perm, total)
    out["loss"].backward()
    grads = {}
    for name, p in model.named_parameters():
        g = p.grad.clone()
        if dist.is_distributed():  # what DDP does: average over workers
            torch_dist.all_reduce(g)
            g /= dist.world_size()
        grads[name] = g
    return out["loss"].item(), grads


def _worker(rank: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        images = global_batch()
        share = images[rank * N // WORLD:(rank + 1) * N // WORLD]
        loss, grads = one_step(share)
        queue.put((rank, loss, {k: v.numpy() for k, v in grads.items()}))  # by value
    finally:
        torch_dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_workers_match_one_process():
    single_loss, single_grads = one_step(global_batch())
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, queue)) for r in range(WORLD)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in range(WORLD)]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    for rank, loss, grads in results:
        assert loss == pytest.approx(single_loss, rel=1e-5), f"rank {rank} loss differs"
        for name, g in single_grads.items():
            torch.testing.assert_close(torch.from_numpy(grads[name]), g, rtol=1e-4, atol=1e-6, msg=f"rank {rank} grad {name}")


def test_gather_is_identity_without_distributed():
    x = torch.randn(4, 3, requires_grad=True)
    assert dist.gather_with_grad(x) is x
    assert dist.gather(x) is x
    assert dist.world_size() == 1 and dist.rank() == 0


def test_local_scope_single_process_is_plain_jigsaw():
    images = global_batch()
    loss_g, _ = one_step(images, "global")
    loss_l, _ = one_step(images, "local")
    # in one process the two scopes are the same computation
    assert loss_g == pytest.approx(loss_l, rel=1e-6)
