"""The global batch across workers equals one process: the step, the 2-process run, the comparison.

Two processes each hold half of a global batch. For JigClu they gather patches, draw the same
permutation, stitch their share of the montages and all-gather the per-patch features with
gradient; for SimCLR (``Spec.method``) they all-gather the embeddings of their views. Loss and
DDP-averaged gradients must match a single process that runs the whole batch with the same
permutation. BatchNorm runs in eval mode and augmentation is off: per-worker batch statistics and
per-worker augmentation seeds (``seed + rank``) are the things that legitimately differ between
the two setups.

Shared by ``tests/test_global_montage.py`` (gloo on CPU) and ``benchmarks/gpu_check.py`` (NCCL on
two GPUs; gloo on CUDA tensors when there is one GPU, since NCCL refuses two ranks on one device).
The ranks are spawned processes: they import this module as ``benchmarks.harness.montage_check``,
so run from the repository root (``python -m benchmarks.gpu_check``; pytest's ``pythonpath``).
"""

from __future__ import annotations

import os
import queue as queue_module
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor

from jigclu import dist
from jigclu.config import RunConfig, load_config
from jigclu.methods import build_method

Result = tuple[float, dict[str, Tensor]]
"""``(loss, gradient of every named parameter, on the CPU)`` of one step."""


@dataclass(frozen=True)
class Spec:
    """The step both setups run: a narrow ResNet on small montages (or views) at one fixed step seed."""

    method: str = "jigclu"
    arch: str = "resnet18_small"
    width: int = 4
    proj_dim: int = 8
    grid: int = 2
    cross_ratio: float = 0.3
    seed: int = 1234


def digits_batch(n: int = 8, size: int = 16) -> Tensor:
    """uint8 ``[n, 1, size, size]``: the first ``n`` of scikit-learn's bundled digits, upscaled."""
    from sklearn.datasets import load_digits

    images = torch.from_numpy(load_digits().images[:n] * 15).to(torch.uint8)[:, None]
    return F.interpolate(images.float(), size=size).to(torch.uint8)


@contextmanager
def ieee_fp32() -> Iterator[None]:
    """Plain float32 convolutions and matmuls (no TF32): the two setups split the batch differently,
    and TF32's 10-bit mantissa would swamp the comparison."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = False  # the flags every torch reads (not the newer per-op API)
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


def step_config(spec: Spec, side: int, scope: str) -> RunConfig:
    """The run config of ``spec`` for ``side`` px images, augmentation off."""
    return load_config(None, [f"method={spec.method}", f"model.arch={spec.arch}", f"model.width={spec.width}",
                              f"model.proj_dim={spec.proj_dim}", f"model.grid={spec.grid}",
                              f"jigsaw.cross_ratio={spec.cross_ratio}", f"jigsaw.crop_size={side}",
                              "jigsaw.augment=false", f"jigsaw.montage_scope={scope}"])


def one_step(images: Tensor, scope: str = "global", spec: Spec = Spec()) -> Result:
    """Loss and gradients of one step of ``spec.method`` on ``images`` (on their device); gradients
    averaged over the workers as DDP does when ``torch.distributed`` runs."""
    torch.manual_seed(0)
    method = build_method(step_config(spec, images.shape[-1], scope)).to(images.device).eval()
    with ieee_fp32():
        out = method(images, spec.seed)
        out["loss"].backward()
    grads = {}
    for name, p in method.model.named_parameters():
        assert p.grad is not None, name
        g = p.grad.clone()
        if dist.is_distributed():  # what DDP does: average over workers
            torch_dist.all_reduce(g)
            g /= dist.world_size()
        grads[name] = g.cpu()
    return out["loss"].item(), grads


def _worker(rank: int, port: int, backend: str, devices: tuple[str, ...], images: Tensor, spec: Spec,
            queue: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    device, world = torch.device(devices[rank]), len(devices)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        torch_dist.init_process_group(backend, rank=rank, world_size=world)
        n = images.shape[0]
        share = images[rank * n // world:(rank + 1) * n // world].to(device)
        loss, grads = one_step(share, "global", spec)
        queue.put((rank, loss, {k: v.numpy() for k, v in grads.items()}))  # by value
    except BaseException as exc:
        queue.put((rank, None, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        if torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_workers(images: Tensor, backend: str = "gloo", devices: Sequence[str] = ("cpu", "cpu"),
                spec: Spec = Spec(), timeout: float = 120.0) -> list[tuple[int, Result]]:
    """Run :func:`one_step` with ``len(devices)`` spawned ranks, each on its slice of ``images``.

    Returns ``[(rank, (loss, grads)), ...]``; raises ``RuntimeError`` when a rank fails, dies or
    does not answer within ``timeout`` seconds (the others are killed then).
    """
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, backend, tuple(devices), images, spec, queue))
             for r in range(len(devices))]
    for p in procs:
        p.start()
    results: list[tuple[int, Result]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(results) < len(procs):
            try:
                rank, loss, grads = queue.get(timeout=1.0)
            except queue_module.Empty:
                dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"rank {dead[0]} died (exit code {procs[dead[0]].exitcode})") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no answer from the ranks within {timeout:.0f} s") from None
                continue
            if loss is None:
                raise RuntimeError(f"rank {rank} failed: {grads}")
            results.append((rank, (loss, {k: torch.from_numpy(v) for k, v in grads.items()})))
    finally:
        for p in procs:
            p.join(timeout=10 if len(results) == len(procs) else 0.1)
            if p.is_alive():
                p.kill()
                p.join()
    return sorted(results, key=lambda r: r[0])


@dataclass(frozen=True)
class Agreement:
    """How far every rank's loss and gradients are from one process's."""

    loss_diff: float  # worst |loss_rank - loss_1| / |loss_1| over the ranks
    grad_diff: float  # worst max|g_rank - g_1| / max|g_1| over the ranks and parameters
    outside: list[str] = field(default_factory=list)  # "rank r: name" past rtol/atol, elementwise
    ok: bool = True

    def __str__(self) -> str:
        where = f"; outside tolerance: {', '.join(self.outside[:3])}" if self.outside else ""
        return f"loss Δ {self.loss_diff:.1e}, grad Δ {self.grad_diff:.1e} (of max |g|){where}"


def compare(single: Result, ranks: list[tuple[int, Result]], loss_rtol: float = 1e-5,
            rtol: float = 1e-4, atol: float = 1e-6) -> Agreement:
    """Compare each rank's result with ``single``: losses within ``loss_rtol`` (relative), every
    gradient element within ``atol + rtol * |g_1|`` (``torch.testing.assert_close``'s rule)."""
    single_loss, single_grads = single
    loss_diff = grad_diff = 0.0
    outside: list[str] = []
    for rank, (loss, grads) in ranks:
        loss_diff = max(loss_diff, abs(loss - single_loss) / max(abs(single_loss), 1e-12))
        for name, g1 in single_grads.items():
            g = grads[name]
            scale = g1.abs().max().clamp_min(1e-12)
            grad_diff = max(grad_diff, ((g - g1).abs().max() / scale).item())
            if g.shape != g1.shape or not torch.allclose(g, g1, rtol=rtol, atol=atol):
                outside.append(f"rank {rank}: {name}")
    return Agreement(loss_diff, grad_diff, outside, loss_diff <= loss_rtol and not outside)


__all__ = ["Agreement", "Result", "Spec", "compare", "digits_batch", "free_port", "ieee_fp32", "one_step",
           "step_config", "two_workers"]
