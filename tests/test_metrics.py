"""Tests for purify.metrics: loss sensitivity, the exact nearest-training-image distance, and ρ₂ / ρ∞."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from purify.attacks import bpda, deepfool, eot, fgsm_minimal, rho2
from purify.errors import DTypeError, NonDifferentiableError, RangeError, ShapeError, UnknownNameError
from purify.metrics import loss_sensitivity, nearest_distance, perturbation_size, rho
from tests.attacks.conftest import images, make_linear


def _hand_gradient_norms(model, x, y):
    """||W^T (softmax(W x + b) - onehot(y))||_2 per image: the CE gradient of a linear model, by hand."""
    w, b = model[1].weight.detach(), model[1].bias.detach()
    z = x.flatten(1) @ w.T + b
    grad = (torch.softmax(z, 1) - F.one_hot(y, w.shape[0]).to(x.dtype)) @ w
    return grad.norm(dim=1)


# ----------------------------------------------------------------------------- loss sensitivity

@pytest.mark.parametrize("batch", [1, 3, 7])
def test_loss_sensitivity_of_a_linear_model_is_the_hand_computation(batch):
    model = make_linear(5, dtype=torch.float64)
    x = images(batch, dtype=torch.float64)
    y = torch.arange(batch) % 5                               # right and wrong labels alike
    expected = _hand_gradient_norms(model, x, y)
    per_image = loss_sensitivity(model, x, y, reduction="none")
    torch.testing.assert_close(per_image, expected, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(loss_sensitivity(model, x, y), expected.mean(), atol=1e-12, rtol=1e-10)
    assert all(p.grad is None for p in model.parameters())


def test_loss_sensitivity_is_per_image_not_a_batch_mean():
    """Each image's own loss is differentiated: its norm is the same alone as in a batch of 6."""
    model = make_linear(4, dtype=torch.float64)
    x = images(6, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    batch = loss_sensitivity(model, x, y, reduction="none")
    for i in range(6):
        torch.testing.assert_close(batch[i:i + 1], loss_sensitivity(model, x[i:i + 1], y[i:i + 1], reduction="none"))
    assert float(batch.min()) > 0


def test_loss_sensitivity_through_bpda_is_the_gradient_at_the_stage_output():
    """bpda(stage): the classifier's gradient at stage(x), passed back unchanged (ART's preprocessor convention)."""
    model = make_linear(4, dtype=torch.float64)
    x = images(5, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0])
    squeeze = lambda v: (v * 3).round() / 3                   # noqa: E731  (no useful gradient)
    got = loss_sensitivity(lambda v: model(bpda(squeeze)(v)), x, y, reduction="none")
    torch.testing.assert_close(got, _hand_gradient_norms(model, squeeze(x), y), atol=1e-12, rtol=1e-10)
    # an EOT wrapper over a deterministic model: its expected gradient is the plain one
    torch.testing.assert_close(loss_sensitivity(eot(model, samples=3), x, y), loss_sensitivity(model, x, y))


def test_loss_sensitivity_empty_batch_and_exceptions():
    model = make_linear(4)
    assert math.isnan(float(loss_sensitivity(model, images(0), torch.zeros(0, dtype=torch.long))))
    assert loss_sensitivity(model, images(0), torch.zeros(0, dtype=torch.long), reduction="none").shape == (0,)
    x, y = images(2), torch.tensor([0, 1])
    with pytest.raises(UnknownNameError, match="loss_sensitivity: unknown reduction 'sum'"):
        loss_sensitivity(model, x, y, reduction="sum")
    with pytest.raises(NonDifferentiableError, match="loss_sensitivity: .*bpda"):
        loss_sensitivity(lambda v: model(v.detach()), x, y)
    with pytest.raises(ShapeError, match=r"loss_sensitivity: expected y of shape \(2,\)"):
        loss_sensitivity(model, x, y[:1])
    with pytest.raises(RangeError, match=r"loss_sensitivity: labels y must lie in \[0, 3\]"):
        loss_sensitivity(model, x, torch.tensor([0, 4]))
    with pytest.raises(DTypeError, match="loss_sensitivity: expected model_fn to be callable"):
        loss_sensitivity(None, x, y)


# ----------------------------------------------------------------------------- nearest distance

def _brute_force(x, ref):
    d = (x.flatten(1).double()[:, None, :] - ref.flatten(1).double()[None, :, :]).norm(dim=2)
    return d.min(1)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 23, 1000])
def test_nearest_distance_is_the_brute_force_one_for_every_chunk_size(chunk_size):
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(23, 3, 5, 6, generator=g)               # odd, non-square images
    x = torch.rand(9, 3, 5, 6, generator=g)
    d, i = nearest_distance(x, ref, chunk_size=chunk_size)
    bd, bi = _brute_force(x, ref)
    two = (x.flatten(1).double()[:, None] - ref.flatten(1).double()[None]).norm(dim=2).topk(2, dim=1, largest=False)
    # No near-tie for the nearest image (float64 search noise ~1e-13): the index is well defined, and its
    # distance is recomputed directly, exact up to float64 rounding and the cast to x's float32.
    assert float((two.values[:, 1] - two.values[:, 0]).min()) > 1e-6
    assert d.dtype == x.dtype and d.shape == (9,) and i.dtype == torch.int64
    assert torch.equal(i, bi)
    torch.testing.assert_close(d.double(), bd, atol=0, rtol=1e-7)
    assert torch.equal(d, nearest_distance(x, ref, chunk_size=23)[0])       # chunked == unchunked


def test_nearest_distance_exact_zero_ties_and_uint8():
    g = torch.Generator().manual_seed(1)
    ref8 = torch.randint(0, 256, (10, 1, 4, 4), generator=g, dtype=torch.uint8)
    ref = ref8.double() / 255
    x = torch.cat([ref[7:8], ref[2:3] + 0.01])                # a training image itself, and one near another
    d, i = nearest_distance(x, ref8, chunk_size=4)            # uint8 is read as value / 255
    assert float(d[0]) == 0.0 and i.tolist() == [7, 2]
    torch.testing.assert_close(d[1], torch.tensor(0.01 * 4, dtype=torch.float64), atol=1e-12, rtol=0)  # sqrt(16) * 0.01
    dup = torch.cat([ref[:3], ref[:3]])                       # equal distances: the lower index wins, across chunks
    assert nearest_distance(ref[1:2], dup, chunk_size=2)[1].tolist() == [1]


def test_nearest_distance_exceptions():
    ref = torch.rand(4, 3, 2, 2)
    with pytest.raises(ShapeError, match=r"nearest_distance: expected x \(B, \*S\) and reference \(N, \*S\)"):
        nearest_distance(torch.rand(2, 3, 2, 3), ref)
    with pytest.raises(ShapeError, match="expected at least one reference image"):
        nearest_distance(torch.rand(2, 3, 2, 2), ref[:0])
    with pytest.raises(DTypeError, match="expected x of a floating dtype"):
        nearest_distance(torch.zeros(2, 3, 2, 2, dtype=torch.uint8), ref)
    with pytest.raises(DTypeError, match="expected reference of a floating dtype or uint8"):
        nearest_distance(torch.rand(2, 3, 2, 2), ref.long())
    with pytest.raises(RangeError, match="expected chunk_size >= 1"):
        nearest_distance(torch.rand(2, 3, 2, 2), ref, chunk_size=0)
    assert nearest_distance(torch.rand(0, 3, 2, 2), ref)[0].shape == (0,)


# ----------------------------------------------------------------------------- ρ₂ / ρ∞

def test_perturbation_size_is_the_hand_computation_on_odd_images():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 2, 7, 5, generator=g, dtype=torch.float64)          # odd, non-square
    adv = (x + 0.1 * torch.randn(3, 2, 7, 5, generator=g, dtype=torch.float64)).clamp(0, 1)
    for i in range(3):
        d = (adv[i] - x[i]).flatten()
        assert perturbation_size(x, adv)[i] == pytest.approx(float(d.norm() / x[i].flatten().norm()), rel=1e-12)
        assert perturbation_size(x, adv, relative=False)[i] == pytest.approx(float(d.norm()), rel=1e-12)
        assert perturbation_size(x, adv, norm="linf")[i] == pytest.approx(float(d.abs().max() / x[i].max()), rel=1e-12)
    assert perturbation_size(x, adv).dtype == torch.float64
    assert perturbation_size(x, x).tolist() == [0.0, 0.0, 0.0]               # no perturbation: 0
    assert perturbation_size(x[:0], adv[:0]).shape == (0,)


def test_rho_over_all_images_is_the_attacks_rho2_and_fooled_selects():
    x = images(5, lo=0.2, hi=0.8, dtype=torch.float64)
    model = make_linear(4, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    adv = deepfool(model, x, y)
    assert rho(x, adv) == pytest.approx(rho2(x, adv), rel=1e-12)
    fooled = torch.tensor([True, False, True, True, False])
    assert rho(x, adv, fooled=fooled) == pytest.approx(float(perturbation_size(x, adv)[fooled].mean()), rel=1e-12)
    assert math.isnan(rho(x, adv, fooled=torch.zeros(5, dtype=torch.bool)))


def test_rho_inf_of_minimal_fgsm_is_the_mean_smallest_eps_on_bright_images():
    """Minimal FGS moves every pixel by its eps (none clipped when x lies in [0.3, 0.7] and eps < 0.3), and an
    image whose brightest pixel is 0.7 gives ρ∞ = eps / 0.7: the grid eps of each fooled image, over 0.7."""
    x = images(6, lo=0.3, hi=0.7, dtype=torch.float64)
    x[:, 0, 0, 0] = 0.7
    model = make_linear(4, scale=2.0, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    adv = fgsm_minimal(model, x, y, eps_step=0.001, eps_max=0.25)
    with torch.no_grad():
        fooled = model(adv).argmax(1) != y
    assert bool(fooled.any())
    eps = (adv - x).abs().flatten(1).amax(1)
    assert rho(x, adv, norm="linf", fooled=fooled) == pytest.approx(float((eps / 0.7)[fooled].mean()), rel=1e-9)
    assert rho(x, adv, norm="linf", fooled=fooled, relative=False) == pytest.approx(float(eps[fooled].mean()))


def test_rho_exceptions():
    x = images(2)
    with pytest.raises(ShapeError, match=r"perturbation_size: expected x_adv of the same shape"):
        rho(x, x[:1])
    with pytest.raises(ShapeError, match=r"perturbation_size: expected x of shape \(B, C, H, W\)"):
        perturbation_size(x[0], x[0])
    with pytest.raises(UnknownNameError, match="perturbation_size: unknown norm 'l1'"):
        rho(x, x, norm="l1")
    with pytest.raises(DTypeError, match="rho: expected fooled to be a bool tensor"):
        rho(x, x, fooled=torch.tensor([1, 0]))
    with pytest.raises(ShapeError, match=r"rho: expected fooled of shape \(2,\)"):
        rho(x, x, fooled=torch.tensor([True]))
    with pytest.raises(DTypeError, match="perturbation_size: expected relative to be a bool"):
        perturbation_size(x, x, relative=1)
