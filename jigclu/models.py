"""Backbones and heads of Jigsaw Clustering.

Backbones are torchvision ResNets (so the exported state dict is a plain torchvision one),
with two additions the reference lacks:

* ``width``: channels of the first stage (64 is torchvision's); narrow nets for CPU runs.
* ``*_small`` variants for 28-32 px images: a 3x3 stride-1 stem and no max-pool. With the
  ImageNet stem a 32 px montage ends as a 1x1 feature map, decoupling then carries no spatial
  information and JigClu "fails on CIFAR"; the small stem keeps a 4x4 map.

The heads follow the paper: clustering MLP ``Linear(d, d) - ReLU - Linear(d, 128)`` with an
L2-normalised output, and a linear location classifier with ``m*m`` classes.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from jigclu import dist
from jigclu.jigsaw import decouple

ARCHS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], list[int], bool]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2], False),
    "resnet50": (Bottleneck, [3, 4, 6, 3], False),
    "resnet18_small": (BasicBlock, [2, 2, 2, 2], True),
    "resnet50_small": (Bottleneck, [3, 4, 6, 3], True),
}

Arch = Literal["resnet18", "resnet50", "resnet18_small", "resnet50_small"]


class ResNetBackbone(ResNet):
    """A torchvision :class:`~torchvision.models.ResNet` that returns its last feature map.

    Parameter names are torchvision's (``conv1``, ``bn1``, ``layer1`` ... ``layer4``), without
    ``fc``, so ``state_dict()`` loads into ``torchvision.models.resnet18/50`` with
    ``strict=False`` (only ``fc.*`` missing) when ``width=64`` and the stem is the ImageNet one.
    """

    def __init__(self, arch: Arch = "resnet18", width: int = 64) -> None:
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
        block, layers, small = ARCHS[arch]
        super().__init__(block, layers)
        self.arch, self.width, self.small_input = arch, width, small
        if width != 64 or small:
            reshape_resnet(self, block, layers, width, small)
        self.fc = nn.Identity()  # no parameters: heads live outside the backbone
        self.feature_dim = width * 8 * block.expansion

    def forward_features(self, x: Tensor) -> Tensor:
        """Feature map ``[B, feature_dim, h, w]`` of the last stage."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        """Globally pooled features ``[B, feature_dim]`` (what downstream classifiers use)."""
        return torch.flatten(self.avgpool(self.forward_features(x)), 1)


def reshape_resnet(net: ResNet, block: type[BasicBlock] | type[Bottleneck], layers: list[int], width: int,
                   small: bool) -> None:
    """Recreate a torchvision ResNet's stem and stages at another width (torchvision's own layer
    builder and initialisation); ``small``: a 3x3 stride-1 stem and no max-pool. ``fc`` is left as is."""
    net.inplanes = width
    if small:
        net.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    else:
        net.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = net._norm_layer(width)
    net.layer1 = net._make_layer(block, width, layers[0])
    net.layer2 = net._make_layer(block, width * 2, layers[1], stride=2)
    net.layer3 = net._make_layer(block, width * 4, layers[2], stride=2)
    net.layer4 = net._make_layer(block, width * 8, layers[3], stride=2)
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def torchvision_resnet(arch: str, width: int, num_classes: int = 1000) -> ResNet:
    """A plain ``torchvision.models.ResNet`` (no jigclu class) that a ``jigclu export`` of ``arch`` at
    ``width`` loads into with only ``fc.*`` missing: torchvision's constructor, reshaped by
    :func:`reshape_resnet` unless it is the default (width 64, ImageNet stem), then ``fc`` for
    ``num_classes`` on the new feature size."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
    block, layers, small = ARCHS[arch]
    net = ResNet(block, layers, num_classes=num_classes)
    if width != 64 or small:
        reshape_resnet(net, block, layers, width, small)
        net.fc = nn.Linear(width * 8 * block.expansion, num_classes)
    return net


class ClusteringHead(nn.Module):
    """``Linear(d, d) - ReLU - Linear(d, dim)``, L2-normalised: the JigClu clustering branch."""

    def __init__(self, in_dim: int, dim: int = 128) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True), nn.Linear(in_dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.mlp(x), dim=1)


class JigCluModel(nn.Module):
    """Backbone + decoupling + clustering head + location head.

    ``forward(montages)`` returns the clustering embeddings and location logits of every
    patch, in slot order. With ``gather_features`` set and ``torch.distributed`` running, the
    per-patch features of all workers are all-gathered *with gradient* before the heads, so
    each worker's loss sees every patch of the global batch (the reference's global montage).
    The gather happens inside ``forward`` so a DDP wrapper sees every parameter used.
    """

    def __init__(self, arch: Arch = "resnet18_small", width: int = 64, grid: int = 2,
                 proj_dim: int = 128) -> None:
        super().__init__()
        self.grid = grid
        self.gather_features = False
        self.backbone = ResNetBackbone(arch, width)
        d = self.backbone.feature_dim
        self.clu_head = ClusteringHead(d, proj_dim)
        self.loc_head = nn.Linear(d, grid * grid)

    def patch_features(self, montages: Tensor) -> Tensor:
        """Per-patch features ``[m*m*n, d]`` of this process's montages, in local slot order."""
        return decouple(self.backbone.forward_features(montages), self.grid)

    def forward(self, montages: Tensor) -> tuple[Tensor, Tensor]:
        feats = self.patch_features(montages)
        if self.gather_features and dist.is_distributed():
            cells, n_local, d = self.grid * self.grid, montages.shape[0], feats.shape[1]
            gathered = dist.gather_with_grad(feats)  # rank-major: [world, cells, n_local, d]
            # global slot order: cell-major over the global montage index rank * n_local + i
            feats = gathered.view(dist.world_size(), cells, n_local, d).transpose(0, 1).reshape(-1, d)
        return self.clu_head(feats), self.loc_head(feats)


def build_backbone(arch: str, width: int) -> ResNetBackbone:
    return ResNetBackbone(arch, width)  # type: ignore[arg-type]
