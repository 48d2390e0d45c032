"""SupCluLoss against a plain loop over the formula in SPEC.md (and the reference's code)."""

import math

import pytest
import torch
import torch.nn.functional as F

from jigclu.losses import JigCluLoss, SupCluLoss, sup_clu_loss


def loop_sup_clu(z: torch.Tensor, y: torch.Tensor, T: float, base: float = 0.07) -> float:
    """Anchors = all; self excluded from the denominator; mean log-prob over positives; x T/0.07."""
    n = z.shape[0]
    z = z.double()
    total, anchors = 0.0, 0
    for i in range(n):
        denom = sum(math.exp(float(z[i] @ z[a]) / T) for a in range(n) if a != i)
        pos = [p for p in range(n) if p != i and y[p] == y[i]]
        if not pos:
            continue
        mean_log = sum(float(z[i] @ z[p]) / T - math.log(denom) for p in pos) / len(pos)
        total += -(T / base) * mean_log
        anchors += 1
    return total / anchors


def reference_code(features, labels, temperature, base_temperature=0.07):
    """The reference implementation's arithmetic, transcribed (contrast_mode='all', one view)."""
    n = features.shape[0]
    mask = torch.eq(labels.view(-1, 1), labels.view(1, -1)).float()
    adc = features @ features.T / temperature
    logits = adc - adc.max(dim=1, keepdim=True).values.detach()
    logits_mask = torch.ones_like(mask).scatter(1, torch.arange(n).view(-1, 1), 0)
    mask = mask * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
    return (-(temperature / base_temperature) * mean_log_prob_pos).mean()


@pytest.mark.parametrize("n_images,cells", [(2, 4), (5, 4), (3, 9), (8, 16)])
@pytest.mark.parametrize("T", [0.07, 0.3, 1.0])
def test_sup_clu_matches_loop(n_images, cells, T):
    g = torch.Generator().manual_seed(n_images * 100 + cells)
    z = F.normalize(torch.randn(n_images * cells, 16, generator=g), dim=1)
    y = torch.arange(n_images).repeat(cells)[torch.randperm(n_images * cells, generator=g)]
    ours = sup_clu_loss(z, y, T).item()
    assert ours == pytest.approx(loop_sup_clu(z, y, T), rel=1e-5)
    assert ours == pytest.approx(reference_code(z, y, T).item(), rel=1e-5)


def test_temperature_factor_is_applied():
    z = F.normalize(torch.randn(12, 8), dim=1)
    y = torch.arange(3).repeat(4)
    # with base temperature == temperature the factor is 1: plain SupCon
    plain = sup_clu_loss(z, y, 0.3, base_temperature=0.3)
    scaled = sup_clu_loss(z, y, 0.3)
    assert scaled.item() == pytest.approx(plain.item() * 0.3 / 0.07, rel=1e-6)


def test_perfect_clusters_have_lower_loss():
    y = torch.arange(4).repeat(4)
    clustered = F.one_hot(y, 8).float()
    random = F.normalize(torch.randn(16, 8), dim=1)
    assert sup_clu_loss(clustered, y, 0.3) < sup_clu_loss(random, y, 0.3)


def test_gradients_finite_and_module_matches():
    z = F.normalize(torch.randn(16, 8), dim=1).requires_grad_()
    y = torch.arange(4).repeat(4)
    loss = SupCluLoss(0.3)(z, y)
    loss.backward()
    assert torch.isfinite(z.grad).all()
    assert loss.item() == pytest.approx(sup_clu_loss(z.detach(), y, 0.3).item())


@pytest.mark.parametrize("wrong,expected", [(4, 0.75), (12, 0.25), (0, 1.0)])
def test_jigclu_loss_weights(wrong, expected):
    g = torch.Generator().manual_seed(wrong)
    z = F.normalize(torch.randn(16, 8, generator=g), dim=1)
    y_clu, y_loc = torch.arange(4).repeat(4), torch.arange(4).repeat_interleave(4)
    # location logits whose argmax is right for all but `wrong` patches
    predicted = y_loc.clone()
    miss = torch.randperm(16, generator=g)[:wrong]
    predicted[miss] = (y_loc[miss] + 1 + torch.randint(0, 3, (wrong,), generator=g)) % 4
    logits = torch.randn(16, 4, generator=g) + 5.0 * F.one_hot(predicted, 4)
    assert (logits.argmax(1) == y_loc).float().mean().item() == expected  # the crafted accuracy
    out = JigCluLoss(w_clu=0.5, w_loc=2.0, temperature=0.3)(z, logits, y_clu, y_loc)
    expect = 0.5 * sup_clu_loss(z, y_clu, 0.3) + 2.0 * F.cross_entropy(logits, y_loc)
    torch.testing.assert_close(out["loss"], expect)
    torch.testing.assert_close(out["loss_clu"], sup_clu_loss(z, y_clu, 0.3))
    torch.testing.assert_close(out["loss_loc"], F.cross_entropy(logits, y_loc))
    assert out["loc_acc"].item() == expected


def test_shape_errors():
    with pytest.raises(ValueError):
        sup_clu_loss(torch.randn(4, 3), torch.arange(5))
