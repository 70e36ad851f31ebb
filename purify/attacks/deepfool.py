"""DeepFool (Moosavi-Dezfooli et al., CVPR'16), L2 and L∞, batched over images.

At every iteration the classifier is linearized around the current point and each image
moves to the nearest linearized boundary between its label ``y`` and one of the
``num_classes - 1`` other classes with the largest clean logits::

    w_k = grad z_k - grad z_y,  f_k = z_k - z_y,  l = argmin_k |f_k| / ||w_k||_q
    L2:  r = (|f_l| / ||w_l||_2 + 1e-4) * w_l / ||w_l||_2
    L∞:  r = (|f_l| / ||w_l||_1 + 1e-4) * sign(w_l)            (q = 1, the dual of ∞)

and ``x_adv = clip(x + (1 + overshoot) * sum r, 0, 1)``. Only the images not yet
misclassified are forwarded again (a boolean mask over the batch, no loop over images), so
each image's result is independent of its batch-mates. The Jacobian rows come from one
``autograd.grad`` per class over the active batch.

:func:`rho2` is the robustness metric of the DeepFool and Deep Defense papers,
``mean_k ||delta_k||_2 / ||x_k||_2``.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import Tensor

from purify._checks import check_choice, check_float, check_image_batch, check_int
from purify.attacks.gradient import NORMS, _check_differentiable, _check_labels, _check_logits
from purify.errors import DTypeError, ShapeError

__all__ = ["deepfool", "rho2"]

log = logging.getLogger(__name__)

ModelFn = Callable[[Tensor], Tensor]

_STEP_PAD = 1e-4  # DeepFool's extra push past the linearized boundary (reference implementation)


def deepfool(model_fn: ModelFn, x: Tensor, y: Tensor, *, norm: str = "l2", overshoot: float = 0.02,
             max_iter: int = 50, num_classes: int = 10) -> Tensor:
    """Minimal L2 or L∞ perturbation that moves each image out of its class ``y``.

    Images already misclassified at ``x`` come back unchanged; images still correctly
    classified after ``max_iter`` steps come back as their last iterate. The model is called
    on the shrinking batch of images that are still correctly classified.

    Args:
        model_fn: callable from images in [0, 1] to logits (an EOT wrapper works too).
        x: clean images in [0, 1]. y: their labels (the class to leave).
        norm: ``"l2"`` or ``"linf"``.
        overshoot: factor ``1 + overshoot`` on the accumulated step, >= 0.
        max_iter: maximum number of linearization steps, >= 0.
        num_classes: how many classes to consider (the label's and the next ones by clean
            logit), >= 2; capped at the model's number of classes.

    Returns:
        A new detached tensor ``x_adv`` in [0, 1].

    Shape:
        x: (B, C, H, W), floating, values in [0, 1]; y: (B,) int64; output: like x.
    Raises:
        ShapeError, RangeError, DTypeError, UnknownNameError, NonDifferentiableError
    Example:
        >>> clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
        >>> x = torch.rand(4, 3, 8, 8) * 0.5 + 0.25
        >>> y = clf(x).argmax(1)
        >>> bool((clf(deepfool(clf, x, y)).argmax(1) != y).all())
        True
    """
    fn = "deepfool"
    if not callable(model_fn):
        raise DTypeError(f"{fn}: expected model_fn to be callable (images -> logits), got {type(model_fn).__name__}")
    check_image_batch(fn, x)
    y = _check_labels(fn, y, x)
    check_choice(fn, norm, name="norm", choices=NORMS)
    overshoot = check_float(fn, overshoot, name="overshoot", low=0.0)
    check_int(fn, max_iter, name="max_iter", low=0)
    check_int(fn, num_classes, name="num_classes", low=2)

    x0 = x.detach()
    b = x0.shape[0]
    x_adv = x0.clone()
    if b == 0 or max_iter == 0:
        return x_adv
    r_tot = torch.zeros_like(x0)
    active = torch.arange(b, device=x0.device)
    candidates = None  # (B, k): the other classes, by clean logit
    for it in range(max_iter):
        with torch.enable_grad():
            xa = x_adv[active].requires_grad_(True)
            logits = model_fn(xa)
            if candidates is None:
                _check_logits(fn, logits, y)
                _check_differentiable(fn, logits)
                candidates = _candidates(logits.detach(), y, num_classes)
            still = logits.detach().argmax(1) == y[active]
            if not bool(still.any()):
                break
            if not bool(still.all()):  # drop the fooled ones before the backward passes
                active, logits, xa_keep = active[still], logits[still], still
            else:
                xa_keep = None
            r = _step(logits, xa, y[active], candidates[active], norm, xa_keep)
        r_tot[active] += r
        x_adv[active] = (x0[active] + (1.0 + overshoot) * r_tot[active]).clamp(0.0, 1.0)
    log.debug("deepfool: stopped after %d iterations, %d/%d images still correctly classified",
              it + 1, int(active.numel()), b)
    return x_adv


def _candidates(logits: Tensor, y: Tensor, num_classes: int) -> Tensor:
    """The ``min(num_classes, K) - 1`` classes other than y with the largest logits, per image."""
    k = min(num_classes, logits.shape[1]) - 1
    if k < 1:
        raise ShapeError(f"deepfool: expected model_fn to return at least 2 classes, got {logits.shape[1]}")
    others = logits.scatter(1, y[:, None], float("-inf"))
    return others.topk(k, dim=1).indices


def _step(logits: Tensor, xa: Tensor, y: Tensor, cand: Tensor, norm: str, keep: Tensor | None) -> Tensor:
    """The DeepFool step r of every image of the (active) batch, (n, C, H, W)."""
    n = logits.shape[0]
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    g_y = _rows(z_y, xa, keep)
    best_dist = torch.full((n,), float("inf"), dtype=xa.dtype, device=xa.device)
    best_f = torch.zeros_like(best_dist)
    best_w = torch.zeros_like(g_y)
    q = 2.0 if norm == "l2" else 1.0
    for j in range(cand.shape[1]):
        z_k = logits.gather(1, cand[:, j:j + 1]).squeeze(1)
        w_k = _rows(z_k, xa, keep) - g_y
        f_k = (z_k - z_y).detach().abs()
        dist = f_k / torch.linalg.vector_norm(w_k.flatten(1), ord=q, dim=1).clamp_min(1e-12)
        closer = dist < best_dist
        best_dist = torch.where(closer, dist, best_dist)
        best_f = torch.where(closer, f_k, best_f)
        best_w = torch.where(closer.view(n, 1, 1, 1), w_k, best_w)
    scale = (best_dist + _STEP_PAD).view(n, 1, 1, 1)
    if norm == "l2":
        return scale * best_w / torch.linalg.vector_norm(best_w.flatten(1), dim=1).clamp_min(1e-12).view(n, 1, 1, 1)
    return scale * best_w.sign()


def _rows(z: Tensor, xa: Tensor, keep: Tensor | None) -> Tensor:
    """d z_b / d x_b for every image b (one backward over the batch), restricted to ``keep``."""
    (g,) = torch.autograd.grad(z.sum(), xa, retain_graph=True)
    return g if keep is None else g[keep]


def rho2(x: Tensor, x_adv: Tensor) -> float:
    """Mean relative L2 perturbation ``mean_k ||x_adv_k - x_k||_2 / ||x_k||_2`` (DeepFool's rho_2).

    An all-zero image counts as ``||delta|| / 1e-12``; an empty batch gives nan.

    Shape:
        x, x_adv: (B, C, H, W), the same shape.
    Raises:
        ShapeError, DTypeError
    Example:
        >>> x = torch.full((2, 1, 2, 2), 0.5)
        >>> round(rho2(x, x + 0.05), 6)
        0.1
    """
    check_image_batch("rho2", x, check_range=False)
    check_image_batch("rho2", x_adv, name="x_adv", check_range=False)
    if x.shape != x_adv.shape:
        raise ShapeError(f"rho2: expected x_adv of the same shape as x {tuple(x.shape)}, got {tuple(x_adv.shape)}")
    if x.shape[0] == 0:
        return float("nan")
    delta = torch.linalg.vector_norm((x_adv - x).detach().flatten(1).double(), dim=1)
    ref = torch.linalg.vector_norm(x.detach().flatten(1).double(), dim=1).clamp_min(1e-12)
    return float((delta / ref).mean())
