"""Training recipes as losses: ``recipe(model, x, y, *, generator) -> (loss, stats)``.

A recipe is everything that distinguishes one way of training a classifier from another *inside
one step*: which inputs the network sees and which loss it minimizes. The loop around it (data
order, augmentation, optimizer, schedule, validation, checkpoints) is
:func:`purify.training.trainer.fit`, the same for every recipe. Further recipes (e.g. Deep Defense)
are classes of the same shape, here or in a module of their own registered in :data:`RECIPES`.

* :class:`Standard` — cross-entropy on the (augmented) clean batch;
* :class:`PGDAT` — Madry et al. (2018): cross-entropy on PGD-k examples from a uniform random start
  in the L∞ ball of radius ``eps``, step ``step``;
* :class:`FGSMRS` — Wong, Rice & Kolter (2020), "Fast is better than free": one FGSM step of size
  ``alpha`` (default ``1.25·eps``) from a uniform random start in ``[-eps, eps]``, projected back
  onto the ball and clipped to [0, 1]. The paper pairs it with a cyclic learning rate, which is
  the trainer's ``schedule="cyclic"``.
* :class:`TVMAugment` — any recipe on TVM-purified images, or on the images and their purified
  copies (the WNLL/TVM paper's data regimes);
* ``gda``, ``label_smoothing``, ``fgsm_at``, ``vat`` — the BReLU/GDA paper's Gaussian data
  augmentation and its peer defenses, in :mod:`purify.training.gda_recipes` (registered here,
  imported when asked for: they use this module's helpers);

The adversarial examples are made by the library's own :func:`purify.attacks.pgd` (FGSM-RS is its
one-step case with ``random_start=True``), not a copy: its input checks cost one pass over the
batch (a min/max and a label check), which is noise next to the forward and backward passes of
the network, and it only takes the gradient with respect to the input, so the parameters' ``.grad``
stays the trainer's. As in both papers' code, the attack runs with the model in training mode
(batch-norm uses the batch's statistics).

``stats`` are plain floats for the learning curve: ``loss`` and ``acc`` (accuracy in percent on
the inputs the network was trained on, i.e. the adversarial ones for the adversarial recipes:
Wong et al.'s symptom of catastrophic overfitting is this FGSM training accuracy jumping up).

Example:
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    >>> x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    >>> loss, stats = FGSMRS(eps=8 / 255)(net, x, y, generator=torch.Generator().manual_seed(0))
    >>> loss.requires_grad, sorted(stats)
    (True, ['acc', 'loss'])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from purify._checks import check_choice, check_float, check_int
from purify.attacks import pgd
from purify.errors import RangeError

__all__ = ["Recipe", "Standard", "PGDAT", "FGSMRS", "TVMAugment", "TVM_REGIMES", "RECIPES", "make_recipe",
           "parse_fraction"]


class Recipe(Protocol):
    """What :func:`purify.training.trainer.fit` calls once per step.

    ``name``: registry name; ``adversarial``: whether the model is selected on PGD validation
    accuracy; ``config()``: the hyper-parameters for the artifact's json.
    """

    name: str
    adversarial: bool

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, *,
                 generator: torch.Generator | None) -> tuple[Tensor, dict[str, float]]: ...

    def config(self) -> dict[str, Any]: ...


def _accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 500) -> float:
    """Accuracy in percent of ``model`` (eval mode, no gradient) on ``x``."""
    with torch.no_grad():
        correct = sum(int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
                      for i in range(0, len(x), batch_size))
    return 100.0 * correct / max(1, len(x))


def _loss_and_stats(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    acc = 100.0 * float((logits.detach().argmax(1) == y).float().mean()) if len(y) else 0.0
    return loss, {"loss": float(loss.detach()), "acc": acc}


@dataclass(frozen=True)
class Standard:
    """Plain cross-entropy on the clean batch.

    Shape:
        x: (B, C, H, W) in [0, 1]; y: (B,) int64; loss: scalar.
    Example:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        >>> loss, stats = Standard()(net, torch.rand(2, 3, 2, 2), torch.tensor([0, 2]), generator=None)
        >>> loss.shape, 0.0 <= stats["acc"] <= 100.0
        (torch.Size([]), True)
    """

    name = "standard"
    adversarial = False

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None) -> Tensor:
        """The training input: ``x`` itself."""
        return x

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, *,
                 generator: torch.Generator | None) -> tuple[Tensor, dict[str, float]]:
        return _loss_and_stats(model, x, y)

    def config(self) -> dict[str, Any]:
        return {"name": self.name}


@dataclass(frozen=True)
class PGDAT:
    """Madry et al.'s adversarial training: cross-entropy on PGD-``iters`` examples (random start).

    Args:
        eps: L∞ radius (in [0, 1] pixel units).
        step: step size of each PGD iteration (Madry et al.: 2/255 for eps 8/255 on CIFAR-10,
            0.01 for eps 0.3 on MNIST).
        iters: PGD iterations (Madry et al.: 7 on CIFAR-10, 40 on MNIST).

    Shape:
        x: (B, C, H, W) in [0, 1]; y: (B,) int64; loss: scalar.
    Example:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        >>> x = torch.rand(2, 3, 2, 2)
        >>> adv = PGDAT(eps=0.1, step=0.05, iters=3).perturb(net, x, torch.tensor([0, 2]), generator=None)
        >>> bool((adv - x).abs().max() <= 0.1 + 1e-6)
        True
    """

    eps: float
    step: float
    iters: int = 7
    name = "pgd_at"
    adversarial = True

    def __post_init__(self) -> None:
        check_float("PGDAT", self.eps, name="eps", low=0.0, high=1.0)
        check_float("PGDAT", self.step, name="step", low=0.0)
        check_int("PGDAT", self.iters, name="iters", low=1)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None) -> Tensor:
        """The PGD example the network trains on (detached, within ``eps`` of ``x``, in [0, 1])."""
        return pgd(model, x, y, eps=self.eps, step=self.step, iters=self.iters, random_start=True,
                   generator=generator)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, *,
                 generator: torch.Generator | None) -> tuple[Tensor, dict[str, float]]:
        return _loss_and_stats(model, self.perturb(model, x, y, generator=generator), y)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self)}


@dataclass(frozen=True)
class FGSMRS:
    """Wong et al.'s fast adversarial training: FGSM with step ``alpha`` from a uniform random start.

    ``delta ~ U[-eps, eps]`` (clipped so ``x + delta`` is an image), one step
    ``delta += alpha·sign(∇)``, then ``delta`` projected onto ``[-eps, eps]`` and ``x + delta``
    clipped to [0, 1]. The paper's CIFAR-10 setting is ``alpha = 1.25·eps`` (the default here);
    larger steps make catastrophic overfitting likelier.

    Args:
        eps: L∞ radius. alpha: the FGSM step (None: ``1.25 * eps``).

    Shape:
        x: (B, C, H, W) in [0, 1]; y: (B,) int64; loss: scalar.
    Example:
        >>> FGSMRS(eps=8 / 255).alpha == 1.25 * 8 / 255
        True
    """

    eps: float
    alpha: float | None = None
    name = "fgsm_rs"
    adversarial = True

    def __post_init__(self) -> None:
        check_float("FGSMRS", self.eps, name="eps", low=0.0, high=1.0)
        if self.alpha is None:
            object.__setattr__(self, "alpha", 1.25 * self.eps)     # frozen dataclass: set the default once
        check_float("FGSMRS", self.alpha, name="alpha", low=0.0)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None) -> Tensor:
        """The FGSM-RS example the network trains on (detached, within ``eps`` of ``x``, in [0, 1])."""
        return pgd(model, x, y, eps=self.eps, step=self.alpha, iters=1, random_start=True, generator=generator)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, *,
                 generator: torch.Generator | None) -> tuple[Tensor, dict[str, float]]:
        return _loss_and_stats(model, self.perturb(model, x, y, generator=generator), y)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self)}


#: TV-augmentation regimes of the WNLL/TVM paper (its Table 2): the batch purified, or the batch and its
#: purified copy ("original" data alone is the plain recipe).
TVM_REGIMES = ("tvm", "both")


@dataclass(frozen=True)
class TVMAugment:
    """Any recipe trained on TVM-purified images (the WNLL/TVM paper's "TVM data" and "original + TVM data").

    Every call purifies the batch with fresh Bernoulli masks drawn from ``generator`` (so every epoch
    sees new masks, and a seeded run repeats them), then hands ``base`` the purified batch
    (``regime="tvm"``) or the batch followed by its purified copy (``"both"``: twice the images,
    the labels repeated). TVM runs on the fly: on the CPU kernel it costs ~0.4 ms per 32×32 image,
    little beside a ResNet's forward and backward pass.

    Args:
        base: the recipe that sees the augmented batch (e.g. :class:`Standard`).
        regime: ``"tvm"`` or ``"both"``.
        weight, drop_prob, iters: the TVM settings (:func:`purify.tv.tv_minimize`).

    Shape:
        x: (B, C, H, W) in [0, 1]; y: (B,); ``base`` sees (B or 2B, C, H, W).
    Example:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
        >>> aug = TVMAugment(Standard(), regime="both", weight=0.1, drop_prob=0.3)
        >>> loss, stats = aug(net, torch.rand(4, 3, 8, 8), torch.arange(4), generator=torch.Generator().manual_seed(0))
        >>> aug.name, loss.requires_grad
        ('standard+tvm_both', True)
    """

    base: Any
    regime: str = "both"
    weight: float = 0.1
    drop_prob: float = 0.3
    iters: int = 160

    def __post_init__(self) -> None:
        check_choice("TVMAugment", self.regime, name="regime", choices=TVM_REGIMES)
        check_float("TVMAugment", self.weight, name="weight", low=0.0)
        check_float("TVMAugment", self.drop_prob, name="drop_prob", low=0.0, high=1.0, high_inclusive=False)
        check_int("TVMAugment", self.iters, name="iters", low=1)

    @property
    def name(self) -> str:
        return f"{self.base.name}+tvm_{self.regime}"

    @property
    def adversarial(self) -> bool:
        return bool(self.base.adversarial)

    def purify(self, x: Tensor, *, generator: torch.Generator | None) -> Tensor:
        """``x`` purified with fresh masks (no gradient: TVM is the data, not part of the model)."""
        from purify.tv import tv_minimize
        with torch.no_grad():
            return tv_minimize(x.detach(), weight=self.weight, drop_prob=self.drop_prob, iters=self.iters,
                               generator=generator)

    def start_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "start_epoch"):
            self.base.start_epoch(epoch)

    def after_step(self, model: nn.Module) -> None:
        if hasattr(self.base, "after_step"):       # e.g. Parseval's retraction: never skipped under TVM
            self.base.after_step(model)

    def validate(self, model: nn.Module, x: Tensor, y: Tensor, *, seed: int) -> dict[str, float]:
        """The base recipe's validation figures (its accuracy when it has none) behind TVM, and its own.

        Masks from a generator seeded with ``seed`` (the same every epoch). Keys: ``purified`` (the
        model's accuracy behind TVM) for a base without ``validate``; else the base's keys, and
        each again with ``_purified``.
        """
        xt = self.purify(x, generator=torch.Generator(device=x.device).manual_seed(seed))
        if not hasattr(self.base, "validate"):
            return {"purified": _accuracy(model, xt, y)}
        out = self.base.validate(model, x, y, seed=seed)
        return {**out, **{f"{k}_purified": v for k, v in self.base.validate(model, xt, y, seed=seed).items()}}

    @property
    def score_text(self) -> str:
        what = getattr(self.base, "score_key", "clean")
        return (f"{what} accuracy with TVM in front" if self.regime == "tvm" else
                f"mean of the {what} accuracies without and with TVM in front")

    def validation_score(self, row: dict[str, Any]) -> float:
        """What the trainer selects epochs on (a learning-curve row with this recipe's ``val_*`` entries).

        ``"tvm"`` trains a model meant to sit behind TVM: its accuracy there. ``"both"`` trains one
        for either use: the mean of its accuracies without and with TVM in front.
        """
        key = getattr(self.base, "score_key", "clean")
        clean = row[f"val_{key}"]
        purified = row["val_purified"] if key == "clean" else row[f"val_{key}_purified"]
        return purified if self.regime == "tvm" else (clean + purified) / 2

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, *,
                 generator: torch.Generator | None) -> tuple[Tensor, dict[str, float]]:
        xt = self.purify(x, generator=generator)
        if self.regime == "both":
            xt, y = torch.cat([x, xt]), torch.cat([y, y])
        return self.base(model, xt, y, generator=generator)

    def config(self) -> dict[str, Any]:
        return {**self.base.config(), "name": self.name,
                "tvm": {"regime": self.regime, "weight": self.weight, "drop_prob": self.drop_prob, "iters": self.iters}}


#: Recipe name -> builder taking ``eps`` and the recipe's own keywords (see :func:`make_recipe`).
RECIPES: dict[str, Callable[..., Recipe]] = {
    "standard": lambda eps=0.0, **kw: Standard(),
    "pgd_at": lambda eps, step=None, iters=7, **kw: PGDAT(eps=eps, step=eps / 4 if step is None else step,
                                                         iters=iters),
    "fgsm_rs": lambda eps, alpha=None, **kw: FGSMRS(eps=eps, alpha=alpha),
    "wnll_alternating": lambda eps=0.0, **kw: _wnll_alternating(),
    "gda": lambda sigma, copies=10, **kw: _gda_recipe("GaussianAugment", sigma=sigma, copies=copies),
    "label_smoothing": lambda true_weight=0.9, **kw: _gda_recipe("LabelSmoothing", true_weight=true_weight),
    "fgsm_at": lambda eps, clean_weight=0.5, **kw: _gda_recipe("FGSMAT", eps=eps, clean_weight=clean_weight),
    "vat": lambda vat_eps=2.1, xi=None, vat_weight=1.0, **kw: _gda_recipe("VAT", eps=vat_eps, xi=xi,
                                                                           weight=vat_weight),
    # Deep Defense (Yan et al.) and the peers of its Table 1 (Adv. Train II is fgsm_at)
    "deep_defense": lambda dd_lambda=15.0, dd_c=25.0, dd_d=5.0, dd_iters=5, dd_classes=None, **kw: _deep_defense(
        "DeepDefense", lam=dd_lambda, c=dd_c, d=dd_d, iters=dd_iters, num_classes=dd_classes),
    "parseval": lambda parseval_beta=3e-4, parseval_fraction=0.3, **kw: _deep_defense(
        "Parseval", beta=parseval_beta, fraction=parseval_fraction),
    "deepfool_at": lambda df_clean_weight=0.0, **kw: _deep_defense("DeepFoolAT", clean_weight=df_clean_weight),
}
#: Recipes whose training inputs are L∞ attacks of budget ``eps`` (they need ``eps > 0``).
_NEEDS_EPS = ("pgd_at", "fgsm_rs", "fgsm_at")


def _wnll_alternating() -> Recipe:
    from purify.training.wnll import WNLLAlternating     # it needs the WNLL solver; imported when asked for
    return WNLLAlternating()


def _gda_recipe(cls: str, **kw: Any) -> Recipe:
    from purify.training import gda_recipes      # it imports this module's helpers: imported when asked for
    return getattr(gda_recipes, cls)(**kw)


def _deep_defense(cls: str, **kw: Any) -> Recipe:
    from purify.training import deep_defense, deep_defense_peers     # imported when asked for
    return getattr(deep_defense if cls == "DeepDefense" else deep_defense_peers, cls)(**kw)


def make_recipe(name: str, *, eps: float = 0.0, sigma: float | None = None, **settings: Any) -> Recipe:
    """The recipe called ``name`` (one of :data:`RECIPES`); the keywords a recipe does not use are ignored.

    ``pgd_at``'s ``step`` defaults to ``eps / 4``; ``fgsm_rs``'s ``alpha`` to ``1.25 * eps``.
    ``gda``: ``sigma`` (required; the paper's 0.3 MNIST, 0.05 CIFAR-10) and ``copies``;
    ``label_smoothing``: ``true_weight``; ``fgsm_at``: ``eps`` and ``clean_weight`` (α);
    ``vat``: ``vat_eps`` (L2), ``xi`` (None: exact power iteration) and ``vat_weight``
    (see :mod:`purify.training.gda_recipes`; the defaults are the BReLU/GDA paper's);
    ``deep_defense``: ``dd_lambda``, ``dd_c``, ``dd_d``, ``dd_iters``, ``dd_classes``; ``parseval``:
    ``parseval_beta``, ``parseval_fraction``; ``deepfool_at``: ``df_clean_weight`` (see
    :mod:`purify.training.deep_defense` and :mod:`~purify.training.deep_defense_peers`). Settings a
    recipe does not take are ignored.

    Raises:
        UnknownNameError (the message lists the recipes), RangeError (``eps <= 0`` for an attack-based
        recipe, ``sigma`` missing for ``gda``).
    Example:
        >>> make_recipe("pgd_at", eps=8 / 255, iters=7).step == 2 / 255
        True
        >>> make_recipe("gda", sigma=0.3).config()["copies"]
        10
    """
    check_choice("make_recipe", name, name="recipe", choices=tuple(RECIPES))
    if name in _NEEDS_EPS and not eps > 0:
        raise RangeError(f"make_recipe: expected eps > 0 for the adversarial recipe {name!r}, got {eps}; "
                         "pass e.g. --eps 8/255")
    if name == "gda" and sigma is None:
        raise RangeError("make_recipe: expected sigma for the recipe 'gda', got None; pass e.g. --gda-sigma 0.3 "
                         "(the paper's MNIST value; 0.05 for CIFAR-10)")
    return RECIPES[name](eps=eps, sigma=sigma, **settings)


def parse_fraction(text: str) -> float:
    """A float from ``"0.3"``, ``"8/255"`` or ``"8 / 255"`` (command-line budgets).

    Raises:
        ValueError (not a number or a fraction of two numbers, or a zero denominator).
    Example:
        >>> parse_fraction("8/255") == 8 / 255, parse_fraction("0.3")
        (True, 0.3)
    """
    parts = str(text).split("/")
    try:
        if len(parts) == 1:
            return float(parts[0])
        if len(parts) == 2:
            num, den = float(parts[0]), float(parts[1])
            if den != 0:
                return num / den
    except ValueError:
        pass
    raise ValueError(f"expected a number or a fraction like 8/255, got {text!r}")
