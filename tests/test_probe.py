"""The linear probe: it separates what is separable, finds nothing in noise, matches scikit-learn,
never peeks at the eval set, ignores feature scale, is deterministic and refuses bad input."""

from __future__ import annotations

import time

import pytest
import torch

from jigclu.evaluation.probe import ProbeResult, _stratified_split, linear_probe


def _blobs(n: int, dim: int, classes: int, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points from ``classes`` unit Gaussians whose means are ``spread * randn`` apart."""
    gen = torch.Generator().manual_seed(seed)
    means = spread * torch.randn(classes, dim, generator=gen)
    y = torch.arange(n) % classes
    x = means[y] + torch.randn(n, dim, generator=gen) + 3.0  # offset: standardisation must centre
    return x, y


def _split(x, y, n_train):
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def test_separable_blobs_are_separated():
    r = linear_probe(*_split(*_blobs(900, 20, 3, 3.0, seed=1), 600), num_classes=3)
    assert isinstance(r, ProbeResult)
    assert r.top1 >= 95.0 and r.holdout_top1 >= 95.0
    assert r.reg in (1e-5, 1e-4, 1e-3, 1e-2) and r.seconds > 0


def test_random_labels_score_near_chance():
    x, _ = _blobs(1200, 20, 3, 3.0, seed=2)
    y = torch.randint(0, 3, (1200,), generator=torch.Generator().manual_seed(3))
    assert linear_probe(*_split(x, y, 600), num_classes=3).top1 < 50.0


@pytest.mark.parametrize("reg", [1e-4, 1e-2])
def test_agrees_with_scikit_learn(reg):
    sklearn = pytest.importorskip("sklearn.linear_model")
    tx, ty, ex, ey = _split(*_blobs(2000, 10, 5, 0.7, seed=4), 1000)
    ours = linear_probe(tx, ty, ex, ey, num_classes=5, regs=(reg,))  # default max_iter
    mean, std = tx.mean(0), tx.std(0, correction=0)
    clf = sklearn.LogisticRegression(C=1.0 / (2 * reg * len(ty)), solver="lbfgs", max_iter=5000, tol=1e-8)
    clf.fit(((tx - mean) / std).numpy(), ty.numpy())
    theirs = 100.0 * (clf.predict(((ex - mean) / std).numpy()) == ey.numpy()).mean()
    assert 40.0 < theirs < 90.0  # a genuinely overlapping problem
    assert abs(ours.top1 - theirs) <= 1.5, (ours.top1, theirs)


def test_eval_labels_never_choose_reg():
    tx, ty, ex, ey = _split(*_blobs(1000, 10, 4, 0.8, seed=5), 500)
    a = linear_probe(tx, ty, ex, ey, num_classes=4)
    b = linear_probe(tx, ty, ex, ey[torch.randperm(len(ey), generator=torch.Generator().manual_seed(0))],
                     num_classes=4)
    assert (a.reg, a.holdout_top1) == (b.reg, b.holdout_top1)
    assert a.top1 != b.top1


def test_feature_scale_does_not_matter():
    tx, ty, ex, ey = _split(*_blobs(1000, 10, 4, 0.8, seed=6), 500)
    base = linear_probe(tx, ty, ex, ey, num_classes=4)
    scale = torch.ones(10)
    scale[3] = 1e4
    scaled = linear_probe(tx * scale, ty, ex * scale, ey, num_classes=4)
    assert abs(base.top1 - scaled.top1) <= 1.0


def test_same_seed_same_result():
    args = _split(*_blobs(800, 16, 4, 0.8, seed=7), 400)
    a, b = linear_probe(*args, num_classes=4, seed=3), linear_probe(*args, num_classes=4, seed=3)
    assert (a.top1, a.reg, a.holdout_top1) == (b.top1, b.reg, b.holdout_top1)


def test_split_is_stratified_and_seeded():
    y = torch.tensor([0] * 10 + [1] * 3 + [2] * 2 + [3])
    fit, held = _stratified_split(y, 0.2, seed=0)
    assert sorted(torch.cat([fit, held]).tolist()) == list(range(len(y)))
    assert torch.bincount(y[held], minlength=4).tolist() == [2, 1, 1, 0]  # singleton stays on fit
    assert torch.equal(held, _stratified_split(y, 0.2, seed=0)[1])
    assert not torch.equal(held, _stratified_split(y, 0.2, seed=1)[1])


@pytest.mark.parametrize("case, message", [
    (lambda x, y: (x, y[:-1], x, y, 3), "labels"),
    (lambda x, y: (x, y, x[:, :5], y, 3), "features"),
    (lambda x, y: (x, torch.zeros_like(y), x, y, 3), "fewer than 2 classes"),
    (lambda x, y: (x[:0], y[:0], x, y, 3), "empty"),
    (lambda x, y: (x, y, x, y + 1, 3), r"\[0, 3\)"),
    (lambda x, y: (x, y - 1, x, y, 3), r"\[0, 3\)"),
    (lambda x, y: (x, y.float(), x, y, 3), "integers"),
])
def test_bad_input_is_one_clear_error(case, message):
    x, y = _blobs(30, 8, 3, 2.0, seed=8)
    with pytest.raises(ValueError, match=message) as err:
        linear_probe(*case(x, y))
    assert "\n" not in str(err.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_the_features_device():
    tx, ty, ex, ey = _split(*_blobs(900, 20, 3, 3.0, seed=1), 600)
    cpu = linear_probe(tx, ty, ex, ey, num_classes=3)
    gpu = linear_probe(tx.cuda(), ty.cuda(), ex, ey, num_classes=3)  # eval side follows train_x
    assert gpu.reg == cpu.reg and abs(gpu.top1 - cpu.top1) <= 1.0


def test_timing_5000x128x10(capsys):
    tx, ty, ex, ey = _split(*_blobs(6000, 128, 10, 0.3, seed=9), 5000)
    start = time.perf_counter()
    r = linear_probe(tx, ty, ex, ey, num_classes=10)
    wall = time.perf_counter() - start
    with capsys.disabled():
        print(f"\nlinear_probe 5000x128x10, 4 regs: {r.seconds:.2f} s (wall {wall:.2f} s, "
              f"{torch.get_num_threads()} threads), top1 {r.top1:.1f}, reg {r.reg:g}")
    assert r.seconds <= wall
