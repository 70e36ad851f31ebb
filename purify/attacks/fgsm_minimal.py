"""Minimal-perturbation FGSM: the smallest eps on a grid at which the FGSM step changes the label.

The attack behind the *empirical robustness* of Zantedeschi et al. (2017, "Efficient defenses
against adversarial attacks", Sec. 4.1 and 4.4; ART's ``FastGradientMethod(minimal=True)`` used by
``art.metrics.empirical_robustness``)::

    s     = sign(grad_x CE(model(x), y))              computed once, at x
    x_k   = clip(x + eps_k * s, 0, 1),  eps_k = min(k * eps_step, eps_max),  k = 1, 2, ..., K
    x_adv = x_k for the first k at which argmax model(x_k) != y (per image)

with ``K = floor(eps_max / eps_step)``. The "adversarial examples are crafted incrementally using
FGSM with small perturbations, and the algorithm stops when the prediction changes": every image
stops at its own k, and only the images still classified as ``y`` are forwarded again (an index
over the batch, no loop over images), so an image's result never depends on its batch-mates.

Unlike iterated attacks (BIM), the direction is not recomputed: each candidate is the one-step FGSM
image of that size, so ``x_adv`` equals :func:`~purify.attacks.gradient.fgsm` with the image's own
eps. Two choices differ from ART and are stated here:

* an image the model already misclassifies at ``x`` comes back unchanged (its minimal perturbation
  is 0; ART would step it by ``eps_step`` first), as :func:`~purify.attacks.deepfool.deepfool` does;
* the grid is ``k * eps_step`` (not a running sum, whose rounding can skip the last step) and never
  passes ``eps_max``.

An image that no step fools comes back as its last candidate, ``x_K``: the FGSM image at
``K * eps_step`` (``eps_max`` when it lies on the grid). Read the result with the images it fooled
(the benchmark harness's ``rho2_success``: mean ``||x_adv - x||_2 / ||x||_2`` over them, the
paper's robustness as printed; ``rhoinf_success`` in L∞ norms, as ART computes it); the others
only say that no eps up to ``eps_max`` worked.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from purify._checks import check_choice, check_float, check_image_batch
from purify.attacks.gradient import LOSSES, ModelFn, _check_labels, _CheckedLoss, loss_and_input_grad
from purify.errors import DTypeError, RangeError

__all__ = ["fgsm_minimal"]

# k * eps_step may land a rounding error above a grid point that equals eps_max (3 * 0.1 > 0.3):
# the grid keeps that point, and eps_k is capped at eps_max.
_GRID_TOL = 1e-9


def fgsm_minimal(model_fn: ModelFn, x: Tensor, y: Tensor, *, eps_step: float = 0.01, eps_max: float = 0.3,
                 loss: str = "ce") -> Tensor:
    """FGSM with the smallest ``eps`` of the grid ``eps_step, 2 eps_step, ... <= eps_max`` that fools each image.

    One backward pass at ``x`` gives the sign direction; then one forward per grid step, of the
    images not yet fooled. Untargeted, on the per-image loss of the true label ``y``. The model's
    train/eval mode and parameters are left as they are; no ``.grad`` is written anywhere.

    Args:
        model_fn: any callable from images in [0, 1] to logits; may carry ``expected_loss_and_grad``
            (EOT: the direction is the sign of the expected gradient, predictions are the EOT model's).
        x: clean images in [0, 1]. y: their labels (the class to leave).
        eps_step: grid step, > 0 (the paper's "small perturbations"; images in [0, 1]).
        eps_max: the largest eps tried, >= ``eps_step``.
        loss: ``"ce"`` (cross-entropy, the paper's and ART's) or ``"margin"``.

    Returns:
        A new detached tensor ``x_adv`` in [0, 1]: per image, the FGSM image at the first grid eps
        that changes the prediction; ``x`` itself for an image misclassified at ``x``; the FGSM
        image at ``floor(eps_max / eps_step) * eps_step`` for one that no step fools.
        ``||x_adv - x||_inf <= eps_max`` always.

    Shape:
        x: (B, C, H, W), floating, values in [0, 1]; y: (B,) int64; output: same shape, dtype and
        device as x. model_fn output: (B, K).
    Raises:
        ShapeError, DTypeError, UnknownNameError; RangeError for eps_step <= 0 or eps_max < eps_step;
        NonDifferentiableError when the loss has no gradient with respect to x (wrap such stages with
        :func:`~purify.attacks.wrappers.bpda`).
    Example:
        >>> clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
        >>> x = torch.rand(4, 3, 8, 8) * 0.5 + 0.25
        >>> y = clf(x).argmax(1)
        >>> adv = fgsm_minimal(clf, x, y, eps_step=0.01, eps_max=0.2)
        >>> bool((adv - x).abs().amax() <= 0.2 + 1e-6), adv.shape
        (True, torch.Size([4, 3, 8, 8]))
    """
    fn = "fgsm_minimal"
    if not callable(model_fn):
        raise DTypeError(f"{fn}: expected model_fn to be callable (images -> logits), got {type(model_fn).__name__}")
    check_image_batch(fn, x)
    y = _check_labels(fn, y, x)
    eps_step = check_float(fn, eps_step, name="eps_step", low=0.0, low_inclusive=False)
    eps_max = check_float(fn, eps_max, name="eps_max", low=0.0, low_inclusive=False)
    if eps_max < eps_step:
        raise RangeError(f"{fn}: expected eps_max >= eps_step, got eps_max {eps_max:g} < eps_step {eps_step:g}; "
                         "the grid eps_step, 2 eps_step, ... would be empty")
    check_choice(fn, loss, name="loss", choices=tuple(LOSSES))

    x0 = x.detach()
    x_adv = x0.clone()
    if x0.shape[0] == 0:
        return x_adv
    loss_fn = _CheckedLoss(fn, LOSSES[loss])
    # Images wrong at x need no perturbation and no gradient: only the correct ones go on.
    active = (_predict(model_fn, x0, y, loss_fn) == y).nonzero().flatten()
    if active.numel() == 0:
        return x_adv
    _, grad = loss_and_input_grad(fn, model_fn, x0[active], y[active], loss_fn)
    direction = torch.zeros_like(x0)
    direction[active] = grad.sign().to(x0.dtype)
    steps = math.floor(eps_max / eps_step + _GRID_TOL)
    for k in range(1, steps + 1):
        eps = min(k * eps_step, eps_max)
        x_adv[active] = (x0[active] + eps * direction[active]).clamp(0.0, 1.0)
        still = _predict(model_fn, x_adv[active], y[active], loss_fn) == y[active]
        active = active[still]
        if active.numel() == 0:
            break
    return x_adv


def _predict(model_fn: ModelFn, x: Tensor, y: Tensor, loss_fn: _CheckedLoss) -> Tensor:
    """``argmax model_fn(x)``, detached; the first call checks the logits against ``y`` (through the loss wrapper)."""
    logits = model_fn(x)
    if not loss_fn.checked:          # the number of classes is known from the first forward
        loss_fn(logits.detach(), y)
    return logits.detach().argmax(1)
