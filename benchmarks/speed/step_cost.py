"""Step cost: one JigClu training step vs a supervised step and a two-view contrastive step.

All three train the same backbone on the same machine, in the same process, interleaved:

- **JigClu**: exactly the trainer's step (``jigclu.trainers.pretrain``): ``make_montages``
  (split, per-patch augmentation of uint8 images, one permutation, stitch) + ``jigclu_losses``
  (backbone, decouple, clustering and location heads, SupClu + CE) + backward + SGD step.
- **supervised** (the floor): the same number of montage-size images, uint8 -> float ->
  normalised, backbone -> global pool -> linear classifier -> cross-entropy, backward, SGD.
  No augmentation: the least any training step on these pixels can cost.
- **two-view** (SimCLR-style): every image augmented twice (the same batched ``PatchAugment``
  recipe, whole image as the box), both views through the backbone in one batch, projection
  MLP ``Linear(d, d) - ReLU - Linear(d, 128)``, NT-Xent (T = 0.2), backward, SGD.

Targets (issue 8): JigClu/supervised <= 1.10, JigClu/two-view <= 0.60. The share of the jigsaw
pipeline (augment + permute + stitch, i.e. ``make_montages``) in a JigClu step is timed inside
the same steps.

    python -m benchmarks.speed.step_cost            # all configurations, writes ## Step cost
    python -m benchmarks.speed.step_cost --quick    # fewer rounds, smaller batches (smoke run)
"""

from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.harness import common
from jigclu.augment import IMAGENET_MEAN, IMAGENET_STD, PatchAugment, to_float_rgb
from jigclu.config import RunConfig
from jigclu.losses import JigCluLoss, nt_xent
from jigclu.models import ResNetBackbone
from jigclu.methods import build_augment
from jigclu.methods.jigclu import build_model, jigclu_losses, make_montages

TARGET_VS_SUPERVISED = 1.10
TARGET_VS_TWO_VIEW = 0.60


@dataclass(frozen=True)
class Setting:
    arch: str
    width: int
    crop: int  # montage side (= supervised image side = two-view view side)
    grid: int
    batch: int
    rounds: int

    @property
    def label(self) -> str:
        return f"{self.arch} w{self.width}, {self.crop} px, m={self.grid}, batch {self.batch}"


def settings(quick: bool, rounds: int | None) -> list[Setting]:
    if quick:
        return [Setting("resnet18_small", 16, 32, 2, 32, rounds or 3),
                Setting("resnet50", 32, 64, 2, 4, rounds or 3)]
    return [
        Setting("resnet18_small", 32, 32, 2, 128, rounds or 9),
        Setting("resnet18_small", 32, 48, 3, 128, rounds or 7),
        Setting("resnet50", 64, 64, 2, 32, rounds or 11),
        Setting("resnet50", 64, 96, 3, 16, rounds or 9),
    ]


def synthetic_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """uint8 ``[n, 3, size, size]``: smooth colour fields plus noise (timing is content-agnostic)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    smooth = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    noisy = (smooth + 0.1 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)
    return (noisy * 255).round().to(torch.uint8)


class TimedAugment:
    """Calls a PatchAugment and records how long it took (make_montages only calls it)."""

    def __init__(self, augment: PatchAugment) -> None:
        self.augment, self.last = augment, 0.0

    def __call__(self, *args: Any) -> torch.Tensor:
        start = time.perf_counter()
        out = self.augment(*args)
        self.last = time.perf_counter() - start
        return out


def sgd(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.03, momentum=0.9, weight_decay=1e-4)  # the trainer's recipe


def make_steps(s: Setting) -> dict[str, Any]:
    """The three step functions of one setting (JigClu's returns its sub-step timings)."""
    torch.manual_seed(0)
    images = synthetic_images(s.batch, s.crop)
    cfg = RunConfig.model_validate({
        "model": {"arch": s.arch, "width": s.width, "grid": s.grid},
        "jigsaw": {"crop_size": s.crop}, "data": {"batch_size": s.batch},
    })
    counter = itertools.count()

    # JigClu: the trainer's own functions and objects
    jig_model = build_model(cfg)
    jig_model.train()
    jig_aug = TimedAugment(build_augment(cfg))
    criterion = JigCluLoss(cfg.loss.w_clu, cfg.loss.w_loc, cfg.loss.temperature)
    jig_opt = sgd(jig_model.parameters())

    def jigclu() -> dict[str, float]:
        seed = next(counter)
        start = time.perf_counter()
        montages, perm, total = make_montages(images, jig_aug, cfg.model.grid, cfg.jigsaw.cross_ratio, seed,
                                              cfg.jigsaw.montage_scope)
        jigsaw = time.perf_counter() - start
        out = jigclu_losses(jig_model, criterion, montages, perm, total, cfg.train.amp)
        jig_opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        jig_opt.step()
        out["loss"].item()
        return {"jigsaw": jigsaw, "augment": jig_aug.last}

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    # Supervised floor: same backbone, same images, no augmentation
    sup_backbone = ResNetBackbone(s.arch, s.width)  # type: ignore[arg-type]
    classes = 1000 if s.arch.startswith("resnet50") else 10
    sup_head = nn.Linear(sup_backbone.feature_dim, classes)
    sup_model = nn.Sequential(sup_backbone, sup_head).train()
    sup_opt = sgd(sup_model.parameters())
    labels = torch.randint(0, classes, (s.batch,), generator=torch.Generator().manual_seed(1))

    def supervised() -> None:
        x = to_float_rgb(images).sub_(mean).div_(std)
        loss = F.cross_entropy(sup_model(x), labels)
        sup_opt.zero_grad(set_to_none=True)
        loss.backward()
        sup_opt.step()
        loss.item()

    # Two-view contrastive: two augmented views per image, projection MLP, NT-Xent
    tv_backbone = ResNetBackbone(s.arch, s.width)  # type: ignore[arg-type]
    d = tv_backbone.feature_dim
    tv_model = nn.ModuleDict({"backbone": tv_backbone,
                              "proj": nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, 128))}).train()
    tv_opt = sgd(tv_model.parameters())
    tv_aug = PatchAugment(s.crop)
    src = torch.arange(s.batch).repeat(2)
    boxes = torch.tensor([[0.0, 0.0, s.crop, s.crop]]).expand(2 * s.batch, 4)

    def two_view() -> None:
        gen = torch.Generator().manual_seed(next(counter))
        views = tv_aug(images, src, boxes, gen)
        z = F.normalize(tv_model["proj"](tv_model["backbone"](views)), dim=1)
        loss = nt_xent(z)
        tv_opt.zero_grad(set_to_none=True)
        loss.backward()
        tv_opt.step()
        loss.item()

    return {"jigclu": jigclu, "supervised": supervised, "two-view": two_view}


def run_setting(s: Setting) -> dict[str, Any]:
    steps = make_steps(s)

    def record(name: str, value: Any, timings: common.Timings) -> None:
        if name == "jigclu":
            timings.extra.setdefault("jigsaw", []).append(value["jigsaw"])
            timings.extra.setdefault("augment", []).append(value["augment"])

    t = common.interleaved(steps, rounds=s.rounds, warmup=1, extra=record)
    jig = t.times["jigclu"]
    share = common.Ratio.of([a / b for a, b in zip(t.extra["jigsaw"], jig)])
    aug_share = common.Ratio.of([a / b for a, b in zip(t.extra["augment"], jig)])
    return {
        "setting": s, "rounds": t.rounds,
        "ms": {k: t.median(k) for k in steps},
        "vs_sup": t.ratio("jigclu", "supervised"),
        "vs_two": t.ratio("jigclu", "two-view"),
        "share": share, "aug_share": aug_share,
    }


COLUMNS = ["setting", "JigClu ms", "supervised ms", "two-view ms", "JigClu/supervised", "JigClu/two-view",
           "jigsaw share (augment)"]


def rows(results: list[dict[str, Any]], rich: bool = False) -> list[list[str]]:
    out = []
    for r in results:
        ms = r["ms"]
        out.append([
            r["setting"].label,
            f"{ms['jigclu'] * 1e3:,.0f}", f"{ms['supervised'] * 1e3:,.0f}", f"{ms['two-view'] * 1e3:,.0f}",
            f"{r['vs_sup']} {common.verdict(r['vs_sup'].median <= TARGET_VS_SUPERVISED, rich)}",
            f"{r['vs_two']} {common.verdict(r['vs_two'].median <= TARGET_VS_TWO_VIEW, rich)}",
            f"{r['share'].median * 100:.1f}% ({r['aug_share'].median * 100:.1f}%)",
        ])
    return out


def section(results: list[dict[str, Any]], info: dict[str, str]) -> str:
    n_rounds = ", ".join(str(r["rounds"]) for r in results)
    return "\n".join([
        "One JigClu training step (the trainer's `make_montages` + `jigclu_losses` + backward + SGD) "
        "vs a supervised step of the same backbone on the same montage-size images (the floor: "
        "uint8 -> normalised float, pooled features, linear classifier, CE, no augmentation) and vs a "
        "SimCLR-style two-view step (two batched augmented views per image, projection MLP, NT-Xent). "
        f"Targets: JigClu/supervised <= {TARGET_VS_SUPERVISED:.2f}, JigClu/two-view <= {TARGET_VS_TWO_VIEW:.2f}. "
        "Ratios: median of per-round ratios (min-max over rounds); times: median ms per step. "
        "*jigsaw share*: `make_montages` (split + per-patch augmentation + permutation + stitch) as a "
        "share of the JigClu step, the augmentation alone in brackets.",
        "",
        common.markdown_table(COLUMNS, rows(results)),
        "",
        f"Rounds per setting: {n_rounds} (after one warm-up round); synthetic uint8 images "
        "(smooth colour fields + noise), seeds vary per step as in the trainer.",
        "",
        common.info_block(info),
    ])


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description="JigClu step cost vs supervised and two-view steps")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: per-thread cost)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per setting")
    parser.add_argument("--only", choices=["resnet18", "resnet50"], default=None)
    parser.add_argument("--quick", action="store_true", help="small batches, few rounds (smoke run)")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = common.machine_info(args.threads)
    results = []
    for s in settings(args.quick, args.rounds):
        if args.only and not s.arch.startswith(args.only):
            continue
        common.progress(f"step cost: {s.label}, {s.rounds} rounds")
        results.append(run_setting(s))
    common.print_table("Step cost (ratios: median (min-max) over interleaved rounds)", COLUMNS,
                       rows(results, rich=True))
    if not args.no_write and not args.quick:
        common.finish_info(info)
        common.write_section("Step cost", section(results, info))
    return results


if __name__ == "__main__":
    main()
