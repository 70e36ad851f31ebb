"""Rand+FGSM (Tramèr et al., ICLR'18, "Ensemble Adversarial Training"): a random sign step, then FGSM.

::

    x'    = clip(x + alpha * sign(N(0, I)), 0, 1)
    x_adv = clip(x' + (eps - alpha) * sign(grad_x' CE(model(x'), y)), 0, 1)

A single-step attack that steps off the data point before taking the gradient: adversarially
trained models (and some defenses) mask the gradient right at ``x`` with a sharp curvature of the
loss, which a small random step escapes. The two steps together stay in the L∞ ball of radius
``eps``: ``alpha + (eps - alpha) = eps``, and clipping to [0, 1] only moves a coordinate towards
``x`` (which lies in [0, 1]). ``alpha = 0`` is :func:`~purify.attacks.gradient.fgsm` exactly;
``alpha = eps`` is pure random sign noise (no gradient step).

The gradient comes from :func:`~purify.attacks.gradient.loss_and_input_grad`, as FGSM's does, so
an :class:`~purify.attacks.wrappers.EOT` model is differentiated draw by draw and
:func:`~purify.attacks.wrappers.bpda` stages need nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor

from purify._checks import check_generator, check_image_batch, per_sample
from purify.attacks.gradient import ModelFn, _check_labels, _CheckedLoss, _project, ce_loss, loss_and_input_grad
from purify.errors import DTypeError, RangeError

__all__ = ["rand_fgsm"]


def rand_fgsm(model_fn: ModelFn, x: Tensor, y: Tensor, *, eps: float | Tensor, alpha: float | Tensor | None = None,
              generator: torch.Generator | None = None) -> Tensor:
    """Rand+FGSM: a random step ``alpha * sign(N(0, I))``, then an FGSM step of ``eps - alpha`` from there.

    Untargeted, on the per-image cross-entropy of the true label ``y`` (Tramèr et al.'s loss).
    ``eps = 0`` gives back an exact copy of ``x`` without drawing or calling the model; so does any
    image whose eps is 0. The model's train/eval mode and parameters are left as they are; no
    ``.grad`` is written anywhere.

    Args:
        model_fn: any callable from images in [0, 1] to logits; may carry ``expected_loss_and_grad`` (EOT).
        x: clean images in [0, 1]. y: their labels.
        eps: the L∞ budget, a float or one value per image, >= 0.
        alpha: size of the random step, a float or one value per image, with ``0 <= alpha <= eps``
            (the random step spends part of the budget). None: ``eps / 2``, the paper's setting
            (eps = 16/255, alpha = 8/255).
        generator: where the Gaussian draw comes from (on x's device); None uses torch's global RNG.

    Returns:
        A new detached tensor ``x_adv`` with ``||x_adv - x||_inf <= eps`` and values in [0, 1].

    Shape:
        x: (B, C, H, W), floating, values in [0, 1]; y: (B,) int64; eps, alpha: float or (B,);
        output: same shape, dtype and device as x. model_fn output: (B, K).
    Raises:
        ShapeError, RangeError (also alpha > eps), DTypeError; NonDifferentiableError when the loss
        has no gradient with respect to x (wrap such stages with :func:`bpda`).
    Example:
        >>> clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
        >>> x, y = torch.rand(2, 3, 8, 8), torch.tensor([0, 1])
        >>> adv = rand_fgsm(clf, x, y, eps=8 / 255, generator=torch.Generator().manual_seed(0))
        >>> bool((adv - x).abs().max() <= 8 / 255 + 1e-6), adv.shape
        (True, torch.Size([2, 3, 8, 8]))
    """
    fn = "rand_fgsm"
    if not callable(model_fn):
        raise DTypeError(f"{fn}: expected model_fn to be callable (images -> logits), got {type(model_fn).__name__}")
    check_image_batch(fn, x)
    y = _check_labels(fn, y, x)
    b = x.shape[0]
    eps_t = per_sample(fn, eps, name="eps", batch=b, like=x)
    alpha_t = eps_t / 2 if alpha is None else per_sample(fn, alpha, name="alpha", batch=b, like=x)
    if b and bool((alpha_t > eps_t).any()):
        i = int((alpha_t > eps_t).flatten().nonzero()[0])
        raise RangeError(f"{fn}: expected alpha <= eps (the random step is part of the budget), got alpha "
                         f"{float(alpha_t.flatten()[i]):.4g} > eps {float(eps_t.flatten()[i]):.4g} for image {i}; "
                         "leave alpha out for eps / 2 (Tramèr et al.'s setting)")
    check_generator(fn, generator, x.device)

    x0 = x.detach()
    if b == 0 or not bool((eps_t > 0).any()):
        return x0.clone()
    # The noise is drawn in float32 whatever x's dtype: only its sign is used, and the same seed
    # then gives the same step for float16, float32 and float64 images.
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=torch.float32)
    x_rand = (x0 + alpha_t * noise.sign().to(x0.dtype)).clamp(0.0, 1.0)
    step = eps_t - alpha_t
    if not bool((step > 0).any()):               # alpha = eps everywhere: nothing left for the gradient
        return x_rand
    _, grad = loss_and_input_grad(fn, model_fn, x_rand, y, _CheckedLoss(fn, ce_loss))
    # Projected like an FGSM step: the two steps can overshoot eps by a rounding error, never more.
    return _project(x0, x_rand + step * grad.sign(), eps_t, "linf")
