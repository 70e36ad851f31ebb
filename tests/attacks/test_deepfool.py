"""Tests for purify.attacks.deepfool: DeepFool L2 / L∞ and the rho_2 metric."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from purify.attacks import CountedModel, deepfool, rho2, trust_region
from purify.errors import DTypeError, NonDifferentiableError, RangeError, ShapeError, UnknownNameError
from tests.attacks.conftest import images, make_convnet, make_linear

OVERSHOOT = 0.02


def _binary_setup(dtype=torch.float64):
    model = make_linear(2, scale=0.3, dtype=dtype)
    x = images(6, lo=0.3, hi=0.7, dtype=dtype)
    with torch.no_grad():
        y = model(x).argmax(1)
        w = model[1].weight[1 - y] - model[1].weight[y]  # (B, D): gradient of f = z_other - z_y
        f = (model(x).gather(1, (1 - y)[:, None]) - model(x).gather(1, y[:, None])).squeeze(1)
    return model, x, y, w, f


@pytest.mark.parametrize("attack", [deepfool, trust_region], ids=["deepfool", "trust_region"])
@pytest.mark.parametrize("batch", [0, 1, 3])
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_smoke(batch, norm, attack, convnet, device):
    """DeepFool and the trust-region attack: shapes, devices, nothing mutated, in range, every image fooled."""
    x = images(batch).to(device)
    convnet = convnet.to(device)
    x_before = x.clone()
    with torch.no_grad():
        y = convnet(x).argmax(1)
    adv = attack(convnet, x, y, norm=norm)
    assert adv.shape == x.shape and adv.dtype == x.dtype and adv.device == x.device and not adv.requires_grad
    assert torch.equal(x, x_before) and all(p.grad is None for p in convnet.parameters())
    assert bool(((adv >= 0) & (adv <= 1)).all())
    with torch.no_grad():
        assert bool((convnet(adv).argmax(1) != y).all())


def test_l2_binary_linear_is_analytic():
    model, x, y, w, f = _binary_setup()
    adv = deepfool(model, x, y, norm="l2", overshoot=OVERSHOOT)
    wn = w.norm(dim=1)
    # one step: r = (|f| / ||w|| + 1e-4) w / ||w||, scaled by 1 + overshoot
    r = ((f.abs() / wn + 1e-4) * (1 + OVERSHOOT) / wn)[:, None] * w
    torch.testing.assert_close((adv - x).flatten(1), r, atol=1e-9, rtol=1e-7)
    delta_norm = (adv - x).flatten(1).norm(dim=1)
    torch.testing.assert_close(delta_norm, f.abs() / wn * (1 + OVERSHOOT), atol=2e-4, rtol=0)
    with torch.no_grad():
        f_adv = model(adv).gather(1, (1 - y)[:, None]).squeeze(1) - model(adv).gather(1, y[:, None]).squeeze(1)
    assert bool((f < 0).all() and (f_adv > 0).all())  # the logit difference flips sign


def test_linf_binary_linear_is_analytic():
    model, x, y, w, f = _binary_setup()
    adv = deepfool(model, x, y, norm="linf", overshoot=OVERSHOOT)
    r = ((f.abs() / w.abs().sum(1) + 1e-4) * (1 + OVERSHOOT))[:, None] * w.sign()
    torch.testing.assert_close((adv - x).flatten(1), r, atol=1e-9, rtol=1e-7)
    with torch.no_grad():
        assert bool((model(adv).argmax(1) != y).all())


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_multiclass_linear_fools_near_the_nearest_boundary(norm):
    model = make_linear(10, dtype=torch.float64)
    x = images(12, lo=0.3, hi=0.7, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
        z, w = model(x), model[1].weight
    adv = deepfool(model, x, y, norm=norm)
    with torch.no_grad():
        assert bool((model(adv).argmax(1) != y).all())
    dual = 2 if norm == "l2" else 1
    dist = torch.stack([(z[:, k] - z.gather(1, y[:, None])[:, 0]).abs()
                        / torch.linalg.vector_norm(w[k] - w[y], ord=dual, dim=1) for k in range(10)], 1)
    dist = dist.masked_fill(F.one_hot(y, 10).bool(), float("inf")).amin(1)
    size = torch.linalg.vector_norm((adv - x).flatten(1), ord=2 if norm == "l2" else float("inf"), dim=1)
    assert bool((size >= dist - 1e-9).all())  # nothing smaller can cross a boundary
    assert bool((size <= 3 * (1 + OVERSHOOT) * (dist + 1e-4)).all())  # and DeepFool stays close to it


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_convnet_fools_every_image(norm, convnet):
    x = images(8, lo=0.1, hi=0.9)
    with torch.no_grad():
        y = convnet(x).argmax(1)
    adv = deepfool(convnet, x, y, norm=norm)
    with torch.no_grad():
        assert bool((convnet(adv).argmax(1) != y).all())
    assert 0.0 < rho2(x, adv) < 0.5


def test_misclassified_images_are_returned_unchanged(linear):
    x = images(4, lo=0.3, hi=0.7)
    with torch.no_grad():
        pred = linear(x).argmax(1)
    y = pred.clone()
    y[1] = (pred[1] + 1) % 10  # image 1 is already misclassified
    adv = deepfool(linear, x, y)
    assert torch.equal(adv[1], x[1]) and not torch.equal(adv[0], x[0])


@pytest.mark.parametrize("attack", [deepfool, trust_region], ids=["deepfool", "trust_region"])
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_batch_consistency(norm, attack):
    """Each image alone gives its row of the batch result (DeepFool and the trust-region attack, which
    shares its linearization); float64 kernels may differ by a few ulps with the batch size, far below
    the 1e-6 tolerance and far below any step (>= 1e-4)."""
    model = make_convnet(dtype=torch.float64)
    x = images(5, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[2] = (y[2] + 1) % 10  # a misclassified one in the batch too
    whole = attack(model, x, y, norm=norm, num_classes=4)
    for i in range(5):
        alone = attack(model, x[i:i + 1], y[i:i + 1], norm=norm, num_classes=4)
        torch.testing.assert_close(whole[i:i + 1], alone, atol=1e-6, rtol=0)


def test_only_unfooled_images_are_forwarded():
    model, x, y, _, _ = _binary_setup()
    counted = CountedModel(model)
    deepfool(counted, x, y)
    # iteration 1: forward all, backward for z_y and the one other class; iteration 2: all fooled
    assert counted.forwards == 2 * x.shape[0] and counted.backwards == 2 * x.shape[0]
    counted.reset()
    deepfool(counted, x, y, max_iter=0)
    assert counted.forwards == 0


def test_max_iter_zero_is_identity(linear):
    x = images(3)
    adv = deepfool(linear, x, torch.tensor([0, 1, 2]), max_iter=0)
    assert torch.equal(adv, x) and adv.data_ptr() != x.data_ptr()


def test_rho2_values():
    x = torch.full((2, 1, 3, 4), 0.5)
    adv = x.clone()
    adv[0, 0, 0, 0] += 0.3  # ||delta|| = 0.3, ||x|| = 0.5 * sqrt(12)
    assert rho2(x, adv) == pytest.approx(0.5 * 0.3 / (0.5 * 12 ** 0.5), abs=1e-7)
    assert rho2(x, x) == 0.0
    with pytest.raises(ShapeError, match="rho2: expected x_adv of the same shape as x"):
        rho2(x, x[:1])


def test_exception(linear):
    x, y = images(2), torch.tensor([0, 1])
    with pytest.raises(UnknownNameError, match="deepfool: unknown norm 'l1'; expected one of 'linf', 'l2'"):
        deepfool(linear, x, y, norm="l1")
    with pytest.raises(RangeError, match="deepfool: expected num_classes >= 2, got 1"):
        deepfool(linear, x, y, num_classes=1)
    with pytest.raises(RangeError, match=r"deepfool: expected overshoot in \[0.0, None\]"):
        deepfool(linear, x, y, overshoot=-0.1)
    with pytest.raises(ShapeError, match=r"deepfool: expected x of shape \(B, C, H, W\)"):
        deepfool(linear, x[0], y)
    with pytest.raises(DTypeError, match="deepfool: expected y of dtype torch.int64"):
        deepfool(linear, x, y.to(torch.uint8))
    with pytest.raises(RangeError, match=r"deepfool: labels y must lie in \[0, 9\]"):
        deepfool(linear, x, torch.tensor([0, 10]))
    with pytest.raises(NonDifferentiableError, match="deepfool: model_fn's output does not depend"):
        deepfool(lambda v: linear(v).detach(), x, y)
