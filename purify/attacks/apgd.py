"""APGD: auto-PGD with a budget-aware step size (Croce & Hein, ICML'20), the gradient half of AutoAttack.

Each run starts from a random point of the ball, moves with momentum (alpha = 0.75) and starts
with step ``2 * eps``. At the checkpoints ``w_j = p_j * iters`` (p_0 = 0, p_1 = 0.22,
p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)), an image's step is halved and its iterate
reset to its best point when the fraction of loss-increasing steps since the last checkpoint is
<= ``rho``, or when its step was not reduced at the last checkpoint and its best loss has not
improved since. Step sizes and these decisions are per image; the checkpoints are shared.

Losses: cross-entropy, the difference of logits ratio (DLR, shift- and scale-invariant) and
the targeted DLR, which is run once per target, the ``n_target_classes`` wrong classes with the
highest clean scores (AutoAttack's APGD-T). An image whose prediction is already wrong is not
attacked further (a later run can only change *which* adversarial point is returned, not
that it is adversarial), so runs and restarts shrink to the images still standing.

Per image the attack returns the first point it found misclassified, else, of every point it
evaluated (the clean image included), the one with the lowest margin
``log p_y - max_{j != y} log p_j`` of the (EOT-averaged) prediction.

A ``model_fn`` with ``expected_loss`` (an :class:`~purify.attacks.wrappers.EOT` wrapper) is asked
for the loss, so the gradient is the mean over draws, and the prediction that decides success is
the mean softmax of those same draws; :func:`~purify.attacks.wrappers.bpda` stages need nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor

from purify._checks import check_choice, check_float, check_generator, check_image_batch, check_int, per_sample
from purify.attacks.gradient import (NORMS, LossFn, ModelFn, _check_labels, _check_logits, _flat_norm, _project,
                                     ce_loss, loss_and_input_grad)
from purify.errors import DTypeError, ShapeError

__all__ = ["apgd", "apgd_checkpoints", "dlr_loss", "dlr_targeted_loss", "APGD_LOSSES"]

APGD_LOSSES = ("ce", "dlr", "dlr-targeted")
_ALPHA = 0.75          # momentum
_MIN_CLASSES = {"ce": 2, "dlr": 3, "dlr-targeted": 4}


def dlr_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Difference of logits ratio ``-(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3)``, z sorted decreasing.

    Shape:
        logits: (B, K), K >= 3; y: (B,) int64; output: (B,).
    Example:
        >>> dlr_loss(torch.tensor([[3.0, 1.0, 0.0]]), torch.tensor([0])).mul(1e4).round().tolist()  # -(3-1)/(3-0)
        [-6667.0]
    """
    z, idx = logits.sort(dim=1)
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    top_is_y = idx[:, -1] == y
    other = torch.where(top_is_y, z[:, -2], z[:, -1])
    return -(z_y - other) / (z[:, -1] - z[:, -3] + 1e-12)


def dlr_targeted_loss(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Targeted DLR ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``: increases as z_t overtakes z_y.

    Shape:
        logits: (B, K), K >= 4; y, target: (B,) int64; output: (B,).
    Example:
        >>> z = torch.tensor([[4.0, 2.0, 1.0, 0.0]])
        >>> dlr_targeted_loss(z, torch.tensor([0]), torch.tensor([1])).mul(1e4).round().tolist()  # -2 / 3.5
        [-5714.0]
    """
    z, _ = logits.sort(dim=1)
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (z[:, -1] - 0.5 * (z[:, -3] + z[:, -4]) + 1e-12)


def apgd_checkpoints(iters: int) -> list[int]:
    """Iteration counts after which APGD checks its step size, as in the authors' code.

    ``w_1 = int(0.22 N)``, then windows shrink by ``int(0.03 N)`` down to ``int(0.06 N)`` (each at
    least 1): the integer form of ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``.

    Example:
        >>> apgd_checkpoints(100)
        [22, 41, 57, 70, 80, 87, 93, 99]
    """
    check_int("apgd_checkpoints", iters, name="iters", low=0)
    k, decr, k_min = max(int(0.22 * iters), 1), max(int(0.03 * iters), 1), max(int(0.06 * iters), 1)
    out, w = [], k
    while w <= iters:
        out.append(w)
        k = max(k - decr, k_min)
        w += k
    return out


def apgd(model_fn: ModelFn, x: Tensor, y: Tensor, *, eps: float | Tensor, norm: str = "linf", loss: str = "ce",
         iters: int = 100, restarts: int = 1, rho: float = 0.75, n_target_classes: int = 9,
         generator: torch.Generator | None = None) -> Tensor:
    """Auto-PGD (APGD-CE, APGD-DLR, APGD-T) in the L∞ or L2 ball of radius ``eps`` around ``x``.

    Every run makes ``iters + 1`` gradient evaluations (the random start and ``iters`` steps);
    ``loss="dlr-targeted"`` makes ``restarts`` runs for each of ``min(n_target_classes, K - 1)``
    targets, the others ``restarts`` runs. Random starts (a point on the boundary of the ball,
    as in the authors' code) are drawn for the whole batch from ``generator``, so an image's
    result depends only on its own data and its position in the batch. ``iters=0`` or
    ``eps=0`` returns an exact copy of ``x`` without calling the model. No ``.grad`` is written.

    Args:
        model_fn: images in [0, 1] -> logits; may carry ``expected_loss`` (EOT).
        x: clean images in [0, 1]. y: true labels.
        eps: radius, a float or one value per image, >= 0.
        norm: ``"linf"`` or ``"l2"`` (L2: normalized gradient steps, projection onto the ball).
        loss: ``"ce"``, ``"dlr"`` (K >= 3) or ``"dlr-targeted"`` (K >= 4).
        iters: steps per run, >= 0. restarts: runs per loss / target, >= 1.
        rho: the checkpoint's fraction of loss-increasing steps, in [0, 1].
        n_target_classes: targets of ``"dlr-targeted"``, >= 1 (at most K - 1 are used).
        generator: randomness of the starts (on x's device); None uses torch's global RNG.

    Returns:
        A new detached ``x_adv`` with ``||x_adv - x|| <= eps`` and values in [0, 1].

    Shape:
        x: (B, C, H, W), floating, values in [0, 1]; y: (B,) int64; eps: float or (B,);
        output: same shape, dtype and device as x. model_fn output: (B, K).
    Raises:
        ShapeError, RangeError, DTypeError, UnknownNameError; NonDifferentiableError when the
        loss has no gradient with respect to x (wrap such stages with :func:`bpda`).
    Example:
        >>> clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
        >>> x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
        >>> adv = apgd(clf, x, y, eps=8 / 255, iters=10, generator=torch.Generator().manual_seed(0))
        >>> bool((adv - x).abs().max() <= 8 / 255 + 1e-6), adv.shape
        (True, torch.Size([4, 3, 8, 8]))
    """
    fn = "apgd"
    if not callable(model_fn):
        raise DTypeError(f"{fn}: expected model_fn to be callable (images -> logits), got {type(model_fn).__name__}")
    check_image_batch(fn, x)
    y = _check_labels(fn, y, x)
    b = x.shape[0]
    eps_t = per_sample(fn, eps, name="eps", batch=b, like=x)
    check_choice(fn, norm, name="norm", choices=NORMS)
    check_choice(fn, loss, name="loss", choices=APGD_LOSSES)
    check_int(fn, iters, name="iters", low=0)
    check_int(fn, restarts, name="restarts", low=1)
    rho = check_float(fn, rho, name="rho", low=0.0, high=1.0)
    check_int(fn, n_target_classes, name="n_target_classes", low=1)
    check_generator(fn, generator, x.device)

    x0 = x.detach()
    out = x0.clone()
    if iters == 0 or b == 0 or not bool((eps_t > 0).any()):
        return out
    with torch.no_grad():
        clean = model_fn(x0)
    _check_logits(fn, clean, y)
    k = clean.shape[1]
    if k < _MIN_CLASSES[loss]:
        raise ShapeError(f"{fn}: loss={loss!r} needs logits with at least {_MIN_CLASSES[loss]} classes, got {k}; "
                         "use loss='ce'")
    lp = torch.log_softmax(clean.detach().to(x0.dtype), dim=1)
    best_m, fooled = _margin(lp, y)
    checks = set(apgd_checkpoints(iters))
    state = _Outputs(out, best_m, fooled)
    if loss == "dlr-targeted":
        ranked = lp.masked_fill(torch.nn.functional.one_hot(y, k).bool(), float("-inf")).argsort(1, descending=True)
        targets = [ranked[:, j] for j in range(min(n_target_classes, k - 1))]
    else:
        targets = [None]
    for target in targets:
        for _ in range(restarts):
            start = _random_start(x0, eps_t, norm, generator)        # whole batch: draws do not depend on results
            live = torch.nonzero(~state.fooled & (eps_t.view(-1) > 0)).view(-1)
            if live.numel() == 0:
                return out
            _run(fn, model_fn, x0[live], y[live], eps_t[live], start[live], live, norm, loss,
                 None if target is None else target[live], iters, rho, checks, state)
    return out


class _Outputs:
    """Per image of the batch: the point to return, its margin, whether it is misclassified."""

    def __init__(self, x: Tensor, margin: Tensor, fooled: Tensor) -> None:
        self.x, self.margin, self.fooled = x, margin, fooled

    def offer(self, pos: Tensor, x: Tensor, margin: Tensor, fooled: Tensor) -> None:
        """Keep ``x`` for the images at ``pos`` it improves: the first misclassified, else a lower margin."""
        better = ~self.fooled[pos] & (fooled | (margin < self.margin[pos]))
        if bool(better.any()):
            idx = pos[better]
            self.x[idx] = x[better]
            self.margin[idx] = margin[better]
            self.fooled[idx] = fooled[better]


class _Recorder:
    """A loss function that also keeps the mean softmax of every draw it sees (the EOT prediction)."""

    def __init__(self, loss_fn: LossFn) -> None:
        self.loss_fn, self.probs, self.n = loss_fn, None, 0
        self.logits: Tensor | None = None

    def __call__(self, logits: Tensor, y: Tensor) -> Tensor:
        z = logits.detach()
        self.logits = z
        p = torch.softmax(z, dim=1)
        self.probs = p if self.probs is None else self.probs + p
        self.n += 1
        return self.loss_fn(logits, y)

    def log_probs(self) -> Tensor:
        if self.n == 1:
            return torch.log_softmax(self.logits, dim=1)
        return torch.log(self.probs / self.n)


def _margin(lp: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(log p_y - max_{j != y} log p_j, argmax != y) per image."""
    lp_y = lp.gather(1, y[:, None]).squeeze(1)
    other = lp.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return lp_y - other, lp.argmax(dim=1) != y


def _evaluate(fn: str, model_fn: ModelFn, x: Tensor, y: Tensor, loss_fn: LossFn) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image loss, its gradient at x and the (EOT) log-probabilities of the same forward passes."""
    rec = _Recorder(loss_fn)
    loss, grad = loss_and_input_grad(fn, model_fn, x, y, rec)
    return loss.to(x.dtype), grad, rec.log_probs().to(x.dtype)


def _step(x0: Tensor, x_adv: Tensor, x_prev: Tensor, grad: Tensor, step: Tensor, eps: Tensor, norm: str,
          a: float) -> Tensor:
    """One APGD step: a projected gradient step z, then momentum ``x + a (z - x) + (1 - a)(x - x_prev)``."""
    if norm == "linf":
        z = _project(x0, x_adv + step * grad.sign(), eps, norm)
    else:
        z = _project(x0, x_adv + step * grad / (_flat_norm(grad) + 1e-12), eps, norm)
    return _project(x0, x_adv + a * (z - x_adv) + (1.0 - a) * (x_adv - x_prev), eps, norm)


def _run(fn: str, model_fn: ModelFn, x0: Tensor, y: Tensor, eps: Tensor, start: Tensor, pos: Tensor, norm: str,
         loss: str, target: Tensor | None, iters: int, rho: float, checks: set[int], outputs: _Outputs) -> None:
    """One APGD run from ``start`` for the images at ``pos``; improvements go to ``outputs``."""
    def loss_fn_for(t: Tensor | None) -> LossFn:
        if loss == "ce":
            return ce_loss
        if loss == "dlr":
            return dlr_loss
        return lambda logits, labels: dlr_targeted_loss(logits, labels, t)

    loss_fn = loss_fn_for(target)
    x_adv = start
    cur, grad, lp = _evaluate(fn, model_fn, x_adv, y, loss_fn)
    m, fooled = _margin(lp, y)
    outputs.offer(pos, x_adv, m, fooled)
    s = {"x0": x0, "y": y, "eps": eps, "pos": pos, "x_adv": x_adv, "x_prev": x_adv, "grad": grad,
         "step": 2.0 * eps, "x_best": x_adv, "grad_best": grad, "loss_best": cur, "loss_prev": cur,
         "ups": torch.zeros_like(cur), "best_at_check": cur, "reduced": torch.ones_like(cur, dtype=torch.bool)}
    if target is not None:
        s["target"] = target
    s = _keep(s, ~fooled)
    last_check = 0
    for i in range(iters):
        if s["pos"].numel() == 0:
            return
        if "target" in s:
            loss_fn = loss_fn_for(s["target"])
        x_new = _step(s["x0"], s["x_adv"], s["x_prev"], s["grad"], s["step"], s["eps"], norm,
                      1.0 if i == 0 else _ALPHA)
        s["x_prev"], s["x_adv"] = s["x_adv"], x_new
        cur, s["grad"], lp = _evaluate(fn, model_fn, x_new, s["y"], loss_fn)
        m, fooled = _margin(lp, s["y"])
        outputs.offer(s["pos"], x_new, m, fooled)
        s["ups"] = s["ups"] + (cur > s["loss_prev"]).to(cur.dtype)
        s["loss_prev"] = cur
        better = cur > s["loss_best"]
        s["x_best"] = torch.where(better.view(-1, 1, 1, 1), x_new, s["x_best"])
        s["grad_best"] = torch.where(better.view(-1, 1, 1, 1), s["grad"], s["grad_best"])
        s["loss_best"] = torch.where(better, cur, s["loss_best"])
        if i + 1 in checks:
            window = i + 1 - last_check
            last_check = i + 1
            halve = (s["ups"] <= window * rho) | (~s["reduced"] & (s["best_at_check"] >= s["loss_best"]))
            s["reduced"], s["best_at_check"], s["ups"] = halve, s["loss_best"], torch.zeros_like(cur)
            h = halve.view(-1, 1, 1, 1)
            s["step"] = torch.where(h, s["step"] / 2.0, s["step"])
            s["x_adv"] = torch.where(h, s["x_best"], s["x_adv"])
            s["grad"] = torch.where(h, s["grad_best"], s["grad"])
        if bool(fooled.any()):
            s = _keep(s, ~fooled)


def _keep(s: dict[str, Tensor], keep: Tensor) -> dict[str, Tensor]:
    """The run's state restricted to the images in ``keep`` (the others are done)."""
    if bool(keep.all()):
        return s
    return {name: t[keep] for name, t in s.items()}


def _random_start(x0: Tensor, eps: Tensor, norm: str, generator: torch.Generator | None) -> Tensor:
    """The authors' start: L∞ ``eps * t / max|t|``, t uniform in [-1, 1]; L2 ``eps * n / ||n||``, n normal."""
    kw = dict(generator=generator, device=x0.device, dtype=x0.dtype)
    if norm == "linf":
        t = 2.0 * torch.rand(x0.shape, **kw) - 1.0
        delta = eps * t / t.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
    else:
        t = torch.randn(x0.shape, **kw)
        delta = eps * t / (_flat_norm(t) + 1e-12)
    return (x0 + delta).clamp(0.0, 1.0)

