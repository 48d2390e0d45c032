"""A fast, deterministic linear probe on frozen features: the score for a pretrained backbone.

Standardised features and a multinomial logistic regression fitted full-batch with L-BFGS is the
standard frozen-feature protocol (SimCLR/BYOL-style evaluation, cf. scikit-learn's ``lbfgs``): it is
convex, has no learning rate or epochs to tune, and takes seconds on a CPU, so sweeps and
benchmarks can afford it on every trial.

Protocol: standardise with the training side's mean/std (applied to eval too); choose the L2
strength on a seeded, class-stratified holdout of the training side (ties go to the larger reg);
refit on the whole training side with that reg and score the eval set, which is never used to
choose anything. Loss = mean cross-entropy + ``reg * ||W||^2`` (bias unpenalised), zero init.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

STD_FLOOR = 1e-6  # a constant feature standardises to 0 rather than inf


@dataclass(frozen=True)
class ProbeResult:
    """What :func:`linear_probe` found (accuracies in percent)."""

    top1: float  # accuracy on the eval set
    reg: float  # the L2 strength chosen on the holdout
    holdout_top1: float  # accuracy of the chosen reg on the train-side holdout
    seconds: float  # wall time of the whole probe


def _check(x: Tensor, y: Tensor, num_classes: int, side: str) -> None:
    """One-line ValueErrors for inputs a probe cannot score."""
    if x.dim() != 2 or y.dim() != 1:
        raise ValueError(f"{side}: features must be [N, D] and labels [N], got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{side}: {x.shape[0]} feature rows but {y.shape[0]} labels")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{side}: empty features {tuple(x.shape)}")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"{side}: labels must be integers, got {y.dtype}")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(f"{side}: labels must lie in [0, {num_classes}), got [{int(y.min())}, {int(y.max())}]")


def _standardise(fit_x: Tensor, *others: Tensor) -> tuple[Tensor, ...]:
    """``fit_x`` and ``others`` scaled by ``fit_x``'s per-feature mean and (floored) std."""
    mean = fit_x.mean(0)
    std = fit_x.std(0, correction=0).clamp_min(STD_FLOOR)
    return tuple((x - mean) / std for x in (fit_x, *others))


def _stratified_split(y: Tensor, holdout: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded (fit, holdout) indices of ``y``: each class with >= 2 items gives ``round(holdout * n)``
    of them, at least 1 and at most ``n - 1``, to the holdout; a singleton class stays on the fit side."""
    gen = torch.Generator().manual_seed(seed)  # CPU generator: the same split on every device
    y_cpu = y.cpu()
    fit, held = [], []
    for c in torch.unique(y_cpu).tolist():
        idx = torch.nonzero(y_cpu == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        k = 0 if idx.numel() < 2 else min(max(1, round(holdout * idx.numel())), idx.numel() - 1)
        held.append(idx[:k])
        fit.append(idx[k:])
    return torch.cat(fit).sort().values.to(y.device), torch.cat(held).sort().values.to(y.device)


def _fit(x: Tensor, y: Tensor, num_classes: int, reg: float, max_iter: int) -> tuple[Tensor, Tensor]:
    """Weights [D, C] and bias [C] of the L2-penalised multinomial logistic regression, from zero."""
    w = torch.zeros(x.shape[1], num_classes, device=x.device, dtype=x.dtype, requires_grad=True)
    b = torch.zeros(num_classes, device=x.device, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + reg * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


@torch.no_grad()
def _top1(w: Tensor, b: Tensor, x: Tensor, y: Tensor) -> float:
    """Percent of rows of ``x`` whose arg-max logit is the label."""
    return 100.0 * int(((x @ w + b).argmax(1) == y).sum()) / y.numel()


def linear_probe(train_x: Tensor, train_y: Tensor, eval_x: Tensor, eval_y: Tensor, num_classes: int, *,
                 seed: int = 0, regs: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2), holdout: float = 0.2,
                 max_iter: int = 100) -> ProbeResult:
    """Score frozen features ``[N, D]`` (pooled, not L2-normalised) with a linear probe (see the module
    docstring for the protocol). All work runs on ``train_x.device``, in float32."""
    start = time.perf_counter()
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if not regs or any(r < 0 for r in regs):
        raise ValueError(f"regs must be a non-empty tuple of non-negative floats, got {regs}")
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must lie in (0, 1), got {holdout}")
    _check(train_x, train_y, num_classes, "train")
    _check(eval_x, eval_y, num_classes, "eval")
    if train_x.shape[1] != eval_x.shape[1]:
        raise ValueError(f"train has {train_x.shape[1]} features but eval has {eval_x.shape[1]}")
    if torch.unique(train_y).numel() < 2:
        raise ValueError("train_y holds fewer than 2 classes: nothing to separate")

    device = train_x.device
    tx, ex = train_x.to(device, torch.float32), eval_x.to(device, torch.float32)
    ty, ey = train_y.to(device, torch.long), eval_y.to(device, torch.long)

    fit_idx, held_idx = _stratified_split(ty, holdout, seed)
    if held_idx.numel() == 0:
        raise ValueError("no class in train_y has 2 items: cannot hold any out to choose reg")
    fx, hx = _standardise(tx[fit_idx], tx[held_idx])
    fy, hy = ty[fit_idx], ty[held_idx]
    best_reg, best_acc = None, -1.0
    for reg in sorted(regs, reverse=True):  # strict '>' below: a tie keeps the larger reg
        acc = _top1(*_fit(fx, fy, num_classes, reg, max_iter), hx, hy)
        if acc > best_acc:
            best_reg, best_acc = reg, acc

    sx, sex = _standardise(tx, ex)
    top1 = _top1(*_fit(sx, ty, num_classes, best_reg, max_iter), sex, ey)
    return ProbeResult(top1=top1, reg=float(best_reg), holdout_top1=best_acc,
                       seconds=time.perf_counter() - start)
