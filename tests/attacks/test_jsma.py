"""Tests for purify.attacks.jsma: the saliency-map L0 attack, against a hand computation and a brute-force oracle."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from torch import nn

from purify.attacks import CountedModel, bpda, eot, jsma
from purify.errors import DTypeError, NonDifferentiableError, RangeError, ShapeError
from tests.attacks.conftest import images, make_convnet, make_linear

# The hand example: 4 features (1 x 2 x 2), 3 classes, target 2. The logits' Jacobian is W, so
# a = W[2] = [0.5, 0.4, -0.9, 0.7] and b = W[0] + W[1] = [0.7, 0.3, 0.3, -0.9].
W = [[1.0, -0.5, 0.2, 0.0],
     [-0.3, 0.8, 0.1, -0.9],
     [0.5, 0.4, -0.9, 0.7]]
BIAS = [0.5, 0.0, 0.0]
X = [0.2, 0.3, 0.6, 0.1]          # logits [0.67, 0.15, -0.25]: class 0


def _linear(w, bias, dtype=torch.float64) -> nn.Sequential:
    w = torch.as_tensor(w, dtype=dtype)
    lin = nn.Linear(w.shape[1], w.shape[0]).to(dtype)
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(torch.as_tensor(bias, dtype=dtype))
    return nn.Sequential(nn.Flatten(), lin).eval()


def _hand():
    return _linear(W, BIAS), torch.tensor(X, dtype=torch.float64).view(1, 1, 2, 2)


def _l0(adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (adv != x).flatten(1).sum(1)


def oracle(model: nn.Sequential, x: torch.Tensor, t: int, theta: float, gamma: float, max_iter: int = 10_000):
    """Papernot et al.'s algorithm for one image of a linear model, pair by pair in plain Python."""
    w, bias = model[1].weight.detach(), model[1].bias.detach()
    x = x.flatten().clone()
    d = x.numel()
    budget = math.floor(round(gamma * d, 6))
    a, b = w[t], w.sum(0) - w[t]
    sign = 1 if theta > 0 else -1
    changed: set[int] = set()
    for _ in range(max_iter):
        if int((w @ x + bias).argmax()) == t:
            break
        best = None
        for p in range(d):
            for q in range(p + 1, d):
                in_domain = all(x[i] < 1 if theta > 0 else x[i] > 0 for i in (p, q))
                if not in_domain or len(changed | {p, q}) > budget:
                    continue
                sa, sb = float(a[p] + a[q]), float(b[p] + b[q])
                if sign * sa > 0 and sign * sb < 0 and (best is None or -sa * sb > best[0]):
                    best = (-sa * sb, p, q)
        if best is None:
            break
        for i in best[1:]:
            x[i] = min(max(float(x[i]) + theta, 0.0), 1.0)
            changed.add(i)
    return x


def _separable(n: int, k: int = 4, seed: int = 0):
    """Images of 1 x 8 x 8 around one random prototype per class, labels in turn."""
    protos = torch.rand(k, 1, 8, 8, generator=torch.Generator().manual_seed(123))
    y = torch.arange(n) % k
    noise = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    return (protos[y] + 0.15 * noise).clamp(0, 1), y


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    """An MLP fit on the separable images (100 % test accuracy in under a second)."""
    torch.manual_seed(0)
    x, y = _separable(400)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()


# ----------------------------------------------------------------------------- the basics

@pytest.mark.parametrize("batch", [0, 1, 3])
def test_smoke(batch, convnet, device):
    x = images(batch).to(device)
    x_before = x.clone()
    net = convnet.to(device)
    y = (torch.arange(batch) % 10).to(device)
    adv = jsma(net, x, y, gamma=0.2, generator=torch.Generator(device=device.type).manual_seed(0))
    assert adv.shape == x.shape and adv.dtype == x.dtype and adv.device == x.device and not adv.requires_grad
    assert torch.equal(x, x_before) and all(p.grad is None for p in net.parameters())
    assert bool(((adv >= 0) & (adv <= 1)).all())
    assert batch == 0 or adv.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("shape", [(1, 7, 3), (3, 5, 6), (2, 1, 2)])
def test_cardinality(shape):
    model = make_linear(3, shape=shape)
    x = images(2, shape=shape)
    adv = jsma(model, x, torch.tensor([0, 1]), gamma=1.0, target=torch.tensor([2, 2]))
    assert adv.shape == (2, *shape)


# ----------------------------------------------------------------------------- exact computations

def test_first_pair_and_result_by_hand():
    """Pairs meeting a_p + a_q > 0 and b_p + b_q < 0: (0, 3) scores 1.2 * 0.2 = 0.24, (1, 3) 1.1 * 0.6 = 0.66.

    (1, 3) wins although (0, 3) raises the target more: the map weighs both. Raised to 1, the
    logits become [0.32, -0.10, 0.66]: the target wins after one step.
    """
    model, x = _hand()
    counted = CountedModel(model)
    adv = jsma(counted, x, torch.tensor([0]), gamma=1.0, target=torch.tensor([2]))
    torch.testing.assert_close(adv.flatten(), torch.tensor([0.2, 1.0, 0.6, 1.0], dtype=torch.float64), atol=0, rtol=0)
    torch.testing.assert_close(model(adv), torch.tensor([[0.32, -0.10, 0.66]], dtype=torch.float64))
    assert counted.forwards == 2 and counted.backwards == 2       # step 1 (two backward passes), then success
    assert torch.equal(jsma(model, x, torch.tensor([0]), gamma=1.0, target=torch.tensor([2]), max_iter=1), adv)


def test_theta_negative_by_hand():
    """Decreasing: a_p + a_q < 0 and b_p + b_q > 0: (0, 2) scores 0.4 * 1.0 = 0.4, (1, 2) 0.5 * 0.6 = 0.3.

    Lowered to 0, the logits are [0.35, 0.15, 0.19]; the domain left is {1, 3}, where a_1 + a_3 = 1.1 > 0:
    no pair qualifies, so the image stops there, short of its target.
    """
    model, x = _hand()
    counted = CountedModel(model)
    adv = jsma(counted, x, torch.tensor([0]), theta=-1.0, gamma=1.0, target=torch.tensor([2]))
    torch.testing.assert_close(adv.flatten(), torch.tensor([0.0, 0.3, 0.0, 0.1], dtype=torch.float64), atol=0, rtol=0)
    assert counted.forwards == 2                                  # the second step found no pair and stopped


@pytest.mark.parametrize("theta", [1.0, -1.0, 0.4, -0.3])
@pytest.mark.parametrize("gamma", [0.5, 1.0])
def test_matches_brute_force_oracle(theta, gamma):
    """Random linear models (logit Jacobian = W) against the pair-by-pair loop of :func:`oracle`.

    float64 and random weights: the best pair's score beats the next by far more than the rounding of
    the sums (~1e-16), so the choices, and hence the images, agree exactly.
    """
    for seed in range(3):
        model = make_linear(4, shape=(1, 3, 4), scale=1.0, seed=seed, dtype=torch.float64)
        x = images(5, seed=seed, shape=(1, 3, 4), dtype=torch.float64)
        with torch.no_grad():
            t = (model(x).argmax(1) + 1 + torch.arange(5) % 3) % 4         # never the current prediction
        adv = jsma(model, x, torch.zeros(5, dtype=torch.long), theta=theta, gamma=gamma, target=t)
        for i in range(5):
            expected = oracle(model, x[i], int(t[i]), theta, gamma)
            torch.testing.assert_close(adv[i].flatten(), expected, atol=0, rtol=0)


@pytest.mark.parametrize("chunk", [None, 7])
def test_ties_go_to_the_first_pair_whatever_the_chunking(chunk, monkeypatch):
    """Four identical features: every pair scores (1 + 1) * (1 + 1) = 4, and (0, 1) is the first.

    ``_PAIR_ELEMS = 7`` makes every chunk a single row p, so a tie is met across chunks too.
    """
    if chunk is not None:      # the module, not the function purify.attacks exports under the same name
        monkeypatch.setattr(importlib.import_module("purify.attacks.jsma"), "_PAIR_ELEMS", chunk)
    model = _linear([[1.0] * 4, [0.0] * 4, [-1.0] * 4], [0.0, 0.0, 3.0])     # class 2 at x, class 0 at sum(x) > 1.5
    x = torch.tensor([0.2, 0.3, 0.4, 0.5], dtype=torch.float64).view(1, 1, 2, 2)
    adv = jsma(model, x, torch.tensor([2]), gamma=1.0, target=torch.tensor([0]))
    torch.testing.assert_close(adv.flatten(), torch.tensor([1.0, 1.0, 0.4, 0.5], dtype=torch.float64), atol=0, rtol=0)
    other = make_linear(4, shape=(1, 3, 4), scale=1.0, seed=2, dtype=torch.float64)  # no ties: same as unchunked
    xo = images(3, shape=(1, 3, 4), dtype=torch.float64)
    with torch.no_grad():
        t = (other(xo).argmax(1) + torch.tensor([1, 2, 3])) % 4
    adv = jsma(other, xo, t, theta=0.4, gamma=1.0, target=t)                 # pairs away from row 0 are chosen
    expected = torch.stack([oracle(other, xo[i], int(t[i]), 0.4, 1.0) for i in range(3)])
    torch.testing.assert_close(adv.flatten(1), expected, atol=0, rtol=0)
    assert bool((_l0(adv, xo) == 2).all()) and int((adv != xo).flatten(1).nonzero()[:, 1].min()) > 0


def test_eot_and_bpda_take_the_same_steps():
    """EOT of a deterministic model averages identical rows; BPDA of the identity is the model."""
    model = make_linear(4, shape=(1, 3, 4), scale=1.0, seed=1, dtype=torch.float64)
    x = images(4, shape=(1, 3, 4), dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 3])
    y = torch.zeros(4, dtype=torch.long)
    plain = jsma(model, x, y, gamma=1.0, target=t)
    counted = CountedModel(model)
    assert torch.equal(jsma(eot(counted, samples=2), x, y, gamma=1.0, target=t), plain)
    assert counted.backwards > 0 and counted.backwards % 2 == 0
    through = jsma(lambda v: model(bpda(lambda u: u.clone())(v)), x, y, gamma=1.0, target=t)
    assert torch.equal(through, plain)


# ----------------------------------------------------------------------------- the budget and the stops

@pytest.mark.parametrize("theta", [1.0, -1.0, 0.3])
@pytest.mark.parametrize("gamma", [0.05, 0.1, 0.3])
def test_l0_budget_is_never_exceeded(theta, gamma, convnet):
    x = images(6)
    t = torch.tensor([1, 2, 3, 4, 5, 6])
    adv = jsma(convnet, x, torch.zeros(6, dtype=torch.long), theta=theta, gamma=gamma, target=t)
    budget = math.floor(gamma * x[0].numel())
    assert int(_l0(adv, x).max()) <= budget
    with torch.no_grad():
        missed = convnet(adv).argmax(1) != t
    if abs(theta) == 1 and bool(missed.any()):                     # pairs of new features: the budget, rounded to pairs
        assert int(_l0(adv, x)[missed].max()) == 2 * (budget // 2)
    changed = adv != x
    if theta > 0:
        assert bool((adv >= x).all()) and (abs(theta) < 1 or bool((adv[changed] == 1).all()))
    else:
        assert bool((adv <= x).all()) and bool((adv[changed] == 0).all())


def test_max_iter_caps_the_steps(convnet):
    x, t = images(4), torch.tensor([1, 2, 3, 4])
    y = torch.zeros(4, dtype=torch.long)
    for steps in (1, 2, 3):
        assert int(_l0(jsma(convnet, x, y, gamma=1.0, target=t, max_iter=steps), x).max()) <= 2 * steps
    counted = CountedModel(convnet)
    assert torch.equal(jsma(counted, x, y, target=t, max_iter=0), x) and counted.forwards == 0
    assert torch.equal(jsma(counted, x, y, target=t, gamma=1 / x[0].numel()), x) and counted.forwards == 0


def test_images_already_at_their_target_are_unchanged(convnet):
    x = images(3)
    with torch.no_grad():
        pred = convnet(x).argmax(1)
    counted = CountedModel(convnet)
    t = torch.stack([pred[0], (pred[1] + 1) % 10, pred[2]])
    adv = jsma(counted, x, torch.zeros(3, dtype=torch.long), gamma=0.2, target=t)
    assert torch.equal(adv[0], x[0]) and torch.equal(adv[2], x[2]) and not torch.equal(adv[1], x[1])


def test_batch_consistency():
    """Attacking together equals attacking alone (same targets): the steps of an image never see its batch-mates.

    The output is x with whole features moved by theta; the batch can change only which pair wins, through
    float64 noise in the Jacobian far below the score gaps, so the images agree exactly.
    """
    model = make_convnet(dtype=torch.float64)
    x = images(4, dtype=torch.float64)
    t = torch.tensor([3, 1, 4, 1])
    y = torch.zeros(4, dtype=torch.long)
    whole = jsma(model, x, y, gamma=0.15, target=t)
    assert bool((_l0(whole, x) > 0).all())
    for i in range(4):
        assert torch.equal(whole[i:i + 1], jsma(model, x[i:i + 1], y[i:i + 1], gamma=0.15, target=t[i:i + 1]))


# ----------------------------------------------------------------------------- a trained model, and the targets

@pytest.mark.parametrize("theta", [1.0, -1.0])
def test_targeted_attack_reaches_the_target_on_a_trained_model(trained, theta):
    x, y = _separable(40, seed=1)
    with torch.no_grad():
        assert bool((trained(x).argmax(1) == y).all())
    t = (y + 1 + torch.arange(40) % 3) % 4                                  # every other class in turn
    adv = jsma(trained, x, y, theta=theta, gamma=0.3, target=t)
    with torch.no_grad():
        reached = trained(adv).argmax(1) == t
    assert float(reached.float().mean()) >= 0.75                            # measured: 0.9 (theta=+1), 0.875 (-1)
    assert int(_l0(adv, x).max()) <= math.floor(0.3 * 64)


def test_default_target_is_a_random_other_class(trained):
    """Without target: (y + U{1..K-1}) mod K from the generator; reproducible; the model leaves y."""
    x, y = _separable(40, seed=2)
    gen = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    adv = jsma(trained, x, y, gamma=0.3, generator=gen(5))
    assert torch.equal(adv, jsma(trained, x, y, gamma=0.3, generator=gen(5)))
    assert not torch.equal(adv, jsma(trained, x, y, gamma=0.3, generator=gen(6)))
    drawn = (y + torch.randint(1, 4, (40,), generator=gen(5))) % 4
    assert torch.equal(adv, jsma(trained, x, y, gamma=0.3, target=drawn))
    assert bool((drawn != y).all()) and set(drawn.tolist()) == {0, 1, 2, 3}
    with torch.no_grad():
        assert float((trained(adv).argmax(1) != y).float().mean()) >= 0.75


def test_leaves_grads_and_grad_mode_alone():
    model = make_convnet().train()
    x = images(2).requires_grad_(True)
    with torch.no_grad():
        adv = jsma(model, x, torch.tensor([0, 1]), gamma=0.2, target=torch.tensor([5, 6]))
        assert not torch.is_grad_enabled()
    assert x.grad is None and all(p.grad is None for p in model.parameters())
    assert model.training and not adv.requires_grad and bool((adv != x.detach()).any())


def test_exception(linear):
    x, y = images(2), torch.tensor([0, 1])
    t = torch.tensor([2, 3])
    with pytest.raises(RangeError, match=r"jsma: expected theta != 0, got 0; use theta = 1"):
        jsma(linear, x, y, theta=0.0)
    with pytest.raises(RangeError, match=r"jsma: expected theta .*, got nan"):
        jsma(linear, x, y, theta=float("nan"))
    with pytest.raises(RangeError, match=r"jsma: expected gamma in \(0.0, 1.0\], got 0"):
        jsma(linear, x, y, gamma=0)
    with pytest.raises(RangeError, match=r"jsma: expected gamma in \(0.0, 1.0\], got 1.5"):
        jsma(linear, x, y, gamma=1.5)
    with pytest.raises(RangeError, match="jsma: expected max_iter >= 0, got -1"):
        jsma(linear, x, y, max_iter=-1)
    with pytest.raises(DTypeError, match="jsma: expected max_iter to be an int, got float"):
        jsma(linear, x, y, max_iter=2.0)
    with pytest.raises(DTypeError, match="jsma: expected target of dtype torch.int64, got torch.int32"):
        jsma(linear, x, y, target=t.int())
    with pytest.raises(ShapeError, match=r"jsma: expected target of shape \(2,\), one class per image, got \(2, 10\)"):
        jsma(linear, x, y, target=nn.functional.one_hot(t, 10))
    with pytest.raises(DTypeError, match="jsma: expected target to be a torch.Tensor of int64 classes or None"):
        jsma(linear, x, y, target=[2, 3])
    with pytest.raises(RangeError, match="jsma: expected target classes >= 0, got min -1"):
        jsma(linear, x, y, target=torch.tensor([-1, 2]))
    with pytest.raises(RangeError, match=r"jsma: target classes must lie in \[0, 9\] for a model with 10 classes"):
        jsma(linear, x, y, target=torch.tensor([2, 10]))
    with pytest.raises(RangeError, match=r"jsma: labels y must lie in \[0, 9\] for a model with 10 classes"):
        jsma(linear, x, torch.tensor([0, 10]))
    with pytest.raises(ShapeError, match=r"jsma: expected model_fn to return logits of shape \(2, K\), "
                                         r"got \(1, 2, 10\)"):
        jsma(lambda v: linear(v)[None], x, y)
    with pytest.raises(ShapeError, match="jsma: expected model_fn to return at least 2 classes, got 1"):
        jsma(lambda v: linear(v)[:, :1], x, torch.tensor([0, 0]))
    with pytest.raises(NonDifferentiableError, match=r"jsma: model_fn's output does not depend .*bpda"):
        jsma(lambda v: linear(v).detach(), x, y)
    with pytest.raises(NonDifferentiableError, match=r"jsma: model_fn's output does not depend .*bpda"):
        jsma(lambda v: linear(v.detach()), x, y)                  # a graph through the weights only
    with pytest.raises(ShapeError, match=r"jsma: expected x of shape \(B, C, H, W\), got \(3, 5, 6\)"):
        jsma(linear, x[0], y)
    with pytest.raises(DTypeError, match="jsma: expected y of dtype torch.int64"):
        jsma(linear, x, y.int())
    with pytest.raises(DTypeError, match="jsma: expected generator to be a torch.Generator"):
        jsma(linear, x, y, generator=0)
    with pytest.raises(DTypeError, match="jsma: expected model_fn to be callable"):
        jsma(None, x, y)
