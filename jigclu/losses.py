"""Losses of Jigsaw Clustering.

``SupCluLoss`` is the supervised-contrastive loss (Khosla et al., NeurIPS 2020) used by
JigClu's clustering branch: the patches that came from the same original image are
positives of each other. Over a batch of ``N`` L2-normalised embeddings ``z`` with labels
``y`` and temperature ``T``::

    loss_i = -(T / T_base) * mean_{p in P(i)} log( exp(z_i.z_p / T) / sum_{a != i} exp(z_i.z_a / T) )
    loss   = mean_i loss_i,   P(i) = { p != i : y_p = y_i },   T_base = 0.07

Every patch is an anchor; the anchor itself is excluded from the denominator.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def sup_clu_loss(features: Tensor, labels: Tensor, temperature: float = 0.3,
                 base_temperature: float = 0.07) -> Tensor:
    """Supervised clustering loss of L2-normalised ``features [N, D]`` with ``labels [N]``.

    Anchors without any positive (a label seen once) are left out of the mean; the reference
    would return NaN there, but a JigClu batch always has ``m*m >= 4`` patches per image.
    """
    if features.dim() != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"features must be [N, D] and labels [N]; got {tuple(features.shape)} "
                         f"and {tuple(labels.shape)}")
    n = features.shape[0]
    features = features.float()  # the softmax over N patches wants full precision
    logits = features @ features.T / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=features.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    num_pos = positives.sum(1)
    has_pos = num_pos > 0
    # where() keeps -inf * 0 = NaN on the diagonal out of the sum
    pos_log_prob = torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(1)
    mean_log_prob_pos = pos_log_prob[has_pos] / num_pos[has_pos]
    return -(temperature / base_temperature) * mean_log_prob_pos.mean()


class SupCluLoss(nn.Module):
    """Module form of :func:`sup_clu_loss` (JigClu, Chen et al. CVPR 2021, Eq. 2)."""

    def __init__(self, temperature: float = 0.3, base_temperature: float = 0.07) -> None:
        super().__init__()
        self.temperature = temperature
        self.base_temperature = base_temperature

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        return sup_clu_loss(features, labels, self.temperature, self.base_temperature)


class JigCluLoss(nn.Module):
    """``w_clu * SupCluLoss(embeddings, image ids) + w_loc * CE(location logits, positions)``."""

    def __init__(self, w_clu: float = 1.0, w_loc: float = 1.0, temperature: float = 0.3) -> None:
        super().__init__()
        self.w_clu, self.w_loc = w_clu, w_loc
        self.clu = SupCluLoss(temperature)

    def forward(self, embeddings: Tensor, loc_logits: Tensor, label_clu: Tensor,
                label_loc: Tensor) -> dict[str, Tensor]:
        loss_clu = self.clu(embeddings, label_clu)
        loss_loc = F.cross_entropy(loc_logits.float(), label_loc)
        total = self.w_clu * loss_clu + self.w_loc * loss_loc
        with torch.no_grad():
            loc_acc = (loc_logits.argmax(1) == label_loc).float().mean()
        return {"loss": total, "loss_clu": loss_clu, "loss_loc": loss_loc, "loc_acc": loc_acc}


def nt_xent(z: Tensor, temperature: float = 0.2) -> Tensor:
    """SimCLR's NT-Xent (Chen et al., ICML 2020; the contrastive baseline JigClu is compared with):
    L2-normalised ``z`` ``[2N, D]`` where rows ``i`` and ``i + N`` are two views of one image; the
    cross-entropy of each view against its partner among the other ``2N - 1`` rows."""
    if z.dim() != 2 or z.shape[0] % 2:
        raise ValueError(f"z must be [2N, D], got {tuple(z.shape)}")
    n = z.shape[0] // 2
    logits = (z.float() @ z.float().T / temperature).fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, target)
