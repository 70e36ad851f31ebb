"""The defenses Deep Defense is compared with (Yan et al. 2018, Section 4), as training recipes.

* :class:`Parseval` (``parseval``) — Cissé et al. (2017), Parseval networks: cross-entropy steps,
  each followed by the retraction ``W ← (1 + β)W − β·W Wᵀ W`` of every linear and convolutional
  weight towards a Parseval tight frame (:func:`parseval_retraction`);
* :class:`DeepFoolAT` (``deepfool_at``) — "Adv. Train I", the DeepFool paper's adversarial
  training: fine-tuning on DeepFool examples of a *fixed* reference model (the starting one);
* "Adv. Train II", Goodfellow et al.'s ``α·J(x) + (1 − α)·J(x_fgsm)``, is ``fgsm_at``
  (:class:`purify.training.gda_recipes.FGSMAT`), not repeated here.

Both are recipes of :mod:`purify.training.recipes`' shape and run in
:func:`purify.training.trainer.fit`; ``adversarial`` is False (selected on clean accuracy) and
:meth:`validate` reports DeepFool's ρ₂ like :class:`~purify.training.deep_defense.DeepDefense`, so
the three learning curves compare (the paper's Fig. 2).

Example:
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    >>> recipe = Parseval(beta=0.01, fraction=1.0)
    >>> loss, stats = recipe(net, torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0]), generator=None)
    >>> before = parseval_deviation(net[1].weight)
    >>> recipe.after_step(net)            # what fit() calls after each optimizer step
    >>> parseval_deviation(net[1].weight) < before
    True
"""

from __future__ import annotations

import copy
import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from purify._checks import check_float, check_int
from purify.attacks.deepfool import deepfool
from purify.errors import ShapeError
from purify.training.deep_defense import relative_norm, rho2_validation

__all__ = ["parseval_retraction", "parseval_deviation", "Parseval", "DeepFoolAT", "PARSEVAL_LAYERS"]

log = logging.getLogger(__name__)

#: The layers whose weights Parseval training retracts (transposed convolutions are not among them).
PARSEVAL_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def parseval_retraction(w: Tensor, /, *, beta: float, passes: int = 1, rows: Tensor | None = None) -> Tensor:
    """Cissé et al.'s retraction ``W ← (1 + β)W − β·W Wᵀ W``, ``passes`` times, on the rows ``rows``.

    A weight of more than two dimensions (a convolution's ``(out, in, kh, kw)``) is taken as the
    matrix ``(out, in·kh·kw)``. With ``W = U Σ Vᵀ`` one pass maps every singular value ``s`` to
    ``(1 + β)s − βs³``, so for ``0 < β < 1`` the singular values move towards 1 (linearly at rate
    ``1 − 2β`` near it): ``W Wᵀ → I`` for a wide matrix, ``Wᵀ W → I`` for a tall one. On a subset
    of rows ``S``, ``W_S`` alone is retracted (its rows towards orthonormality among themselves)
    and the other rows are left as they are.

    Args:
        w: the weight. beta: β > 0. passes: retraction steps, >= 1.
        rows: indices of the rows to retract, (r,) int64; None: all.

    Returns:
        A new tensor like ``w`` (differentiable; :meth:`Parseval.after_step` writes it into the weight).

    Shape:
        w: (out, ...) with at least 2 dimensions; output: the same.
    Example:
        >>> w = torch.tensor([[2.0, 0.0], [0.0, 0.5]])
        >>> parseval_retraction(w, beta=0.1)        # 2 -> 1.1·2 - 0.1·8, 0.5 -> 1.1·0.5 - 0.1·0.125
        tensor([[1.4000, 0.0000],
                [0.0000, 0.5375]])
    """
    if w.dim() < 2:
        raise ShapeError(f"parseval_retraction: expected a weight of at least 2 dimensions (out, in, ...), got "
                         f"shape {tuple(w.shape)}; biases and norm scales are not retracted")
    check_float("parseval_retraction", beta, name="beta", low=0.0, low_inclusive=False)
    check_int("parseval_retraction", passes, name="passes", low=1)
    return _retract(w.reshape(w.shape[0], -1), beta, passes, rows).reshape(w.shape)


def _retract(m: Tensor, beta: float, passes: int, rows: Tensor | None) -> Tensor:
    """The unchecked core of :func:`parseval_retraction` on an (out, n) matrix."""
    sub = m if rows is None else m[rows]
    for _ in range(passes):
        # W Wᵀ W associated so the smaller Gram matrix is formed: 2·r²·n flops for r <= n rows, else 2·r·n²
        cubic = (sub @ sub.T) @ sub if sub.shape[0] <= sub.shape[1] else sub @ (sub.T @ sub)
        sub = (1.0 + beta) * sub - beta * cubic
    return sub if rows is None else m.index_copy(0, rows, sub)


def parseval_deviation(w: Tensor, /) -> float:
    """``||G − I||_F`` with ``G`` the smaller Gram matrix of ``w`` as ``(out, rest)``: 0 for a Parseval tight frame.

    ``G = W Wᵀ`` when ``out <= rest`` (orthonormal rows), else ``Wᵀ W`` (orthonormal columns).

    Shape:
        w: (out, ...) with at least 2 dimensions.
    Example:
        >>> parseval_deviation(torch.eye(3)[:2]), parseval_deviation(2 * torch.eye(2))
        (0.0, 4.242640687119285)
    """
    m = w.detach().reshape(w.shape[0], -1).double()
    g = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    return float(torch.linalg.matrix_norm(g - torch.eye(g.shape[0], dtype=g.dtype, device=g.device)))


@dataclass
class Parseval:
    """Parseval training: cross-entropy steps, each followed by the retraction of every linear / conv weight.

    :meth:`after_step` (called by :func:`~purify.training.trainer.fit` after every optimizer step)
    applies :func:`parseval_retraction` to the weight of every :data:`PARSEVAL_LAYERS` module,
    convolutions as ``(out, in·kh·kw)`` matrices per group. Yan et al., "following the original
    paper", update a uniformly sampled 30 % of the columns of each weight at every step (columns
    in their ``Wᵀx`` convention: output units, our rows; ``fraction``); the subset is drawn by a
    seed taken from the trainer's recipe generator in :meth:`__call__` (its state is in the
    checkpoint, so a resumed run draws the same rows). ``fraction=1`` retracts every row,
    deterministically (on our CPU-sized networks it costs no measurable time). One pass after
    each optimizer step, as Yan et al. describe it; ``passes`` for more.

    Not done: Cissé et al.'s convex aggregation of residual branches (``α·x + (1 − α)·f(x)``,
    α projected onto [0, 1]) needs a change of the architecture; our ResNets keep their plain
    sums (and batch norm), so for them this is weight retraction only and the network's Lipschitz
    bound does not follow. LeNet-5 and the paper's MLP / ConvNet have no residual merges. Nor is
    a convolution's unfolded matrix rescaled: a stride-1 ``kh×kw`` convolution with an orthonormal
    unfolded weight is ``sqrt(kh·kw)``-Lipschitz at most, not 1.

    Args:
        beta: β (default 0.0003; Yan et al.'s grid search: 0.0001 MNIST, 0.0003 CIFAR-10).
        fraction: share of each weight's rows retracted per step, in (0, 1] (the papers: 0.3).
        passes: retraction steps per optimizer step.
        rho_count, val_max_iter: DeepFool ρ₂ on the validation images (0: none), as :class:`DeepDefense`.

    Shape:
        x: (B, C, H, W) in [0, 1]; y: (B,) int64; loss: scalar.
    Example:
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(8, 3))
        >>> Parseval(fraction=1.0).after_step(net)
    """

    beta: float = 3e-4
    fraction: float = 0.3
    passes: int = 1
    rho_count: int = 1000
    val_max_iter: int = 50
    name = "parseval"
    adversarial = False
    _seed: int | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fn = "Parseval"
        check_float(fn, self.beta, name="beta", low=0.0, low_inclusive=False)
        check_float(fn, self.fraction, name="fraction", low=0.0, high=1.0, low_inclusive=False)
        check_int(fn, self.passes, name="passes", low=1)
        check_int(fn, self.rho_count, name="rho_count", low=0)
        check_int(fn, self.val_max_iter, name="val_max_iter", low=1)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, *,
                 generator: torch.Generator | None) -> tuple[Tensor, dict[str, float]]:
        if self.fraction < 1.0:
            device = generator.device if generator is not None else x.device
            self._seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=device))
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        return loss, {"loss": float(loss.detach()), "acc": _acc(logits, y)}

    def after_step(self, model: nn.Module) -> None:
        """Retract every linear / conv weight of ``model`` in place (a parameter update, like ``optimizer.step``)."""
        gen = torch.Generator().manual_seed(self._seed if self._seed is not None else 0)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, PARSEVAL_LAYERS):
                    self._retract_weight(module.weight, getattr(module, "groups", 1), gen)

    def _retract_weight(self, w: Tensor, groups: int, gen: torch.Generator) -> None:
        mats = w.detach().reshape(groups, w.shape[0] // groups, -1)       # a grouped conv: one matrix per group
        out = []
        for m in mats:
            rows = None
            if self.fraction < 1.0:
                k = max(1, round(self.fraction * m.shape[0]))
                rows = torch.randperm(m.shape[0], generator=gen)[:k].to(m.device)
            out.append(_retract(m, self.beta, self.passes, rows))
        w.copy_(torch.stack(out).reshape(w.shape))

    def validate(self, model: nn.Module, x: Tensor, y: Tensor, *, seed: int) -> dict[str, float]:
        """DeepFool's ρ₂ on the first ``rho_count`` images (:func:`rho2_validation`)."""
        return rho2_validation(model, x[:self.rho_count], max_iter=self.val_max_iter) if self.rho_count else {}

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "beta": self.beta, "fraction": self.fraction, "passes": self.passes,
                "rho_count": self.rho_count, "val_max_iter": self.val_max_iter,
                "aggregation": "none: residual merges stay plain sums (no convex aggregation layers)"}


@dataclass
class DeepFoolAT:
    """Adv. Train I: cross-entropy on DeepFool examples of a fixed reference model (the DeepFool paper's scheme).

    The reference is a frozen copy (eval mode, no gradients) of the model at the start of
    training: :meth:`freeze` takes it explicitly (do so before :func:`fit` with the starting
    weights, so that a resumed run gets the same one); otherwise the first call takes it from
    the model it is given. Its examples are the library's :func:`deepfool` (L2, overshoot 0.02,
    50 iterations, 10 classes) of each batch against the true labels (an image the reference
    misclassifies comes back unchanged), so they never change when the trained model does.

    The DeepFool paper fine-tunes on the perturbed training set only (``clean_weight = 0``, the
    default); ``clean_weight = α`` trains on ``α·J(x) + (1 − α)·J(x_adv)``.

    It is a fine-tune: start from a trained model (``--init-from``); from a random initialization
    the reference, and so every example, would be that of an untrained network.

    Cost: the examples are recomputed at every step instead of being stored once (the trainer
    hands a recipe images, not dataset indices): DeepFool on the reference (per iteration one
    forward and ``num_classes`` backward passes with respect to the input, over the images not
    yet fooled; no graph through the parameters), then one or two training forward/backward
    passes. Measured on LeNet-5, MNIST, batch 128, one thread: 0.9 s a step, ≈ 80× a plain step,
    so each epoch pays again what storing the set once would pay once. Without augmentation
    every epoch sees the same examples, a fixed set as in the paper; with ``crop_flip`` each
    epoch's crops get their own.

    Args:
        clean_weight: α in [0, 1]. overshoot, max_iter, num_classes: DeepFool's.
        rho_count, val_max_iter: DeepFool ρ₂ of the trained model on the validation images (0: none).

    Shape:
        x: (B, C, H, W) in [0, 1]; y: (B,) int64; loss: scalar.
    Example:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        >>> recipe = DeepFoolAT().freeze(net)
        >>> x, y = torch.rand(2, 3, 2, 2), torch.tensor([0, 2])
        >>> adv = recipe.perturb(net, x, y, generator=None)
        >>> with torch.no_grad():          # training moves the model, not the reference
        ...     _ = net[1].weight.add_(1.0)
        >>> torch.equal(recipe.perturb(net, x, y, generator=None), adv)
        True
    """

    clean_weight: float = 0.0
    overshoot: float = 0.02
    max_iter: int = 50
    num_classes: int = 10
    rho_count: int = 1000
    val_max_iter: int = 50
    name = "deepfool_at"
    adversarial = False
    reference: nn.Module | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        fn = "DeepFoolAT"
        check_float(fn, self.clean_weight, name="clean_weight", low=0.0, high=1.0)
        check_float(fn, self.overshoot, name="overshoot", low=0.0)
        check_int(fn, self.max_iter, name="max_iter", low=1)
        check_int(fn, self.num_classes, name="num_classes", low=2)
        check_int(fn, self.rho_count, name="rho_count", low=0)
        check_int(fn, self.val_max_iter, name="val_max_iter", low=1)

    def freeze(self, model: nn.Module) -> DeepFoolAT:
        """Take a frozen copy of ``model`` (eval mode, parameters without gradient) as the reference; returns self."""
        ref = copy.deepcopy(model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        self.reference = ref
        return self

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None) -> Tensor:
        """The reference's DeepFool examples of ``x`` (detached); ``model`` is only read to freeze it on first use."""
        if self.reference is None:
            log.info("deepfool_at: reference taken from the model at its first training step; on a resumed run "
                     "call freeze(model) with the starting weights before fit()")
            self.freeze(model)
        return deepfool(self.reference, x, y, overshoot=self.overshoot, max_iter=self.max_iter,
                        num_classes=self.num_classes)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, *,
                 generator: torch.Generator | None) -> tuple[Tensor, dict[str, float]]:
        adv = self.perturb(model, x, y, generator=generator)
        a = self.clean_weight
        adv_logits = model(adv)
        loss = (1.0 - a) * F.cross_entropy(adv_logits, y)
        acc = _acc(adv_logits, y)
        if a > 0:
            clean_logits = model(x)
            loss = loss + a * F.cross_entropy(clean_logits, y)
            acc = a * _acc(clean_logits, y) + (1.0 - a) * acc
        return loss, {"loss": float(loss.detach()), "acc": acc, "rho": float(relative_norm(adv - x, x).mean())}

    def validate(self, model: nn.Module, x: Tensor, y: Tensor, *, seed: int) -> dict[str, float]:
        """DeepFool's ρ₂ of the trained model on the first ``rho_count`` images."""
        return rho2_validation(model, x[:self.rho_count], max_iter=self.val_max_iter) if self.rho_count else {}

    def config(self) -> dict[str, Any]:
        ref = "the model at the first training step" if self.reference is None else _fingerprint(self.reference)
        return {"name": self.name, "clean_weight": self.clean_weight, "overshoot": self.overshoot,
                "max_iter": self.max_iter, "num_classes": self.num_classes, "rho_count": self.rho_count,
                "val_max_iter": self.val_max_iter, "reference": ref}


def _fingerprint(model: nn.Module) -> str:
    """sha256 (16 hex digits) of a model's state dict: which reference made the examples."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()[:16]


def _acc(logits: Tensor, y: Tensor) -> float:
    return 100.0 * float((logits.detach().argmax(1) == y).float().mean()) if len(y) else 0.0
