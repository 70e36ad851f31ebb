"""The BReLU/GDA paper's recipes (purify.training.gda_recipes): each loss against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from purify.attacks import fgsm
from purify.errors import DTypeError, RangeError, ShapeError
from purify.training.gda_recipes import FGSMAT, VAT, GaussianAugment, LabelSmoothing, kl_hessian_product
from purify.training.recipes import RECIPES, Standard, make_recipe

PEERS = ("gda", "label_smoothing", "fgsm_at", "vat")


class Seen(torch.nn.Module):
    """A small conv net that records the batches it is run on."""

    def __init__(self, channels: int = 1, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(channels, 4, 3, padding=1)
        self.lin = torch.nn.Linear(4 * 4, 5)
        self.batches: list[torch.Tensor] = []

    def forward(self, x):
        self.batches.append(x.detach().clone())
        return self.lin(F.adaptive_avg_pool2d(torch.relu(self.conv(x)), 2).flatten(1))


def _data(n: int = 6, channels: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, 7, 5, generator=g), torch.randint(0, 5, (n,), generator=g)


def _param_grads(net: torch.nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, list(net.parameters()), retain_graph=True))


# ----------------------------------------------------------------------------- registry

@pytest.mark.parametrize("name", PEERS)
def test_registered_with_the_papers_defaults_and_the_conventions(name):
    recipe = make_recipe(name, eps=0.3, sigma=0.3)
    want = {"gda": {"sigma": 0.3, "copies": 10, "clip": True}, "label_smoothing": {"true_weight": 0.9},
            "fgsm_at": {"eps": 0.3, "clean_weight": 0.5}, "vat": {"eps": 2.1, "xi": None, "weight": 1.0}}[name]
    cfg = recipe.config()
    assert name in RECIPES and recipe.name == name == cfg["name"] and {k: cfg[k] for k in want} == want
    assert recipe.adversarial is False
    net, (x, y) = Seen(), _data()
    loss, stats = recipe(net, x, y, generator=torch.Generator().manual_seed(0))
    assert loss.shape == () and loss.requires_grad and math.isfinite(float(loss.detach()))
    assert stats["loss"] == pytest.approx(float(loss.detach())) and 0.0 <= stats["acc"] <= 100.0


def test_make_recipe_refuses_missing_settings():
    with pytest.raises(RangeError, match="sigma"):
        make_recipe("gda")
    with pytest.raises(RangeError, match="eps"):
        make_recipe("fgsm_at", eps=0.0)
    assert make_recipe("vat", eps=0.0).eps == 2.1            # VAT's radius is its own (L2), not the L∞ --eps
    assert make_recipe("label_smoothing").true_weight == 0.9


# ----------------------------------------------------------------------------- Gaussian data augmentation

def test_gda_sees_the_batch_then_its_seeded_copies():
    (x, y), sigma, copies = _data(), 0.3, 3
    net = Seen()
    loss, stats = GaussianAugment(sigma=sigma, copies=copies)(net, x, y, generator=torch.Generator().manual_seed(5))
    seen = net.batches[0]
    noise = torch.randn((copies, *x.shape), generator=torch.Generator().manual_seed(5))
    want = torch.cat([x, (x + sigma * noise).clamp(0, 1).flatten(0, 1)])
    assert torch.equal(seen, want)                          # the same draw and the same elementwise ops
    labels = y.repeat(copies + 1)
    logits = net.lin(F.adaptive_avg_pool2d(torch.relu(net.conv(want)), 2).flatten(1))
    by_hand = -torch.stack([torch.log_softmax(logits[i], 0)[labels[i]] for i in range(len(labels))]).mean()
    torch.testing.assert_close(loss, by_hand)               # every input weighs 1 / ((1 + copies) B)
    assert stats["acc"] == pytest.approx(100.0 * float((logits.argmax(1) == labels).float().mean()))


def test_gda_copies_are_fresh_per_call_and_reproducible_under_a_seed():
    x, y = _data()
    aug = GaussianAugment(sigma=0.3, copies=2)

    def two_calls(seed):
        g = torch.Generator().manual_seed(seed)
        return [aug.augment(x, y, generator=g)[0] for _ in range(2)]

    a, b = two_calls(0), two_calls(0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[0], two_calls(1)[0])


def test_gda_noise_has_the_right_law():
    """Mean, std, independence and clipping of the noise, each within 5 standard errors of its estimate.

    n = 10 copies x 8 x 3 x 16 x 16 = 61,440 draws. Sample std of n Gaussians: relative standard
    error 1/sqrt(2n) = 0.29 %, so 5 SE = 1.43 %; sample mean: SE sigma/sqrt(n); correlation of two
    independent copies (6,144 pairs): SE 1/sqrt(6144) = 0.0128. Clipped fraction at sigma 0.3 from
    0.5: p = Phi(-0.5/0.3) = 0.0478 per side, SE sqrt(p(1-p)/n) = 8.6e-4. The seed is fixed, so the
    test is deterministic; 5 SE means another seed would fail with probability < 1e-6.
    """
    x, y = torch.full((8, 3, 16, 16), 0.5), torch.zeros(8, dtype=torch.long)
    n = 10 * x.numel()
    for sigma in (0.05, 0.3):
        inputs, labels = GaussianAugment(sigma=sigma, copies=10, clip=False).augment(
            x, y, generator=torch.Generator().manual_seed(1))
        noise = (inputs[8:] - 0.5).double()
        assert inputs.shape == (88, 3, 16, 16) and torch.equal(inputs[:8], x) and torch.equal(labels, y.repeat(11))
        assert abs(float(noise.std()) / sigma - 1) < 5 / math.sqrt(2 * n)
        assert abs(float(noise.mean())) < 5 * sigma / math.sqrt(n)
        first, second = noise[:8].flatten(), noise[8:16].flatten()
        assert abs(float(torch.corrcoef(torch.stack([first, second]))[0, 1])) < 5 / math.sqrt(first.numel())
    clipped, _ = GaussianAugment(sigma=0.3, copies=10).augment(x, y, generator=torch.Generator().manual_seed(1))
    p = 0.5 * math.erfc(0.5 / 0.3 / math.sqrt(2))          # Phi(-0.5 / 0.3)
    assert clipped.min() == 0.0 and clipped.max() == 1.0
    for edge in (0.0, 1.0):
        assert abs(float((clipped[8:] == edge).double().mean()) - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_gda_without_noise_is_the_standard_loss():
    x, y = _data()
    net = Seen()
    standard = Standard()(net, x, y, generator=None)[0]
    assert torch.equal(GaussianAugment(sigma=0.3, copies=0)(net, x, y, generator=None)[0], standard)
    # sigma 0: the copies are the batch again; the mean over repeated terms differs only by summation order
    torch.testing.assert_close(GaussianAugment(sigma=0.0, copies=4)(net, x, y, generator=None)[0], standard)


def test_gda_config_records_a_budget_and_refuses_bad_settings():
    assert "note" not in GaussianAugment(sigma=0.3).config()
    cfg = GaussianAugment(sigma=0.05, copies=4).config()
    assert cfg["copies"] == 4 and cfg["paper_copies"] == 10 and "instead of the paper's 10" in cfg["note"]
    with pytest.raises(RangeError):
        GaussianAugment(sigma=-0.1)
    with pytest.raises(RangeError):
        GaussianAugment(sigma=0.3, copies=-1)
    with pytest.raises(DTypeError):
        GaussianAugment(sigma=0.3, clip="yes")


# ----------------------------------------------------------------------------- label smoothing

def test_label_smoothing_is_cross_entropy_against_the_written_out_targets():
    net, (x, y) = Seen(), _data()
    loss, stats = LabelSmoothing()(net, x, y, generator=None)
    logits = net(x).detach().double()
    total = 0.0
    for i in range(len(y)):
        logp = torch.log_softmax(logits[i], 0)
        total -= sum((0.9 if k == y[i] else 0.1 / 4) * logp[k].item() for k in range(5))   # 5 classes: 0.1 / 4 each
    assert float(loss.detach()) == pytest.approx(total / len(y), rel=1e-6)
    assert stats["acc"] == pytest.approx(100.0 * float((logits.argmax(1) == y).float().mean()))


def test_label_smoothing_targets_and_their_relation_to_torchs_option():
    t = LabelSmoothing(true_weight=0.9).targets(torch.tensor([2, 0]), 10)
    assert t[0, 2] == pytest.approx(0.9) and t[0, 0] == pytest.approx(0.1 / 9) and t[1, 0] == pytest.approx(0.9)
    torch.testing.assert_close(t.sum(1), torch.ones(2))
    net, (x, y) = Seen(), _data()
    logits = net(x)
    loss = LabelSmoothing()(net, x, y, generator=None)[0]
    # torch's label_smoothing spreads eps over all K classes: eps = 0.1 K / (K - 1) gives the same targets
    torch.testing.assert_close(loss, F.cross_entropy(logits, y, label_smoothing=0.1 * 5 / 4))
    assert abs(float((loss - F.cross_entropy(logits, y, label_smoothing=0.1)).detach())) > 1e-4
    torch.testing.assert_close(LabelSmoothing(true_weight=1.0)(net, x, y, generator=None)[0], F.cross_entropy(logits, y))


def test_label_smoothing_refuses_bad_settings():
    with pytest.raises(RangeError):
        LabelSmoothing(true_weight=1.5)
    one_class = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(35, 1))
    with pytest.raises(ShapeError, match="at least 2 classes"):
        LabelSmoothing()(one_class, *_data(), generator=None)


# ----------------------------------------------------------------------------- FGSM adversarial training

def test_fgsm_at_is_goodfellows_objective_with_the_librarys_fgsm():
    net, (x, y), eps = Seen(), _data(), 0.3
    recipe = FGSMAT(eps=eps)
    loss, stats = recipe(net, x, y, generator=None)
    assert all(p.grad is None for p in net.parameters())            # the attack leaves .grad to the trainer
    # the adversarial example, written out: clip(x + eps sign(grad_x J), 0, 1)
    xr = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(F.cross_entropy(net(xr), y), xr)
    adv = (x + eps * gx.sign()).clamp(0, 1)
    torch.testing.assert_close(recipe.perturb(net, x, y, generator=None), adv)
    torch.testing.assert_close(adv, fgsm(net, x, y, eps=eps))
    by_hand = 0.5 * F.cross_entropy(net(x), y) + 0.5 * F.cross_entropy(net(adv), y)
    torch.testing.assert_close(loss, by_hand)
    # no gradient through the attack: the parameters' gradient is that of the objective with x_adv held fixed
    for got, want in zip(_param_grads(net, loss), _param_grads(net, by_hand)):
        torch.testing.assert_close(got, want)
    acc = lambda v: 100.0 * float((net(v).argmax(1) == y).float().mean())   # noqa: E731
    assert stats["acc"] == pytest.approx(0.5 * acc(x) + 0.5 * acc(adv))


def test_fgsm_at_weights():
    net, (x, y) = Seen(), _data()
    torch.testing.assert_close(FGSMAT(eps=0.3, clean_weight=1.0)(net, x, y, generator=None)[0],
                               F.cross_entropy(net(x), y))
    adv = fgsm(net, x, y, eps=0.1)
    torch.testing.assert_close(FGSMAT(eps=0.1, clean_weight=0.0)(net, x, y, generator=None)[0],
                               F.cross_entropy(net(adv), y))
    assert F.cross_entropy(net(adv), y) > F.cross_entropy(net(x), y)    # the step does raise the loss
    with pytest.raises(RangeError):
        FGSMAT(eps=0.3, clean_weight=1.5)


# ----------------------------------------------------------------------------- virtual adversarial training

def _hessian_direction(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """For logits W x + b: the KL's Hessian at r = 0 is Wᵀ(diag p − ppᵀ)W; its product with d, per image."""
    out = []
    for xi, di in zip(x.flatten(1), d.flatten(1)):
        p = torch.softmax(w @ xi + b, 0)
        out.append(w.T @ ((torch.diag(p) - torch.outer(p, p)) @ (w @ di)))
    return torch.stack(out).view_as(x)


@pytest.mark.parametrize("xi", [None, 1e-7])
def test_vat_direction_is_one_power_iteration_on_the_kl_hessian(xi):
    """Exact in float64 on a linear model. The finite difference at xi is H d + O(xi) relative; with
    weights and inputs of order 1 the O(xi) term is ~1e-7, far inside the 1e-5 tolerance."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(35, 5)).double()
    x, y = _data()
    x = x.double()
    adv = VAT(eps=2.1, xi=xi).perturb(net, x, y, generator=torch.Generator().manual_seed(3))
    d = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    hd = _hessian_direction(net[1].weight, net[1].bias, x, d)
    want = 2.1 * hd / hd.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    torch.testing.assert_close(adv - x, want, rtol=0, atol=1e-5 if xi else 1e-10)


def test_vat_float32_hessian_product_matches_a_float64_finite_difference():
    """The default (exact H d) in float32 against Miyato et al.'s finite difference in float64 at xi = 1e-7
    (whose own error is O(xi), ~1e-7), on a nonlinear net: cosine 1 up to float32 rounding (~1e-6 relative
    per operation), asserted > 0.9999. At xi = 1e-6 in float32 the finite difference is noise (the step is
    below a pixel's resolution), which is why the exact product is the default."""
    net32 = Seen()
    net64 = Seen().double()                                   # the same seed: the same weights, in float64
    x, y = _data(8)
    d = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    d = d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    log_p = lambda net, v: torch.log_softmax(net(v), 1).detach()    # noqa: E731
    g32 = kl_hessian_product(net32, x, log_p(net32, x), d.float())
    g64 = kl_hessian_product(net64, x.double(), log_p(net64, x.double()), d, xi=1e-7)
    unit = lambda g: g.double().flatten(1) / g.double().flatten(1).norm(dim=1, keepdim=True)   # noqa: E731
    assert (unit(g32) * unit(g64)).sum(1).min() > 0.9999
    # and the exact product in float64 is the finite difference's limit
    torch.testing.assert_close(unit(kl_hessian_product(net64, x.double(), log_p(net64, x.double()), d)), unit(g64),
                               rtol=0, atol=1e-5)


def test_vat_perturbation_has_norm_eps_per_image_and_is_seeded():
    net, (x, y) = Seen(), _data()
    for xi in (None, 1e-3):
        vat = VAT(eps=2.1, xi=xi)
        a = vat.perturb(net, x, y, generator=torch.Generator().manual_seed(0))
        b = vat.perturb(net, x, y, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close((a - x).flatten(1).norm(dim=1), torch.full((6,), 2.1))
        assert torch.equal(a, b)
        assert not torch.equal(a, vat.perturb(net, x, y, generator=torch.Generator().manual_seed(1)))


class Constant(torch.nn.Module):
    """Logits that do not depend on the input."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.tensor([0.3, -1.0, 0.2, 0.0, 1.1]))

    def forward(self, x):
        return self.bias.expand(len(x), -1)


@pytest.mark.parametrize("xi", [None, 1e-6])
def test_vat_kl_is_zero_for_a_constant_model(xi):
    net, (x, y) = Constant(), _data()
    loss, stats = VAT(xi=xi)(net, x, y, generator=torch.Generator().manual_seed(0))
    assert stats["kl"] == 0.0
    assert torch.equal(loss, F.cross_entropy(net(x), y))


def test_vat_loss_is_cross_entropy_plus_the_kl_and_differentiable_in_the_parameters():
    net, (x, y) = Seen(), _data()
    vat = VAT()
    loss, stats = vat(net, x, y, generator=torch.Generator().manual_seed(4))
    assert all(p.grad is None for p in net.parameters())     # the power iteration leaves .grad to the trainer
    r = vat.r_adv(net, x, F.log_softmax(net(x), 1).detach(), generator=torch.Generator().manual_seed(4))
    p = torch.softmax(net(x), 1).detach()
    kl = (p * (p.log() - torch.log_softmax(net(x + r), 1))).sum(1).mean()     # KL(p(x) || p(x + r_adv)), written out
    ce = F.cross_entropy(net(x), y)
    torch.testing.assert_close(loss, ce + kl)
    assert stats["kl"] == pytest.approx(kl.item(), rel=1e-5) and kl.item() > 0
    got, want, ce_only = _param_grads(net, loss), _param_grads(net, ce + kl), _param_grads(net, ce)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    assert max(float((a - c).abs().max()) for a, c in zip(got, ce_only)) > 1e-4     # the KL term does train
    with pytest.raises(RangeError):
        VAT(xi=0.0)
