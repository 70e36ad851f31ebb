"""Gaussian data augmentation and the peer defenses of the BReLU/GDA paper, as training recipes.

Zantedeschi, Nicolae & Rawat (2017), "Efficient Defenses Against Adversarial Attacks", section 4.1,
compares its Gaussian data augmentation with label smoothing, FGSM adversarial training and virtual
adversarial training. Each is a recipe of :mod:`purify.training.recipes`' shape
(``recipe(model, x, y, *, generator) -> (loss, stats)``, registered in
:data:`~purify.training.recipes.RECIPES`), so all of them run in the one loop,
:func:`purify.training.trainer.fit`:

* :class:`GaussianAugment` (``gda``) — cross-entropy on the batch and ``copies`` noisy copies
  ``clip(x + N(0, sigma^2), 0, 1)`` (the paper: ten copies, sigma 0.3 MNIST, 0.05 CIFAR-10);
* :class:`LabelSmoothing` (``label_smoothing``) — cross-entropy against soft targets, the true
  label weighing 0.9;
* :class:`FGSMAT` (``fgsm_at``) — Goodfellow et al.'s ``α·J(x, y) + (1 − α)·J(x + ε·sign ∇J, y)``,
  α = 0.5 (the paper: ε 0.3 MNIST, 0.05 CIFAR-10);
* :class:`VAT` (``vat``) — Miyato et al.'s virtual adversarial training: cross-entropy plus
  ``KL(p(x) ‖ p(x + r_adv))``, ``r_adv`` of L2 norm ``eps`` (the paper: 2.1) from one power iteration.

None of them is selected on PGD validation accuracy (``adversarial = False``): the paper trains
every defense with its own recipe and compares them under the same attacks, with no robustness-based
early stopping for any of them; see :class:`FGSMAT` for the one where that is a choice.
Randomness (GDA's noise, VAT's start direction) comes from ``generator`` only, so a seeded run
repeats itself. ``stats``: ``loss`` and ``acc`` (percent, on the inputs the loss is computed on).

Example:
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1 * 8 * 8, 10))
    >>> x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    >>> loss, stats = GaussianAugment(sigma=0.3, copies=2)(net, x, y, generator=torch.Generator().manual_seed(0))
    >>> loss.requires_grad, sorted(stats)
    (True, ['acc', 'loss'])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor, nn

from purify._checks import check_float, check_int
from purify.attacks import fgsm
from purify.errors import DTypeError, ShapeError
from purify.training.recipes import _loss_and_stats

__all__ = ["GaussianAugment", "LabelSmoothing", "FGSMAT", "VAT", "kl_hessian_product"]


def _acc(logits: Tensor, y: Tensor) -> float:
    return 100.0 * float((logits.detach().argmax(1) == y).float().mean()) if len(y) else 0.0


@dataclass(frozen=True)
class GaussianAugment:
    """Gaussian data augmentation: cross-entropy on the batch and ``copies`` noisy copies of it.

    The paper generates ten noisy samples per original image (an augmented training set, as ART's
    ``GaussianAugmentation(ratio=10)`` makes) and trains on the originals and the copies. Here every
    step draws ``copies`` fresh copies of its batch (``x + sigma·N(0, I)``, from ``generator``), so
    an epoch sees each clean image and ``copies`` noisy versions of it, as one pass over the
    augmented set does; the noise is new every epoch rather than fixed once, a better Monte Carlo
    estimate of the paper's objective ``E_Δx J(x + Δx, y)`` (section 3.2) at the same cost. All
    ``(1 + copies)·B`` inputs weigh the same in the mean cross-entropy, as in a pass over the
    augmented set. A step then holds ``1 + copies`` times the batch, so an epoch has ``1 + copies``
    times fewer optimizer steps than a shuffled pass over the augmented set with the same batch
    size (pass a smaller ``--batch-size`` to match steps).

    Clipping: section 4 does not say whether the copies are clipped; the toy study of section 3.2
    clips every added point "into the input domain", and ART's ``GaussianAugmentation`` (the
    authors' library) clips when given ``clip_values``. We clip to [0, 1] (``clip=True``): the
    networks are trained and attacked on images, and an attack never leaves [0, 1] either. The
    noise is then not exactly Gaussian near 0 and 1 (MNIST's background is 0: half its noise is
    clipped away).

    Args:
        sigma: the noise's standard deviation in [0, 1] pixel units (paper: 0.3 MNIST, 0.05 CIFAR-10).
        copies: noisy copies per image and step (paper: 10; fewer to save CPU time, recorded in ``config()``).
        clip: clip the copies to [0, 1].

    Shape:
        x: (B, C, H, W) in [0, 1]; y: (B,) int64; the network sees ((1 + copies)·B, C, H, W); loss: scalar.
    Example:
        >>> inputs, labels = GaussianAugment(sigma=0.3, copies=2).augment(
        ...     torch.rand(4, 1, 8, 8), torch.arange(4), generator=torch.Generator().manual_seed(0))
        >>> inputs.shape, labels.tolist()
        (torch.Size([12, 1, 8, 8]), [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3])
    """

    sigma: float
    copies: int = 10
    clip: bool = True
    name = "gda"
    adversarial = False
    #: noisy copies per image in the paper's experiments
    PAPER_COPIES: ClassVar[int] = 10

    def __post_init__(self) -> None:
        check_float("GaussianAugment", self.sigma, name="sigma", low=0.0)
        check_int("GaussianAugment", self.copies, name="copies", low=0)
        if not isinstance(self.clip, bool):
            raise DTypeError(f"GaussianAugment: expected clip to be a bool, got {type(self.clip).__name__}")

    def augment(self, x: Tensor, y: Tensor, *, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """The batch followed by its copies (copy 1 of every image, then copy 2, ...), and the labels repeated."""
        # one draw for all copies: the same generator state gives the same copies whatever the chunking
        noise = torch.randn((self.copies, *x.shape), generator=generator, device=x.device, dtype=x.dtype)
        noisy = x.unsqueeze(0) + self.sigma * noise
        if self.clip:
            noisy = noisy.clamp(0.0, 1.0)
        return torch.cat([x, noisy.flatten(0, 1)]), y.repeat(self.copies + 1)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, *,
                 generator: torch.Generator | None) -> tuple[Tensor, dict[str, float]]:
        return _loss_and_stats(model, *self.augment(x, y, generator=generator))

    def config(self) -> dict[str, Any]:
        out = {"name": self.name, **asdict(self), "paper_copies": self.PAPER_COPIES}
        if self.copies != self.PAPER_COPIES:      # a budget run says so in its artifact
            out["note"] = (f"{self.copies} noisy copies per image and step instead of the paper's "
                           f"{self.PAPER_COPIES} (e.g. a CPU budget)")
        return out


@dataclass(frozen=True)
class LabelSmoothing:
    """Cross-entropy against smoothed labels: ``true_weight`` on the true class, the rest spread evenly.

    Target of an image of class ``y`` among ``K`` classes: ``true_weight`` at ``y`` and
    ``(1 − true_weight) / (K − 1)`` at each other class (the paper's 0.9: 0.1/9 = 0.0111 each on
    MNIST and CIFAR-10), as in Warde-Farley & Goodfellow and cleverhans' tutorials
    (``y.clip(0.1 / (K − 1), 0.9)``). This is not ``F.cross_entropy(label_smoothing=0.1)``,
    which spreads 0.1 over all ``K`` classes (0.91 on the true one); it equals
    ``label_smoothing = (1 − true_weight)·K / (K − 1)`` there.

    Args:
        true_weight: the true label's target probability, in [0, 1] (paper: 0.9; 1 is plain cross-entropy).

    Shape:
        x: (B, C, H, W) in [0, 1]; y: (B,) int64; the model's logits (B, K) with K >= 2; loss: scalar.
    Example:
        >>> LabelSmoothing().targets(torch.tensor([1]), 4)
        tensor([[0.0333, 0.9000, 0.0333, 0.0333]])
    """

    true_weight: float = 0.9
    name = "label_smoothing"
    adversarial = False

    def __post_init__(self) -> None:
        check_float("LabelSmoothing", self.true_weight, name="true_weight", low=0.0, high=1.0)

    def targets(self, y: Tensor, num_classes: int, *, dtype: torch.dtype = torch.float32) -> Tensor:
        """The soft targets, shape (B, num_classes), rows summing to 1."""
        if num_classes < 2:
            raise ShapeError(f"LabelSmoothing: expected logits over at least 2 classes, got {num_classes}; "
                             "there is no other class to give weight to")
        out = torch.full((len(y), num_classes), (1.0 - self.true_weight) / (num_classes - 1), dtype=dtype,
                         device=y.device)
        return out.scatter_(1, y[:, None], self.true_weight)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, *,
                 generator: torch.Generator | None) -> tuple[Tensor, dict[str, float]]:
        logits = model(x)
        loss = F.cross_entropy(logits, self.targets(y, logits.shape[1], dtype=logits.dtype))   # probability targets
        return loss, {"loss": float(loss.detach()), "acc": _acc(logits, y)}

    def config(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self), "other_classes": "(1 - true_weight) / (K - 1) each"}


@dataclass(frozen=True)
class FGSMAT:
    """Goodfellow et al.'s FGSM adversarial training: ``α·J(x, y) + (1 − α)·J(x_adv, y)``, α = ``clean_weight``.

    ``x_adv = clip(x + eps·sign(∇ₓJ(x, y)), 0, 1)`` by :func:`purify.attacks.fgsm`, made from the
    current weights at every step and held constant in the loss (no gradient through the
    attack), with the model in training mode, as in Goodfellow et al. and cleverhans'
    adversarial-training tutorial (which also clips to [0, 1]). ``J(x)`` and ``J(x_adv)`` are two
    forward passes, so batch-norm statistics (none in the paper's networks) see each batch alone.

    ``adversarial`` is False: the epoch is selected on clean validation accuracy, like the
    paper's other defenses. FGSM training without a random start at the paper's eps is where
    catastrophic overfitting happens (PGD accuracy collapses while FGSM accuracy stays high); the
    trainer's PGD selection would then stop the run and keep an early epoch, i.e. train Rice et
    al.'s early-stopped variant, not the defense the paper evaluated (and found "ineffective even
    against white-box attacks"). The test set is still attacked with PGD at ``--eps``.

    Args:
        eps: the FGSM step, L∞, in [0, 1] pixel units (paper: 0.3 MNIST, 0.05 CIFAR-10).
        clean_weight: α, the clean loss's weight (Goodfellow et al. and the paper: 0.5).

    Shape:
        x: (B, C, H, W) in [0, 1]; y: (B,) int64; loss: scalar.
    Example:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        >>> x = torch.rand(2, 3, 2, 2)
        >>> adv = FGSMAT(eps=0.1).perturb(net, x, torch.tensor([0, 2]), generator=None)
        >>> bool((adv - x).abs().max() <= 0.1 + 1e-6)
        True
    """

    eps: float
    clean_weight: float = 0.5
    name = "fgsm_at"
    adversarial = False

    def __post_init__(self) -> None:
        check_float("FGSMAT", self.eps, name="eps", low=0.0, high=1.0)
        check_float("FGSMAT", self.clean_weight, name="clean_weight", low=0.0, high=1.0)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None) -> Tensor:
        """The FGSM example (detached, within ``eps`` of ``x``, in [0, 1]); deterministic, ``generator`` unused."""
        return fgsm(model, x, y, eps=self.eps)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, *,
                 generator: torch.Generator | None) -> tuple[Tensor, dict[str, float]]:
        adv = self.perturb(model, x, y, generator=generator)
        clean_logits, adv_logits = model(x), model(adv)
        a = self.clean_weight
        loss = a * F.cross_entropy(clean_logits, y) + (1.0 - a) * F.cross_entropy(adv_logits, y)
        # accuracy weighted like the loss; a jump of it with a PGD collapse is catastrophic overfitting
        return loss, {"loss": float(loss.detach()), "acc": a * _acc(clean_logits, y) + (1.0 - a) * _acc(adv_logits, y)}

    def config(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self)}


def _unit(v: Tensor) -> Tensor:
    """Each image's vector scaled to L2 norm 1 (a zero vector stays zero).

    Divided by its largest entry first, as in Miyato et al.'s code, so that the squares of tiny
    gradients (a finite difference at a small ``xi`` gives ~1e-20) do not underflow to a zero norm.
    """
    tiny = torch.finfo(v.dtype).tiny
    flat = v.flatten(1)
    flat = flat / flat.abs().amax(1, keepdim=True).clamp_min(tiny)
    return (flat / flat.norm(dim=1, keepdim=True).clamp_min(tiny)).view_as(v)


def kl_hessian_product(model: nn.Module, x: Tensor, log_p: Tensor, d: Tensor, *, xi: float | None = None) -> Tensor:
    """``H·d`` per image, ``H`` the Hessian of ``r ↦ KL(p(x) ‖ p(x + r))`` at ``r = 0`` (VAT's power iteration).

    ``xi=None``: exactly, ``Jᵀ(diag p − ppᵀ)·Jd`` with ``J`` the Jacobian of the logits at ``x``, ``Jd``
    by forward-mode differentiation (one dual forward pass and one backward pass). A float
    ``xi``: Miyato et al.'s finite difference ``∇_r KL`` at ``r = xi·d``, which is ``xi·H·d`` up
    to a relative ``O(xi)`` when ``d`` has unit norm. Gradients are taken with respect to the
    input only (the parameters' ``.grad`` is untouched); a model whose output does not depend on
    its input gives zeros.

    Args:
        model: images -> logits. x: the images. log_p: ``log_softmax`` of ``model(x)`` (held constant).
        d: the direction, like ``x``. xi: None, or the finite-difference step.

    Shape:
        x, d: (B, C, H, W); log_p: (B, K); output: like ``x``.
    Example:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, d = torch.rand(2, 1, 2, 2), torch.randn(2, 1, 2, 2)
        >>> kl_hessian_product(net, x, torch.log_softmax(net(x), 1).detach(), d).shape
        torch.Size([2, 1, 2, 2])
    """
    xr = x.detach().requires_grad_(True)
    log_p = log_p.detach()
    with torch.enable_grad():           # a gradient wrt the input, as an attack's, whatever the caller's mode
        if xi is not None:
            kl = F.kl_div(F.log_softmax(model(xr + xi * d), dim=1), log_p, log_target=True, reduction="batchmean")
            g = torch.autograd.grad(kl, xr, allow_unused=True)[0] if kl.requires_grad else None
            return torch.zeros_like(x) if g is None else g
        with fwAD.dual_level():
            logits, jd = fwAD.unpack_dual(model(fwAD.make_dual(xr, d)))     # f(x) and J·d in one pass
        if jd is None or not logits.requires_grad:
            return torch.zeros_like(x)
        p, jd = log_p.exp(), jd.detach()
        v = p * jd - p * (p * jd).sum(1, keepdim=True)          # (diag p − ppᵀ)·Jd: the KL's Hessian in the logits
        g = torch.autograd.grad(logits, xr, grad_outputs=v, allow_unused=True)[0]      # Jᵀv
        return torch.zeros_like(x) if g is None else g


@dataclass(frozen=True)
class VAT:
    """Miyato et al.'s virtual adversarial training: ``CE(x, y) + weight·KL(p(x) ‖ p(x + r_adv))``.

    ``p(x)`` is the softmax of the current model, held constant (Miyato et al.'s θ̂). ``r_adv``
    comes from one power iteration on ``H``, the Hessian of ``r ↦ KL(p(x) ‖ p(x + r))`` at 0:
    ``d`` drawn from N(0, I) with ``generator``; ``r_adv = eps·Hd / ‖Hd‖₂`` per image, held
    constant. ``x + r_adv`` is not clipped to [0, 1] (Miyato et al. do not clip, and a clip
    would shorten ``r_adv``). The KL is averaged over the batch.

    How ``Hd`` is computed: Miyato et al. take the finite difference ``∇_r KL`` at ``r = xi·d``,
    ``xi = 1e-6``, which equals ``xi·Hd`` up to a relative ``O(xi)``. In float32 that step is
    below the input's resolution (an ulp of a pixel near 0.5 is 6e-8; ``xi·d`` moves a pixel by
    ~4e-8): on the paper's CNN the float32 direction's cosine with the exact one has median 0,
    and some images get no direction at all. So by default (``xi=None``) ``Hd`` is computed
    exactly, ``Jᵀ(diag p − ppᵀ)Jd`` with ``Jd`` by forward-mode differentiation (one dual forward
    and one backward; a whole VAT step on the paper's CNN costs ~1.3x the finite-difference one):
    the value Miyato et al.'s ``xi = 1e-6`` approximates, without its rounding. A float ``xi`` selects their finite difference at that
    step (for models whose operations lack forward-mode derivatives, or to match implementations
    that use a large step such as 10).

    The paper takes ``eps = 2.1`` "as indicated in Miyato et al." for both datasets: Miyato et
    al.'s supervised MNIST value (pixels in [0, 1]); it gives no CIFAR-10 value of its own.

    Args:
        eps: L2 norm of ``r_adv`` per image, in [0, 1] pixel units (paper: 2.1).
        xi: None (exact ``Hd``), or the finite-difference step.
        weight: the KL term's weight, Miyato et al.'s α (1).

    Shape:
        x: (B, C, H, W) in [0, 1]; y: (B,) int64; loss: scalar.
    Example:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        >>> x = torch.rand(2, 3, 2, 2)
        >>> adv = VAT(eps=2.1).perturb(net, x, torch.tensor([0, 2]), generator=torch.Generator().manual_seed(0))
        >>> [round(float(n), 4) for n in (adv - x).flatten(1).norm(dim=1)]
        [2.1, 2.1]
    """

    eps: float = 2.1
    xi: float | None = None
    weight: float = 1.0
    name = "vat"
    adversarial = False

    def __post_init__(self) -> None:
        check_float("VAT", self.eps, name="eps", low=0.0)
        if self.xi is not None:
            check_float("VAT", self.xi, name="xi", low=0.0, low_inclusive=False)
        check_float("VAT", self.weight, name="weight", low=0.0)

    def direction(self, model: nn.Module, x: Tensor, log_p: Tensor, *, generator: torch.Generator | None) -> Tensor:
        """The power iteration from a fresh unit ``d``: :func:`kl_hessian_product` with this ``xi``; not normalized."""
        d = _unit(torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype))
        return kl_hessian_product(model, x, log_p, d, xi=self.xi)

    def r_adv(self, model: nn.Module, x: Tensor, log_p: Tensor, *, generator: torch.Generator | None) -> Tensor:
        """The virtual adversarial perturbation (detached, L2 norm ``eps`` per image) for ``log p(x)`` = ``log_p``."""
        return self.eps * _unit(self.direction(model, x, log_p, generator=generator))

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None) -> Tensor:
        """``x + r_adv`` (labels unused: the perturbation is "virtual"); detached."""
        log_p = F.log_softmax(model(x).detach(), dim=1)
        return x.detach() + self.r_adv(model, x, log_p, generator=generator)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, *,
                 generator: torch.Generator | None) -> tuple[Tensor, dict[str, float]]:
        logits = model(x)
        log_p = F.log_softmax(logits.detach(), dim=1)
        x_adv = x.detach() + self.r_adv(model, x, log_p, generator=generator)
        kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), log_p, log_target=True, reduction="batchmean")
        loss = F.cross_entropy(logits, y) + self.weight * kl
        return loss, {"loss": float(loss.detach()), "acc": _acc(logits, y), "kl": float(kl.detach())}

    def config(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self),
                "power_iteration": "exact Hessian-vector product" if self.xi is None else "finite difference"}
