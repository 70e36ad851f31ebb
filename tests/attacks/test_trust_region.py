"""Tests for purify.attacks.trust_region: exact minima of linear models, the radius schedule, DeepFool as yardstick."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from purify.attacks import CountedModel, bpda, deepfool, eot, rho2
from purify.attacks.trust_region import trust_region
from purify.errors import DTypeError, NonDifferentiableError, RangeError, ShapeError, UnknownNameError
from tests.attacks.conftest import images, make_convnet, make_linear

PAD = 1e-4  # the attack's push past the linearized boundary on every step
DUAL = {"l2": 2.0, "linf": 1.0}
ORD = {"l2": 2.0, "linf": float("inf")}


def _size(delta: torch.Tensor, norm: str) -> torch.Tensor:
    return torch.linalg.vector_norm(delta.flatten(1), ord=ORD[norm], dim=1)


def _linear_setup(k: int, n: int = 6):
    """A float64 linear model, images well inside [0, 1], their labels and every class's boundary distance."""
    model = make_linear(k, scale=0.3, dtype=torch.float64)
    x = images(n, lo=0.3, hi=0.7, dtype=torch.float64)
    with torch.no_grad():
        z = model(x)
    y = z.argmax(1)
    w = model[1].weight.detach()                               # (k, D)
    f = z - z.gather(1, y[:, None])                           # (n, k): z_j - z_y <= 0
    wd = w[None] - w[y][:, None]                              # (n, k, D): grad of z_j - z_y
    return model, x, y, f, wd


def _distances(f: torch.Tensor, wd: torch.Tensor, y: torch.Tensor, norm: str) -> torch.Tensor:
    """(n, k) distance from x to the hyperplane z_j = z_y in ``norm`` (|f| over the dual norm); inf at y."""
    d = f.abs() / torch.linalg.vector_norm(wd, ord=DUAL[norm], dim=2)
    return d.masked_fill(F.one_hot(y, f.shape[1]).bool(), float("inf"))


def _steps(d: float, *, radius: float, adaptive: bool = True, eta_low: float = 0.5, eta_high: float = 0.9,
           sigma: float = 1.2, radius_min: float = 1e-4, radius_max: float = 1e-2) -> int:
    """Steps the attack takes (overshoot 0) to cross a boundary at distance d of a linear model, where rho = 1."""
    factor = sigma if 1.0 > eta_high else (1.0 / sigma if 1.0 < eta_low else 1.0)
    r, n = radius, 0
    while True:
        n += 1
        s = min(d, r)
        d -= s + PAD
        if d < 0:
            return n
        if adaptive:
            r = min(max(s * factor, radius_min), radius_max)


# ----------------------------------------------------------------------------- exact minima on linear models

@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("k", [2, 10])
def test_linear_model_gets_the_exact_minimal_perturbation(norm, k):
    """On a linear model every step follows grad(z_t - z_y), the normal of the nearest boundary, so with
    overshoot 0 the attack ends exactly PAD past the closest point of the nearest boundary, after many steps.

    L2: delta = (d + PAD) w / ||w||_2; L∞: delta = (d + PAD) sign(w), w = grad(z_t - z_y), d = |f_t| / ||w||_dual.
    A class j other than t cannot overtake y first: its boundary is at least d away along any path.
    """
    model, x, y, f, wd = _linear_setup(k)
    dist = _distances(f, wd, y, norm)
    d, t = dist.min(1)
    adv = trust_region(model, x, y, norm=norm, overshoot=0.0)
    w = wd[torch.arange(x.shape[0]), t]
    unit = w / torch.linalg.vector_norm(w, dim=1, keepdim=True) if norm == "l2" else w.sign()
    torch.testing.assert_close((adv - x).flatten(1), (d + PAD)[:, None] * unit, atol=1e-12, rtol=1e-9)
    with torch.no_grad():
        assert bool((model(adv).argmax(1) != y).all())
    assert max(_steps(float(di), radius=1e-3) for di in d) >= 4     # the path took several bounded steps


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_overshoot_scales_only_the_steps(norm):
    """With the default overshoot 0.02 the size is within 0.02 * (radius_max + PAD) + PAD of the minimum."""
    model, x, y, f, wd = _linear_setup(10)
    d = _distances(f, wd, y, norm).min(1).values
    size = _size(trust_region(model, x, y, norm=norm) - x, norm)
    assert bool((size >= d).all())                          # nothing smaller crosses a boundary
    assert bool((size <= d + 0.02 * (1e-2 + PAD) + PAD + 1e-12).all())


def test_deepfool_is_looser_on_the_same_linear_model():
    """DeepFool's overshoot multiplies the whole distance; TR's only the last (bounded) step."""
    model, x, y, f, wd = _linear_setup(10)
    d = _distances(f, wd, y, "l2").min(1).values
    tr = _size(trust_region(model, x, y) - x, "l2")
    df = _size(deepfool(model, x, y) - x, "l2")
    assert bool((tr <= df).all()) and bool((df >= 1.02 * d).all())


# ----------------------------------------------------------------------------- the radius schedule

@pytest.mark.parametrize("norm, settings", [
    ("l2", {}),                       # rho = 1 > eta_high: the radius grows by sigma up to radius_max
    ("l2", {"radius_max": 3e-3}),
    ("l2", {"eta_high": 2.0, "radius": 5e-3}),  # rho in [eta_low, eta_high]: radius = the step just taken
    ("l2", {"eta_low": 2.0, "eta_high": 3.0, "radius": 0.02, "radius_min": 5e-3}),  # rho < eta_low: shrinks
    ("l2", {"adaptive": False, "radius": 0.005}),  # a fixed radius
    ("linf", {}),
    ("linf", {"radius_max": 3e-3}),
    ("linf", {"eta_high": 2.0}),
    ("linf", {"eta_low": 2.0, "eta_high": 3.0, "radius": 0.01, "radius_min": 0.0}),
    ("linf", {"adaptive": False, "radius": 0.005}),
])
def test_step_count_follows_the_radius_schedule(norm, settings):
    """On a linear model rho = 1 exactly (up to rounding), so the number of steps is known in advance.

    Each image is forwarded once clean, once per candidate class (k = 2: one) and once after each
    step but the last... and the last (its evaluation finds it fooled): 2 + steps passes.
    """
    model, x, y, f, wd = _linear_setup(2, n=5)
    d = _distances(f, wd, y, norm).min(1).values
    kwargs = {"radius": 1e-3, **settings}
    steps = [_steps(float(di), **kwargs) for di in d]
    assert max(steps) < 200 and len(set(steps)) > 1
    counted = CountedModel(model)
    trust_region(counted, x, y, norm=norm, overshoot=0.0, **kwargs)
    assert counted.forwards == 2 * x.shape[0] + sum(steps)
    assert counted.backwards == x.shape[0] + sum(steps)     # the clean pass has no backward


def test_max_iter_caps_the_steps_and_zero_is_identity(linear):
    model, x, y, f, wd = _linear_setup(2, n=4)
    counted = CountedModel(model)
    adv = trust_region(counted, x, y, max_iter=3)
    # 3 steps of the growing radius (1e-3, 1.2e-3, 1.44e-3) plus pads, each times 1.02, then no evaluation
    expected = 1.02 * (1e-3 + 1.2e-3 + 1.44e-3 + 3 * PAD)
    torch.testing.assert_close(_size(adv - x, "l2"), torch.full((4,), expected, dtype=x.dtype), atol=1e-12, rtol=1e-9)
    assert counted.forwards == 2 * 4 + 2 * 4                # clean, one candidate, evaluations after steps 1 and 2
    counted.reset()
    x3 = images(3)
    adv = trust_region(counted, x3, torch.tensor([0, 1, 2]), max_iter=0)
    assert torch.equal(adv, x3) and adv.data_ptr() != x3.data_ptr() and counted.forwards == 0


def test_worst_case_targets_the_farthest_candidate():
    """worst_case aims at the farthest boundary: never closer than the nearest, at most PAD past the farthest."""
    model, x, y, f, wd = _linear_setup(10, n=8)
    dist = _distances(f, wd, y, "l2")
    near = _size(trust_region(model, x, y, overshoot=0.0) - x, "l2")
    far = _size(trust_region(model, x, y, overshoot=0.0, worst_case=True) - x, "l2")
    d_far = dist.masked_fill(dist.isinf(), 0).amax(1)
    assert bool((far >= near - 1e-12).all()) and bool((far <= d_far + PAD + 1e-12).all())
    assert float(far.mean()) > 1.5 * float(near.mean())


# ----------------------------------------------------------------------------- a nonlinear model, against DeepFool

@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_convnet_fools_every_image_with_less_than_deepfool(norm, convnet):
    """Measured on these 16 images: TR's mean size is 0.972 (L2) and 0.978 (L∞) of DeepFool's; every image is
    fooled by both. A fixed-target DeepFool (an infinite trust radius) gives exactly 1.00, so 0.99 catches a
    radius that does not bound the steps; far-too-small sizes would not fool the images.
    """
    x = images(16, lo=0.1, hi=0.9)
    with torch.no_grad():
        y = convnet(x).argmax(1)
    tr = trust_region(convnet, x, y, norm=norm)
    df = deepfool(convnet, x, y, norm=norm)
    with torch.no_grad():
        assert bool((convnet(tr).argmax(1) != y).all())
    ratio = float(_size(tr - x, norm).mean() / _size(df - x, norm).mean())
    assert 0.9 < ratio < 0.99, ratio
    no_region = trust_region(convnet, x, y, norm=norm, adaptive=False, radius=1e3)
    assert float(_size(no_region - x, norm).mean() / _size(df - x, norm).mean()) > 0.995


def test_misclassified_images_are_returned_unchanged(linear):
    x = images(4, lo=0.3, hi=0.7)
    with torch.no_grad():
        pred = linear(x).argmax(1)
    y = pred.clone()
    y[1] = (pred[1] + 1) % 10  # image 1 is already misclassified
    adv = trust_region(linear, x, y)
    assert torch.equal(adv[1], x[1]) and not torch.equal(adv[0], x[0])
    all_wrong = (pred + 1) % 10
    counted = CountedModel(linear)
    assert torch.equal(trust_region(counted, x, all_wrong), x) and counted.forwards == 4 and counted.backwards == 0


def test_num_classes_restricts_the_candidates():
    """With num_classes = 2 the only candidate is the runner-up class, whatever its distance."""
    model, x, y, f, wd = _linear_setup(10, n=30)
    dist = _distances(f, wd, y, "l2")
    runner_up = f.masked_fill(F.one_hot(y, 10).bool(), float("-inf")).argmax(1)
    d_ru = dist.gather(1, runner_up[:, None]).squeeze(1)
    adv = trust_region(model, x, y, num_classes=2, overshoot=0.0)
    size = _size(adv - x, "l2")
    assert bool((size <= d_ru + PAD + 1e-12).all()) and bool((size >= dist.min(1).values - 1e-12).all())
    assert bool((d_ru > dist.min(1).values + 1e-3).any())    # the restriction does change some targets
    assert not torch.allclose(adv, trust_region(model, x, y, overshoot=0.0))


# ----------------------------------------------------------------------------- EOT and BPDA

def test_eot_of_a_deterministic_model_is_the_plain_attack():
    """EOT averages identical draws: (a + a) / 2 == a in binary floats, so f, grad f and the steps are the same."""
    model = make_convnet(dtype=torch.float64)
    x = images(4, lo=0.1, hi=0.9, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    plain = trust_region(model, x, y)
    # EOT of a deterministic model: the same loss and gradient, but log(mean softmax) is not the same
    # kernel as log_softmax, so the iterates agree to float noise, not bitwise
    torch.testing.assert_close(trust_region(eot(model, samples=2), x, y), plain, atol=1e-5, rtol=0)


def test_eot_draws_every_evaluation_afresh():
    """A randomized model whose draws scale the logits by a random positive factor: the prediction is
    deterministic, the margins and gradients are not. Every evaluation takes ``samples`` fresh draws and the
    attack stops on the EOT prediction, so fresh draws see every image fooled."""
    clf = make_linear(k=4)
    g = torch.Generator().manual_seed(5)
    draws = []

    def scaled(v):
        draws.append(v.shape[0])
        return clf(v) * (0.9 + 0.2 * torch.rand((v.shape[0], 1), generator=g))

    x = images(6, lo=0.2, hi=0.8)
    defended = eot(scaled, samples=4)
    with torch.no_grad():
        y = defended(x).argmax(1)
    calls = []
    inner = defended.expected_loss_and_grad
    defended.expected_loss_and_grad = lambda *a: calls.append(1) or inner(*a)
    draws.clear()
    adv = trust_region(defended, x, y)
    assert len(calls) > 3 + 3 and len(draws) == 4 * (len(calls) + 1)  # 4 draws per evaluation, + the clean prediction
    with torch.no_grad():
        assert bool((defended(adv).argmax(1) != y).all())


def test_bpda_through_a_non_differentiable_stage():
    clf = make_convnet()
    quantize = lambda v: torch.round(v * 255) / 255      # noqa: E731  8-bit images: zero gradient almost everywhere
    x = images(6, lo=0.2, hi=0.8)
    with torch.no_grad():
        y = clf(quantize(x)).argmax(1)
    with pytest.raises(NonDifferentiableError, match="trust_region: .*bpda"):
        trust_region(lambda v: clf(quantize(v).detach()), x, y)
    adv = trust_region(lambda v: clf(bpda(quantize)(v)), x, y)
    with torch.no_grad():
        assert bool((clf(quantize(adv)).argmax(1) != y).all())   # it stops on the defended prediction


# ----------------------------------------------------------------------------- errors

def test_exception(linear):
    fn = "trust_region"
    x, y = images(2), torch.tensor([0, 1])
    with pytest.raises(UnknownNameError, match=f"{fn}: unknown norm 'l1'; expected one of 'linf', 'l2'"):
        trust_region(linear, x, y, norm="l1")
    with pytest.raises(RangeError, match=rf"{fn}: expected radius in \(0.0, None\], got 0"):
        trust_region(linear, x, y, radius=0.0)
    with pytest.raises(RangeError, match=f"{fn}: expected max_iter >= 0, got -1"):
        trust_region(linear, x, y, max_iter=-1)
    with pytest.raises(RangeError, match=f"{fn}: expected num_classes >= 2, got 1"):
        trust_region(linear, x, y, num_classes=1)
    with pytest.raises(RangeError, match=rf"{fn}: expected sigma in \[1.0, None\], got 0.5"):
        trust_region(linear, x, y, sigma=0.5)
    with pytest.raises(RangeError, match=rf"{fn}: expected eta_low in \[0.0, None\]"):
        trust_region(linear, x, y, eta_low=-0.1)
    with pytest.raises(RangeError, match=f"{fn}: expected radius_min <= radius_max, got 0.1 > 0.01"):
        trust_region(linear, x, y, radius_min=0.1)
    with pytest.raises(DTypeError, match=f"{fn}: expected adaptive to be a bool, got int"):
        trust_region(linear, x, y, adaptive=1)
    with pytest.raises(DTypeError, match=f"{fn}: expected max_iter to be an int, got float"):
        trust_region(linear, x, y, max_iter=10.0)
    with pytest.raises(DTypeError, match=f"{fn}: expected model_fn to be callable"):
        trust_region("resnet20", x, y)
    with pytest.raises(ShapeError, match=rf"{fn}: expected x of shape \(B, C, H, W\)"):
        trust_region(linear, x[0], y)
    with pytest.raises(RangeError, match=rf"{fn}: expected x with values in \[0, 1\]"):
        trust_region(linear, x * 2, y)
    with pytest.raises(DTypeError, match=f"{fn}: expected y of dtype torch.int64"):
        trust_region(linear, x, y.to(torch.uint8))
    with pytest.raises(RangeError, match=rf"{fn}: labels y must lie in \[0, 9\]"):
        trust_region(linear, x, torch.tensor([0, 10]))
    with pytest.raises(ShapeError, match=rf"{fn}: expected model_fn to return logits of shape \(2, K\)"):
        trust_region(lambda v: linear(v)[:, :, None], x, y)
    with torch.no_grad():
        pred = linear(x).argmax(1)
    with pytest.raises(NonDifferentiableError, match=f"{fn}: model_fn's output does not depend"):
        trust_region(lambda v: linear(v).detach(), x, pred)


# ----------------------------------------------------------------------------- the shipped model

@pytest.mark.slow
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_resnet20_on_cifar10(norm, data_dir):
    """20 CIFAR-10 test images, all correctly classified by resnet20; measured: TR fools 20/20 (DeepFool too)
    with mean relative size 0.83 (L2) and 0.89 (L∞) of DeepFool's (100 images: 0.84 and 0.89)."""
    from purify.data import load_dataset
    from purify.models import create_model

    x, y = load_dataset("cifar10", "test", data_dir=data_dir).tensors(list(range(20)))
    model = create_model("resnet20", pretrained=True, data_dir=data_dir).eval()
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    assert int(correct.sum()) >= 18
    tr = trust_region(model, x, y, norm=norm)
    df = deepfool(model, x, y, norm=norm)
    with torch.no_grad():
        fooled = (model(tr).argmax(1) != y) & correct
    assert int(fooled.sum()) >= 0.95 * int(correct.sum())
    assert torch.equal(tr[~correct], x[~correct])
    if norm == "l2":
        ratio = rho2(x[fooled], tr[fooled]) / rho2(x[fooled], df[fooled])
    else:
        peak = x[fooled].flatten(1).amax(1)                     # relative L∞ size, as in the TR paper
        ratio = float((_size(tr[fooled] - x[fooled], "linf") / peak).mean()
                      / (_size(df[fooled] - x[fooled], "linf") / peak).mean())
    assert 0.6 < ratio < 0.95, ratio
