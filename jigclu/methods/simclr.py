"""SimCLR (Chen, Kornblith, Norouzi and Hinton, ICML 2020), the contrastive baseline JigClu is compared with.

Per step: two views of each whole image through the same batched augmentation as JigClu's
patches (:class:`~jigclu.augment.PatchAugment`, box = the whole image, out size =
``jigsaw.crop_size``, the montage side) -> backbone -> the clustering head's MLP -> NT-Xent at
``loss.temperature`` over the ``2N`` views of the global batch (each worker's embeddings are
all-gathered with gradient, so every worker's loss sees every view, as JigClu's global montages do).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from jigclu import dist
from jigclu.config import RunConfig
from jigclu.jigsaw import step_seed
from jigclu.losses import nt_xent
from jigclu.methods.base import Method, build_augment
from jigclu.models import ClusteringHead, ResNetBackbone

_VIEW_SALT = 3


class SimCLRModel(nn.Module):
    """Backbone + projection head (``Linear - ReLU - Linear``, L2-normalised); keys ``backbone.*``, ``head.*``."""

    def __init__(self, arch: str, width: int, proj_dim: int) -> None:
        super().__init__()
        self.backbone = ResNetBackbone(arch, width)  # type: ignore[arg-type]
        self.head = ClusteringHead(self.backbone.feature_dim, proj_dim)

    def forward(self, views: Tensor) -> Tensor:
        return self.head(self.backbone(views))


class SimCLR(Method):
    """``method: simclr``: NT-Xent between two augmented views of each image."""

    name = "simclr"
    stats = ("pair_acc",)
    percent = ("pair_acc",)

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self.model = SimCLRModel(cfg.model.arch, cfg.model.width, cfg.model.proj_dim)
        self.augment = build_augment(cfg, cfg.jigsaw.crop_size)
        self.temperature = cfg.loss.temperature

    def views(self, images: Tensor, seed: int) -> Tensor:
        """Two augmented views of each image, ``[2n, 3, s, s]``: rows ``i`` and ``i + n`` are one image's."""
        n, _, h, w = images.shape
        src = torch.arange(n, device=images.device).repeat(2)
        boxes = torch.tensor([[0.0, 0.0, float(w), float(h)]], device=images.device).expand(2 * n, 4)
        gen = torch.Generator(device=images.device).manual_seed(step_seed(seed, 0, dist.rank(), _VIEW_SALT))
        return self.augment(images, src, boxes, gen)

    def forward(self, images: Tensor, seed: int) -> dict[str, Tensor]:
        n = images.shape[0]
        with self.autocast(images.device):
            z = self.model(self.views(images, seed))
        z = z.float()
        if dist.is_distributed():  # rank-major [world, 2, n, d] -> view-major: all first views, then all second
            world = dist.world_size()
            z = dist.gather_with_grad(z).view(world, 2, n, -1).transpose(0, 1).reshape(2 * world * n, -1)
        loss = nt_xent(z, self.temperature)
        with torch.no_grad():  # does each view find its partner first among the other 2N - 1?
            sim = (z @ z.T).fill_diagonal_(float("-inf"))
            total = z.shape[0] // 2
            partner = torch.arange(2 * total, device=z.device).roll(total)
            pair_acc = (sim.argmax(1) == partner).float().mean()
        return {"loss": loss, "pair_acc": pair_acc}


__all__ = ["SimCLR", "SimCLRModel"]
