"""Carlini–Wagner L2 attack (Carlini & Wagner, S&P'17), batched.

Optimizes, for every image at once, in the tanh space ``x' = (tanh(w) + 1) / 2`` (so x' is
always in [0, 1])::

    min_w  ||x' - x||_2^2 + c * max(z_y(x') - max_{j != y} z_j(x'), -kappa)      (untargeted)
    min_w  ||x' - x||_2^2 + c * max(max_{j != t} z_j(x') - z_t(x'), -kappa)      (targeted, t = y)

with Adam on the whole batch (Adam is element-wise and the objective a sum over images, so
an image's path does not depend on its batch-mates). Defaults c = 10, kappa = 0 follow the
WNLL/TVM paper (``papers/wnll-tvm-defense.txt`` §4). Per image, the smallest-L2 successful
iterate is kept, success meaning a logit margin above ``kappa``. With
``binary_search_steps > 1`` the optimization is rerun with a per-image c found by the usual
bisection (halve towards the last success, multiply by 10 while none succeeded).

A model with ``expected_loss`` (an :class:`~purify.attacks.EOT` wrapper) gets the hinge term
averaged over its draws, and success is judged on the mean softmax of those draws.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from purify._checks import check_float, check_image_batch, check_int, per_sample
from purify.attacks.gradient import (_check_bool, _check_differentiable, _check_labels, _CheckedLoss, _model_loss,
                                     margin_loss)
from purify.errors import DTypeError

__all__ = ["cw_l2", "cw_l2_details", "CWResult"]

log = logging.getLogger(__name__)

ModelFn = Callable[[Tensor], Tensor]

_UPPER_INIT = 1e10  # "no successful c yet"


class CWResult(NamedTuple):
    """What :func:`cw_l2_details` found.

    Shape:
        x_adv: (B, C, H, W) like x; success, l2, c: (B,).
    """

    x_adv: Tensor  #: best successful iterate per image, else the last iterate
    success: Tensor  #: bool, some iterate reached a margin above kappa
    l2: Tensor  #: ||x_adv - x||_2 per image (in x's dtype)
    c: Tensor  #: the constant of the last run per image (the bisection's final value)


def cw_l2(model_fn: ModelFn, x: Tensor, y: Tensor, *, c: float | Tensor = 10.0, kappa: float = 0.0,
          steps: int = 100, lr: float = 0.01, binary_search_steps: int = 0, targeted: bool = False) -> Tensor:
    """Carlini–Wagner L2 adversarial examples; see :func:`cw_l2_details` for arguments.

    Images for which no iterate succeeded are returned as the *last iterate* of the
    optimization, not as the clean image: check ``cw_l2_details(...).success`` when it matters.

    Shape:
        x: (B, C, H, W), floating, values in [0, 1]; y: (B,) int64; output: like x.
    Raises:
        ShapeError, RangeError, DTypeError
    Example:
        >>> clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
        >>> x = torch.rand(4, 3, 8, 8)
        >>> adv = cw_l2(clf, x, clf(x).argmax(1), steps=20)
        >>> adv.shape, bool(adv.min() >= 0 and adv.max() <= 1)
        (torch.Size([4, 3, 8, 8]), True)
    """
    return cw_l2_details(model_fn, x, y, c=c, kappa=kappa, steps=steps, lr=lr,
                         binary_search_steps=binary_search_steps, targeted=targeted).x_adv


def cw_l2_details(model_fn: ModelFn, x: Tensor, y: Tensor, *, c: float | Tensor = 10.0, kappa: float = 0.0,
                  steps: int = 100, lr: float = 0.01, binary_search_steps: int = 0,
                  targeted: bool = False) -> CWResult:
    """Carlini–Wagner L2 with its success mask, norms and constants.

    Args:
        model_fn: callable from images in [0, 1] to logits; may carry ``expected_loss`` (EOT).
        x: clean images in [0, 1]. y: true labels (targets when ``targeted``).
        c: weight of the hinge term, a float or one value per image, >= 0 (the starting value
            of the search when ``binary_search_steps > 1``).
        kappa: confidence: success needs a logit margin > kappa, and the hinge stops there.
        steps: Adam steps per run, >= 0 (0 returns a copy of x).
        lr: Adam learning rate in tanh space, > 0.
        binary_search_steps: number of runs, each with its own per-image c, as in Carlini and
            Wagner's code; 0 or 1 is a single run at ``c`` (no search).
        targeted: reach class y instead of leaving it.

    Returns:
        :class:`CWResult`; ``x_adv`` is a new detached tensor in [0, 1], the smallest-L2
        successful iterate of every image that succeeded, and the last iterate otherwise.

    Shape:
        x: (B, C, H, W), floating, values in [0, 1]; y: (B,) int64; c: float or (B,).
    Raises:
        ShapeError, RangeError, DTypeError, NonDifferentiableError
    Example:
        >>> clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
        >>> x = torch.rand(4, 3, 8, 8)
        >>> res = cw_l2_details(clf, x, clf(x).argmax(1), steps=50)
        >>> res.success.shape, res.l2.shape
        (torch.Size([4]), torch.Size([4]))
    """
    fn = "cw_l2"
    if not callable(model_fn):
        raise DTypeError(f"{fn}: expected model_fn to be callable (images -> logits), got {type(model_fn).__name__}")
    check_image_batch(fn, x)
    y = _check_labels(fn, y, x)
    b = x.shape[0]
    work = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    x0 = x.detach().to(work)
    const = per_sample(fn, c, name="c", batch=b, like=x0).view(b)
    kappa = check_float(fn, kappa, name="kappa", low=0.0)
    check_int(fn, steps, name="steps", low=0)
    lr = check_float(fn, lr, name="lr", low=0.0, low_inclusive=False)
    runs = max(1, check_int(fn, binary_search_steps, name="binary_search_steps", low=0))
    _check_bool(fn, targeted, "targeted")
    if b == 0 or steps == 0:
        return CWResult(x.detach().clone(), torch.zeros(b, dtype=torch.bool, device=x.device),
                        torch.zeros(b, dtype=x.dtype, device=x.device), const.detach().clone())

    sign = 1.0 if targeted else -1.0
    hinge = _Hinge(_CheckedLoss(fn, margin_loss), sign, kappa)
    w0 = torch.atanh((2.0 * x0 - 1.0).clamp(-1.0 + 1e-6, 1.0 - 1e-6))
    best_l2 = torch.full((b,), math.inf, dtype=work, device=x.device)
    best_adv = x0.clone()
    lower = torch.zeros_like(const)
    upper = torch.full_like(const, _UPPER_INIT)
    last = x0
    for run in range(runs):
        w = w0.clone().requires_grad_(True)
        opt = torch.optim.Adam([w], lr=lr)
        run_success = torch.zeros(b, dtype=torch.bool, device=x.device)
        for _ in range(steps):
            with torch.enable_grad():
                x_adv = (torch.tanh(w) + 1.0) / 2.0
                l2sq = (x_adv - x0).pow(2).flatten(1).sum(1)
                term = _model_loss(model_fn, x_adv, y, hinge.start())
                _check_differentiable(fn, term)
                (w.grad,) = torch.autograd.grad((l2sq + const * term).sum(), w)
            last = x_adv.detach()
            ok = hinge.succeeded(y)
            l2 = l2sq.detach().sqrt()
            better = ok & (l2 < best_l2)
            best_l2 = torch.where(better, l2, best_l2)
            best_adv = torch.where(better.view(b, 1, 1, 1), last, best_adv)
            run_success |= ok
            opt.step()
        log.debug("cw_l2: run %d/%d, %d/%d images succeeded", run + 1, runs, int(run_success.sum()), b)
        if run + 1 < runs:
            const, lower, upper = _bisect(const, lower, upper, run_success)
    success = torch.isfinite(best_l2)
    x_adv = torch.where(success.view(b, 1, 1, 1), best_adv, last)
    l2 = (x_adv - x0).flatten(1).norm(dim=1)
    return CWResult(x_adv.to(x.dtype), success, l2.to(x.dtype), const.detach())


def _bisect(const: Tensor, lower: Tensor, upper: Tensor, success: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Carlini–Wagner's per-image update of c after a run."""
    upper = torch.where(success, torch.minimum(upper, const), upper)
    lower = torch.where(success, lower, torch.maximum(lower, const))
    bracketed = upper < _UPPER_INIT / 10
    const = torch.where(bracketed, (lower + upper) / 2, const * 10)
    return const, lower, upper


class _Hinge:
    """The CW hinge ``max(sign * margin, -kappa)`` as a loss_fn that also records predictions.

    With an EOT model the loss sees one logits tensor per draw; success is then judged on the
    log of the mean softmax over those draws, else on the logits themselves.
    """

    def __init__(self, margin_fn: Callable[[Tensor, Tensor], Tensor], sign: float, kappa: float) -> None:
        self.margin_fn, self.sign, self.kappa = margin_fn, sign, kappa
        self.seen: list[Tensor] = []

    def start(self) -> "_Hinge":
        self.seen = []
        return self

    def __call__(self, logits: Tensor, y: Tensor) -> Tensor:
        self.seen.append(logits.detach())
        return torch.clamp(self.sign * self.margin_fn(logits, y), min=-self.kappa)

    def succeeded(self, y: Tensor) -> Tensor:
        if len(self.seen) == 1:
            pred = self.seen[0]
        else:
            pred = torch.logsumexp(torch.stack([z.log_softmax(-1) for z in self.seen]), 0) - math.log(len(self.seen))
        return -self.sign * margin_loss(pred, y) > self.kappa
