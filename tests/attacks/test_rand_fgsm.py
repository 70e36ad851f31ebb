"""Tests for purify.attacks.rand_fgsm: Rand+FGSM (Tramèr et al.), a random sign step, then FGSM."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from purify.attacks import CountedModel, bpda, eot, fgsm, rand_fgsm
from purify.errors import DTypeError, NonDifferentiableError, RangeError, ShapeError
from tests.attacks.conftest import images, make_convnet, make_linear


def _linf(d: torch.Tensor) -> torch.Tensor:
    return d.flatten(1).abs().amax(1)


def _seed(s: int = 0, device="cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(s)


def _random_step(x: torch.Tensor, alpha: float, seed: int) -> torch.Tensor:
    """x' of the definition, from the same draw: clip(x + alpha * sign(N(0, I)), 0, 1)."""
    noise = torch.randn(x.shape, generator=_seed(seed), dtype=torch.float32)
    return (x + alpha * noise.sign().to(x.dtype)).clamp(0, 1)


def _ce_grad_linear(model, x, y):
    """Analytic d CE / d x of a linear model: (softmax(z) - onehot(y)) @ W."""
    w, b = model[1].weight, model[1].bias
    z = x.flatten(1) @ w.T + b
    return ((torch.softmax(z, 1) - F.one_hot(y, w.shape[0]).to(x.dtype)) @ w).view(x.shape)


@pytest.mark.parametrize("batch", [0, 1, 3])
def test_smoke(batch, convnet, device):
    x = images(batch).to(device)
    x_before = x.clone()
    y = (torch.arange(batch) % 10).to(device)
    net = convnet.to(device)
    adv = rand_fgsm(net, x, y, eps=0.03, generator=_seed(0, device.type))
    assert adv.shape == x.shape and adv.dtype == x.dtype and adv.device == x.device and not adv.requires_grad
    assert torch.equal(x, x_before) and all(p.grad is None for p in net.parameters())
    assert batch == 0 or adv.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("shape", [(1, 7, 3), (3, 5, 6), (2, 1, 1)])
def test_cardinality(shape):
    """Odd, non-square and single-pixel images keep their shape; one image per label."""
    model = make_linear(4, shape=shape)
    x = images(2, shape=shape)
    adv = rand_fgsm(model, x, torch.tensor([0, 3]), eps=0.1, generator=_seed())
    assert adv.shape == (2, *shape)


@pytest.mark.parametrize("alpha", [None, 0.0, 0.01, 0.05])
@pytest.mark.parametrize("eps", [0.05, "per-sample"])
def test_budget_and_range(alpha, eps, convnet):
    x = images(4)                    # values up to the box boundary, so clipping is exercised
    y = torch.tensor([0, 3, 5, 9])
    eps_t = torch.tensor([0.0, 0.05, 0.1, 0.3]) if eps == "per-sample" else torch.full((4,), eps)
    if alpha is not None and eps == "per-sample":
        alpha = eps_t * (alpha / 0.05)  # alpha <= eps image by image, 0 where eps is 0
    adv = rand_fgsm(convnet, x, y, eps=eps_t if eps == "per-sample" else eps, alpha=alpha, generator=_seed())
    assert bool((_linf(adv - x) <= eps_t + 1e-6).all())
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert bool((_linf(adv - x)[eps_t > 0] > 0).all())   # it moved
    if eps == "per-sample":
        assert torch.equal(adv[0], x[0])                   # eps = 0 for that image


def test_alpha_zero_is_fgsm(convnet):
    x, y = images(3), torch.tensor([4, 5, 6])
    for eps in (0.03, torch.tensor([0.01, 0.03, 0.05])):
        assert torch.equal(rand_fgsm(convnet, x, y, eps=eps, alpha=0.0, generator=_seed()),
                           fgsm(convnet, x, y, eps=eps))


def test_random_step_is_sign_of_gaussian_of_size_alpha():
    """A zero-weight linear model has gradient 0, so no FGSM step: the output is the random step itself."""
    model = make_linear(5)
    with torch.no_grad():
        model[1].weight.zero_()
    x = images(6, lo=0.3, hi=0.7)                          # away from the box: no clipping
    adv = rand_fgsm(model, x, torch.arange(6) % 5, eps=0.08, alpha=0.05, generator=_seed(3))
    delta = adv - x
    torch.testing.assert_close(delta.abs(), torch.full_like(delta, 0.05), atol=1e-6, rtol=0)
    torch.testing.assert_close(adv, _random_step(x, 0.05, 3), atol=0, rtol=0)
    assert abs(float((delta > 0).float().mean()) - 0.5) < 0.1   # N(0, I)'s signs: fair coins


def test_two_steps_match_the_definition_on_a_linear_model():
    """x' from the same draw, then (eps - alpha) * sign of the analytic CE gradient at x' (not at x)."""
    model = make_linear(7, dtype=torch.float64)
    x = images(5, lo=0.2, hi=0.8, dtype=torch.float64)
    y = torch.tensor([0, 2, 4, 6, 1])
    eps, alpha = 0.06, 0.04
    x_rand = _random_step(x, alpha, 11)
    with torch.no_grad():
        g = _ce_grad_linear(model, x_rand, y)
    expected = torch.minimum(torch.maximum(x_rand + (eps - alpha) * g.sign(), x - eps), x + eps).clamp(0, 1)
    adv = rand_fgsm(model, x, y, eps=eps, alpha=alpha, generator=_seed(11))
    torch.testing.assert_close(adv, expected, atol=1e-12, rtol=0)
    with torch.no_grad():                                  # the gradient taken at x would give another image
        at_x = (x_rand + (eps - alpha) * _ce_grad_linear(model, x, y).sign()).clamp(0, 1)
    assert not torch.equal(adv, at_x)


def test_default_alpha_is_half_eps(convnet):
    x, y = images(3), torch.tensor([1, 2, 3])
    eps = torch.tensor([0.02, 0.04, 0.08])
    assert torch.equal(rand_fgsm(convnet, x, y, eps=eps, generator=_seed(5)),
                       rand_fgsm(convnet, x, y, eps=eps, alpha=eps / 2, generator=_seed(5)))


def test_alpha_equal_to_eps_is_pure_noise_and_never_calls_the_model(linear):
    counted = CountedModel(linear)
    x = images(3, lo=0.3, hi=0.7)
    adv = rand_fgsm(counted, x, torch.tensor([0, 1, 2]), eps=0.05, alpha=0.05, generator=_seed(2))
    assert counted.forwards == 0
    torch.testing.assert_close(adv, _random_step(x, 0.05, 2), atol=0, rtol=0)


def test_zero_eps_is_identity_without_drawing(linear):
    counted, gen = CountedModel(linear), _seed(4)
    state = gen.get_state()
    x = images(3)
    adv = rand_fgsm(counted, x, torch.tensor([0, 1, 2]), eps=0.0, generator=gen)
    assert torch.equal(adv, x) and adv.data_ptr() != x.data_ptr()
    assert counted.forwards == 0 and torch.equal(gen.get_state(), state)


def test_reproducible_under_a_seed(convnet):
    x, y = images(3), torch.tensor([1, 2, 3])
    run = lambda s: rand_fgsm(convnet, x, y, eps=0.05, generator=_seed(s))  # noqa: E731
    assert torch.equal(run(7), run(7)) and not torch.equal(run(7), run(8))


def test_eot_and_bpda_differentiate_like_fgsm(linear):
    """EOT of a deterministic model has the same gradient sign; BPDA of the identity is the model itself."""
    x, y = images(3), torch.tensor([0, 1, 2])
    plain = rand_fgsm(linear, x, y, eps=0.05, generator=_seed(1))
    counted = CountedModel(linear)
    through_eot = rand_fgsm(eot(counted, samples=3), x, y, eps=0.05, generator=_seed(1))
    assert torch.equal(through_eot, plain)
    assert counted.backwards == 3 * 3                     # every draw differentiated, one at a time
    through_bpda = rand_fgsm(lambda v: linear(bpda(lambda u: u.clone())(v)), x, y, eps=0.05, generator=_seed(1))
    assert torch.equal(through_bpda, plain)


def test_leaves_grads_and_grad_mode_alone():
    model = make_convnet().train()
    x = images(2).requires_grad_(True)
    with torch.no_grad():
        adv = rand_fgsm(model, x, torch.tensor([0, 1]), eps=0.05, generator=_seed())
        assert not torch.is_grad_enabled()
    assert x.grad is None and all(p.grad is None for p in model.parameters())
    assert model.training and not adv.requires_grad and bool((adv != x.detach()).any())


def test_exception(linear):
    x, y = images(2), torch.tensor([0, 1])
    with pytest.raises(RangeError, match=r"rand_fgsm: expected alpha <= eps \(the random step is part of the budget\), "
                                         r"got alpha 0.06 > eps 0.05 for image 0; leave alpha out"):
        rand_fgsm(linear, x, y, eps=0.05, alpha=0.06)
    with pytest.raises(RangeError, match=r"for image 1"):
        rand_fgsm(linear, x, y, eps=torch.tensor([0.1, 0.02]), alpha=0.05)
    with pytest.raises(RangeError, match="rand_fgsm: expected alpha >= 0"):
        rand_fgsm(linear, x, y, eps=0.05, alpha=-0.01)
    with pytest.raises(RangeError, match="rand_fgsm: expected eps >= 0"):
        rand_fgsm(linear, x, y, eps=-0.05)
    with pytest.raises(ShapeError, match=r"rand_fgsm: expected alpha to be a float or a tensor of shape \(2,\)"):
        rand_fgsm(linear, x, y, eps=0.05, alpha=torch.tensor([0.01, 0.01, 0.01]))
    with pytest.raises(ShapeError, match=r"rand_fgsm: expected x of shape \(B, C, H, W\), got \(3, 5, 6\)"):
        rand_fgsm(linear, x[0], y, eps=0.05)
    with pytest.raises(RangeError, match="rand_fgsm: expected x with values in"):
        rand_fgsm(linear, x + 1, y, eps=0.05)
    with pytest.raises(DTypeError, match="rand_fgsm: expected y of dtype torch.int64"):
        rand_fgsm(linear, x, y.int(), eps=0.05)
    with pytest.raises(RangeError, match=r"rand_fgsm: labels y must lie in \[0, 9\]"):
        rand_fgsm(linear, x, torch.tensor([0, 10]), eps=0.05)
    with pytest.raises(DTypeError, match="rand_fgsm: expected generator to be a torch.Generator"):
        rand_fgsm(linear, x, y, eps=0.05, generator=0)
    with pytest.raises(DTypeError, match="rand_fgsm: expected model_fn to be callable"):
        rand_fgsm(None, x, y, eps=0.05)
    with pytest.raises(NonDifferentiableError, match=r"rand_fgsm: model_fn's output does not depend .*bpda"):
        rand_fgsm(lambda v: linear(v).detach(), x, y, eps=0.05)
