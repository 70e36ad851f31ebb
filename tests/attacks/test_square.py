"""Tests for purify.attacks.square: budget, no gradients ever, schedule, determinism, and torchattacks' Square."""

from __future__ import annotations

import pytest
import torch

from purify.attacks import CountedModel, square
from purify.attacks.square import square_p
from purify.errors import DTypeError, RangeError, ShapeError, UnknownNameError
from tests.attacks.conftest import images, make_convnet, make_linear
from tests.attacks.test_apgd import import_torchattacks, synthetic_task


def _norm(d: torch.Tensor, norm: str) -> torch.Tensor:
    flat = d.flatten(1).double()
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _labels(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


def _correct(model, x, y) -> int:
    with torch.no_grad():
        return int((model(x).argmax(1) == y).sum())


class _NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v):  # noqa: D102
        return v.clone()

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        raise AssertionError("backward called")


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("batch", [0, 1, 3])
def test_smoke(batch, norm, convnet):
    x = images(batch)
    before = x.clone()
    y = torch.arange(batch) % 10
    adv = square(convnet, x, y, eps=0.05 if norm == "linf" else 0.5, norm=norm, queries=20, generator=_gen())
    assert adv.shape == x.shape and adv.dtype == x.dtype and not adv.requires_grad
    assert torch.equal(x, before)
    assert all(p.grad is None for p in convnet.parameters())


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_ball_range_and_per_sample_eps(norm, convnet):
    x = images(4)
    y = _labels(convnet, x)
    eps = torch.tensor([0.0, 0.02, 0.05, 0.3]) * (1.0 if norm == "linf" else 10.0)
    adv = square(convnet, x, y, eps=eps, norm=norm, queries=100, generator=_gen())
    assert bool((_norm(adv - x, norm) <= eps.double() + 1e-5).all())
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert torch.equal(adv[0], x[0])
    assert bool((_norm(adv - x, norm)[1:] > 0).all())


def test_eps_zero_and_queries_zero_are_the_identity_without_a_model_call():
    def boom(v):
        raise AssertionError("model called")

    x = images(3)
    y = torch.tensor([0, 1, 2])
    assert torch.equal(square(boom, x, y, eps=0.0), x)
    assert torch.equal(square(boom, x, y, eps=0.1, queries=0), x)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_never_needs_gradients(norm):
    """A model whose backward raises, called with grad mode off, through a non-differentiable stage."""
    clf = make_convnet()
    grad_modes = []

    def model(v):
        grad_modes.append(torch.is_grad_enabled())
        return clf(_NoBackward.apply(torch.round(v * 8) / 8))

    x = images(6, lo=0.2, hi=0.8)
    y = _labels(model, x)
    adv = square(model, x, y, eps=0.1 if norm == "linf" else 1.0, norm=norm, queries=200, generator=_gen())
    assert grad_modes and not any(grad_modes)
    assert _correct(model, adv, y) < 6


def test_stops_each_image_at_its_first_success():
    model = make_linear(k=4)
    x = images(5, lo=0.2, hi=0.8)
    y = _labels(model, x)
    with torch.no_grad():
        y[0] = model(x[:1]).argmin(1)[0]                  # the least likely class: misclassified from the start
    counted = CountedModel(model)
    adv = square(counted, x, y, eps=0.2, queries=50, generator=_gen())
    assert counted.forwards < 5 * 50 and counted.backwards == 0
    fooled = model(adv).argmax(1) != y
    assert bool(fooled[0]) and int(fooled.sum()) >= 3
    counted.reset()
    square(counted, x[:1], y[:1], eps=0.2, queries=50, generator=_gen())
    assert counted.forwards == 1                          # only the start is scored


def test_p_schedule_is_the_papers():
    p = [square_p(i, 10000, 0.8) for i in range(10000)]
    edges = [0, 11, 51, 201, 501, 1001, 2001, 4001, 6001, 8001]
    for k, e in enumerate(edges):
        assert p[e] == 0.8 / 2 ** k and (e == 0 or p[e - 1] == 0.8 / 2 ** (k - 1))
    assert [square_p(i, 1000, 0.8) for i in (1, 2, 6)] == [0.8, 0.4, 0.2]   # rescaled to the budget


def test_determinism_per_seed_and_batch_independence():
    model = make_convnet(dtype=torch.float64)
    x = images(3, dtype=torch.float64, seed=4)
    y = _labels(model, x)
    for norm, eps in (("linf", 0.03), ("l2", 0.3)):
        run = lambda xx, yy, seed: square(model, xx, yy, eps=eps, norm=norm, queries=60, generator=_gen(seed))  # noqa
        assert torch.equal(run(x, y, 1), run(x, y, 1))
        assert not torch.equal(run(x, y, 1), run(x, y, 2))
        x2 = torch.cat([x[:1], images(2, dtype=torch.float64, seed=9)])
        torch.testing.assert_close(run(x2, _labels(model, x2), 1)[0], run(x, y, 1)[0], atol=1e-12, rtol=0)


def test_exception(convnet):
    x = images(2)
    y = torch.tensor([0, 1])
    with pytest.raises(UnknownNameError, match="square: unknown norm 'l1'"):
        square(convnet, x, y, eps=0.1, norm="l1")
    with pytest.raises(RangeError, match=r"square: expected p_init in \(0.0, 1.0\], got 0"):
        square(convnet, x, y, eps=0.1, p_init=0)
    with pytest.raises(RangeError, match="square: expected queries >= 0, got -1"):
        square(convnet, x, y, eps=0.1, queries=-1)
    with pytest.raises(DTypeError, match="square: expected model_fn to be callable"):
        square(None, x, y, eps=0.1)
    with pytest.raises(ShapeError, match=r"square: expected model_fn to return logits of shape \(2, K\)"):
        square(lambda v: v.sum(), x, y, eps=0.1)
    with pytest.raises(DTypeError, match="square: expected y of dtype torch.int64"):
        square(convnet, x, y.int(), eps=0.1)


@pytest.mark.parametrize("norm, eps", [("linf", 0.05), ("l2", 0.3)])
def test_agrees_with_torchattacks(norm, eps):
    """Robust accuracy of our Square vs torchattacks' Square, 300 update queries each, same model and images.

    Ours draws a square per image, torchattacks one per batch, from different streams: a random
    search, so the counts move between seeds. Over seeds 0-2 ours gave 24-28 of 64 correct at L∞
    0.05 (theirs 28-29) and 47-48 at L2 0.3 (theirs 48), clean 59. We allow 6 of 64, 1.5x the
    seed-to-seed spread of one implementation, well below the 11+ images the attack removes.
    """
    ta = import_torchattacks()
    model, x, y = synthetic_task()
    name = {"linf": "Linf", "l2": "L2"}[norm]
    ours = square(model, x, y, eps=eps, norm=norm, queries=301, generator=_gen(0))     # start + 300 updates
    theirs = ta.Square(model, norm=name, eps=eps, n_queries=300, seed=0)(x, y).detach()
    for adv in (ours, theirs):
        assert float(_norm(adv - x, norm).max()) <= eps + 1e-5 and 0 <= float(adv.min()) <= float(adv.max()) <= 1
    a, b, clean = _correct(model, ours, y), _correct(model, theirs, y), _correct(model, x, y)
    assert abs(a - b) <= 6, (a, b)
    assert a <= clean - 10, (a, clean)
