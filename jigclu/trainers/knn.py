"""Weighted kNN classification on frozen features (Wu et al. 2018, as used by InstDisc/MoCo).

Features are the backbone's globally pooled output, L2-normalised; a query's ``k`` nearest
bank entries by cosine similarity vote for their class with weight ``exp(sim / T)``. It needs
no training, so it is a cheap and honest per-epoch quality signal for pretraining, and it is
what the sweeps optimise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from jigclu.trainers.common import eval_images, seeded_subset, stack_items


@torch.no_grad()
def extract_features(backbone: nn.Module, images: Tensor, size: int, device: torch.device,
                     batch_size: int = 256) -> Tensor:
    """L2-normalised pooled features of uint8 ``images`` (backbone in eval mode, restored after)."""
    was_training = backbone.training
    backbone.eval()
    feats = []
    for start in range(0, images.shape[0], batch_size):
        x = eval_images(images[start:start + batch_size], size, device)
        feats.append(F.normalize(backbone(x).float(), dim=1))
    backbone.train(was_training)
    return torch.cat(feats)


def knn_predict(bank: Tensor, bank_labels: Tensor, queries: Tensor, num_classes: int,
                k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> Tensor:
    """Class scores ``[Q, num_classes]`` of each query by weighted vote of its k neighbours."""
    k = min(k, bank.shape[0])
    scores = []
    for start in range(0, queries.shape[0], chunk):
        sim = queries[start:start + chunk] @ bank.T  # cosine: both sides are normalised
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(sim.shape[0], num_classes, device=sim.device)
        votes.scatter_add_(1, bank_labels[top_idx], weights)
        scores.append(votes)
    return torch.cat(scores)


def topk_accuracy(scores: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Top-k accuracy in percent for each k (k capped at the number of classes)."""
    out = {}
    for k in ks:
        kk = min(k, scores.shape[1])
        hit = (scores.topk(kk, dim=1).indices == labels[:, None]).any(1)
        out[k] = 100.0 * hit.float().mean().item()
    return out


@dataclass
class KnnMonitor:
    """kNN top-1/top-5 of a backbone on a held-out labeled split, computed once per epoch.

    ``bank`` images come from the training split, ``queries`` from the test split, so the
    metric never scores an image against itself.
    """

    bank_images: Tensor
    bank_labels: Tensor
    query_images: Tensor
    query_labels: Tensor
    num_classes: int
    size: int
    k: int = 20
    temperature: float = 0.07

    @classmethod
    def from_datasets(cls, train_ds, test_ds, size: int, k: int, temperature: float,
                      train_limit: int | None, test_limit: int | None, seed: int = 0) -> "KnnMonitor":
        bi, bl = stack_items(train_ds, seeded_subset(len(train_ds), train_limit, seed))
        qi, ql = stack_items(test_ds, seeded_subset(len(test_ds), test_limit, seed + 1))
        return cls(bi, bl, qi, ql, train_ds.num_classes, size, k, temperature)

    def evaluate(self, backbone: nn.Module, device: torch.device) -> dict[str, float]:
        bank = extract_features(backbone, self.bank_images, self.size, device)
        queries = extract_features(backbone, self.query_images, self.size, device)
        scores = knn_predict(bank, self.bank_labels.to(device), queries, self.num_classes,
                             self.k, self.temperature)
        acc = topk_accuracy(scores, self.query_labels.to(device))
        return {"knn_top1": acc[1], "knn_top5": acc[5]}


def knn_eval(cfg: Any, device: str | None = None) -> dict[str, float]:
    """kNN top-1/top-5 of ``cfg``'s backbone (``eval.pretrained`` or random init) on its data:
    bank from the train split, queries from the test split (``monitor.*`` limits)."""
    from jigclu.context import resolve_device
    from jigclu.data import load_dataset
    from jigclu.export import load_backbone_weights, load_into
    from jigclu.models import build_backbone
    from jigclu.trainers.common import seed_everything

    seed_everything(cfg.seed)
    dev = torch.device(device) if device else resolve_device(cfg.device)
    backbone = build_backbone(cfg.model.arch, cfg.model.width)
    if cfg.eval.pretrained:
        load_into(backbone, load_backbone_weights(cfg.eval.pretrained))
    backbone.to(dev)
    splits = [load_dataset(cfg.data.dataset, split, image_size=cfg.data.image_size, on_corrupt=cfg.data.on_corrupt)
              for split in ("train", "test")]
    monitor = KnnMonitor.from_datasets(*splits, cfg.eval.image_size or cfg.jigsaw.crop_size, cfg.monitor.k,
                                       cfg.monitor.knn_temperature, cfg.monitor.train_limit,
                                       cfg.monitor.test_limit, seed=cfg.seed)
    result = monitor.evaluate(backbone, dev)
    result.update(bank=float(len(monitor.bank_labels)), queries=float(len(monitor.query_labels)))
    return result
