"""Attack wrappers for defenses that break plain gradients: BPDA and EOT (Athalye et al., ICML'18).

Both wrap the *model*, never the attack, so every attack in :mod:`purify.attacks`
runs unchanged on top of them:

* :func:`bpda` — Backward Pass Differentiable Approximation: the forward value is the real
  (non-differentiable, iterative or randomized) stage, the backward pass is the identity
  (straight-through) or the gradient of a differentiable approximation;
* :func:`eot` / :class:`EOT` — Expectation over Transformation: predictions average the softmax
  over ``samples`` fresh draws of the defense's randomness, and :meth:`EOT.expected_loss`
  (which the gradient attacks and CW call when it exists) averages the loss, hence its gradient.

The headline threat model of a randomized, non-differentiable defense such as TVM is both::

    defended = eot(lambda x: clf(bpda(tvm_stage)(x)), samples=10)
    x_adv = pgd(defended, x, y, eps=8 / 255, step=2 / 255, iters=10)
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from purify._checks import check_int
from purify.errors import DTypeError, ShapeError

__all__ = ["bpda", "eot", "EOT"]

ModelFn = Callable[[Tensor], Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


class _ForwardAs(torch.autograd.Function):
    """Value of ``value``, gradient of ``surrogate``: the exact forward of a BPDA stage.

    (``surrogate + (value - surrogate).detach()`` has the same gradient but its value can
    differ from ``value`` by a rounding error.)
    """

    @staticmethod
    def forward(ctx, surrogate: Tensor, value: Tensor) -> Tensor:  # noqa: D102
        return value.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        return grad, None


def bpda(stage: ModelFn, backward: ModelFn | None = None) -> ModelFn:
    """Wrap a purification stage so that attacks can differentiate through it.

    The returned ``f(x)`` has the forward value ``stage(x)``, computed under ``torch.no_grad()``
    (so a stage with a fast no-autograd path, such as the numba TV solver, uses it). Its
    gradient is the identity when ``backward`` is None (straight-through: ``d f / d x = I``),
    otherwise the gradient of the differentiable ``backward(x)`` evaluated at ``x``, i.e.
    ``backward(x) + (stage(x) - backward(x)).detach()`` with the exact value of ``stage(x)``.

    ``stage`` may be randomized (e.g. TVM with a fresh drop mask): every call of ``f`` calls
    ``stage`` once and so draws anew; combine with :func:`eot` to average over draws. A
    randomized ``backward`` draws independently of ``stage``.

    Shape:
        x: (B, C, H, W); ``stage(x)``: the same shape as x when ``backward`` is None, else the
        shape of ``backward(x)``; output: the shape of ``stage(x)``.
    Raises:
        DTypeError: ``stage`` or ``backward`` is not callable. ShapeError (at call time): the
        stage's output does not match the shape of x (identity) or of ``backward(x)``.
    Example:
        >>> f = bpda(torch.round)                     # zero gradient almost everywhere ...
        >>> x = torch.tensor([0.2, 0.7], requires_grad=True)
        >>> f(x).tolist(), torch.autograd.grad(f(x).sum(), x)[0].tolist()  # ... but not through bpda
        ([0.0, 1.0], [1.0, 1.0])
    """
    if not callable(stage):
        raise DTypeError(f"bpda: expected stage to be callable (x -> x'), got {type(stage).__name__}")
    if backward is not None and not callable(backward):
        raise DTypeError(f"bpda: expected backward to be None or a differentiable callable, "
                         f"got {type(backward).__name__}")

    def f(x: Tensor) -> Tensor:
        with torch.no_grad():
            value = stage(x)
        surrogate = x if backward is None else backward(x)
        if value.shape != surrogate.shape:
            what = "x" if backward is None else "backward(x)"
            raise ShapeError(f"bpda: stage(x) has shape {tuple(value.shape)} but {what} has shape "
                             f"{tuple(surrogate.shape)}; the identity backward needs a shape-preserving stage, "
                             "otherwise pass a backward approximation with the stage's output shape")
        return _ForwardAs.apply(surrogate, value)

    f.stage, f.backward = stage, backward  # type: ignore[attr-defined]
    return f


class EOT:
    """Expectation over Transformation of a randomized ``model_fn`` over ``samples`` draws.

    Calling it returns ``log(mean_i softmax(model_fn(x)))`` over ``samples`` fresh calls, a
    prediction in log-probabilities (argmax = the majority-probability class).
    :meth:`expected_loss` returns ``mean_i loss_fn(model_fn(x), y)`` over fresh calls; its
    gradient is exactly the mean of the per-draw gradients. The gradient attacks call
    ``expected_loss`` whenever a model has it. Each draw's graph is kept until the
    backward pass, so memory grows with ``samples``; :meth:`expected_loss_and_grad` gives the
    same loss and gradient one draw at a time (the memory of one draw; what the attacks use:
    EOT over an unrolled TV solver holds gigabytes per draw). Randomness comes from ``model_fn`` itself
    (e.g. a stage holding a ``torch.Generator``); EOT only calls it repeatedly.

    Shape:
        x: (B, C, H, W); ``__call__`` output: (B, K) log-probabilities; ``expected_loss``: the
        shape of ``loss_fn``'s output, (B,) for the per-image losses the attacks use.
    Raises:
        DTypeError, RangeError (constructor).
    Example:
        >>> clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5))
        >>> noisy = EOT(lambda x: clf(x + 0.1 * torch.randn_like(x)), samples=4)
        >>> noisy(torch.rand(2, 3, 4, 4)).exp().sum(1).allclose(torch.ones(2))
        True
    """

    def __init__(self, model_fn: ModelFn, samples: int = 10) -> None:
        if not callable(model_fn):
            raise DTypeError(f"EOT: expected model_fn to be callable (images -> logits), got {type(model_fn).__name__}")
        self.model_fn = model_fn
        self.samples = check_int("EOT", samples, name="samples", low=1)

    def __call__(self, x: Tensor) -> Tensor:
        log_probs = torch.stack([torch.log_softmax(self.model_fn(x), dim=-1) for _ in range(self.samples)])
        return torch.logsumexp(log_probs, dim=0) - math.log(self.samples)

    def expected_loss(self, x: Tensor, y: Tensor, loss_fn: LossFn) -> Tensor:
        """``mean_i loss_fn(model_fn(x), y)`` over ``samples`` fresh calls of ``model_fn``.

        Shape:
            x: (B, C, H, W); y: (B,); output: the shape of ``loss_fn``'s output.
        """
        total = loss_fn(self.model_fn(x), y)
        for _ in range(self.samples - 1):
            total = total + loss_fn(self.model_fn(x), y)
        return total / self.samples

    def expected_loss_and_grad(self, x: Tensor, y: Tensor, loss_fn: LossFn) -> tuple[Tensor, Tensor | None]:
        """:meth:`expected_loss` (detached) and its gradient in ``x``, one draw's graph at a time.

        Each draw is differentiated and its graph freed before the next, so memory is that of one
        draw; the sum of the per-draw gradients over ``samples`` equals the gradient of the mean.
        The gradient is None when no draw depends differentiably on ``x``.

        Shape:
            x: (B, C, H, W); y: (B,); output: (the shape of ``loss_fn``'s output, x's shape).
        """
        total: Tensor | None = None
        grad: Tensor | None = None
        with torch.enable_grad():
            for _ in range(self.samples):
                xg = x.detach().requires_grad_(True)
                loss = loss_fn(self.model_fn(xg), y)
                g = torch.autograd.grad(loss.sum(), xg, allow_unused=True)[0] if loss.requires_grad else None
                total = loss.detach() if total is None else total + loss.detach()
                if g is not None:
                    grad = g if grad is None else grad + g
        assert total is not None                     # samples >= 1
        return total / self.samples, None if grad is None else grad / self.samples

    def __repr__(self) -> str:
        return f"EOT({self.model_fn!r}, samples={self.samples})"


def eot(model_fn: ModelFn, samples: int = 10) -> EOT:
    """Wrap a randomized ``model_fn`` for Expectation over Transformation; see :class:`EOT`.

    Shape:
        x: (B, C, H, W); output of the returned callable: (B, K) log-probabilities.
    Raises:
        DTypeError: ``model_fn`` is not callable or ``samples`` is not an int.
        RangeError: ``samples`` < 1.
    Example:
        >>> clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5))
        >>> eot(clf, samples=3)(torch.rand(2, 3, 4, 4)).shape
        torch.Size([2, 5])
    """
    return EOT(model_fn, samples=samples)
