"""Tests for purify.attacks.wrappers (bpda, eot) and purify.attacks.counting (CountedModel)."""

from __future__ import annotations

import pytest
import torch

from purify import dct_quantize, tv_minimize
from purify.attacks import EOT, CountedModel, bim, bpda, eot, fgsm, list_attacks, pgd
from purify.attacks.gradient import ce_loss
from purify.errors import DTypeError, NonDifferentiableError, RangeError, ShapeError
from tests.attacks.conftest import images, make_convnet


def _grad(fn, x):
    x = x.detach().requires_grad_(True)
    return torch.autograd.grad(fn(x).sum(), x)[0]


def smooth(x):
    """A smooth, non-trivial stage with range inside [0, 1]."""
    return torch.sigmoid(4.0 * (x - 0.5)) * 0.9 + 0.05 * x ** 2


def noisy_stage(generator: torch.Generator, sigma: float = 0.1):
    def stage(x):
        return (x + sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype)).clamp(0, 1)
    return stage


# ----------------------------------------------------------------------------- bpda

def test_bpda_forward_is_the_stage_exactly(convnet):
    x = images(3)
    assert torch.equal(bpda(smooth)(x), smooth(x))
    assert torch.equal(bpda(smooth, backward=lambda v: v)(x), smooth(x))


def test_bpda_exact_backward_reproduces_the_true_gradient(convnet):
    x, y = images(3), torch.tensor([0, 4, 7])
    got = _grad(lambda v: ce_loss(convnet(bpda(smooth, backward=smooth)(v)), y), x)
    true = _grad(lambda v: ce_loss(convnet(smooth(v)), y), x)
    assert torch.equal(got, true)


def test_bpda_identity_backward_is_straight_through(convnet):
    x, y = images(3), torch.tensor([0, 4, 7])
    got = _grad(lambda v: ce_loss(convnet(bpda(smooth)(v)), y), x)
    at_stage = _grad(lambda u: ce_loss(convnet(u), y), smooth(x))  # d loss / d s, evaluated at s(x)
    assert torch.equal(got, at_stage)
    assert not torch.allclose(got, _grad(lambda v: ce_loss(convnet(smooth(v)), y), x), atol=1e-3)


def test_bpda_passes_through_a_non_differentiable_stage(convnet):
    x, y = images(2, shape=(3, 8, 8)), torch.tensor([0, 1])
    net = make_convnet(shape=(3, 8, 8))
    stage = lambda v: dct_quantize(v, q=10.0)  # noqa: E731  (raises on backward without ste)
    with pytest.raises(NonDifferentiableError):
        _grad(lambda v: ce_loss(net(stage(v)), y), x)
    g = _grad(lambda v: ce_loss(net(bpda(stage)(v)), y), x)
    assert torch.equal(g, _grad(lambda u: ce_loss(net(u), y), stage(x)))


def test_bpda_runs_the_stage_without_grad():
    seen = []

    def stage(v):
        seen.append(torch.is_grad_enabled())
        return v.clamp(0.1, 0.9)

    _grad(bpda(stage), images(2))
    assert seen == [False]


def test_bpda_exception():
    with pytest.raises(DTypeError, match="bpda: expected stage to be callable"):
        bpda(None)
    with pytest.raises(DTypeError, match="bpda: expected backward to be None or a differentiable callable"):
        bpda(smooth, backward=3)
    with pytest.raises(ShapeError, match=r"bpda: stage\(x\) has shape \(2, 3, 3, 3\) but x has shape \(2, 3, 5, 6\)"):
        bpda(lambda v: v[..., ::2, ::2])(images(2))


# ----------------------------------------------------------------------------- eot

def test_eot_one_sample_gradient_equals_plain_gradient(convnet):
    x, y = images(3), torch.tensor([1, 2, 3])
    one = eot(convnet, samples=1)
    got = _grad(lambda v: one.expected_loss(v, y, ce_loss), x)
    assert torch.equal(got, _grad(lambda v: ce_loss(convnet(v), y), x))
    assert torch.equal(pgd(one, x, y, eps=0.1, step=0.02, iters=5), pgd(convnet, x, y, eps=0.1, step=0.02, iters=5))
    torch.testing.assert_close(one(x), torch.log_softmax(convnet(x), 1))


def test_eot_averages_over_fresh_draws(convnet):
    n = 5
    x, y = images(3), torch.tensor([1, 2, 3])
    gen = torch.Generator().manual_seed(7)
    counted = CountedModel(lambda v: convnet(bpda(noisy_stage(gen))(v)))
    model = eot(counted, samples=n)
    got = _grad(lambda v: model.expected_loss(v, y, ce_loss), x)
    assert counted.forwards == n * 3 and counted.backwards == n * 3
    # the manual mean of n per-draw gradients, replaying the same generator states
    gen.manual_seed(7)
    draws = [noisy_stage(gen)(x) for _ in range(n)]
    manual = torch.stack([_grad(lambda u: ce_loss(convnet(u), y), d) for d in draws]).mean(0)
    torch.testing.assert_close(got, manual, atol=1e-6, rtol=1e-5)
    single = _grad(lambda u: ce_loss(convnet(u), y), draws[0])
    assert not torch.allclose(got, single, atol=1e-4)  # the draws differ
    # one draw's graph at a time (what the attacks call): the same loss and gradient, up to summation order
    gen.manual_seed(7)
    loss, per_draw = model.expected_loss_and_grad(x, y, ce_loss)
    torch.testing.assert_close(per_draw, manual, atol=1e-6, rtol=1e-5)
    gen.manual_seed(7)
    torch.testing.assert_close(loss, model.expected_loss(x, y, ce_loss).detach(), atol=1e-6, rtol=1e-5)
    assert not loss.requires_grad
    # the prediction: log of the mean softmax over n fresh draws
    gen.manual_seed(7)
    probs = torch.stack([torch.softmax(convnet(noisy_stage(gen)(x)), 1) for _ in range(n)]).mean(0)
    gen.manual_seed(7)
    torch.testing.assert_close(model(x), probs.log(), atol=1e-6, rtol=1e-5)


def test_bpda_eot_attack_on_randomized_tvm():
    shape = (3, 8, 8)
    net = make_convnet(shape=shape)
    x, y = images(2, shape=shape), torch.tensor([0, 5])
    gen = torch.Generator().manual_seed(0)
    tvm = lambda v: tv_minimize(v, weight=0.05, drop_prob=0.5, iters=20, generator=gen)  # noqa: E731
    counted = CountedModel(lambda v: net(bpda(tvm)(v)))
    defended = eot(counted, samples=4)
    adv = pgd(defended, x, y, eps=0.03, step=0.01, iters=3)
    assert float((adv - x).abs().max()) <= 0.03 + 1e-6 and not torch.equal(adv, x)
    assert counted.forwards == 3 * 4 * 2 and counted.backwards == 3 * 4 * 2
    # one fgsm step equals the sign of the mean straight-through gradient over the same 4 masks
    gen.manual_seed(1)
    adv = fgsm(defended, x, y, eps=0.03)
    gen.manual_seed(1)
    grads = torch.stack([_grad(lambda u: ce_loss(net(u), y), tvm(x)) for _ in range(4)])
    mean = grads.mean(0)
    # eot's backward adds the 4 per-draw gradients in autograd's order, the mean here in its own: the
    # sums agree within 2 γ_4 Σ|g_s| (γ_4 = 4u), so only a component that small may take the other sign.
    noise = 2 * 4 * (torch.finfo(grads.dtype).eps / 2) * grads.abs().mean(0)
    settled = mean.abs() > noise
    assert settled.float().mean() > 0.9
    torch.testing.assert_close(adv[settled], (x + 0.03 * mean.sign()).clamp(0, 1)[settled], atol=1e-6, rtol=0)


def test_eot_exception(convnet):
    with pytest.raises(RangeError, match="EOT: expected samples >= 1, got 0"):
        eot(convnet, samples=0)
    with pytest.raises(DTypeError, match="EOT: expected samples to be an int"):
        EOT(convnet, samples=2.0)
    with pytest.raises(DTypeError, match="EOT: expected model_fn to be callable"):
        eot("resnet20")


# ----------------------------------------------------------------------------- counting

def test_counted_model_fgsm_and_bim(linear):
    counted = CountedModel(linear)
    x, y = images(4), torch.tensor([0, 1, 2, 3])
    fgsm(counted, x, y, eps=0.03)
    assert (counted.forwards, counted.backwards) == (4, 4)  # one forward and one backward per image
    counted.reset()
    bim(counted, x, y, eps=0.03, iters=10)
    assert (counted.forwards, counted.backwards) == (40, 40)
    counted.reset()
    fgsm(counted, x, y, eps=0.0)
    assert (counted.forwards, counted.backwards) == (0, 0)
    with torch.no_grad():
        counted(x)
    assert (counted.forwards, counted.backwards) == (4, 0)


@pytest.mark.parametrize("order", ["counted_inside", "counted_outside"])
def test_counted_model_counts_every_eot_draw(order, linear):
    x, y = images(3), torch.tensor([0, 1, 2])
    if order == "counted_inside":
        counted = CountedModel(linear)
        model = eot(counted, samples=5)
    else:
        counted = model = CountedModel(eot(linear, samples=5))
        assert hasattr(model, "expected_loss") and hasattr(model, "expected_loss_and_grad")
    pgd(model, x, y, eps=0.03, step=0.01, iters=2)
    assert (counted.forwards, counted.backwards) == (2 * 5 * 3, 2 * 5 * 3)
    counted.reset()
    model(x)
    assert counted.forwards == 5 * 3
    assert not hasattr(CountedModel(linear), "expected_loss")


def test_list_attacks():
    assert list_attacks() == ["fgsm", "rand_fgsm", "bim", "pgd", "apgd", "square", "fgsm_minimal", "cw_l2",
                            "deepfool", "trust_region", "jsma"]
    import purify.attacks as attacks
    assert all(callable(getattr(attacks, name)) for name in list_attacks())


def test_counted_model_exception():
    with pytest.raises(DTypeError, match="CountedModel: expected model_fn to be callable"):
        CountedModel(None)
