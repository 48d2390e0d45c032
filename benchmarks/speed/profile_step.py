"""Profile of one JigClu pretraining step (and of the augmentation at 256 -> 112 px) on CPU.

Writes ``benchmarks/profile_step.txt``: ``torch.profiler`` tables of the top ops by self CPU
time, so the next optimisation starts from data, and a short summary to ``## Step profile``
in RESULTS.md.

1. One training step exactly as the trainer runs it (``make_montages`` + ``jigclu_losses`` +
   backward + SGD), ResNet-18-small width 32, 32 px montages, m = 2, batch 128, after two
   warm-up steps, with the phases marked (``record_function``).
2. ``PatchAugment`` alone at 256 -> 112 px patches, 64 images (the data-pipeline setting whose
   target is hardest), after one warm-up call.

    python -m benchmarks.speed.profile_step
"""

from __future__ import annotations

import argparse
import functools
import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

import jigclu.augment.color as color_module
import jigclu.augment.patch as patch_module
from benchmarks.harness import common
from benchmarks.speed.step_cost import synthetic_images
from jigclu.augment import PatchAugment
from jigclu.config import RunConfig
from jigclu.jigsaw import patch_layout
from jigclu.losses import JigCluLoss
from jigclu.methods.jigclu import build_model, jigclu_losses, make_montages

OUT = common.BENCH_DIR / "profile_step.txt"
PHASES = ("jigsaw: make_montages", "forward + losses", "backward", "optimizer step")


def profile_step(arch: str, width: int, crop: int, grid: int, batch: int) -> tuple[Any, dict[str, float]]:
    cfg = RunConfig.model_validate({"model": {"arch": arch, "width": width, "grid": grid},
                                    "jigsaw": {"crop_size": crop}, "data": {"batch_size": batch}})
    torch.manual_seed(0)
    images = synthetic_images(batch, crop)
    model = build_model(cfg).train()
    augment = PatchAugment(cfg.patch_size)
    criterion = JigCluLoss(cfg.loss.w_clu, cfg.loss.w_loc, cfg.loss.temperature)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)

    def step(seed: int) -> None:
        with record_function(PHASES[0]):
            montages, perm, total = make_montages(images, augment, grid, cfg.jigsaw.cross_ratio, seed)
        with record_function(PHASES[1]):
            out = jigclu_losses(model, criterion, montages, perm, total)
        with record_function(PHASES[2]):
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
        with record_function(PHASES[3]):
            opt.step()
        out["loss"].item()

    for seed in range(2):
        step(seed)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(2)
    events = prof.key_averages()
    phases = {e.key: e.cpu_time_total for e in events if e.key in PHASES}
    return prof, phases


# The stages of PatchAugment.forward, labelled for the profile by wrapping the functions it
# calls in record_function, in the module that looks each up at call time; restored afterwards.
AUGMENT_STAGES = {
    "_as_float_rgb": (patch_module, "uint8 -> float"),
    "crop_grid": (patch_module, "crop grid"),
    "resample_patches": (patch_module, "resample (grid_sample)"),
    "adjust_brightness_": (color_module, "brightness"),
    "adjust_contrast_": (color_module, "contrast"),
    "adjust_saturation_": (color_module, "saturation"),
    "adjust_hue_": (color_module, "hue"),
    "grayscale_": (patch_module, "grayscale"),
    "gaussian_blur": (patch_module, "blur"),
    "normalize_": (patch_module, "normalise"),
    "sample_params": (patch_module, "sample parameters"),
}


@contextmanager
def labelled_stages() -> Iterator[None]:
    saved = {name: getattr(module, name) for name, (module, _label) in AUGMENT_STAGES.items()}

    def wrap(fn: Any, label: str) -> Any:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            with record_function(f"stage: {label}"):
                return fn(*args, **kwargs)
        return inner

    try:
        for name, (module, label) in AUGMENT_STAGES.items():
            setattr(module, name, wrap(saved[name], label))
        yield
    finally:
        for name, fn in saved.items():
            setattr(AUGMENT_STAGES[name][0], name, fn)


def profile_augment(size: int = 256, patch: int = 112, n: int = 64) -> tuple[Any, dict[str, float]]:
    images = synthetic_images(n, size)
    augment = PatchAugment(patch)
    src, boxes = patch_layout(n, size, size, 2, 0.3)
    augment(images, src, boxes, torch.Generator().manual_seed(0))
    with labelled_stages(), profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function("PatchAugment.forward"):
            augment(images, src, boxes, torch.Generator().manual_seed(1))
    events = {e.key: e.cpu_time_total for e in prof.key_averages()}
    whole = events.get("PatchAugment.forward", 0.0)
    stages = {label: events.get(f"stage: {label}", 0.0) for _module, label in AUGMENT_STAGES.values()}
    # what no stage covers: patch selection for the masked ops, the scatter into the output
    # (which page-faults the fresh output tensor in), chunking
    stages["rest (selection, output scatter, chunking)"] = whole - sum(stages.values())
    return prof, {"whole": whole, **stages}


def top_ops(prof: Any, k: int) -> list[tuple[str, float, float, int]]:
    """(op, self CPU ms, share of all self CPU time, calls) of the ``k`` costliest ops."""
    events = [e for e in prof.key_averages()
              if e.key not in PHASES and not e.key.startswith("stage: ") and e.key != "PatchAugment.forward"]
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [(e.key, e.self_cpu_time_total / 1e3, e.self_cpu_time_total / total, e.count) for e in events[:k]]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="torch.profiler tables of one JigClu step")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, default=30, help="rows per table in profile_step.txt")
    parser.add_argument("--no-write", action="store_true", help="write neither profile_step.txt nor RESULTS.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = common.machine_info(args.threads)
    setting = dict(arch="resnet18_small", width=32, crop=32, grid=2, batch=128)
    label = "ResNet-18-small width 32, 32 px montages, m=2, batch 128"
    common.progress(f"profile: one step, {label}")
    step_prof, phases = profile_step(**setting)  # type: ignore[arg-type]
    common.progress("profile: PatchAugment 256 -> 112 px, 64 images")
    aug_prof, stages = profile_augment()
    whole = stages.pop("whole") or 1.0
    stage_rows = [(k, f"{v / 1e3:,.1f}", f"{v / whole:.1%}") for k, v in stages.items()]

    common.finish_info(info)
    phase_total = sum(phases.values()) or 1.0
    text = io.StringIO()
    text.write("jigclu: profile of one JigClu pretraining step on CPU "
               "(written by python -m benchmarks.speed.profile_step)\n")
    text.write("\n".join(f"{k}: {v}" for k, v in info.items()) + "\n\n")
    text.write(f"== 1. One training step: {label} ==\n\nPhases (CPU time incl. children):\n")
    for name in PHASES:
        ms = phases.get(name, 0.0) / 1e3
        text.write(f"  {name:<24s} {ms:9.1f} ms  {phases.get(name, 0.0) / phase_total:6.1%}\n")
    text.write("\nTop ops by self CPU time:\n")
    text.write(step_prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    text.write("\n\n== 2. PatchAugment alone: 256 -> 112 px patches, 64 images (256 patches) ==\n\n")
    text.write("Stages (CPU time incl. children; no stage runs inside another):\n")
    for k, ms, share in stage_rows:
        text.write(f"  {k:<44s} {ms:>9s} ms  {share:>6s}\n")
    text.write("\nTop ops by self CPU time:\n")
    text.write(aug_prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    text.write("\n")

    step_top, aug_top = top_ops(step_prof, 8), top_ops(aug_prof, 8)
    common.print_table(f"One step, {label}: phases", ["phase", "ms", "share"],
                       [(n, f"{phases.get(n, 0.0) / 1e3:,.1f}", f"{phases.get(n, 0.0) / phase_total:.1%}")
                        for n in PHASES])
    common.print_table("Top ops by self CPU time (one step)", ["op", "ms", "share", "calls"],
                       [(n, f"{ms:,.1f}", f"{sh:.1%}", c) for n, ms, sh, c in step_top])
    common.print_table("PatchAugment 256 -> 112 px, 64 images: stages", ["stage", "ms", "share"], stage_rows)
    common.print_table("Top ops by self CPU time (PatchAugment 256 -> 112 px, 64 images)",
                       ["op", "ms", "share", "calls"], [(n, f"{ms:,.1f}", f"{sh:.1%}", c) for n, ms, sh, c in aug_top])
    if args.no_write:
        return
    OUT.write_text(text.getvalue())
    body = "\n".join([
        f"`torch.profiler` (CPU) of one training step ({label}; phases marked with `record_function`) "
        "and of `PatchAugment` alone at 256 -> 112 px (64 images). Full tables: "
        "`benchmarks/profile_step.txt`. One profiled call each, after warm-up: shares, not timings.",
        "",
        common.markdown_table(["phase of one step", "share of step CPU time"],
                              [(n, f"{phases.get(n, 0.0) / phase_total:.1%}") for n in PHASES]),
        "",
        common.markdown_table(["top ops, one step", "self CPU share", "calls"],
                              [(f"`{n}`", f"{sh:.1%}", c) for n, _, sh, c in step_top]),
        "",
        common.markdown_table(["stage of PatchAugment 256 -> 112 px", "share of its CPU time"],
                              [(k, share) for k, _, share in stage_rows]),
        "",
        common.markdown_table(["top ops, PatchAugment 256 -> 112 px", "self CPU share", "calls"],
                              [(f"`{n}`", f"{sh:.1%}", c) for n, _, sh, c in aug_top]),
        "",
        common.info_block(info),
    ])
    common.write_section("Step profile", body)


if __name__ == "__main__":
    main()
