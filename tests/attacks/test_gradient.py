"""Tests for purify.attacks.gradient: pgd and its special cases fgsm and bim."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from purify.attacks import bim, fgsm, pgd
from purify.attacks.gradient import margin_loss
from purify.errors import DTypeError, NonDifferentiableError, RangeError, ShapeError, UnknownNameError
from tests.attacks.conftest import images, make_convnet, make_linear


def _linf(d: torch.Tensor) -> torch.Tensor:
    return d.flatten(1).abs().amax(1)


def _l2(d: torch.Tensor) -> torch.Tensor:
    return d.flatten(1).norm(dim=1)


def _ce_grad_linear(model, x, y):
    """Analytic d CE / d x of a linear model: (softmax(z) - onehot(y)) @ W, in float64."""
    lin = model[1]
    w, b = lin.weight.double(), lin.bias.double()
    z = x.double().flatten(1) @ w.T + b
    g = (torch.softmax(z, 1) - F.one_hot(y, w.shape[0]).double()) @ w
    return g.view(x.shape)


ATTACKS = {
    "fgsm": lambda m, x, y, eps: fgsm(m, x, y, eps=eps),
    "bim": lambda m, x, y, eps: bim(m, x, y, eps=eps, iters=5),
    "pgd": lambda m, x, y, eps: pgd(m, x, y, eps=eps, step=eps / 4 if not torch.is_tensor(eps) else eps / 4,
                                    iters=6, random_start=True,
                                    generator=torch.Generator(device=x.device).manual_seed(3)),
    "pgd_margin": lambda m, x, y, eps: pgd(m, x, y, eps=eps, step=0.01, iters=6, loss="margin"),
}


@pytest.mark.parametrize("name", list(ATTACKS))
@pytest.mark.parametrize("batch", [0, 1, 3])
def test_smoke(name, batch, convnet, device):
    x = images(batch).to(device)
    x_before = x.clone()
    y = (torch.arange(batch) % 10).to(device)
    adv = ATTACKS[name](convnet.to(device), x, y, 0.03)
    assert adv.shape == x.shape and adv.dtype == x.dtype and adv.device == x.device
    assert not adv.requires_grad and adv.data_ptr() != x.data_ptr() or batch == 0
    assert torch.equal(x, x_before)


@pytest.mark.parametrize("name", list(ATTACKS))
@pytest.mark.parametrize("eps", [0.01, 0.1, "per-sample"])
def test_linf_ball_and_range(name, eps, convnet):
    x = images(4)  # values up to the box boundary, so clipping is exercised
    y = torch.tensor([0, 3, 5, 9])
    eps_t = torch.tensor([0.0, 0.02, 0.05, 0.3]) if eps == "per-sample" else torch.full((4,), eps)
    adv = ATTACKS[name](convnet, x, y, eps_t if eps == "per-sample" else eps)
    assert bool((_linf(adv - x) <= eps_t + 1e-6).all())
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert bool((_linf(adv - x)[eps_t > 0] > 0).all())  # it moved
    if eps == "per-sample":
        assert torch.equal(adv[0], x[0])  # eps = 0 for that image


@pytest.mark.parametrize("random_start", [False, True])
def test_l2_ball_and_range(random_start, convnet):
    x = images(4)
    y = torch.tensor([1, 2, 3, 4])
    eps = torch.tensor([0.1, 0.5, 1.0, 3.0])
    adv = pgd(convnet, x, y, eps=eps, step=eps / 3, iters=8, norm="l2", random_start=random_start,
              generator=torch.Generator().manual_seed(0))
    assert bool((_l2(adv - x) <= eps + 1e-5).all())
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    # away from the box, an unclipped step ends on the sphere
    x_in = images(4, lo=0.3, hi=0.7)
    adv = pgd(convnet, x_in, y, eps=0.1, step=0.1, iters=1, norm="l2")
    torch.testing.assert_close(_l2(adv - x_in), torch.full((4,), 0.1), atol=1e-6, rtol=0)


@pytest.mark.parametrize("call", [
    lambda m, x, y: fgsm(m, x, y, eps=0.0),
    lambda m, x, y: bim(m, x, y, eps=0.0),
    lambda m, x, y: bim(m, x, y, eps=0.1, iters=0),
    lambda m, x, y: pgd(m, x, y, eps=0.0, step=0.1, iters=10, random_start=True),
    lambda m, x, y: pgd(m, x, y, eps=0.0, step=0.1, iters=10, norm="l2", random_start=True),
    lambda m, x, y: pgd(m, x, y, eps=0.3, step=0.1, iters=0, random_start=True),
])
def test_zero_eps_or_iters_is_identity(call, linear):
    x = images(3)
    adv = call(linear, x, torch.tensor([0, 1, 2]))
    assert torch.equal(adv, x) and adv.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("targeted", [False, True])
def test_fgsm_linear_matches_analytic_sign(targeted):
    model = make_linear(7)
    x = images(5, lo=0.3, hi=0.7)
    y = torch.tensor([0, 2, 4, 6, 1])
    eps = 0.02
    g = _ce_grad_linear(model, x, y)
    expected = x.double() + (-eps if targeted else eps) * g.sign()
    adv = fgsm(model, x, y, eps=eps, targeted=targeted)
    torch.testing.assert_close(adv.double(), expected, atol=1e-6, rtol=0)


def test_fgsm_linear_raises_loss_by_first_order_bound():
    # CE of a linear model is convex in x, so loss(x + eps sign g) >= loss(x) + eps ||g||_1
    model = make_linear(10)
    x, y = images(6, lo=0.3, hi=0.7), torch.arange(6)
    eps = 0.01
    g = _ce_grad_linear(model, x, y)
    adv = fgsm(model, x, y, eps=eps)
    before = F.cross_entropy(model(x.double().float()), y, reduction="none").double()
    after = F.cross_entropy(model(adv), y, reduction="none").double()
    assert bool((after >= before + eps * g.flatten(1).abs().sum(1) - 1e-4).all())


def test_fgsm_margin_loss_linear_matches_analytic_sign():
    model = make_linear(6)
    x, y = images(4, lo=0.3, hi=0.7), torch.tensor([0, 1, 2, 3])
    w = model[1].weight
    z = model(x)
    j = z.masked_fill(F.one_hot(y, 6).bool(), float("-inf")).argmax(1)
    g = (w[j] - w[y]).view(x.shape)
    adv = fgsm(model, x, y, eps=0.01, loss="margin")
    torch.testing.assert_close(adv, x + 0.01 * g.sign(), atol=1e-6, rtol=0)
    assert bool((margin_loss(model(adv), y) > margin_loss(z, y)).all())


def test_pgd_l2_one_step_linear_is_normalized_gradient():
    model = make_linear(5)
    x, y = images(4, lo=0.3, hi=0.7), torch.tensor([0, 1, 2, 3])
    g = _ce_grad_linear(model, x, y)
    eps = 0.05
    expected = x.double() + eps * g / _l2(g).view(-1, 1, 1, 1)
    adv = pgd(model, x, y, eps=eps, step=eps, iters=1, norm="l2")
    torch.testing.assert_close(adv.double(), expected, atol=1e-6, rtol=0)


def test_special_cases_equal_the_core(convnet):
    x, y = images(3), torch.tensor([4, 5, 6])
    eps = torch.tensor([0.01, 0.03, 0.05])
    assert torch.equal(fgsm(convnet, x, y, eps=eps), pgd(convnet, x, y, eps=eps, step=eps, iters=1))
    assert torch.equal(bim(convnet, x, y, eps=eps), pgd(convnet, x, y, eps=eps, step=eps / 10, iters=10))
    assert torch.equal(bim(convnet, x, y, eps=0.04, iters=4), pgd(convnet, x, y, eps=0.04, step=0.01, iters=4))


def test_pgd_succeeds_and_targeted_reaches_target():
    model = make_linear(10, scale=0.5)
    x = images(8, lo=0.2, hi=0.8)
    y = model(x).argmax(1)
    adv = pgd(model, x, y, eps=0.1, step=0.02, iters=10)
    assert bool((model(adv).argmax(1) != y).all())
    target = (y + 1) % 10
    adv = pgd(model, x, target, eps=0.2, step=0.02, iters=20, targeted=True)
    assert bool((model(adv).argmax(1) == target).all())


def test_random_start_is_uniform_in_ball_and_reproducible(linear):
    x, y = images(2, lo=0.3, hi=0.7), torch.tensor([0, 1])
    run = lambda seed: pgd(linear, x, y, eps=0.1, step=0.0, iters=1, random_start=True,  # noqa: E731
                           generator=torch.Generator().manual_seed(seed))
    a, b = run(0), run(0)
    assert torch.equal(a, b) and not torch.equal(a, run(1))
    d = (a - x).flatten()
    assert float(d.abs().max()) <= 0.1 + 1e-6
    assert abs(float(d.abs().mean()) - 0.05) < 0.01 and abs(float(d.mean())) < 0.01  # U(-eps, eps)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_batch_consistency(norm, loss):
    model = make_convnet(dtype=torch.float64)
    x = images(4, dtype=torch.float64)
    y = torch.tensor([1, 3, 5, 7])
    eps = torch.tensor([0.03, 0.1, 0.3, 1.0], dtype=torch.float64)
    whole = pgd(model, x, y, eps=eps, step=eps / 4, iters=5, norm=norm, loss=loss)
    for i in range(4):
        alone = pgd(model, x[i:i + 1], y[i:i + 1], eps=eps[i:i + 1], step=eps[i:i + 1] / 4, iters=5,
                    norm=norm, loss=loss)
        torch.testing.assert_close(whole[i:i + 1], alone, atol=1e-6, rtol=0)
    for i in range(4):
        torch.testing.assert_close(fgsm(model, x, y, eps=0.05)[i:i + 1],
                                   fgsm(model, x[i:i + 1], y[i:i + 1], eps=0.05), atol=1e-6, rtol=0)


def test_leaves_grads_and_grad_mode_alone():
    model = make_convnet().train()
    x = images(2).requires_grad_(True)
    y = torch.tensor([0, 1])
    with torch.no_grad():
        adv = pgd(model, x, y, eps=0.05, step=0.01, iters=3)
        assert not torch.is_grad_enabled()
    assert x.grad is None and all(p.grad is None for p in model.parameters())
    assert model.training and not adv.requires_grad
    assert bool((adv != x.detach()).any())


def test_uses_expected_loss_when_present(linear):
    class OnlyExpected:
        def __init__(self):
            self.calls = 0

        def __call__(self, x):
            raise AssertionError("the attack should use expected_loss")

        def expected_loss(self, x, y, loss_fn):
            self.calls += 1
            return loss_fn(linear(x), y)

    wrapped = OnlyExpected()
    x, y = images(3), torch.tensor([0, 1, 2])
    assert torch.equal(bim(wrapped, x, y, eps=0.05, iters=4), bim(linear, x, y, eps=0.05, iters=4))
    assert wrapped.calls == 4


def test_exception(linear):
    x, y = images(2), torch.tensor([0, 1])
    with pytest.raises(ShapeError, match=r"pgd: expected x of shape \(B, C, H, W\), got \(3, 5, 6\); add a batch"):
        pgd(linear, x[0], y, eps=0.1, step=0.1, iters=1)
    with pytest.raises(RangeError, match="fgsm: expected eps >= 0"):
        fgsm(linear, x, y, eps=-0.1)
    with pytest.raises(ShapeError, match=r"bim: expected eps to be a float or a tensor of shape \(2,\)"):
        bim(linear, x, y, eps=torch.tensor([0.1, 0.1, 0.1]))
    with pytest.raises(UnknownNameError, match="pgd: unknown norm 'l1'; expected one of 'linf', 'l2'"):
        pgd(linear, x, y, eps=0.1, step=0.1, iters=1, norm="l1")
    with pytest.raises(UnknownNameError, match="unknown loss 'hinge'; expected one of 'ce', 'margin'"):
        fgsm(linear, x, y, eps=0.1, loss="hinge")
    with pytest.raises(ShapeError, match=r"pgd: expected y of shape \(2,\), one label per image, got \(2, 10\)"):
        pgd(linear, x, F.one_hot(y, 10), eps=0.1, step=0.1, iters=1)
    with pytest.raises(DTypeError, match="expected y of dtype torch.int64, got torch.int32; convert with y.long()"):
        fgsm(linear, x, y.int(), eps=0.1)
    with pytest.raises(RangeError, match=r"fgsm: labels y must lie in \[0, 9\] for a model with 10 classes, got max 10"):
        fgsm(linear, x, torch.tensor([0, 10]), eps=0.1)
    with pytest.raises(RangeError, match="expected labels y >= 0"):
        fgsm(linear, x, torch.tensor([-1, 0]), eps=0.1)
    with pytest.raises(RangeError, match="bim: expected iters >= 0, got -1"):
        bim(linear, x, y, eps=0.1, iters=-1)
    with pytest.raises(RangeError, match="pgd: expected x with values in"):
        pgd(linear, x + 1, y, eps=0.1, step=0.1, iters=1)
    with pytest.raises(DTypeError, match="expected generator to be a torch.Generator"):
        pgd(linear, x, y, eps=0.1, step=0.1, iters=1, random_start=True, generator=0)
    with pytest.raises(DTypeError, match="expected targeted to be a bool"):
        fgsm(linear, x, y, eps=0.1, targeted="yes")
    with pytest.raises(ShapeError, match=r"expected model_fn to return logits of shape \(2, K\)"):
        fgsm(lambda v: linear(v)[None], x, y, eps=0.1)
    with pytest.raises(DTypeError, match="expected model_fn to be callable"):
        fgsm(None, x, y, eps=0.1)
    with pytest.raises(NonDifferentiableError, match=r"pgd: model_fn's output does not depend .*bpda"):
        pgd(lambda v: linear(v).detach(), x, y, eps=0.1, step=0.1, iters=1)
