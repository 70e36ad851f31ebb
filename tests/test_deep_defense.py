"""Deep Defense (purify.training.deep_defense) and its peers (purify.training.deep_defense_peers).

The unrolled DeepFool against the library's DeepFool and against closed forms on linear models,
its gradient against finite differences, the Deep Defense loss against a hand computation of the
paper's Eq. (6), Parseval's retraction against its action on singular values, and Adv. Train I's
examples against the frozen reference.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from purify.attacks import deepfool
from purify.errors import DTypeError, RangeError, ShapeError, UnknownNameError
from purify.training.deep_defense import (DeepDefense, deep_defense_penalty, deepfool_unrolled, relative_norm,
                                          rho2_validation)
from purify.training.deep_defense_peers import DeepFoolAT, Parseval, parseval_deviation, parseval_retraction
from purify.training.recipes import Standard
from purify.training.trainer import TrainConfig, fit

PAD = 1e-4          # DeepFool's extra push past the linearized boundary (purify.attacks.deepfool)
OVERSHOOT = 0.02


class TinyConv(torch.nn.Module):
    """conv-ReLU-maxpool-linear on 1×7×5 images, 5 classes: ReLU and pooling kinks, as in LeNet."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.lin = torch.nn.Linear(4 * 3 * 2, 5)

    def forward(self, x):
        return self.lin(F.max_pool2d(torch.relu(self.conv(x)), 2).flatten(1))


def _batch(net, n: int = 6, dtype=torch.float64, seed: int = 0, wrong: int = 2):
    """Images in [0.2, 0.8] labelled with the net's predictions, except image ``wrong``, misclassified."""
    g = torch.Generator().manual_seed(seed)
    x = (0.2 + 0.6 * torch.rand(n, 1, 7, 5, generator=g)).to(dtype)
    with torch.no_grad():
        y = net(x).argmax(1)
    y[wrong] = (y[wrong] + 1) % 5
    return x, y


def _linear(seed: int = 0, k: int = 4, d: int = 6):
    """A float64 linear classifier on 1×2×3 images, where one DeepFool step has a closed form."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(d, k)).double()
    g = torch.Generator().manual_seed(seed + 1)
    x = 0.3 + 0.4 * torch.rand(5, 1, 2, 3, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = net(x).argmax(1)
    y[1], y[3] = (y[1] + 1) % k, (y[3] + 2) % k           # two misclassified images
    return net, x, y


def _closed_form_rho(weight, bias, x, y):
    """ρ of one DeepFool step on ``z = Wx + b`` (no clipping), in the graph of ``weight`` and ``bias``.

    Correct image: the nearest boundary ``min_k |z_k - z_y| / ||W_k - W_y||``; misclassified
    (Deep Defense's set F): the boundary between its prediction ``p`` and ``y``, ``|z_y - z_p| / ||W_y - W_p||``.
    Either way ``||Δx|| = (1 + overshoot)·(dist + 1e-4)``.
    """
    xf = x.flatten(1)
    z = xf @ weight.T + bias
    pred = z.detach().argmax(1)
    rhos = []
    for i in range(len(x)):
        if pred[i] == y[i]:
            others = [k for k in range(z.shape[1]) if k != y[i]]
            dists = torch.stack([(z[i, k] - z[i, y[i]]).abs() / (weight[k] - weight[y[i]]).norm() for k in others])
            dist = dists.min()
        else:
            dist = (z[i, y[i]] - z[i, pred[i]]).abs() / (weight[y[i]] - weight[pred[i]]).norm()
        rhos.append((1 + OVERSHOOT) * (dist + PAD) / xf[i].norm())
    return torch.stack(rhos), pred == y


# ----------------------------------------------------------------------------- the unrolled DeepFool

@pytest.mark.parametrize("num_classes", [None, 3])
@pytest.mark.parametrize("iters", [1, 2, 5, 50])
def test_forward_equals_the_library_deepfool(iters, num_classes):
    net = TinyConv().double()
    x, y = _batch(net)
    out = deepfool_unrolled(net, x, y, iters=iters, overshoot=OVERSHOOT, num_classes=num_classes)
    ref = deepfool(net, x, y, max_iter=iters, overshoot=OVERSHOOT, num_classes=num_classes or 5)
    # float64, same candidates and decisions: only the association of w_k = ∇(z_k - z_y) vs ∇z_k - ∇z_y differs
    torch.testing.assert_close(out.x_adv.detach(), ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.delta.detach(), ref - x, rtol=0, atol=1e-12)
    assert out.steps[2] == 0 and torch.equal(out.delta[2].detach(), torch.zeros_like(x[2]))   # misclassified: stays
    assert out.correct.tolist() == [True, True, False, True, True, True]
    if iters >= 5:
        assert out.steps.max() > 1                     # the comparison covered several iterations


def test_forward_equals_the_library_deepfool_in_float32():
    net = TinyConv(seed=1)
    x, y = _batch(net, dtype=torch.float32, seed=1)
    out = deepfool_unrolled(net, x, y, iters=5)
    ref = deepfool(net, x, y, max_iter=5)
    # the two ways of forming w_k differ by float32 rounding (~1e-7 relative) per step; 5 steps of size < 1
    torch.testing.assert_close(out.x_adv.detach(), ref, rtol=0, atol=1e-5)


def test_each_image_is_independent_of_its_batch_mates():
    net = TinyConv().double()
    x, y = _batch(net)
    for mode in ("stay", "to_label"):
        whole = deepfool_unrolled(net, x, y, iters=5, misclassified=mode).delta.detach()
        for i in range(len(x)):
            alone = deepfool_unrolled(net, x[i:i + 1], y[i:i + 1], iters=5, misclassified=mode).delta.detach()
            torch.testing.assert_close(whole[i:i + 1], alone, rtol=0, atol=1e-12)   # float64, other batch size


def test_one_step_on_a_linear_model_is_the_closed_form():
    net, x, y = _linear()
    out = deepfool_unrolled(net, x, y, iters=1, misclassified="to_label", clip=False)
    rho, correct = _closed_form_rho(net[1].weight, net[1].bias, x, y)
    assert out.correct.tolist() == correct.tolist() == [True, False, True, False, True]
    torch.testing.assert_close(relative_norm(out.delta, x).detach(), rho.detach(), rtol=1e-10, atol=0)
    # a linear boundary is reached in one step: the overshot step lands on its other side
    z0, z1 = net(x), net(out.x_adv)
    assert (z1.argmax(1)[correct] != y[correct]).all()
    p = z0.argmax(1)[~correct]
    assert (z1[~correct].gather(1, y[~correct, None]) > z1[~correct].gather(1, p[:, None])).all()


def test_to_label_moves_a_misclassified_image_to_its_label_and_stay_does_not():
    net = TinyConv().double()
    x, y = _batch(net)
    moved = deepfool_unrolled(net, x, y, iters=20, misclassified="to_label")
    assert net(moved.x_adv[2:3]).argmax(1).item() == y[2].item() and moved.steps[2] >= 1
    kept = deepfool_unrolled(net, x, y, iters=20, misclassified="stay")
    assert kept.steps[2] == 0 and float(kept.delta[2].detach().abs().max()) == 0.0
    torch.testing.assert_close(moved.delta[[0, 1, 3]].detach(), kept.delta[[0, 1, 3]].detach(), rtol=0, atol=0)


def _tanh_mlp(seed: int = 4):
    """A float64 6-5-3 tanh MLP and four unclipped images on which DeepFool needs one or two steps."""
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(5, 6, generator=g, dtype=torch.float64) * 2
    b1 = torch.randn(5, generator=g, dtype=torch.float64) * 0.5
    w2 = torch.randn(3, 5, generator=g, dtype=torch.float64)
    b2 = torch.randn(3, generator=g, dtype=torch.float64) * 0.1
    x = 0.35 + 0.3 * torch.rand(4, 1, 2, 3, generator=g, dtype=torch.float64)

    def net(w):
        return lambda z: torch.tanh(z.flatten(1) @ w.T + b1) @ w2.T + b2
    y = net(w1)(x).argmax(1)
    return net, w1, x, y


@pytest.mark.parametrize("mode", ["stay", "to_label"])
@pytest.mark.parametrize("iters", [1, 2])
def test_gradcheck_of_the_perturbation_norm_wrt_the_first_layer(iters, mode):
    net, w1, x, y = _tanh_mlp()
    y = y.clone()
    y[0] = (y[0] + 1) % 3                          # one misclassified image: zero in "stay", moved in "to_label"
    out = deepfool_unrolled(net(w1), x, y, iters=iters, misclassified=mode)
    # the finite differences must not cross a kink: no pixel clipped, and (iters 2) a second step taken
    assert 0 < float(out.x_adv.detach().min()) and float(out.x_adv.detach().max()) < 1
    assert int(out.steps.max()) == iters

    def rho(w):
        return relative_norm(deepfool_unrolled(net(w), x, y, iters=iters, misclassified=mode).delta, x)
    assert torch.autograd.gradcheck(rho, (w1.clone().requires_grad_(True),), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_without_create_graph_the_input_gradient_path_is_missing():
    net, w1, x, y = _tanh_mlp()
    grads = []
    for create_graph in (True, False):
        w = w1.clone().requires_grad_(True)
        out = deepfool_unrolled(net(w), x, y, iters=2, create_graph=create_graph)
        grads.append(torch.autograd.grad(relative_norm(out.delta, x).sum(), w)[0])
    assert not torch.allclose(grads[0], grads[1], rtol=1e-3, atol=1e-6)


def test_exceptions():
    net = TinyConv()
    x, y = _batch(net, dtype=torch.float32)
    with pytest.raises(RangeError, match="deepfool_unrolled: expected iters >= 1"):
        deepfool_unrolled(net, x, y, iters=0)
    with pytest.raises(UnknownNameError, match="'stay', 'to_label'"):
        deepfool_unrolled(net, x, y, misclassified="drop")
    with pytest.raises(RangeError, match="values in \\[0, 1\\]"):
        deepfool_unrolled(net, x + 1, y)
    with pytest.raises(ShapeError, match="add a batch dimension"):
        deepfool_unrolled(net, x[0], y)
    with pytest.raises(DTypeError, match="int64"):
        deepfool_unrolled(net, x, y.int())
    with pytest.raises(RangeError, match="num_classes >= 2"):
        deepfool_unrolled(net, x, y, num_classes=1)
    with pytest.raises(RangeError, match="lam"):
        DeepDefense(lam=-1.0)


# ----------------------------------------------------------------------------- the Deep Defense loss

@pytest.mark.parametrize("lam,c,d", [(15.0, 25.0, 5.0), (2.0, 7.0, 3.0), (0.5, 0.0, 40.0)])
def test_loss_is_the_papers_formula_and_its_gradient_is_the_closed_forms(lam, c, d):
    net, x, y = _linear()
    recipe = DeepDefense(lam=lam, c=c, d=d, iters=1, clip=False)
    loss, stats = recipe(net, x, y, generator=None)
    weight, bias = net[1].weight, net[1].bias
    rho, correct = _closed_form_rho(weight, bias, x, y)
    # Eq. (6): λ·Σ_T exp(-c·ρ) + λ·Σ_F exp(d·ρ), with Eq. (3)'s sums divided by the batch size
    terms = [math.exp(-c * float(r)) if ok else math.exp(d * float(r)) for r, ok in zip(rho.detach(), correct)]
    ce = F.cross_entropy(net(x), y)
    assert float(loss.detach()) == pytest.approx(float(ce.detach()) + lam * sum(terms) / len(terms), rel=1e-10)
    assert stats["rho"] == pytest.approx(float(rho.detach().mean()), rel=1e-10)
    assert stats["penalty"] == pytest.approx(sum(terms) / len(terms), rel=1e-10)
    # the gradient through DeepFool (logits and input gradients) equals the closed form's
    hand = ce + lam * torch.where(correct, torch.exp(-c * rho), torch.exp(d * rho)).mean()
    got = torch.autograd.grad(loss, [weight, bias])
    want = torch.autograd.grad(hand, [weight, bias])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)


def test_lambda_zero_is_cross_entropy_and_c_d_act_on_their_own_sets():
    net, x, y = _linear()
    loss, _ = DeepDefense(lam=0.0)(net, x, y, generator=None)
    assert float(loss.detach()) == float(F.cross_entropy(net(x), y).detach())
    base = float(DeepDefense(iters=1, clip=False)(net, x, y, generator=None)[0].detach())
    # images 1 and 3 are misclassified: c only reaches the others, d only these
    rho, correct = _closed_form_rho(net[1].weight, net[1].bias, x, y)
    for kw, on in (({"c": 10.0}, correct), ({"d": 1.0}, ~correct)):
        other = float(DeepDefense(iters=1, clip=False, **kw)(net, x, y, generator=None)[0].detach())
        old = deep_defense_penalty(rho.detach(), correct, c=25.0, d=5.0)
        new = deep_defense_penalty(rho.detach(), correct, c=kw.get("c", 25.0), d=kw.get("d", 5.0))
        assert bool(((new - old).abs() > 0).eq(on).all())
        assert other - base == pytest.approx(15.0 * float((new - old).mean()), rel=1e-9)


def test_every_parameter_of_a_conv_net_gets_a_gradient_from_the_penalty():
    net = TinyConv()
    x, y = _batch(net, dtype=torch.float32)
    penalty_only = DeepDefense(lam=1.0, iters=3)
    out = deepfool_unrolled(net, x, y, iters=penalty_only.iters, misclassified="to_label")
    pen = deep_defense_penalty(relative_norm(out.delta, x), out.correct).mean()
    grads = torch.autograd.grad(pen, list(net.parameters()))
    assert all(bool(torch.isfinite(g).all()) and float(g.abs().sum()) > 0 for g in grads)
    loss, stats = penalty_only(net, x, y, generator=None)
    loss.backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in net.parameters())
    assert stats["acc"] == pytest.approx(100 * 5 / 6)


def test_rho2_validation_on_a_linear_model_is_the_closed_form():
    net, x, _ = _linear()
    with torch.no_grad():
        pred = net(x).argmax(1)
    rho, _ = _closed_form_rho(net[1].weight, net[1].bias, x, pred)
    with torch.no_grad():               # as the trainer calls validate
        out = rho2_validation(net, x, max_iter=5)
    assert out["rho2_fooled"] == 100.0
    assert out["rho2"] == pytest.approx(100 * float(rho.detach().mean()), rel=1e-9)


# ----------------------------------------------------------------------------- Parseval training

def test_retraction_maps_each_singular_value_s_to_s_plus_beta_s_minus_s_cubed():
    g = torch.Generator().manual_seed(0)
    for w in (torch.randn(6, 10, generator=g, dtype=torch.float64),                 # linear, wide
              torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64) * 0.3,      # conv (out, in, kh, kw)
              torch.randn(9, 4, generator=g, dtype=torch.float64)):                 # tall
        out = parseval_retraction(w, beta=0.05)
        assert out.shape == w.shape
        s = torch.linalg.svdvals(w.reshape(w.shape[0], -1))
        want = (1.05 * s - 0.05 * s ** 3).abs().sort(descending=True).values      # s > sqrt(21) maps below 0
        torch.testing.assert_close(torch.linalg.svdvals(out.reshape(w.shape[0], -1)), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(6, 10), (5, 2, 3, 3), (9, 4)])
def test_repeated_retractions_drive_a_near_orthonormal_weight_to_a_tight_frame(shape):
    g = torch.Generator().manual_seed(1)
    n = math.prod(shape[1:])
    q, _ = torch.linalg.qr(torch.randn(max(shape[0], n), min(shape[0], n), generator=g, dtype=torch.float64))
    base = q.T if shape[0] <= n else q                       # orthonormal rows (wide) or columns (tall)
    w = (base + 0.05 * torch.randn(base.shape, generator=g, dtype=torch.float64)).reshape(shape)
    devs = [parseval_deviation(w)]
    for _ in range(100):                                     # Cissé et al.'s β: slow, but every pass helps
        w = parseval_retraction(w, beta=3e-4)
        devs.append(parseval_deviation(w))
    assert all(b < a for a, b in zip(devs, devs[1:]))
    assert devs[-1] < devs[0] * (1 - 2 * 3e-4) ** 100 * 1.01   # the linear rate 1 - 2β near the fixed point
    for _ in range(200):
        w = parseval_retraction(w, beta=0.1, passes=1)
    assert parseval_deviation(w) < 1e-8


def test_retraction_of_some_rows_leaves_the_others():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(8, 20, generator=g, dtype=torch.float64) * 0.3
    rows = torch.tensor([1, 4, 6])
    out = parseval_retraction(w, beta=0.1, passes=30, rows=rows)
    keep = torch.tensor([0, 2, 3, 5, 7])
    assert torch.equal(out[keep], w[keep])
    torch.testing.assert_close(out[rows], parseval_retraction(w[rows], beta=0.1, passes=30), rtol=0, atol=1e-14)
    assert parseval_deviation(out[rows]) < 0.5 * parseval_deviation(w[rows])


def test_after_step_retracts_the_papers_share_of_rows():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(20, 10), torch.nn.Conv2d(1, 7, 3))
    before = [m.weight.detach().clone() for m in net]
    recipe = Parseval(beta=0.01)                                        # fraction 0.3
    recipe(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)), torch.rand(2, 1, 2, 2),
           torch.tensor([0, 1]), generator=torch.Generator().manual_seed(0))      # draws the step's seed
    recipe.after_step(net)
    changed = [int((m.weight.detach() != b).flatten(1).any(1).sum()) for m, b in zip(net, before)]
    assert changed == [3, 2]                                            # round(0.3·10), round(0.3·7)


def _orthogonal_net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 7 * 5, 5))
    for m in net:
        if hasattr(m, "weight"):
            torch.nn.init.orthogonal_(m.weight)
    return net


def _data(n: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 7, 5, generator=g), torch.randint(0, 5, (n,), generator=g)


def test_training_with_the_recipe_keeps_the_weights_near_orthonormal():
    (x, y), cfg = _data(), TrainConfig(epochs=2, batch_size=8, lr=0.1, augment="none", val_count=8,
                                      weight_decay=0.0)
    devs = {}
    # β = 0.2 (stable for singular values below sqrt(1 + 1/β) ≈ 2.4) so that 8 steps show it
    for name, recipe in (("standard", Standard()), ("parseval", Parseval(beta=0.2, fraction=1.0, rho_count=4))):
        net = _orthogonal_net()
        result = fit(net, recipe, (x, y), (x[:8], y[:8]), config=cfg, progress=False)
        devs[name] = [parseval_deviation(net[0].weight), parseval_deviation(net[3].weight)]
        if name == "parseval":
            assert "val_rho2" in result.history[0]
    for conv_or_linear in range(2):
        assert devs["parseval"][conv_or_linear] < 0.5 * devs["standard"][conv_or_linear]
        assert devs["parseval"][conv_or_linear] < 0.1


def test_sampled_rows_come_from_the_recipe_generator():
    (x, y), cfg = _data(16), TrainConfig(epochs=1, batch_size=8, lr=0.1, augment="none", val_count=8)
    weights = []
    for seed in (0, 0, 1):
        net = _orthogonal_net()
        fit(net, Parseval(beta=0.05, rho_count=0), (x, y), (x[:8], y[:8]),
            config=TrainConfig(**{**cfg.__dict__, "seed": seed}), progress=False)
        weights.append(net[3].weight.detach().clone())
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


# ----------------------------------------------------------------------------- Adv. Train I

def test_adv_train_i_examples_come_from_the_frozen_model():
    net = TinyConv()
    x, y = _batch(net, dtype=torch.float32)
    original = copy.deepcopy(net).eval()
    recipe = DeepFoolAT(max_iter=10)
    loss, stats = recipe(net, x, y, generator=None)      # the first call freezes the reference
    first = recipe.perturb(net, x, y, generator=None)
    assert torch.equal(first, deepfool(original, x, y, max_iter=10))
    with torch.no_grad():                                # the trained model moves on
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    assert torch.equal(recipe.perturb(net, x, y, generator=None), first)
    assert not torch.allclose(deepfool(net, x, y, max_iter=10), first, atol=1e-3)
    assert stats["rho"] > 0 and loss.requires_grad
    assert all(not p.requires_grad for p in recipe.reference.parameters())


def test_adv_train_i_reference_is_untouched_by_training_and_the_loss_mixes_clean_and_adversarial():
    net, (x, y) = _orthogonal_net(), _data(16)
    recipe = DeepFoolAT(clean_weight=0.25, rho_count=4).freeze(net)
    before = recipe.config()["reference"]
    fit(net, recipe, (x, y), (x[:8], y[:8]), config=TrainConfig(epochs=1, batch_size=8, lr=0.1, augment="none",
                                                               val_count=8), progress=False)
    assert recipe.config()["reference"] == before
    assert not torch.equal(net[3].weight, recipe.reference[3].weight)
    loss, _ = recipe(net, x, y, generator=None)
    adv = deepfool(recipe.reference, x, y)
    with torch.no_grad():
        want = 0.25 * F.cross_entropy(net(x), y) + 0.75 * F.cross_entropy(net(adv), y)
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-6)


# ----------------------------------------------------------------------------- the recipe protocol

BUILDERS = {"deep_defense": lambda: DeepDefense(iters=2, rho_count=4),
           "parseval": lambda: Parseval(rho_count=4),
           "deepfool_at": lambda: DeepFoolAT(rho_count=4)}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_recipes_keep_the_trainers_protocol(name):
    recipe = BUILDERS[name]()
    assert recipe.name == name == recipe.config()["name"] and recipe.adversarial is False
    json.dumps(recipe.config())
    net, (x, y) = _orthogonal_net(), _data(16)
    # the paper's fine-tuning learning rate is 5e-4: Deep Defense's exp(d·ρ) on random labels diverges at 0.05
    result = fit(net, recipe, (x, y), (x[:8], y[:8]),
                 config=TrainConfig(epochs=1, batch_size=8, lr=1e-3, augment="none", val_count=8), progress=False)
    row = result.history[0]
    assert math.isfinite(row["train_loss"]) and 0.0 < row["val_rho2"] and row["val_rho2_fooled"] == 100.0
    assert type(recipe)(rho_count=0).validate(net, x, y, seed=0) == {}
