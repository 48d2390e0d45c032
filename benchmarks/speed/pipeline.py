"""Data pipeline: our batched per-patch augmentation vs the reference per-image PIL pipeline.

Images per second on one CPU thread (``torch.set_num_threads(1)``), interleaved in one process:

- **reference**: ``reference_pipeline.reference_transform``, the reference implementation's
  per-image PIL pipeline (4 overlapping quadrant crops, each RandomResizedCrop + ColorJitter +
  grayscale + blur + flip + ToTensor + Normalize), one image at a time;
- **PatchAugment**: ``jigclu.augment.PatchAugment`` on a uint8 batch, called exactly as
  ``make_montages`` calls it (``patch_layout`` boxes, position-major patches);
- **make_montages**: the whole jigsaw pipeline of the trainer (the augmentation above plus the
  permutation and the stitching into montages), which the reference does later, on the GPU;
- **resample only**: ``PatchAugment(enabled=False)``, each box just cut, resized and normalised:
  what ours would cost with free colour ops (the ceiling of optimising them).

At 256 -> 112 px patches (ImageNet-like) and 32 -> 16 px (CIFAR-like), m = 2. Target: ours
>= 5x the PIL pipeline per thread. A second run in a child process repeats the measurement
with glibc's allocator told to keep freed memory (``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_``), because page faults on fresh multi-megabyte tensors are a large
part of our cost on this machine (see the section's notes).

    python -m benchmarks.speed.pipeline             # writes ## Data pipeline
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
from typing import Any

import torch
from PIL import Image

from benchmarks.harness import common
from benchmarks.speed.reference_pipeline import _synthetic_images, reference_transform
from jigclu.augment import PatchAugment
from jigclu.jigsaw import patch_layout
from jigclu.methods.jigclu import make_montages

TARGET = 5.0
CROSS = 0.3
# (source side, patch side, images per timed batch)
SIZES = ((256, 112, 64), (32, 16, 256))
TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 33)}


def contenders(size: int, patch: int, n: int) -> dict[str, Any]:
    images = _synthetic_images(n, size)
    pil = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images]
    ref = reference_transform(patch, CROSS)
    augment = PatchAugment(patch)
    resample_only = PatchAugment(patch, enabled=False)  # crop box -> resize -> normalise, no colour ops
    seeds = iter(range(10 ** 9))

    def reference() -> None:
        for img in pil:
            ref(img)

    def patch_augment() -> torch.Tensor:
        src, boxes = patch_layout(n, size, size, 2, CROSS)
        return augment(images, src, boxes, torch.Generator().manual_seed(next(seeds)))

    def montages() -> torch.Tensor:
        return make_montages(images, augment, 2, CROSS, next(seeds))[0]

    def floor() -> torch.Tensor:
        src, boxes = patch_layout(n, size, size, 2, CROSS)
        return resample_only(images, src, boxes, torch.Generator().manual_seed(next(seeds)))

    return {"reference": reference, "PatchAugment": patch_augment, "make_montages": montages,
            "resample only": floor}


def measure(rounds: int) -> list[dict[str, Any]]:
    torch.set_num_threads(1)
    random.seed(0)
    torch.manual_seed(0)
    out = []
    for size, patch, n in SIZES:
        common.progress(f"pipeline: {size} -> {patch} px, {n} images per batch, {rounds} rounds")
        fns = contenders(size, patch, n)
        # short calls (ours at 32 px: ~10 ms) are repeated to ~0.2 s so timer and scheduler
        # noise stay small; images/s accounts for the repeats
        reps = {name: common.calibrate(fn, 0.2) for name, fn in fns.items()}
        timed = {name: common.repeat(fn, reps[name]) for name, fn in fns.items()}
        t = common.interleaved(timed, rounds=rounds, warmup=1)
        per_image = {name: [x / (reps[name] * n) for x in t.times[name]] for name in fns}
        ips = {name: 1.0 / statistics.median(v) for name, v in per_image.items()}
        speedup = {name: common.Ratio.of([r / o for r, o in zip(per_image["reference"], per_image[name])])
                   for name in ("PatchAugment", "make_montages", "resample only")}
        out.append({"size": size, "patch": patch, "n": n, "rounds": t.rounds, "ips": ips,
                    "speedup": {k: [v.median, v.low, v.high, v.n] for k, v in speedup.items()}})
    return out


def page_fault_factor(rounds: int) -> float:
    """How many times longer filling a fresh 38 MB tensor takes than refilling a reused one.

    A fresh tensor that size comes from ``mmap`` (glibc's default) and page-faults in on first
    touch; the reused one is already mapped. The ratio is the price of that on this machine.
    """
    shape = (256, 3, 112, 112)  # the patches of 64 images at 112 px
    reused = torch.empty(shape)
    reused.fill_(0.0)

    def fresh() -> None:
        torch.empty(shape).fill_(1.0)

    t = common.interleaved({"fresh": fresh, "reused": lambda: reused.fill_(1.0)}, rounds=rounds, warmup=1)
    return t.ratio("fresh", "reused").median


def _ratio(v: list[float]) -> common.Ratio:
    return common.Ratio(v[0], v[1], v[2], int(v[3]))


COLUMNS = ["setting", "allocator", "reference img/s", "PatchAugment img/s", "make_montages img/s",
           "PatchAugment/ref", "make_montages/ref", "resample-only/ref"]


def rows(results: list[tuple[str, list[dict[str, Any]]]], rich: bool = False) -> list[list[str]]:
    out = []
    for allocator, res in results:
        for r in res:
            pa, mm = _ratio(r["speedup"]["PatchAugment"]), _ratio(r["speedup"]["make_montages"])
            floor = _ratio(r["speedup"]["resample only"])
            out.append([
                f"{r['size']} -> {r['patch']} px, m=2",
                allocator,
                f"{r['ips']['reference']:,.0f}", f"{r['ips']['PatchAugment']:,.0f}", f"{r['ips']['make_montages']:,.0f}",
                f"{pa} {common.verdict(pa.median >= TARGET, rich)}",
                f"{mm} {common.verdict(mm.median >= TARGET, rich)}",
                str(floor),
            ])
    return out


def section(results: list[tuple[str, list[dict[str, Any]]]], info: dict[str, str], fault_factor: float,
            fault_rounds: int) -> str:
    rounds = ", ".join(f"{r['rounds']}" for _, res in results for r in res)
    return "\n".join([
        "Images per second on **one CPU thread** (`torch.set_num_threads(1)`; PIL is single-threaded), "
        "4 patches per image (m = 2, cross ratio 0.3). *reference*: the reference implementation's "
        "per-image PIL pipeline (`benchmarks/speed/reference_pipeline.py`). *PatchAugment*: our batched "
        "per-patch augmentation on a uint8 batch, called as `make_montages` calls it. *make_montages*: "
        "the trainer's whole jigsaw pipeline (augmentation + permutation + stitch). *resample only*: "
        "`PatchAugment(enabled=False)` (each box cut, resized and normalised, no colour jitter, grayscale, "
        "blur or flip): the ceiling for any colour-op optimisation of ours. "
        f"Target: ours >= {TARGET:.0f}x the reference. Speed-ups: median of per-round ratios (min-max).",
        "",
        common.markdown_table(COLUMNS, rows(results)),
        "",
        f"Rounds: {rounds} (interleaved, one warm-up). *glibc default*: the allocator as every user "
        "gets it. *glibc tuned*: a child process with `MALLOC_MMAP_THRESHOLD_=1GiB "
        "MALLOC_TRIM_THRESHOLD_=8GiB`, which keeps freed memory instead of returning it to the kernel: "
        "every fresh multi-megabyte tensor (the augmented batch, the permuted copy, the montages) "
        "otherwise page-faults in anew on each call: here filling a fresh 38 MB tensor took "
        f"{fault_factor:.1f}x as long as refilling a reused one (median of {fault_rounds} rounds).",
        "",
        common.info_block(info),
    ])


def main(argv: list[str] | None = None) -> list[tuple[str, list[dict[str, Any]]]]:
    parser = argparse.ArgumentParser(description="batched patch augmentation vs the reference PIL pipeline")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--no-tuned", action="store_true", help="skip the tuned-allocator child run")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # child mode: print JSON
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args(argv)
    if args.json:
        print(json.dumps(measure(args.rounds)))
        return []
    info = common.machine_info(1)
    torch.set_num_threads(1)
    fault_rounds = 15
    fault_factor = page_fault_factor(fault_rounds)
    results = [("glibc default", measure(args.rounds))]
    if not args.no_tuned:
        common.progress("pipeline: again in a child process with the tuned allocator")
        env = {**os.environ, **TUNED_MALLOC}
        cmd = [sys.executable, "-m", "benchmarks.speed.pipeline", "--json", "--rounds", str(args.rounds)]
        child = subprocess.run(cmd, env=env, cwd=common.REPO_ROOT, check=True, capture_output=True, text=True)
        results.append(("glibc tuned", json.loads(child.stdout.strip().splitlines()[-1])))
    common.print_table("Data pipeline, images/s per CPU thread (speed-up: median (min-max))", COLUMNS,
                       rows(results, rich=True))
    if not args.no_write:
        common.finish_info(info)
        common.write_section("Data pipeline", section(results, info, fault_factor, fault_rounds))
    return results


if __name__ == "__main__":
    main()
