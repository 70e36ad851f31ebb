"""Deep Defense (Yan, Guo & Zhang, NeurIPS 2018): the network's own DeepFool perturbation as a regularizer.

DeepFool is unrolled for a few iterations *inside the autograd graph* (:func:`deepfool_unrolled`),
so the size of the perturbation that fools the network is a differentiable function of its
parameters, and the training loss penalizes it (:class:`DeepDefense`)::

    loss = mean_k CE(f(x_k), y_k) + lam * mean_k R_k,      rho_k = ||Δx_k||_2 / ||x_k||_2
    R_k  = exp(-c * rho_k)   if x_k is classified correctly       (the set T of Eq. (6))
    R_k  = exp(+d * rho_k)   if it is misclassified              (the set F of Eq. (6))

For a correctly classified image ``Δx`` is DeepFool's perturbation away from its label: the
penalty pushes it up, saturating once it is large ("robust enough", Section 3.4). For a
misclassified one it is DeepFool's perturbation *towards* its label (the authors' code,
``forward_wrong``; the paper: "especially when the network is to be 'fooled' to classify it as its
ground-truth"): the penalty pulls it down. ``lam = 15, c = 25, d = 5`` are the paper's MNIST and
CIFAR-10 settings (``c = 70`` for its NIN), with 5 DeepFool iterations (the authors' ``--max-iter``).

The forward pass of :func:`deepfool_unrolled` is the library's :func:`purify.attacks.deepfool`
(L2, same candidates, step, overshoot and clipping; a test holds them equal): it is the reference,
and Deep Defense only adds the graph. Differences from the authors' code, kept on purpose so that
training and the ``rho2`` we evaluate with use the same DeepFool: each step is pushed ``1e-4``
past the linearized boundary, the next linearization point is the overshot and clipped iterate
``clip(x + (1 + overshoot)·Σr, 0, 1)`` (theirs is ``x + Σr``, unclipped; ``clip=False`` drops the
clipping), and ``rho`` is measured on pixels in [0, 1] (theirs on mean-subtracted inputs).

Example:
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1 * 6 * 5, 4))
    >>> x, y = torch.rand(3, 1, 6, 5), torch.tensor([0, 1, 2])
    >>> loss, stats = DeepDefense(iters=2)(net, x, y, generator=None)
    >>> loss.requires_grad, sorted(stats)
    (True, ['acc', 'loss', 'penalty', 'rho'])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from purify._checks import check_choice, check_float, check_image_batch, check_int
from purify.attacks.deepfool import _STEP_PAD, _candidates, deepfool
from purify.attacks.gradient import _check_bool, _check_differentiable, _check_labels, _check_logits
from purify.errors import DTypeError, ShapeError

__all__ = ["UnrolledDeepFool", "deepfool_unrolled", "deep_defense_penalty", "relative_norm", "DeepDefense",
           "rho2_validation", "MISCLASSIFIED"]

ModelFn = Callable[[Tensor], Tensor]

#: What :func:`deepfool_unrolled` does with an image its model misclassifies at ``x``.
MISCLASSIFIED = ("stay", "to_label")


class UnrolledDeepFool(NamedTuple):
    """What :func:`deepfool_unrolled` returns (all in the graph unless said otherwise).

    delta: ``x_adv - x``, the perturbation (the ``r_total`` of DeepFool with its overshoot and clipping).
    x_adv: the last iterate ``clip(x + (1 + overshoot)·Σr, 0, 1)``.
    logits: the model's logits at ``x`` (the first forward pass; reuse them for the cross-entropy).
    correct: (B,) bool, detached: ``argmax logits == y``.
    steps: (B,) int64, detached: how many DeepFool steps each image took.
    """

    delta: Tensor
    x_adv: Tensor
    logits: Tensor
    correct: Tensor
    steps: Tensor


def deepfool_unrolled(model: ModelFn, x: Tensor, y: Tensor, /, *, iters: int = 5, overshoot: float = 0.02,
                      num_classes: int | None = None, create_graph: bool = True,
                      misclassified: str = "stay", clip: bool = True) -> UnrolledDeepFool:
    """L2 DeepFool with ``iters`` unrolled iterations, differentiable with respect to the model's parameters.

    Every iteration linearizes the model at the current iterate and steps each image to the
    nearest linearized boundary, exactly as :func:`purify.attacks.deepfool` does (``norm="l2"``)::

        w_k = ∇ₓ(z_k - z_s),  f_k = z_k - z_s,  l = argmin_k |f_k| / ||w_k||,
        r = (|f_l| / ||w_l|| + 1e-4) · w_l / ||w_l||,   x ← clip(x + (1 + overshoot)·Σr, 0, 1)

    with ``s = y`` and ``k`` over the candidate classes (the ``num_classes - 1`` other classes with
    the largest logits at ``x``, fixed for all iterations). The gradients ``w_k`` come from
    ``torch.autograd.grad(..., create_graph=True)``, so ``delta`` is a function of the
    parameters through the logits *and* through the input gradients (the paper's "reverse
    network", Section 3.3); ``create_graph=False`` keeps only the first path (cheaper, not the paper's).

    Images stop moving once they leave their starting side (as in DeepFool): a per-image boolean
    ``active`` multiplies nothing but selects, ``Σr ← Σr + where(active, r, 0)``, so a stopped
    image's later steps are computed with the batch and discarded, with zero gradient, and its
    result does not depend on its batch-mates. There is no Python branch per image; the loop
    ends early only when no image of the batch is active. ``misclassified`` says what an image
    misclassified at ``x`` does: ``"stay"`` (DeepFool's convention for a given label ``y``: it
    does not move, ``delta = 0``), or ``"to_label"`` (Deep Defense's set F: binary DeepFool from
    its current prediction ``p`` towards ``y``, ``s = p`` re-read at every iterate and the one
    candidate ``y``, until it is classified ``y``).

    Cost per iteration: one forward pass over the batch and ``num_classes - 1`` backward passes
    (one per candidate column, each over the whole batch; a stopped image is still computed
    until the whole batch has stopped), each recorded as a graph when ``create_graph``; the
    training backward pass then runs through all of them (second-order terms). Measured on
    LeNet-5, MNIST, batch 128, one thread: a plain step 11 ms, each unrolled iteration with all
    10 classes about +170 ms (Deep Defense with 5 iterations ≈ 80× a plain step), about 35 %
    less without ``create_graph`` and 65 % less with ``num_classes=3`` (the top-k candidates by
    logit at ``x``, as in DeepFool). One ``autograd.grad(..., is_grads_batched=True)`` instead of
    the loop over columns measured 1.5× slower.

    Batch norm in training mode couples the images of a batch: the per-class backward of the
    batch's summed logits is then not each image's own gradient (the library's DeepFool has the
    same property in training mode); the paper's networks have no batch norm.

    Args:
        model: callable from images in [0, 1] to logits, differentiable in its input.
        x: images in [0, 1]. y: labels.
        iters: DeepFool iterations, >= 1 (the authors: 5).
        overshoot: factor ``1 + overshoot`` on the accumulated step, >= 0 (DeepFool: 0.02).
        num_classes: candidate classes including ``y`` (the top ones by logit at ``x``), >= 2;
            None: all of them.
        create_graph: keep the input gradients in the graph (second-order terms).
        misclassified: ``"stay"`` or ``"to_label"`` (see above).
        clip: keep every iterate in [0, 1], as :func:`purify.attacks.deepfool` does.

    Returns:
        :class:`UnrolledDeepFool` ``(delta, x_adv, logits, correct, steps)``.

    Shape:
        x: (B, C, H, W) floating in [0, 1]; y: (B,) int64; delta, x_adv: like x; logits: (B, K);
        correct, steps: (B,).
    Raises:
        ShapeError, RangeError, DTypeError, UnknownNameError, NonDifferentiableError
    Example:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3), torch.nn.Tanh())
        >>> x = torch.rand(2, 3, 2, 2) * 0.5 + 0.25
        >>> out = deepfool_unrolled(net, x, net(x).argmax(1), iters=3)
        >>> out.delta.shape, out.delta.requires_grad
        (torch.Size([2, 3, 2, 2]), True)
    """
    fn = "deepfool_unrolled"
    if not callable(model):
        raise DTypeError(f"{fn}: expected model to be callable (images -> logits), got {type(model).__name__}")
    check_image_batch(fn, x)
    y = _check_labels(fn, y, x)
    check_int(fn, iters, name="iters", low=1)
    overshoot = check_float(fn, overshoot, name="overshoot", low=0.0)
    if num_classes is not None:
        check_int(fn, num_classes, name="num_classes", low=2)
    _check_bool(fn, create_graph, "create_graph")
    _check_bool(fn, clip, "clip")
    check_choice(fn, misclassified, name="misclassified", choices=MISCLASSIFIED)
    # the input gradients need grad mode even when the caller validates under no_grad, as the attacks do
    with torch.enable_grad():
        return _unrolled(fn, model, x, y, iters, overshoot, num_classes, create_graph, misclassified == "to_label",
                         clip)


def _unrolled(fn: str, model: ModelFn, x: Tensor, y: Tensor, iters: int, overshoot: float, num_classes: int | None,
              create_graph: bool, to_label: bool, clip: bool) -> UnrolledDeepFool:
    base = x if x.requires_grad else x.detach().requires_grad_(True)      # a caller's graph through x is kept
    logits0 = model(base)
    _check_logits(fn, logits0, y)
    _check_differentiable(fn, logits0)
    n_cls = logits0.shape[1]
    if n_cls < 2:
        raise ShapeError(f"{fn}: expected model to return at least 2 classes, got {n_cls}")
    cand = _candidates(logits0.detach(), y, n_cls if num_classes is None else num_classes)      # (B, k - 1)
    correct = logits0.detach().argmax(1) == y
    active = torch.ones_like(correct) if to_label else correct.clone()
    steps = torch.zeros_like(y)
    r_tot = torch.zeros_like(base)
    x_cur, logits = base, logits0
    for it in range(iters):
        if it > 0:
            if not x_cur.requires_grad:      # no parameter needs a gradient (e.g. a frozen model): a fresh leaf
                x_cur = x_cur.detach().requires_grad_(True)
            logits = model(x_cur)
        pred = logits.detach().argmax(1)
        active = active & ((pred == y) == correct)        # still on the side of the boundary it started from
        if not bool(active.any()):
            break
        src = torch.where(correct, y, pred)                                  # the class to leave
        tgt = torch.where(correct[:, None], cand, y[:, None].expand_as(cand))  # F's columns all read y
        r = _step(logits, x_cur, src, tgt, create_graph)
        r_tot = r_tot + torch.where(active.view(-1, 1, 1, 1), r, torch.zeros_like(r))
        steps = steps + active.long()
        x_cur = base + (1.0 + overshoot) * r_tot
        if clip:
            x_cur = x_cur.clamp(0.0, 1.0)
    return UnrolledDeepFool(x_cur - base, x_cur, logits0, correct, steps)


def _step(logits: Tensor, xa: Tensor, src: Tensor, tgt: Tensor, create_graph: bool) -> Tensor:
    """DeepFool's L2 step for every image of the batch, (B, C, H, W); one backward pass per column of ``tgt``."""
    b = logits.shape[0]
    z_src = logits.gather(1, src[:, None]).squeeze(1)
    best_dist = torch.full((b,), float("inf"), dtype=xa.dtype, device=xa.device)
    best_w = torch.zeros_like(xa)
    for j in range(tgt.shape[1]):
        f = logits.gather(1, tgt[:, j:j + 1]).squeeze(1) - z_src
        # images are independent, so the gradient of the batch's sum is every image's own row
        (w,) = torch.autograd.grad(f.sum(), xa, create_graph=create_graph, retain_graph=True)
        dist = f.abs() / torch.linalg.vector_norm(w.flatten(1), dim=1).clamp_min(1e-12)
        closer = dist.detach() < best_dist.detach()      # strict: the first nearest class wins, as in deepfool()
        best_dist = torch.where(closer, dist, best_dist)
        best_w = torch.where(closer.view(b, 1, 1, 1), w, best_w)
    norm = torch.linalg.vector_norm(best_w.flatten(1), dim=1).clamp_min(1e-12)
    return ((best_dist + _STEP_PAD) / norm).view(b, 1, 1, 1) * best_w


def relative_norm(delta: Tensor, x: Tensor) -> Tensor:
    """Per image ``||delta||_2 / ||x||_2`` (the ρ of DeepFool and Deep Defense), in the graph.

    Shape:
        delta, x: (B, ...); output: (B,).
    Example:
        >>> relative_norm(torch.full((1, 4), 0.1), torch.full((1, 4), 0.5))
        tensor([0.2000])
    """
    ref = torch.linalg.vector_norm(x.flatten(1), dim=1).clamp_min(1e-12)
    return torch.linalg.vector_norm(delta.flatten(1), dim=1) / ref


def deep_defense_penalty(rho: Tensor, correct: Tensor, *, c: float = 25.0, d: float = 5.0) -> Tensor:
    """Each image's term ``R`` of Deep Defense's Eq. (6), R = exp: ``exp(-c·ρ)`` if correct, ``exp(d·ρ)`` if not.

    Shape:
        rho: (B,); correct: (B,) bool; output: (B,).
    Example:
        >>> deep_defense_penalty(torch.tensor([0.1, 0.1]), torch.tensor([True, False]), c=10.0, d=5.0)
        tensor([0.3679, 1.6487])
    """
    # the sign goes in the exponent, not in a where() over two exps: the unused exp(d·ρ) of a correct
    # image could overflow, and where() would turn its zero gradient into nan
    return torch.exp(torch.where(correct, -c * rho, d * rho))


@dataclass(frozen=True)
class DeepDefense:
    """Deep Defense: cross-entropy plus ``lam`` times the mean exp-penalty on the DeepFool perturbation's size.

    ``loss = mean_k CE_k + lam · mean_k R(ρ_k)`` with ``R`` of Eq. (6) (:func:`deep_defense_penalty`)
    and ``ρ_k = ||Δx_k|| / ||x_k||`` from :func:`deepfool_unrolled` (``misclassified="to_label"``).
    Eq. (3) and (6) sum over the training set; per batch both terms are divided by the batch
    size, as in the authors' code, so ``lam`` keeps the paper's meaning. ``lam = 0`` is plain
    cross-entropy (DeepFool is then skipped). The clean forward pass is shared with DeepFool's
    first iteration.

    ``adversarial`` is False. :meth:`validate` reports DeepFool's ρ₂ (library :func:`deepfool`,
    :func:`rho2_validation`) on the first ``rho_count`` validation images, the paper's robustness
    curve (its Fig. 2); epochs are still selected on clean accuracy, since ρ₂ alone would favour
    epochs that trade accuracy for margin. The paper fine-tunes for a fixed number of epochs
    (MNIST 5, CIFAR-10 50) and keeps the last: ``--keep last`` in
    :mod:`purify.training.adversarial`.

    Args:
        lam, c, d: λ, c, d of Eq. (6), >= 0 (paper: 15, 25, 5; NIN c = 70; ImageNet 5, 500, 5).
        iters: DeepFool iterations unrolled (the authors: 5).
        overshoot: DeepFool's overshoot (0.02).
        num_classes: candidate classes of DeepFool (None: all; the authors use all 10).
        create_graph: second-order terms through the input gradients (the paper: yes).
        clip: DeepFool's iterates stay in [0, 1] (see the module docstring).
        rho_count: validation images for :meth:`validate`'s ρ₂ (0: no validation figures).
        val_max_iter: DeepFool iterations for that ρ₂.

    Shape:
        x: (B, C, H, W) in [0, 1]; y: (B,) int64; loss: scalar.
    Example:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        >>> x, y = torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
        >>> loss, _ = DeepDefense(lam=0.0)(net, x, y, generator=None)
        >>> bool(torch.isclose(loss, F.cross_entropy(net(x), y)))
        True
    """

    lam: float = 15.0
    c: float = 25.0
    d: float = 5.0
    iters: int = 5
    overshoot: float = 0.02
    num_classes: int | None = None
    create_graph: bool = True
    clip: bool = True
    rho_count: int = 1000
    val_max_iter: int = 50
    name = "deep_defense"
    adversarial = False

    def __post_init__(self) -> None:
        fn = "DeepDefense"
        for key in ("lam", "c", "d", "overshoot"):
            check_float(fn, getattr(self, key), name=key, low=0.0)
        check_int(fn, self.iters, name="iters", low=1)
        if self.num_classes is not None:
            check_int(fn, self.num_classes, name="num_classes", low=2)
        _check_bool(fn, self.create_graph, "create_graph")
        _check_bool(fn, self.clip, "clip")
        check_int(fn, self.rho_count, name="rho_count", low=0)
        check_int(fn, self.val_max_iter, name="val_max_iter", low=1)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, *,
                 generator: torch.Generator | None) -> tuple[Tensor, dict[str, float]]:
        if self.lam == 0:
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            return loss, {"loss": float(loss.detach()), "acc": _acc(logits, y), "penalty": 0.0, "rho": 0.0}
        out = deepfool_unrolled(model, x, y, iters=self.iters, overshoot=self.overshoot,
                                num_classes=self.num_classes, create_graph=self.create_graph,
                                misclassified="to_label", clip=self.clip)
        rho = relative_norm(out.delta, x)
        # Eq. (3) with R of Eq. (6), both sums divided by the batch size (the authors' normalization)
        penalty = deep_defense_penalty(rho, out.correct, c=self.c, d=self.d).mean()
        loss = F.cross_entropy(out.logits, y) + self.lam * penalty
        return loss, {"loss": float(loss.detach()), "acc": _acc(out.logits, y), "penalty": float(penalty.detach()),
                      "rho": float(rho.detach().mean())}

    def validate(self, model: nn.Module, x: Tensor, y: Tensor, *, seed: int) -> dict[str, float]:
        """DeepFool's ρ₂ on the first ``rho_count`` images (:func:`rho2_validation`); ``seed`` unused."""
        return rho2_validation(model, x[:self.rho_count], max_iter=self.val_max_iter) if self.rho_count else {}

    def config(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self),
                "penalty": "lam * mean(exp(-c*rho) on correct, exp(d*rho) on misclassified), Eq. (6)"}


def _acc(logits: Tensor, y: Tensor) -> float:
    return 100.0 * float((logits.detach().argmax(1) == y).float().mean()) if len(y) else 0.0


def rho2_validation(model: ModelFn, x: Tensor, *, max_iter: int = 50, num_classes: int = 10,
                    batch_size: int = 500) -> dict[str, float]:
    """DeepFool's robustness ρ₂ (in percent) of ``model`` on ``x``, by the library's :func:`deepfool`.

    As in the DeepFool paper's Eq. (15) and Deep Defense's Eq. (7), each image is attacked away
    from the model's own prediction (so misclassified images count too), L2, overshoot 0.02.
    ``rho2`` is ``100 · mean ||Δx|| / ||x||`` over the images DeepFool fooled within ``max_iter``
    iterations, ``rho2_fooled`` the percentage of those (the others would only lower the mean).

    Shape:
        x: (N, C, H, W) in [0, 1]. Output: ``{"rho2": .., "rho2_fooled": ..}`` (nan and 0 when N = 0).
    Example:
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        >>> out = rho2_validation(net, torch.rand(4, 3, 2, 2) * 0.5 + 0.25)
        >>> out["rho2_fooled"], out["rho2"] > 0
        (100.0, True)
    """
    rhos, fooled = [], []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        with torch.no_grad():
            pred = model(xb).argmax(1)
        adv = deepfool(model, xb, pred, max_iter=max_iter, num_classes=num_classes)
        with torch.no_grad():
            fooled.append(model(adv).argmax(1) != pred)
        rhos.append(relative_norm((adv - xb).double(), xb.double()))
    if not rhos:
        return {"rho2": float("nan"), "rho2_fooled": 0.0}
    rho, ok = torch.cat(rhos), torch.cat(fooled)
    return {"rho2": 100.0 * float(rho[ok].mean()) if bool(ok.any()) else float("nan"),
            "rho2_fooled": 100.0 * float(ok.float().mean())}
