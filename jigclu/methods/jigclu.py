"""Jigsaw Clustering (Chen, Liu and Jia, CVPR 2021, section 3; the README's "The method in one step").

Per step: split -> per-patch augment (batched, on the training device) -> one shared permutation ->
stitch -> backbone -> decouple -> heads -> ``w_clu * SupClu + w_loc * CE``. With several workers and
``jigsaw.montage_scope: global`` the patches of all workers are gathered, every worker derives the
same permutation from the step seed, stitches its slice of the montages, and the per-patch
features are all-gathered with gradient, so each worker's loss sees the whole global batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from jigclu import dist
from jigclu.augment import PatchAugment
from jigclu.config import RunConfig
from jigclu.jigsaw import jigsaw_labels, patch_layout, random_permutation, step_seed, stitch
from jigclu.losses import JigCluLoss
from jigclu.methods.base import Method, build_augment
from jigclu.models import JigCluModel

_PATCH_SALT, _PERM_SALT = 1, 2


def make_montages(images: Tensor, augment: PatchAugment, grid: int, cross_ratio: float,
                  seed: int, scope: str = "global") -> tuple[Tensor, Tensor, int]:
    """Jigsaw one batch: uint8 images ``[n, C, H, W]`` -> (montages, permutation, global n).

    ``seed`` is the step seed: patches are augmented with ``seed + rank`` (each worker its own
    images) and the permutation is drawn from ``seed`` alone, so every worker draws the same
    one. Returns this worker's montages ``[n, 3, m*s, m*s]``, the permutation over all
    ``m*m*N`` patches of the scope, and ``N`` (the number of images the permutation spans).
    """
    x = images  # uint8 or float; PatchAugment converts only the pixels it samples
    n, _, height, width = x.shape
    cells = grid * grid
    src, boxes = patch_layout(n, height, width, grid, cross_ratio, x.device)
    gen = torch.Generator(device=x.device).manual_seed(step_seed(seed, 0, dist.rank(), _PATCH_SALT))
    patches = augment(x, src, boxes, gen)  # [cells * n, 3, s, s], position-major
    if scope == "global" and dist.is_distributed():
        world, rank = dist.world_size(), dist.rank()
        everyone = dist.gather(patches)  # rank-major: [world, cells, n, ...]
        everyone = everyone.view(world, cells, n, *patches.shape[1:]).transpose(0, 1)
        everyone = everyone.reshape(cells * world * n, *patches.shape[1:])
        total = world * n
        perm = random_permutation(cells * total, step_seed(seed, 0, 0, _PERM_SALT), x.device)
        # only the slots of this worker's montages: slot = cell * total + montage
        mine = perm.view(cells, total)[:, rank * n:(rank + 1) * n].reshape(-1)
        return stitch(everyone[mine], grid), perm, total
    perm = random_permutation(cells * n, step_seed(seed, 0, dist.rank(), _PERM_SALT), x.device)
    return stitch(patches[perm], grid), perm, n


def jigclu_losses(model: torch.nn.Module, criterion: JigCluLoss, montages: Tensor, perm: Tensor,
                  total: int, amp: str = "none") -> dict[str, Tensor]:
    """Forward the montages and compute both losses (labels ``perm % N`` and ``perm // N``)."""
    label_clu, label_loc = jigsaw_labels(perm, total)
    with torch.autocast(montages.device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
        embeddings, loc_logits = model(montages)
    return criterion(embeddings.float(), loc_logits.float(), label_clu, label_loc)


def build_model(cfg: RunConfig) -> JigCluModel:
    return JigCluModel(cfg.model.arch, cfg.model.width, cfg.model.grid, cfg.model.proj_dim)


class JigClu(Method):
    """``method: jigclu``: montages of ``model.grid`` x ``model.grid`` patches, SupClu over the
    patches of one image (``loss.temperature``) and the location of each patch."""

    name = "jigclu"
    stats = ("loss_clu", "loss_loc", "loc_acc")
    percent = ("loc_acc",)

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self.model = build_model(cfg)
        self.model.gather_features = cfg.jigsaw.montage_scope == "global"
        self.augment = build_augment(cfg)
        self.criterion = JigCluLoss(cfg.loss.w_clu, cfg.loss.w_loc, cfg.loss.temperature)

    @property
    def temperature(self) -> float:
        return self.criterion.clu.temperature

    def forward(self, images: Tensor, seed: int) -> dict[str, Tensor]:
        cfg = self.cfg
        montages, perm, total = make_montages(images, self.augment, cfg.model.grid, cfg.jigsaw.cross_ratio, seed,
                                              cfg.jigsaw.montage_scope)
        return jigclu_losses(self.model, self.criterion, montages, perm, total, cfg.train.amp)


__all__ = ["JigClu", "make_montages", "jigclu_losses", "build_model"]
