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

from jigclu.evaluation.probe import linear_probe
from jigclu.data.splits import seeded_subset
from jigclu.data.splits import stack_items
from jigclu.evaluation.inputs import eval_images


@torch.no_grad()
def pooled_features(backbone: nn.Module, images: Tensor, size: int, device: torch.device,
                    batch_size: int = 256) -> Tensor:
    """Globally pooled features of uint8 ``images`` (backbone in eval mode, restored after)."""
    was_training = backbone.training
    backbone.eval()
    feats = []
    for start in range(0, images.shape[0], batch_size):
        x = eval_images(images[start:start + batch_size], size, device)
        feats.append(backbone(x).float())
    backbone.train(was_training)
    return torch.cat(feats)


def embedding_spread(features: Tensor) -> float:
    """Per-dimension std of L2-normalised ``features``, averaged and times sqrt(dim): about 1 for
    features spread evenly over the sphere, 0 when every image maps to the same point (collapse)."""
    if features.shape[0] < 2:
        return float("nan")
    return float(features.std(dim=0).mean() * features.shape[1] ** 0.5)


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

    ``bank`` images come from the training images, ``queries`` from a held-out split (the
    validation split carved from the training images, or the test split: ``split``), so the
    metric never scores an image against itself. With ``probe`` a linear probe is fitted on the
    bank's pooled features and scored on the queries too (:func:`jigclu.evaluation.probe.linear_probe`);
    ``embed_std`` (:func:`embedding_spread` of the queries) shows a collapse.
    """

    bank_images: Tensor
    bank_labels: Tensor
    query_images: Tensor
    query_labels: Tensor
    num_classes: int
    size: int
    k: int = 20
    temperature: float = 0.07
    probe: bool = False
    split: str = "test"
    seed: int = 0

    @classmethod
    def from_datasets(cls, train_ds, test_ds, size: int, k: int, temperature: float,
                      train_limit: int | None, test_limit: int | None, seed: int = 0, probe: bool = False,
                      split: str = "test") -> "KnnMonitor":
        bi, bl = stack_items(train_ds, seeded_subset(len(train_ds), train_limit, seed))
        qi, ql = stack_items(test_ds, seeded_subset(len(test_ds), test_limit, seed + 1))
        return cls(bi, bl, qi, ql, train_ds.num_classes, size, k, temperature, probe, split, seed)

    def evaluate(self, backbone: nn.Module, device: torch.device) -> dict[str, float]:
        bank_raw = pooled_features(backbone, self.bank_images, self.size, device)
        query_raw = pooled_features(backbone, self.query_images, self.size, device)
        return feature_scores(bank_raw, self.bank_labels.to(device), query_raw, self.query_labels.to(device),
                              self.num_classes, self.k, self.temperature, self.probe, self.seed)


def feature_scores(bank_raw: Tensor, bank_labels: Tensor, query_raw: Tensor, query_labels: Tensor, num_classes: int,
                   k: int, temperature: float, probe: bool, seed: int) -> dict[str, float]:
    """kNN top-1/top-5, the embeddings' spread and (``probe``) the linear probe's top-1, from pooled
    features of a labeled bank and labeled queries."""
    bank, queries = F.normalize(bank_raw, dim=1), F.normalize(query_raw, dim=1)
    acc = topk_accuracy(knn_predict(bank, bank_labels, queries, num_classes, k, temperature), query_labels)
    out = {"knn_top1": acc[1], "knn_top5": acc[5], "embed_std": embedding_spread(queries)}
    if probe:
        out["probe_top1"] = linear_probe(bank_raw, bank_labels, query_raw, query_labels, num_classes, seed=seed).top1
    return out


def held_out_monitor(cfg: Any, train_ds: Any, val_ds: Any | None, *, test: bool = False) -> KnnMonitor:
    """The monitor of a run: bank from ``train_ds``, queries from ``val_ds`` (the validation split)
    when there is one, else from the test split; ``monitor.*`` sizes. ``test``: the whole test split
    as queries, for the one test score after selection."""
    from jigclu.data import load_dataset

    if val_ds is not None and not test:
        queries, split = val_ds, "val"
    else:
        queries = load_dataset(cfg.data.dataset, "test", image_size=cfg.data.image_size,
                               on_corrupt=cfg.data.on_corrupt)
        split = "test"
    mon = cfg.monitor
    return KnnMonitor.from_datasets(train_ds, queries, cfg.monitor_size, mon.k, mon.knn_temperature,
                                    mon.train_limit, None if test else mon.test_limit, seed=cfg.data.val_seed,
                                    probe=mon.probe, split=split)


class CollapseRule:
    """Is a run collapsing? Its embeddings' spread (:func:`embedding_spread`) below ``min_std``,
    or kNN at chance (<= 1.5 x 100/classes) for ``patience`` evaluations in a row."""

    def __init__(self, min_std: float, patience: int, num_classes: int, state: dict[str, Any] | None = None) -> None:
        self.min_std, self.patience = min_std, patience
        self.chance = 150.0 / max(num_classes, 1)
        self.streak = int((state or {}).get("chance_streak") or 0)

    def check(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """``{"collapsed": 0.0}`` or ``{"collapsed": 1.0, "collapse_reason": ...}`` for one evaluation."""
        self.streak = self.streak + 1 if metrics["knn_top1"] <= self.chance else 0
        spread = metrics.get("embed_std")
        if self.min_std and spread is not None and spread < self.min_std:
            reason = f"embedding std {spread:.4f} < {self.min_std:g}"
        elif self.streak >= self.patience:
            reason = f"kNN at chance (<= {self.chance:.1f}%) for {self.streak} evaluations"
        else:
            return {"collapsed": 0.0}
        return {"collapsed": 1.0, "collapse_reason": reason}
