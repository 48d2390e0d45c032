"""`make gpu-check`: one prepared check of the CUDA path, for a machine with a GPU (issue 14).

Rows of one table, each a check with its figure and a pass/fail verdict:

- **global montage**: 2 spawned ranks (NCCL on two GPUs; with one GPU gloo on CUDA tensors, both
  ranks on cuda:0, since NCCL refuses two ranks on one device) give the loss and DDP-averaged
  gradients of 1 process with the same global batch (``benchmarks.harness.montage_check``, which
  ``tests/test_global_montage.py`` runs on CPU).
- **PatchAugment**: on CUDA with a CPU generator it equals the CPU output; with a CUDA generator its
  per-patch statistics (channel means and stds) agree with the CPU's (z-scores of the differences).
- **bf16**: one pretraining step under ``torch.autocast(bfloat16)`` has a finite loss within 5% of
  fp32's and finite gradients (their cosine and norm ratio to fp32's are shown, not judged: at
  random init they are chaotic, even on CPU).
- **throughput**: warmed-up timed steps of the trainer's own ``PretrainTask.step`` (plus the loop's
  backward and SGD step) on synthetic batches: images/s and peak GPU memory, for
  ``configs/demo.yaml`` and for ``configs/paper_imagenet_r50.yaml`` at batch 64 (ResNet-50, 224 px,
  m = 2, bf16 as that recipe trains).
- **JPEG decode**: ``data.decode=device``'s decoder (a batched ``decode_jpeg`` on the GPU, resized
  there) against one CPU decode task's PIL decode of the same 512 JPEGs (500 px to 224 px): images/s
  of each, and their pixels agree (mean difference at most 2 levels).

A global time budget (default 270 s) skips the remaining rows with a clear line when it is spent.
Exit code 1 when a check fails. Without CUDA it prints one line and exits 0.

    python -m benchmarks.gpu_check                # on a machine with CUDA
    python -m benchmarks.gpu_check --device cpu   # the same checks at tiny sizes on CPU (smoke run)
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from benchmarks.harness import common, montage_check
from benchmarks.speed.step_cost import synthetic_images
from jigclu.augment import PatchAugment
from jigclu.config import RunConfig, load_config
from jigclu.data.decode import decode_array, object_array
from jigclu.data.device_decode import DeviceDecoder
from jigclu.jigsaw import patch_layout
from jigclu.methods import build_method
from jigclu.methods.jigclu import jigclu_losses, make_montages
from jigclu.trainers.pretrain import PretrainTask

NO_CUDA = "gpu-check: no CUDA device here (torch.cuda.is_available() is False); nothing to check"
DEMO, R50 = common.REPO_ROOT / "configs" / "demo.yaml", common.REPO_ROOT / "configs" / "paper_imagenet_r50.yaml"
CHECKS = ("global montage: 2 processes = 1", "PatchAugment: CUDA = CPU (CPU generator)",
          "PatchAugment: CUDA statistics", "bf16 step vs fp32", "throughput: demo config",
          "throughput: ResNet-50 224 px m=2 b64", "JPEG decode: device vs CPU tasks")
BF16_LOSS_RTOL, AUG_ATOL, AUG_MAX_Z = 0.05, 1e-4, 5.0
JPEG_MAX_DIFF = 2.0  # mean |device - PIL| in 0-255 levels after the resize (libjpeg on CPU: 0.16)
# 2 ranks vs 1 process: tests/test_global_montage.py's tolerances on CPU; looser on CUDA, where
# the two batch splits may run other conv kernels (TF32 is off for this check either way)
MONTAGE_CPU = {"loss_rtol": 1e-5, "rtol": 1e-4, "atol": 1e-6}
MONTAGE_CUDA = {"loss_rtol": 1e-4, "rtol": 1e-3, "atol": 1e-5}


@dataclass(frozen=True)
class Sizes:
    """How big each check runs: the real thing on CUDA, tiny on CPU (``--device cpu``)."""

    montage: montage_check.Spec
    montage_images: int  # global batch of the 2-process check, digits upscaled to montage_side
    montage_side: int
    aug_images: int  # source images (aug_side px, 4 patches each) of the PatchAugment rows
    aug_side: int
    demo: tuple[str, ...]  # overrides of configs/demo.yaml
    demo_images: tuple[int, int]  # (channels, side) of the demo's source images (Fashion-MNIST)
    r50: tuple[str, ...]  # overrides of configs/paper_imagenet_r50.yaml
    r50_images: tuple[int, int]
    warmup: int
    timed: int
    jpeg: tuple[int, int, int] = (32, 64, 32)  # JPEGs, their side, the side decoded to


CUDA = Sizes(montage_check.Spec(width=16, proj_dim=32), 32, 32, 1024, 64, (), (1, 28),
             ("data.batch_size=64",), (3, 256), warmup=5, timed=20, jpeg=(512, 500, 224))
TINY = ("model.arch=resnet18_small", "model.width=8", "jigsaw.crop_size=32", "data.image_size=32")
CPU = Sizes(montage_check.Spec(), 8, 16, 64, 32, ("model.width=8", "data.batch_size=16"), (1, 28),
            (*TINY, "data.batch_size=8"), (3, 32), warmup=1, timed=2)

Check = tuple[str, str, bool]  # (result, figure, passed)


def montage_row(device: torch.device, sizes: Sizes) -> Check:
    images = montage_check.digits_batch(sizes.montage_images, sizes.montage_side)
    tolerance = MONTAGE_CUDA if device.type == "cuda" else MONTAGE_CPU
    if device.type != "cuda":
        backend, devices, how = "gloo", ("cpu", "cpu"), "gloo on CPU"
    elif torch.cuda.device_count() >= 2:
        backend, devices, how = "nccl", ("cuda:0", "cuda:1"), "nccl, ranks on cuda:0 and cuda:1"
    else:
        backend, devices, how = "gloo", ("cuda:0", "cuda:0"), \
            "gloo on CUDA tensors, both ranks on cuda:0 (one GPU; NCCL refuses two ranks on one device)"
    single = montage_check.one_step(images.to(device), "global", sizes.montage)
    ranks = montage_check.two_workers(images, backend, devices, sizes.montage, timeout=150)
    agreement = montage_check.compare(single, ranks, **tolerance)
    return f"{how}; global batch {images.shape[0]} vs 1 process", str(agreement), agreement.ok


def augment_inputs(sizes: Sizes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images = synthetic_images(sizes.aug_images, sizes.aug_side)
    src, boxes = patch_layout(sizes.aug_images, sizes.aug_side, sizes.aug_side, 2, 0.3)
    return images, src, boxes


def augment_exact_row(device: torch.device, sizes: Sizes) -> Check:
    images, src, boxes = augment_inputs(sizes)
    size = sizes.aug_side // 2
    cpu = PatchAugment(size)(images, src, boxes, torch.Generator().manual_seed(9))
    dev = PatchAugment(size).to(device)(images.to(device), src.to(device), boxes.to(device),
                                        torch.Generator().manual_seed(9))
    diff = (cpu - dev.cpu()).abs().max().item()
    ok = dev.device.type == device.type and diff <= AUG_ATOL
    return f"{cpu.shape[0]} patches of {size} px, one CPU generator", f"max |Δ| {diff:.1e} (≤ {AUG_ATOL:g})", ok


def patch_stats(x: torch.Tensor) -> torch.Tensor:
    """Per-patch channel means and stds, ``[P, 6]``."""
    flat = x.double().flatten(2)
    return torch.cat([flat.mean(2), flat.std(2)], dim=1)


def augment_stats_row(device: torch.device, sizes: Sizes) -> Check:
    images, src, boxes = augment_inputs(sizes)
    size = sizes.aug_side // 2
    cpu = patch_stats(PatchAugment(size)(images, src, boxes, torch.Generator().manual_seed(9)))
    gen = torch.Generator(device=device).manual_seed(1)
    dev = patch_stats(PatchAugment(size).to(device)(images.to(device), src.to(device), boxes.to(device), gen).cpu())
    se = (cpu.var(0) / cpu.shape[0] + dev.var(0) / dev.shape[0]).sqrt()
    z = ((cpu.mean(0) - dev.mean(0)) / se).abs().max().item()
    diff = (cpu.mean(0) - dev.mean(0)).abs().max().item()
    return (f"{cpu.shape[0]} patches of {size} px, a {device.type} generator vs a CPU one (other seeds)",
            f"max |z| {z:.1f} (< {AUG_MAX_Z:g}) over channel means/stds, max |Δ| {diff:.3f}", z < AUG_MAX_Z)


def source_batch(cfg: RunConfig, shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """uint8 source images ``[batch, C, side, side]`` (smooth colour fields plus noise)."""
    channels, side = shape
    return synthetic_images(cfg.data.batch_size, side, seed)[:, :channels].contiguous()


def pretrain_task(cfg: RunConfig, device: torch.device) -> PretrainTask:
    """A ``PretrainTask`` holding what its ``setup`` builds for a step (model, augmentation, loss,
    SGD), without the dataset, the loader and the kNN monitor: batches here are synthetic."""
    task = PretrainTask()
    task.cfg, task.device, task.global_batch = cfg, device, cfg.data.batch_size
    task.method = task.trained = build_method(cfg).to(device)
    task.model = task.method.model
    task.optimizer = torch.optim.SGD(task.model.parameters(), lr=cfg.effective_lr(),
                                     momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay)
    return task


def train_step(task: PretrainTask, images: torch.Tensor, step: int) -> float:
    """``task.step`` and what ``jigclu.trainers.loop.run`` does with its loss."""
    loss, stats, _ = task.step((images,), 0, step)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss became {loss.item()} at step {step}")
    task.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    task.optimizer.step()
    return stats["loss"]


def bf16_row(device: torch.device, cfg: RunConfig, shape: tuple[int, int]) -> Check:
    task = pretrain_task(cfg, device)
    images = source_batch(cfg, shape).to(device)
    method = task.method
    montages, perm, total = make_montages(images, method.augment, cfg.model.grid, cfg.jigsaw.cross_ratio, 0,
                                          cfg.jigsaw.montage_scope)
    results = {}
    for amp in ("none", "bf16"):
        task.model.zero_grad(set_to_none=True)
        out = jigclu_losses(task.model, method.criterion, montages, perm, total, amp)
        out["loss"].backward()
        grads = torch.cat([p.grad.flatten() for p in task.model.parameters() if p.grad is not None])
        results[amp] = (out["loss"].item(), grads.float())
    (l32, g32), (l16, g16) = results["none"], results["bf16"]
    rel = abs(l16 - l32) / max(abs(l32), 1e-12)
    finite = math.isfinite(l16) and bool(torch.isfinite(g16).all())
    # Gradients only informative: at random init they are chaotic (a ResNet-50's early-layer
    # gradients differ in direction between bf16 and fp32 even on CPU), so they are not a verdict.
    cos = F.cosine_similarity(g16, g32, dim=0).item()
    norms = (g16.norm() / g32.norm().clamp_min(1e-30)).item()
    return (f"{cfg.model.arch} w{cfg.model.width}, {cfg.jigsaw.crop_size} px, batch {cfg.data.batch_size}; "
            "one step, autocast(bfloat16) vs fp32",
            f"loss {l16:.4f} vs {l32:.4f} (Δ {rel:.2%} < {BF16_LOSS_RTOL:.0%}), "
            f"{'finite' if finite else 'NOT FINITE'}; info: grad cos {cos:.2f}, norm ratio {norms:.2f}",
            finite and rel < BF16_LOSS_RTOL)


def throughput_row(device: torch.device, cfg: RunConfig, shape: tuple[int, int], sizes: Sizes) -> Check:
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    task = pretrain_task(cfg, device)
    task.trained.train()
    images = source_batch(cfg, shape)  # on the host, as the loader hands it over
    images = images.pin_memory() if cuda else images
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    losses = [train_step(task, images, step) for step in range(sizes.warmup)]
    sync()
    start = time.perf_counter()
    losses += [train_step(task, images, sizes.warmup + step) for step in range(sizes.timed)]
    sync()
    seconds = time.perf_counter() - start
    rate = sizes.timed * cfg.data.batch_size / seconds
    peak = f", peak {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB" if cuda else ", peak GPU memory n/a"
    ok = all(math.isfinite(v) for v in losses)
    return (f"{cfg.model.arch} w{cfg.model.width}, {cfg.jigsaw.crop_size} px, m={cfg.model.grid}, "
            f"batch {cfg.data.batch_size}, amp {cfg.train.amp}; {sizes.timed} steps after {sizes.warmup}",
            f"{rate:,.0f} img/s ({seconds / sizes.timed * 1e3:,.1f} ms/step){peak}", ok)


def jpeg_chunk(n: int, side: int) -> dict[str, np.ndarray]:
    """A raw chunk as Ray Data hands it over with ``data.decode=device``: ``n`` q90 JPEGs of ``side`` px."""
    blobs = []
    for image in synthetic_images(n, side, seed=3):
        buf = io.BytesIO()
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=90)
        blobs.append(buf.getvalue())
    return {"data": object_array(blobs), "where": object_array([f"row {i}" for i in range(n)]),
            "label": np.zeros(n, np.int64), "key": np.arange(n), "ok": np.ones(n, bool), "error": object_array([""] * n)}


def jpeg_decode_row(device: torch.device, sizes: Sizes) -> Check:
    """``data.decode=device`` (a batched ``decode_jpeg`` on the device, resized there) against the
    CPU decode tasks' PIL decode in one process, on the same JPEGs; passes when the pixels agree."""
    n, side, out = sizes.jpeg
    chunk = jpeg_chunk(n, side)
    decoder = DeviceDecoder(3, (out, out), device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    decoder(chunk)  # warm-up (nvJPEG handles, kernels)
    sync()
    start = time.perf_counter()
    got = decoder(chunk)["image"]
    sync()
    device_s = time.perf_counter() - start
    start = time.perf_counter()
    want = np.stack([decode_array(blob, "RGB", (out, out)) for blob in chunk["data"]])
    cpu_s = time.perf_counter() - start
    diff = (got.cpu().numpy().astype(np.int16) - want.astype(np.int16)).__abs__().mean()
    return (f"{n} JPEGs of {side} px to {out} px: device decode (batched decode_jpeg + resize) vs one CPU "
            f"decode task (PIL)", f"{n / device_s:,.0f} vs {n / cpu_s:,.0f} img/s; mean |diff| {diff:.2f} levels",
            bool(diff <= JPEG_MAX_DIFF))


def print_table(rows: list[tuple[str, str, str, bool | None]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left", pad_edge=False)
    table.add_column("check", no_wrap=True)
    table.add_column("result")
    table.add_column("figure")
    table.add_column("pass/fail", no_wrap=True)
    verdicts = {True: "[green]pass[/]", False: "[bold red]FAIL[/]", None: "[yellow]skipped[/]"}
    for name, result, figure, ok in rows:
        table.add_row(name, result, figure, verdicts[ok])
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="check the CUDA path of jigclu (make gpu-check)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: the same checks at tiny sizes, to exercise the script without a GPU")
    parser.add_argument("--budget", type=float, default=270.0, help="seconds; later rows are skipped past it")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    device = torch.device("cuda:0" if args.device == "cuda" else "cpu")
    sizes = CUDA if device.type == "cuda" else CPU
    demo = load_config(DEMO, list(sizes.demo))
    r50 = load_config(R50, list(sizes.r50))
    checks: dict[str, Callable[[], Check]] = dict(zip(CHECKS, (
        lambda: montage_row(device, sizes),
        lambda: augment_exact_row(device, sizes),
        lambda: augment_stats_row(device, sizes),
        lambda: bf16_row(device, r50, sizes.r50_images),
        lambda: throughput_row(device, demo, sizes.demo_images, sizes),
        lambda: throughput_row(device, r50, sizes.r50_images, sizes),
        lambda: jpeg_decode_row(device, sizes),
    ), strict=True))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke run, tiny sizes)"
    common.progress(f"gpu-check on {name}, torch {torch.__version__}, budget {args.budget:.0f} s")
    start = time.perf_counter()
    rows: list[tuple[str, str, str, bool | None]] = []
    for check, fn in checks.items():
        spent = time.perf_counter() - start
        if spent > args.budget:
            print(f"gpu-check: time budget of {args.budget:.0f} s spent ({spent:.0f} s); skipping {check!r}")
            rows.append((check, f"skipped: time budget of {args.budget:.0f} s spent", "", None))
            continue
        common.progress(check)
        try:
            rows.append((check, *fn()))
        except Exception as exc:  # one broken check must not hide the others
            rows.append((check, f"error: {type(exc).__name__}: {exc}"[:300], "", False))
    print_table(rows, f"gpu-check: {name}, torch {torch.__version__}, {time.perf_counter() - start:.0f} s")
    failed = [r[0] for r in rows if r[3] is False]
    print(f"gpu-check: {len(failed)} of {len(rows)} checks failed: {', '.join(failed)}" if failed
          else f"gpu-check: all {sum(r[3] is True for r in rows)} checks that ran passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
