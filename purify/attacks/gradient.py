"""Gradient attacks: one functional core, :func:`pgd`, with FGSM and BIM as its special cases.

* :func:`pgd` — projected gradient descent (Madry et al.) in an L∞ or L2 ball, optional random start;
* :func:`fgsm` — one step of size ``eps`` from ``x`` (Goodfellow et al.);
* :func:`bim` — I-FGSM (Kurakin et al.): ``iters`` steps of size ``eps / iters``, no random start.

Every step is projected onto the ball around ``x`` and clipped to [0, 1], so
``x_adv`` is always a valid image at distance <= eps. The whole batch moves at once and
each image's loss is summed, so an image's path never depends on its batch-mates.

The loss is the per-image cross-entropy (``"ce"``) or the Carlini–Wagner logit margin
``max_{j != y} z_j - z_y`` (``"margin"``), which does not saturate behind a softmax-free
defense head. A ``model_fn`` with an ``expected_loss(x, y, loss_fn)`` method (an :class:`EOT`
wrapper) is asked for that instead of ``loss_fn(model_fn(x), y)``, so the same code runs
plain, BPDA and EOT attacks.

The helpers with a leading underscore are shared by the other attacks of the package.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from purify._checks import check_choice, check_generator, check_image_batch, check_int, per_sample
from purify.errors import DTypeError, NonDifferentiableError, RangeError, ShapeError

__all__ = ["pgd", "fgsm", "bim", "ce_loss", "margin_loss", "LOSSES", "NORMS"]

log = logging.getLogger(__name__)

ModelFn = Callable[[Tensor], Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]

NORMS = ("linf", "l2")


def ce_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Per-image cross-entropy of ``logits`` against labels ``y``.

    Shape:
        logits: (B, K); y: (B,) int64; output: (B,).
    Example:
        >>> ce_loss(torch.zeros(2, 4), torch.tensor([0, 3])).mul(1e4).round().tolist()  # log(4) = 1.3863
        [13863.0, 13863.0]
    """
    return F.cross_entropy(logits, y, reduction="none")


def margin_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Per-image logit margin ``max_{j != y} z_j - z_y`` (positive once the image is misclassified).

    Shape:
        logits: (B, K), K >= 2; y: (B,) int64; output: (B,).
    Example:
        >>> margin_loss(torch.tensor([[1.0, 3.0, 2.0]]), torch.tensor([1])).tolist()
        [-1.0]
    """
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return others.amax(dim=1) - z_y


LOSSES: dict[str, LossFn] = {"ce": ce_loss, "margin": margin_loss}


# ----------------------------------------------------------------------------- shared helpers

def _check_labels(fn: str, y: object, x: Tensor) -> Tensor:
    """``y`` must be an int64 (B,) tensor of non-negative labels; returned on x's device."""
    if not isinstance(y, Tensor):
        raise DTypeError(f"{fn}: expected y to be a torch.Tensor of int64 labels, got {type(y).__name__}; "
                         "use torch.as_tensor(labels, dtype=torch.long)")
    if y.dtype != torch.int64:
        raise DTypeError(f"{fn}: expected y of dtype torch.int64, got {y.dtype}; convert with y.long()")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ShapeError(f"{fn}: expected y of shape ({x.shape[0]},), one label per image, got {tuple(y.shape)}; "
                         "pass class indices, not one-hot vectors")
    if y.numel() and int(y.min()) < 0:
        raise RangeError(f"{fn}: expected labels y >= 0, got min {int(y.min())}")
    return y.to(x.device)


def _check_bool(fn: str, value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise DTypeError(f"{fn}: expected {name} to be a bool, got {type(value).__name__}")
    return value


class _CheckedLoss:
    """``loss_fn`` that checks, on its first call only, that the logits fit the labels.

    The first forward is where the number of classes K becomes known; the check
    runs once, then the wrapper only forwards.
    """

    def __init__(self, fn: str, loss_fn: LossFn) -> None:
        self.fn, self.loss_fn, self.checked = fn, loss_fn, False

    def __call__(self, logits: Tensor, y: Tensor) -> Tensor:
        if not self.checked:
            _check_logits(self.fn, logits, y)
            self.checked = True
        return self.loss_fn(logits, y)


def _check_logits(fn: str, logits: object, y: Tensor) -> None:
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != y.shape[0]:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ShapeError(f"{fn}: expected model_fn to return logits of shape ({y.shape[0]}, K), got {got}; "
                         "flatten the classifier output or drop extra heads")
    if y.numel() and int(y.max()) >= logits.shape[1]:
        raise RangeError(f"{fn}: labels y must lie in [0, {logits.shape[1] - 1}] for a model with "
                         f"{logits.shape[1]} classes, got max {int(y.max())}")


def _model_loss(model_fn: ModelFn, x: Tensor, y: Tensor, loss_fn: LossFn) -> Tensor:
    """Per-image loss: ``model_fn.expected_loss(x, y, loss_fn)`` when it exists (EOT), else one forward."""
    expected = getattr(model_fn, "expected_loss", None)
    if callable(expected):
        return expected(x, y, loss_fn)
    return loss_fn(model_fn(x), y)


def loss_and_input_grad(fn: str, model_fn: ModelFn, x: Tensor, y: Tensor, loss_fn: LossFn) -> tuple[Tensor, Tensor]:
    """Per-image loss (detached) and d sum_b loss_b / d x at ``x``; leaves no .grad anywhere.

    An EOT model (``expected_loss_and_grad``) is differentiated one draw at a time; any other
    model in one forward and backward. Raises NonDifferentiableError when x gets no gradient.
    """
    per_draw = getattr(model_fn, "expected_loss_and_grad", None)
    if callable(per_draw):
        loss, grad = per_draw(x, y, loss_fn)
    else:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            loss = _model_loss(model_fn, xg, y, loss_fn)
            _check_differentiable(fn, loss)
            (grad,) = torch.autograd.grad(loss.sum(), xg, allow_unused=True)
        loss = loss.detach()
    if grad is None:                 # a graph through the weights only, or none: x was detached on the way
        _check_differentiable(fn, loss.detach())
    return loss, grad


def _input_grad(fn: str, model_fn: ModelFn, x: Tensor, y: Tensor, loss_fn: LossFn) -> Tensor:
    """d sum_b loss_b / d x at ``x``, with grad enabled locally; leaves no .grad anywhere."""
    return loss_and_input_grad(fn, model_fn, x, y, loss_fn)[1]


def _check_differentiable(fn: str, out: Tensor) -> None:
    if not out.requires_grad:
        raise NonDifferentiableError(
            f"{fn}: model_fn's output does not depend differentiably on x (no autograd graph); "
            "wrap non-differentiable or no-grad stages with purify.attacks.bpda(stage), or use a transfer attack")


def _flat_norm(t: Tensor, p: float = 2.0) -> Tensor:
    """Per-image p-norm over (C, H, W), shaped (B, 1, 1, 1)."""
    return torch.linalg.vector_norm(t.flatten(1), ord=p, dim=1).view(-1, 1, 1, 1)


# ----------------------------------------------------------------------------- core

def pgd(model_fn: ModelFn, x: Tensor, y: Tensor, *, eps: float | Tensor, step: float | Tensor, iters: int,
        norm: str = "linf", random_start: bool = False, targeted: bool = False,
        generator: torch.Generator | None = None, loss: str = "ce") -> Tensor:
    """Projected gradient descent in the L∞ or L2 ball of radius ``eps`` around ``x``.

    Untargeted, every step increases the loss with respect to the true label ``y``;
    targeted, it decreases the loss with respect to ``y``, then the target class.
    ``linf`` moves by ``step * sign(grad)``, ``l2`` by ``step * grad / ||grad||_2``; each step is
    projected onto the ball and clipped to [0, 1]. ``iters=0`` or ``eps=0`` gives back an exact
    copy of ``x`` without calling the model; an image with a per-sample eps of 0 comes back
    exactly as it was. The model's train/eval mode and parameters are left
    as they are; no ``.grad`` is written anywhere.

    Args:
        model_fn: any callable from images in [0, 1] to logits; may carry ``expected_loss`` (EOT).
        x: clean images in [0, 1]. y: labels (or targets when ``targeted``).
        eps: radius, a float or one value per image, >= 0.
        step: step size, a float or one value per image, >= 0.
        iters: number of steps, >= 0.
        norm: ``"linf"`` or ``"l2"``.
        random_start: start from a uniform draw in the ball (clipped to [0, 1]), from ``generator``.
        targeted: minimize the loss towards ``y`` instead of maximizing it away from ``y``.
        generator: randomness of the start (on x's device); None uses torch's global RNG.
        loss: ``"ce"`` (cross-entropy) or ``"margin"`` (``max_{j != y} z_j - z_y``).

    Returns:
        A new detached tensor ``x_adv`` with ``||x_adv - x|| <= eps`` and values in [0, 1].

    Shape:
        x: (B, C, H, W), floating, values in [0, 1]; y: (B,) int64; eps, step: float or (B,);
        output: same shape, dtype and device as x. model_fn output: (B, K).
    Raises:
        ShapeError, RangeError, DTypeError, UnknownNameError; NonDifferentiableError when the
        loss has no gradient with respect to x (wrap such stages with :func:`bpda`).
    Example:
        >>> clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
        >>> x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
        >>> adv = pgd(clf, x, y, eps=8 / 255, step=2 / 255, iters=10)
        >>> bool((adv - x).abs().max() <= 8 / 255 + 1e-6), adv.shape
        (True, torch.Size([4, 3, 8, 8]))
    """
    return _pgd("pgd", model_fn, x, y, eps=eps, step=step, iters=iters, norm=norm,
                random_start=random_start, targeted=targeted, generator=generator, loss=loss)


def fgsm(model_fn: ModelFn, x: Tensor, y: Tensor, *, eps: float | Tensor, targeted: bool = False,
         loss: str = "ce") -> Tensor:
    """Fast gradient sign method: ``clip(x + eps * sign(grad), 0, 1)``, i.e. one L∞ :func:`pgd` step.

    Shape:
        x: (B, C, H, W) in [0, 1]; y: (B,) int64; eps: float or (B,); output: like x.
    Raises:
        ShapeError, RangeError, DTypeError, UnknownNameError
    Example:
        >>> clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
        >>> x = torch.rand(2, 3, 8, 8)
        >>> bool((fgsm(clf, x, torch.tensor([0, 1]), eps=0.03) - x).abs().max() <= 0.03 + 1e-6)
        True
    """
    return _pgd("fgsm", model_fn, x, y, eps=eps, step=eps, iters=1, norm="linf", random_start=False,
                targeted=targeted, generator=None, loss=loss)


def bim(model_fn: ModelFn, x: Tensor, y: Tensor, *, eps: float | Tensor, iters: int = 10, targeted: bool = False,
        loss: str = "ce") -> Tensor:
    """Basic iterative method / I-FGSM: ``iters`` L∞ steps of ``eps / iters``, projected and clipped.

    Shape:
        x: (B, C, H, W) in [0, 1]; y: (B,) int64; eps: float or (B,); output: like x.
    Raises:
        ShapeError, RangeError, DTypeError, UnknownNameError
    Example:
        >>> clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
        >>> x = torch.rand(2, 3, 8, 8)
        >>> bool((bim(clf, x, torch.tensor([0, 1]), eps=0.03) - x).abs().max() <= 0.03 + 1e-6)
        True
    """
    check_int("bim", iters, name="iters", low=0)
    step = eps / max(iters, 1) if not isinstance(eps, bool) and isinstance(eps, (int, float, Tensor)) else eps
    return _pgd("bim", model_fn, x, y, eps=eps, step=step, iters=iters, norm="linf", random_start=False,
                targeted=targeted, generator=None, loss=loss)


def _pgd(fn: str, model_fn: ModelFn, x: Tensor, y: Tensor, *, eps, step, iters: int, norm: str,
         random_start: bool, targeted: bool, generator: torch.Generator | None, loss: str) -> Tensor:
    if not callable(model_fn):
        raise DTypeError(f"{fn}: expected model_fn to be callable (images -> logits), got {type(model_fn).__name__}")
    check_image_batch(fn, x)
    y = _check_labels(fn, y, x)
    b = x.shape[0]
    eps_t = per_sample(fn, eps, name="eps", batch=b, like=x)
    step_t = per_sample(fn, step, name="step", batch=b, like=x)
    check_int(fn, iters, name="iters", low=0)
    check_choice(fn, norm, name="norm", choices=NORMS)
    check_choice(fn, loss, name="loss", choices=tuple(LOSSES))
    _check_bool(fn, random_start, "random_start")
    _check_bool(fn, targeted, "targeted")
    check_generator(fn, generator, x.device)

    x0 = x.detach()
    if iters == 0 or b == 0 or not bool((eps_t > 0).any()):
        return x0.clone()
    loss_fn = _CheckedLoss(fn, LOSSES[loss])
    direction = -1.0 if targeted else 1.0
    x_adv = _random_start(x0, eps_t, norm, generator) if random_start else x0.clone()
    for _ in range(iters):
        grad = _input_grad(fn, model_fn, x_adv, y, loss_fn)
        if norm == "linf":
            x_adv = x_adv + direction * step_t * grad.sign()
        else:
            x_adv = x_adv + direction * step_t * grad / _flat_norm(grad).clamp_min(1e-12)
        x_adv = _project(x0, x_adv, eps_t, norm)
    return x_adv


def _project(x0: Tensor, x_adv: Tensor, eps: Tensor, norm: str) -> Tensor:
    """Project ``x_adv`` onto the ``norm`` ball of radius ``eps`` around ``x0``, then clip to [0, 1].

    Clipping after projection keeps the point in the ball: each coordinate moves towards x0.
    """
    delta = x_adv - x0
    if norm == "linf":
        delta = torch.maximum(torch.minimum(delta, eps), -eps)
    else:
        delta = delta * torch.clamp(eps / _flat_norm(delta).clamp_min(1e-12), max=1.0)
    return (x0 + delta).clamp(0.0, 1.0)


def _random_start(x0: Tensor, eps: Tensor, norm: str, generator: torch.Generator | None) -> Tensor:
    """Uniform draw in the ball (uniform in the volume for L2), clipped to [0, 1]."""
    kw = dict(generator=generator, device=x0.device, dtype=x0.dtype)
    if norm == "linf":
        delta = (2.0 * torch.rand(x0.shape, **kw) - 1.0) * eps
    else:
        d = x0[0].numel()
        direction = torch.randn(x0.shape, **kw)
        direction = direction / _flat_norm(direction).clamp_min(1e-12)
        radius = torch.rand((x0.shape[0], 1, 1, 1), **kw) ** (1.0 / d)
        delta = direction * radius * eps
    return (x0 + delta).clamp(0.0, 1.0)
