"""Tests for purify.attacks.cw: Carlini–Wagner L2."""

from __future__ import annotations

import pytest
import torch

from purify.attacks import CountedModel, cw_l2, deepfool, eot
from purify.attacks.cw import cw_l2_details
from purify.attacks.gradient import margin_loss
from purify.errors import DTypeError, NonDifferentiableError, RangeError, ShapeError
from tests.attacks.conftest import images, make_convnet, make_linear


def _l2(d: torch.Tensor) -> torch.Tensor:
    return d.flatten(1).norm(dim=1)


@pytest.fixture(scope="module")
def setup():
    model = make_linear(10, scale=0.05)  # boundaries at L2 distance 0.05-0.3 from x: a few Adam steps
    x = images(16, lo=0.3, hi=0.7)
    with torch.no_grad():
        return model, x, model(x).argmax(1)


@pytest.mark.parametrize("batch", [0, 1, 3])
def test_smoke(batch, device):
    model = make_convnet().to(device)
    x = images(batch).to(device)
    x_before = x.clone()
    adv = cw_l2(model, x, torch.arange(batch, device=device), steps=5)
    assert adv.shape == x.shape and adv.dtype == x.dtype and adv.device == x.device and not adv.requires_grad
    assert torch.equal(x, x_before)
    assert all(p.grad is None for p in model.parameters())


def test_linear_success_and_near_minimal_norm(setup):
    model, x, y = setup
    res = cw_l2_details(model, x, y)  # paper defaults c = 10, kappa = 0
    assert float(res.success.float().mean()) >= 0.9
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    assert bool((model(res.x_adv).argmax(1) != y)[res.success].all())
    torch.testing.assert_close(res.l2, _l2(res.x_adv - x))
    # DeepFool-L2 is near-minimal on a linear model (measured ratio <= 1.08), and no attack can
    # beat the exact distance to the nearest decision boundary
    df = _l2(deepfool(model, x, y) - x)
    assert bool((res.l2[res.success] <= 1.5 * df[res.success]).all())
    with torch.no_grad():
        w, z = model[1].weight, model(x)
        dist = torch.stack([(z[:, k] - z.gather(1, y[:, None])[:, 0]).abs() / (w[k] - w[y]).norm(dim=1)
                            for k in range(10)], 1)
    dist = dist.masked_fill(torch.nn.functional.one_hot(y, 10).bool(), float("inf")).amin(1)
    assert bool((res.l2[res.success] >= dist[res.success] - 1e-5).all())


def test_kappa_increases_margin(setup):
    model, x, y = setup
    plain = cw_l2_details(model, x, y, kappa=0.0)
    conf = cw_l2_details(model, x, y, kappa=0.5)
    assert float(conf.success.float().mean()) >= 0.9
    with torch.no_grad():
        m_plain, m_conf = margin_loss(model(plain.x_adv), y), margin_loss(model(conf.x_adv), y)
    assert bool((m_conf[conf.success] > 0.5).all())
    assert float(m_conf.mean()) > float(m_plain.mean()) + 0.4
    assert float(conf.l2.mean()) > float(plain.l2.mean())


def test_binary_search_reduces_norm(setup):
    model, x, y = setup
    single = cw_l2_details(model, x, y, c=100.0)  # a large c overshoots the boundary
    search = cw_l2_details(model, x, y, c=100.0, binary_search_steps=5)
    assert bool(search.success.all())
    assert bool((search.l2 <= single.l2 + 1e-6).all())  # the first run is the single run
    assert float(search.l2.mean()) < 0.8 * float(single.l2.mean())  # measured 0.164 vs 0.226
    assert bool((search.c < 100.0).all())  # every image succeeded, so c went down
    # binary_search_steps 0 and 1 are both a single run at c
    assert torch.equal(cw_l2(model, x, y, c=100.0, binary_search_steps=1), single.x_adv)


def test_binary_search_raises_c_when_failing(setup):
    model, x, y = setup
    low = cw_l2_details(model, x, y, c=1e-3)
    searched = cw_l2_details(model, x, y, c=1e-3, binary_search_steps=4)
    assert not bool(low.success.any())
    assert bool(searched.success.all())
    assert bool((searched.c > 1e-3).all())


def test_no_success_returns_last_iterate(setup):
    model, x, y = setup
    res = cw_l2_details(model, x, y, c=1e-4, steps=10)  # too small a c to succeed
    assert not bool(res.success.any())
    assert bool((res.l2 > 0.01).all())  # not a copy of x: the last iterate, moved towards the boundary
    with torch.no_grad():
        assert bool((margin_loss(model(res.x_adv), y) > margin_loss(model(x), y)).all())


def test_targeted(setup):
    model, x, y = setup
    target = torch.arange(16) % 10
    target = torch.where(target == y, (target + 1) % 10, target)
    res = cw_l2_details(model, x, target, targeted=True)
    assert float(res.success.float().mean()) >= 0.9
    assert bool((model(res.x_adv).argmax(1) == target)[res.success].all())


def test_steps_zero_is_identity(setup):
    model, x, y = setup
    adv = cw_l2(model, x, y, steps=0)
    assert torch.equal(adv, x) and adv.data_ptr() != x.data_ptr()


def test_batch_consistency():
    model = make_convnet(dtype=torch.float64)
    x = images(3, dtype=torch.float64)
    y = model(x).argmax(1)
    c = torch.tensor([1.0, 10.0, 30.0], dtype=torch.float64)
    whole = cw_l2_details(model, x, y, c=c, steps=20, binary_search_steps=2)
    for i in range(3):
        alone = cw_l2_details(model, x[i:i + 1], y[i:i + 1], c=c[i:i + 1], steps=20, binary_search_steps=2)
        torch.testing.assert_close(whole.x_adv[i:i + 1], alone.x_adv, atol=1e-6, rtol=0)
        assert bool(whole.success[i] == alone.success[0])


def test_eot_with_one_sample_equals_plain(setup):
    model, x, y = setup
    counted = CountedModel(model)
    assert torch.equal(cw_l2(eot(counted, samples=1), x, y, steps=10), cw_l2(model, x, y, steps=10))
    assert counted.forwards == 10 * x.shape[0] and counted.backwards == 10 * x.shape[0]


def test_exception(setup):
    model, x, y = setup
    with pytest.raises(RangeError, match="cw_l2: expected c >= 0"):
        cw_l2(model, x, y, c=-1.0)
    with pytest.raises(RangeError, match=r"cw_l2: expected kappa in \[0.0, None\]"):
        cw_l2(model, x, y, kappa=-1.0)
    with pytest.raises(RangeError, match=r"cw_l2: expected lr in \(0.0, None\]"):
        cw_l2(model, x, y, lr=0.0)
    with pytest.raises(RangeError, match="expected binary_search_steps >= 0"):
        cw_l2(model, x, y, binary_search_steps=-1)
    with pytest.raises(ShapeError, match=r"cw_l2: expected x of shape \(B, C, H, W\)"):
        cw_l2(model, x[0], y)
    with pytest.raises(DTypeError, match="cw_l2: expected y of dtype torch.int64"):
        cw_l2(model, x, y.float())
    with pytest.raises(RangeError, match=r"cw_l2: labels y must lie in \[0, 9\]"):
        cw_l2(model, x, torch.full_like(y, 12), steps=1)
    with pytest.raises(NonDifferentiableError, match="cw_l2: model_fn's output does not depend"):
        cw_l2(lambda v: model(v).detach(), x, y, steps=1)
