"""Tests for purify.attacks.fgsm_minimal: the smallest FGSM step on a grid that changes each image's label."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from purify.attacks import CountedModel, bpda, eot, fgsm, fgsm_minimal
from purify.errors import DTypeError, NonDifferentiableError, RangeError, ShapeError, UnknownNameError
from tests.attacks.conftest import images, make_convnet, make_linear


def _linf(d: torch.Tensor) -> torch.Tensor:
    return d.flatten(1).abs().amax(1)


def _predict(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


def _assert_off_ties(model, x, y, step, steps):
    """The attack's rounding stages are well defined here: no component of the CE gradient at x is within
    float64 noise (~1e-15 of the logits) of 0, and no label decision at a grid point k * step, k = 0..steps,
    within it of a tie. Then every batching and every recomputation takes the same signs and labels
    (tests/README.md, "Rounding stages"), and results can be compared exactly."""
    xg = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xg), y, reduction="sum"), xg)
    assert float(g.abs().min()) > 1e-12
    with torch.no_grad():
        for k in range(steps + 1):
            z = model((x + k * step * g.sign()).clamp(0, 1))
            others = z.masked_fill(F.one_hot(y, z.shape[1]).bool(), -math.inf).amax(1)
            assert float((z.gather(1, y[:, None])[:, 0] - others).abs().min()) > 1e-9


@pytest.fixture
def convnet64():
    return make_convnet(dtype=torch.float64)


@pytest.mark.parametrize("batch", [0, 1, 3])
def test_smoke(batch, convnet, device):
    """Shapes, dtype, device; x, the model and its .grad untouched; values in [0, 1]; within eps_max."""
    x = images(batch).to(device)
    net = convnet.to(device)
    y = _predict(net, x)
    x_before = x.clone()
    adv = fgsm_minimal(net, x, y, eps_step=0.01, eps_max=0.05)
    assert adv.shape == x.shape and adv.dtype == x.dtype and adv.device == x.device and not adv.requires_grad
    assert torch.equal(x, x_before) and all(p.grad is None for p in net.parameters())
    assert bool(((adv >= 0) & (adv <= 1)).all())
    if batch:
        assert float(_linf(adv - x).max()) <= 0.05 + 1e-6


def test_linear_model_stops_at_the_closed_form_grid_eps():
    """On z = W x + b every step moves z by eps * W s (s = sign of the CE gradient at x, no clipping for
    x in [0.3, 0.7] and eps <= 0.3): class j overtakes y at eps*_j = (z_y - z_j) / ((W_j - W_y) . s) when
    the slope is positive. The attack must stop at ceil(min_j eps*_j / eps_step) * eps_step, or keep
    the image correct at the last grid eps when that lies beyond eps_max."""
    model = make_linear(10, dtype=torch.float64)
    x = images(12, lo=0.3, hi=0.7, dtype=torch.float64)
    y = _predict(model, x)
    w, b = model[1].weight.detach(), model[1].bias.detach()
    z = x.flatten(1) @ w.T + b
    s = ((torch.softmax(z, 1) - F.one_hot(y, 10).double()) @ w).sign()          # W^T (softmax - onehot), signed
    slope = ((w[None] - w[y][:, None]) * s[:, None]).sum(2)                      # (B, K): d(z_j - z_y) / d eps
    gap = z.gather(1, y[:, None]) - z
    crossing = torch.where(slope > 0, gap / slope, torch.full_like(gap, math.inf))
    crossing[torch.arange(12), y] = math.inf
    eps_star = crossing.amin(1)
    step, eps_max = 0.002, 0.01
    _assert_off_ties(model, x, y, step, 5)
    k = torch.ceil(eps_star / step)
    assert float((eps_star / step - (eps_star / step).round()).abs().min()) > 1e-6   # no image on a grid point
    fooled = k <= 5
    assert 0 < int(fooled.sum()) < 12                                            # both cases are tested
    expected_eps = torch.where(fooled, k * step, torch.full_like(k, 5 * step))

    adv = fgsm_minimal(model, x, y, eps_step=step, eps_max=eps_max)
    torch.testing.assert_close(_linf(adv - x), expected_eps, atol=1e-12, rtol=0)
    torch.testing.assert_close(adv, x + expected_eps.view(-1, 1, 1, 1) * s.view(x.shape), atol=1e-12, rtol=0)
    assert torch.equal(_predict(model, adv) != y, fooled)


def test_each_image_stops_at_its_first_fooling_grid_eps(convnet64):
    """Per image: x_adv is FGSM at its own eps, that eps fools it and the grid eps below does not."""
    convnet = convnet64
    x = images(16, dtype=torch.float64)
    y = _predict(convnet, x)
    step, eps_max = 0.01, 0.05
    _assert_off_ties(convnet, x, y, step, 5)
    adv = fgsm_minimal(convnet, x, y, eps_step=step, eps_max=eps_max)
    eps = _linf(adv - x)
    k = (eps / step).round()
    torch.testing.assert_close(eps, k * step, atol=1e-12, rtol=0)                 # on the grid
    # one FGSM step of that size (fgsm adds clamp(delta) to x, a rounding away from x + eps * s)
    torch.testing.assert_close(adv, fgsm(convnet, x, y, eps=k * step), atol=1e-12, rtol=0)
    fooled = _predict(convnet, adv) != y
    assert 0 < int(fooled.sum()) < 16                                            # some stop early, some never
    assert bool((k[~fooled] == 5).all())                                         # never fooled: the last grid eps
    before = fgsm(convnet, x, y, eps=(k - 1).clamp_min(0) * step)
    assert bool((_predict(convnet, before) == y)[fooled].all())                   # the grid eps below does not fool
    # the minimal search fools every image FGSM at eps_max fools (and maybe more: FGSM is not monotone in eps)
    assert bool(fooled[_predict(convnet, fgsm(convnet, x, y, eps=eps_max)) != y].all())


def test_never_exceeds_eps_max_and_reaches_the_last_grid_point():
    """A label that never changes: every image ends at the last grid eps, K * eps_step <= eps_max."""
    model = make_linear(4, scale=0.01, dtype=torch.float64)     # a step moves a logit by at most ~0.5
    with torch.no_grad():
        # class 0 whatever x; not so far ahead that the softmax saturates and the gradient is exactly 0
        model[1].bias.copy_(torch.tensor([20.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    x = images(3, lo=0.3, hi=0.7, dtype=torch.float64)
    y = torch.zeros(3, dtype=torch.long)
    # 3 * 0.1 is 0.30000000000000004 in floating point: the grid keeps that step and caps it at 0.3
    assert torch.allclose(_linf(fgsm_minimal(model, x, y, eps_step=0.1, eps_max=0.3) - x),
                          torch.full((3,), 0.3, dtype=torch.float64), atol=1e-12, rtol=0)
    # eps_max off the grid: the last grid point below it
    assert torch.allclose(_linf(fgsm_minimal(model, x, y, eps_step=0.1, eps_max=0.25) - x),
                          torch.full((3,), 0.2, dtype=torch.float64), atol=1e-12, rtol=0)
    assert float(_linf(fgsm_minimal(model, x, y, eps_step=0.07, eps_max=0.3) - x).max()) <= 0.3


def test_stops_per_image_and_forwards_only_the_images_still_correct(convnet64):
    """One forward of the batch at x, one forward + backward of the correct images for the direction, then
    each grid step forwards only the images no earlier step fooled."""
    convnet = convnet64
    x = images(10, dtype=torch.float64)
    y = _predict(convnet, x)
    y[0] = (y[0] + 1) % 10                                                       # wrong at x: left unchanged
    _assert_off_ties(convnet, x, y, 0.01, 5)
    counted = CountedModel(convnet)
    adv = fgsm_minimal(counted, x, y, eps_step=0.01, eps_max=0.05)
    assert torch.equal(adv[0], x[0])
    k = (_linf(adv - x) / 0.01).round().long()
    fooled = _predict(convnet, adv) != y
    # image i (correct at x) is forwarded at the steps 1..k_i; a never-fooled one at all 5
    steps = sum(int(v) for v in k[1:])
    assert counted.backwards == 9
    assert counted.forwards == 10 + 9 + steps
    assert bool(fooled[1:][k[1:] < 5].all())


def test_batch_consistency(convnet64):
    """An image's result does not depend on its batch-mates (f(x)[i] == f(x[i:i+1])): off ties, the same
    signs and stopping steps, so the same values up to the rounding of x + eps * s (exact here)."""
    convnet = convnet64
    x = images(5, dtype=torch.float64)
    y = _predict(convnet, x)
    y[2] = (y[2] + 3) % 10
    _assert_off_ties(convnet, x, y, 0.01, 5)
    batch = fgsm_minimal(convnet, x, y, eps_step=0.01, eps_max=0.05)
    for i in range(5):
        one = fgsm_minimal(convnet, x[i:i + 1], y[i:i + 1], eps_step=0.01, eps_max=0.05)
        torch.testing.assert_close(batch[i:i + 1], one, rtol=0, atol=1e-12)   # float64: rounding only


def test_images_already_misclassified_come_back_unchanged_without_a_gradient(linear):
    x = images(4, lo=0.2, hi=0.8)
    wrong = (_predict(linear, x) + 1) % 10
    counted = CountedModel(linear)
    adv = fgsm_minimal(counted, x, wrong, eps_step=0.01, eps_max=0.1)
    assert torch.equal(adv, x) and counted.backwards == 0 and counted.forwards == 4


def test_composes_with_bpda_and_eot(convnet):
    """A non-differentiable stage behind bpda, and an EOT model: same protocol as FGSM."""
    x = images(4)
    y = _predict(convnet, x)
    quantize = bpda(lambda v: (v * 8).round() / 8)
    adv = fgsm_minimal(lambda v: convnet(quantize(v)), x, y, eps_step=0.02, eps_max=0.1)
    assert float(_linf(adv - x).max()) <= 0.1 + 1e-6
    with pytest.raises(NonDifferentiableError, match="fgsm_minimal: .*bpda"):       # the same stage without it
        fgsm_minimal(lambda v: convnet(((v * 8).round() / 8).detach()), x, y, eps_step=0.02, eps_max=0.1)
    g = torch.Generator().manual_seed(0)
    noisy = eot(lambda v: convnet((v + 0.01 * torch.randn(v.shape, generator=g)).clamp(0, 1)), samples=2)
    adv = fgsm_minimal(noisy, x, y, eps_step=0.02, eps_max=0.1)
    assert adv.shape == x.shape and float(_linf(adv - x).max()) <= 0.1 + 1e-6


def test_exception(linear):
    x = images(2)
    y = torch.tensor([0, 1])
    with pytest.raises(RangeError, match=r"fgsm_minimal: expected eps_step in \(0.0"):
        fgsm_minimal(linear, x, y, eps_step=0.0)
    with pytest.raises(RangeError, match="expected eps_max >= eps_step, got eps_max 0.01 < eps_step 0.02"):
        fgsm_minimal(linear, x, y, eps_step=0.02, eps_max=0.01)
    with pytest.raises(UnknownNameError, match="fgsm_minimal: unknown loss 'hinge'"):
        fgsm_minimal(linear, x, y, loss="hinge")
    with pytest.raises(ShapeError, match=r"fgsm_minimal: expected y of shape \(2,\)"):
        fgsm_minimal(linear, x, y[:1])
    with pytest.raises(ShapeError, match=r"fgsm_minimal: expected x of shape \(B, C, H, W\)"):
        fgsm_minimal(linear, x[0], y)
    with pytest.raises(DTypeError, match="fgsm_minimal: expected model_fn to be callable"):
        fgsm_minimal("net", x, y)
    with pytest.raises(RangeError, match=r"fgsm_minimal: labels y must lie in \[0, 9\]"):
        fgsm_minimal(linear, x, torch.tensor([0, 10]))


def test_margin_loss_takes_the_margin_direction():
    """loss="margin": the direction is sign(W_j* - W_y) for the runner-up j*, so on a two-class linear model
    both losses give the same sign, hence the same result."""
    model = make_linear(2, dtype=torch.float64)
    x = images(6, lo=0.3, hi=0.7, dtype=torch.float64)
    y = _predict(model, x)
    assert torch.equal(fgsm_minimal(model, x, y, eps_step=0.01, eps_max=0.2, loss="margin"),
                       fgsm_minimal(model, x, y, eps_step=0.01, eps_max=0.2))

