"""What a defense does to a classifier besides its accuracy: loss sensitivity and distance to the training set.

Zantedeschi et al. (2017, "Efficient defenses against adversarial attacks", Sec. 4.1) measure a
defense by three numbers beyond accuracy:

* the **empirical robustness** ``rho_F = E ||dx||_2 / ||x||_2`` over the minimal perturbations
  ``dx`` that change the prediction: :func:`purify.attacks.fgsm_minimal` makes them, and
  :func:`purify.attacks.rho2` of the images it fooled averages them (the benchmark harness's
  ``rho2_success`` column);
* the **training set distance**, the mean Euclidean distance from an adversarial image to its
  nearest training image: :func:`nearest_distance`, exact and chunked over the training images;
* the **local loss sensitivity** ``l_F = (1/M) sum_i ||dJ(theta, x_i, y_i) / dx_i||_2`` over M
  test images, J the cross-entropy of the true label: :func:`loss_sensitivity`.

Both functions here take any ``model_fn`` / images the attacks take; the harness computes them for
a config that asks (``[metrics]``, see :mod:`benchmarks.harness.metrics`).

The robustness of DeepFool and Deep Defense (Yan et al. 2018, Eq. (7) and its supplement's Eq. (2)),
from an attack's output rather than a model:

* :func:`perturbation_size`: per image ``||x_adv - x||_p``, divided by ``||x||_p`` when ``relative``
  (p = 2 or ∞);
* :func:`rho`: its mean over the images an attack fooled, ``ρ₂`` with DeepFool's examples, ``ρ∞``
  with minimal FGS's (:func:`purify.attacks.fgsm_minimal`); ``relative=False`` gives the plain
  mean norm (the supplement's ``l₂`` columns).
"""

from __future__ import annotations

import torch
from torch import Tensor

from purify._checks import check_choice, check_image_batch, check_int
from purify.attacks.gradient import NORMS
from purify.attacks.gradient import ModelFn, _check_labels, _CheckedLoss, ce_loss, loss_and_input_grad
from purify.errors import DTypeError, ShapeError

__all__ = ["loss_sensitivity", "nearest_distance", "perturbation_size", "rho"]


def loss_sensitivity(model_fn: ModelFn, x: Tensor, y: Tensor, /, *, reduction: str = "mean") -> Tensor:
    """Local loss sensitivity: each image's cross-entropy gradient norm, ``||dCE(model_fn(x_i), y_i) / dx_i||_2``.

    Each image's own loss is differentiated (the losses are summed, never averaged over the batch,
    so a norm does not depend on how many images share the batch). ``reduction="mean"`` gives the
    paper's ``l_F`` over these images; ``"none"`` the per-image norms, to average over batches.
    A model_fn carrying ``expected_loss_and_grad`` (:class:`~purify.attacks.wrappers.EOT`) gives the
    norm of its expected gradient; :func:`~purify.attacks.wrappers.bpda` stages pass the gradient
    at their output back unchanged. For a linear model ``z = W x + b`` the gradient is
    ``W^T (softmax(z) - onehot(y))``.

    Shape:
        x: (B, C, H, W), floating, values in [0, 1]; y: (B,) int64; output: () for ``"mean"`` (nan
        when B = 0), (B,) for ``"none"``; x's dtype and device.
    Raises:
        ShapeError, RangeError, DTypeError, UnknownNameError; NonDifferentiableError when the loss has
        no gradient with respect to x.
    Example:
        >>> clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 10))
        >>> x, y = torch.rand(2, 3, 4, 4), torch.tensor([0, 1])
        >>> loss_sensitivity(clf, x, y, reduction="none").shape
        torch.Size([2])
    """
    fn = "loss_sensitivity"
    if not callable(model_fn):
        raise DTypeError(f"{fn}: expected model_fn to be callable (images -> logits), got {type(model_fn).__name__}")
    check_image_batch(fn, x)
    y = _check_labels(fn, y, x)
    check_choice(fn, reduction, name="reduction", choices=("mean", "none"))
    if x.shape[0] == 0:
        empty = x.new_zeros(0)
        return empty.sum() / 0 if reduction == "mean" else empty
    _, grad = loss_and_input_grad(fn, model_fn, x.detach(), y, _CheckedLoss(fn, ce_loss))
    norms = torch.linalg.vector_norm(grad.flatten(1).double(), dim=1).to(x.dtype)
    return norms.mean() if reduction == "mean" else norms


def nearest_distance(x: Tensor, reference: Tensor, /, *, chunk_size: int = 2048) -> tuple[Tensor, Tensor]:
    """Euclidean distance from each image to its nearest image of ``reference``, and that image's index.

    Exact nearest neighbour: every pair is compared, ``chunk_size`` reference images at a time, so
    memory is ``O(chunk_size * (D + B))`` whatever the size of ``reference`` (60,000 MNIST or
    45,000 CIFAR-10 training images against a few hundred images run in seconds on a CPU).
    Distances are computed in float64 (``|x|^2 + |r|^2 - 2 x.r`` for the search) and the distance
    to the chosen neighbour is recomputed directly, so an image equal to a reference image gets 0
    exactly. Ties go to the lower index. A ``uint8`` reference (the data sets' storage) is read as
    ``value / 255``, a floating one as it is.

    Shape:
        x: (B, *S), floating; reference: (N, *S) with the same S, floating or uint8, N >= 1 (for
        images S = (C, H, W)); output: distances (B,) in x's dtype, indices (B,) int64, on x's device.
    Raises:
        ShapeError: shapes that differ past the first dimension, or an empty reference.
        DTypeError: a non-floating x, or a reference neither floating nor uint8.
        RangeError: chunk_size < 1.
    Example:
        >>> ref = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
        >>> d, i = nearest_distance(torch.tensor([[3.0, 4.0], [0.6, 0.8]]), ref, chunk_size=1)
        >>> d.tolist(), i.tolist()
        ([0.0, 1.0], [1, 0])
    """
    fn = "nearest_distance"
    for name, t in (("x", x), ("reference", reference)):
        if not isinstance(t, Tensor):
            raise DTypeError(f"{fn}: expected {name} to be a torch.Tensor, got {type(t).__name__}")
    if not x.is_floating_point():
        raise DTypeError(f"{fn}: expected x of a floating dtype, got {x.dtype}; convert with x.float() / 255")
    if not (reference.is_floating_point() or reference.dtype == torch.uint8):
        raise DTypeError(f"{fn}: expected reference of a floating dtype or uint8 (read as value / 255), got "
                         f"{reference.dtype}")
    if x.dim() < 2 or reference.shape[1:] != x.shape[1:]:
        raise ShapeError(f"{fn}: expected x (B, *S) and reference (N, *S) with the same S, got {tuple(x.shape)} "
                         f"and {tuple(reference.shape)}; both need a leading batch dimension")
    if reference.shape[0] == 0:
        raise ShapeError(f"{fn}: expected at least one reference image, got shape {tuple(reference.shape)}")
    check_int(fn, chunk_size, name="chunk_size", low=1)

    xa = x.detach().flatten(1).double()
    x_sq = (xa * xa).sum(1, keepdim=True)
    best = torch.full((x.shape[0],), float("inf"), dtype=torch.float64, device=x.device)
    index = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
    for start in range(0, reference.shape[0], chunk_size):
        r = _as_float64(reference[start:start + chunk_size], x.device)
        d2 = (x_sq - 2.0 * (xa @ r.T) + (r * r).sum(1)).clamp_min_(0.0)
        v, i = d2.min(1)
        closer = v < best                 # strict: an equal distance in a later chunk keeps the earlier index
        best = torch.where(closer, v, best)
        index = torch.where(closer, i + start, index)
    # The expansion above loses precision next to 0 (|x|^2 ~ 10^3 for a CIFAR image): the chosen
    # neighbour's distance is recomputed as the norm of the difference.
    exact = torch.linalg.vector_norm(xa - _as_float64(reference[index.to(reference.device)], x.device), dim=1)
    return exact.to(x.dtype), index


def _as_float64(t: Tensor, device: torch.device) -> Tensor:
    """(n, *S) -> (n, D) float64 on ``device``; uint8 as value / 255."""
    out = t.flatten(1).to(device=device, dtype=torch.float64)
    return out / 255.0 if t.dtype == torch.uint8 else out


def perturbation_size(x: Tensor, x_adv: Tensor, /, *, norm: str = "l2", relative: bool = True) -> Tensor:
    """Per image ``||x_adv - x||_p / ||x||_p`` (``relative``) or ``||x_adv - x||_p``, p = 2 (``"l2"``) or ∞ (``"linf"``).

    Computed in float64; an all-zero image divides by 1e-12, as :func:`purify.attacks.rho2` does.
    Neither input is checked for [0, 1] (a perturbation may be read on any scale).

    Shape:
        x, x_adv: (B, C, H, W), the same shape; output: (B,) float64 on x's device.
    Raises:
        ShapeError, DTypeError, UnknownNameError.
    Example:
        >>> x = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64)
        >>> adv = x + torch.tensor([0.3, 0.4, 0.0, 0.0], dtype=torch.float64).view(1, 1, 2, 2)
        >>> perturbation_size(x, adv).tolist(), perturbation_size(x, adv, norm="linf", relative=False).tolist()
        ([0.5], [0.4])
    """
    fn = "perturbation_size"
    check_image_batch(fn, x, check_range=False)
    check_image_batch(fn, x_adv, name="x_adv", check_range=False)
    if x.shape != x_adv.shape:
        raise ShapeError(f"{fn}: expected x_adv of the same shape as x {tuple(x.shape)}, got {tuple(x_adv.shape)}")
    check_choice(fn, norm, name="norm", choices=NORMS)
    if not isinstance(relative, bool):
        raise DTypeError(f"{fn}: expected relative to be a bool, got {type(relative).__name__}")
    return _sizes(x, x_adv, norm, relative)


def _sizes(x: Tensor, x_adv: Tensor, norm: str, relative: bool) -> Tensor:
    ord_ = 2.0 if norm == "l2" else float("inf")
    xd = x.detach().flatten(1).double()
    size = torch.linalg.vector_norm(x_adv.detach().flatten(1).double() - xd, ord=ord_, dim=1)
    return size / torch.linalg.vector_norm(xd, ord=ord_, dim=1).clamp_min(1e-12) if relative else size


def rho(x: Tensor, x_adv: Tensor, /, *, norm: str = "l2", fooled: Tensor | None = None,
        relative: bool = True) -> float:
    """Mean :func:`perturbation_size` over the images in ``fooled`` (all when None): ρ₂ / ρ∞ of an attack's output.

    DeepFool's and Deep Defense's ρ₂ is this mean over the images DeepFool fooled (an image it
    could not fool has no minimal perturbation); with minimal-FGS examples and ``norm="linf"`` it is
    the supplement's ρ∞. nan when no image is selected.

    Shape:
        x, x_adv: (B, C, H, W), the same shape; fooled: (B,) bool or None. Output: a float.
    Raises:
        ShapeError, DTypeError, UnknownNameError.
    Example:
        >>> x = torch.full((2, 1, 2, 2), 0.5)
        >>> adv = torch.stack([x[0] + 0.05, x[1] + 0.5])
        >>> round(rho(x, adv, fooled=torch.tensor([True, False])), 6), round(rho(x, adv), 6)
        (0.1, 0.55)
    """
    fn = "rho"
    sizes = perturbation_size(x, x_adv, norm=norm, relative=relative)
    if fooled is not None:
        if not isinstance(fooled, Tensor) or fooled.dtype != torch.bool:
            raise DTypeError(f"{fn}: expected fooled to be a bool tensor, got "
                             f"{fooled.dtype if isinstance(fooled, Tensor) else type(fooled).__name__}")
        if fooled.shape != sizes.shape:
            raise ShapeError(f"{fn}: expected fooled of shape ({len(sizes)},), one flag per image, got "
                             f"{tuple(fooled.shape)}")
        sizes = sizes[fooled.to(sizes.device)]
    return float(sizes.mean()) if len(sizes) else float("nan")
