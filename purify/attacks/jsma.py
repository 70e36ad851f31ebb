"""JSMA, the Jacobian-based saliency map attack (Papernot et al., EuroS&P'16), batched over images.

An L0 attack: it changes few features (the C·H·W values of an image) by a lot. It is targeted:
each step picks, per image, the pair of features ``(p, q)`` that the saliency map ranks highest
for the target class ``t`` and moves both by ``theta``, clipped to [0, 1]::

    a_i = d Z_t / d x_i,      b_i = sum_{j != t} d Z_j / d x_i          (Z: the logits)
    (p, q) = argmax over pairs p < q of the search domain of  -(a_p + a_q) (b_p + b_q)
             subject to  s (a_p + a_q) > 0  and  s (b_p + b_q) < 0,      s = sign(theta)

the pair that raises the target's logit most while lowering the others' sum most (with
``theta < 0`` features decrease and both conditions flip). The search domain holds the features
not yet at the bound ``theta`` pushes towards (< 1 for ``theta > 0``, > 0 for ``theta < 0``); a
feature leaves it when it reaches that bound, with ``|theta| = 1`` at its first change.

**Logits, not softmax.** The map uses the Jacobian of the logits (Carlini & Wagner's JSMA-Z;
cleverhans' ``SaliencyMapMethod`` differentiates the softmax, JSMA-F): the softmax's derivatives
shrink towards zero wherever one class dominates, so a confident model's map is tiny and its
ranking fragile, while the logits' does not saturate; and a defense's head need not end in a
softmax. (A linear model's logit Jacobian is its weight matrix, which the tests use as an exact
oracle.) ``b`` needs no Jacobian row per class: it is one vector-Jacobian product with
``1 - onehot(t)``, ``a`` one with ``onehot(t)``, so a step costs one forward and two backward
passes, whatever the number of classes.

**Stopping.** An image stops changing when the model predicts its target, when no pair meets
both conditions (the linearized model sees no way towards the target), after ``max_iter`` steps,
or when its L0 budget is spent: at most ``floor(gamma * C*H*W)`` features may differ from ``x``,
and a pair is chosen only among those that keep the image within it (with ``|theta| = 1`` every
step changes two new features, so there are at most ``floor(gamma * C*H*W / 2)`` steps,
cleverhans' ``max_iters``). Images that stop are no longer forwarded (a shrinking index set over
the batch, no loop over images), so an image's result does not depend on its batch-mates.

**Targets.** ``target`` gives each image's target class. Without it each image gets a class drawn
uniformly from the K - 1 classes other than its label ``y``, from ``generator`` (as cleverhans
does with the labels it is given; without them it uses the model's prediction). The harness
attacks the true label, so "other than y" makes every draw an attack on it and counts the image
as broken when its prediction leaves y. With ``target`` given, ``y`` is only checked.

**Cost.** The pair search is O((C·H·W)²) per image and step: 4.7 million pairs for a CIFAR-10
image (D = 3072), 307 thousand for MNIST; on one CPU thread about 0.06 s per CIFAR-10 image and
step, for up to 153 steps at ``gamma = 0.1``. It runs in chunks of about ``_PAIR_ELEMS`` entries,
so its temporaries stay near 20 bytes per entry of a chunk (80 MB) whatever the image size.

**EOT.** A model with ``expected_loss_and_grad`` (an :class:`~purify.attacks.wrappers.EOT`) gets
``a`` and ``b`` as the mean over draws of the per-draw rows (one draw's graph at a time) and its
prediction from its own ``__call__`` (the mean softmax); :func:`~purify.attacks.wrappers.bpda`
stages need nothing.

Against cleverhans this differs in: the logits, above; a feature stays in the search domain until
it reaches its bound (as in Papernot et al., where it leaves at 0 or 1; cleverhans drops it after
one change, which matters only for ``|theta| < 1``); ``theta < 0`` lowers features (cleverhans'
``x - theta`` raises them); an image with no pair meeting the conditions stops (cleverhans' argmax
over all-zero scores then changes feature 0); the budget counts changed features, not steps.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from purify._checks import check_float, check_generator, check_image_batch, check_int
from purify.attacks.gradient import ModelFn, _check_differentiable, _check_labels, loss_and_input_grad
from purify.errors import DTypeError, NonDifferentiableError, RangeError, ShapeError

__all__ = ["jsma"]

log = logging.getLogger(__name__)

#: Entries of one chunk of the pair search, (images, rows, D): bounds its memory, not its work.
_PAIR_ELEMS = 1 << 22


def jsma(model_fn: ModelFn, x: Tensor, y: Tensor, *, theta: float = 1.0, gamma: float = 0.1,
         target: Tensor | None = None, max_iter: int | None = None,
         generator: torch.Generator | None = None) -> Tensor:
    """Targeted L0 attack: change pairs of features chosen by the saliency map until the target wins.

    Images the model already assigns to their target come back unchanged, as do all images when
    ``max_iter = 0`` or the budget holds fewer than two features (the model is then not called).
    Images that never reach their target come back as their last iterate. The model's train/eval
    mode and parameters are left as they are; no ``.grad`` is written anywhere.

    Args:
        model_fn: callable from images in [0, 1] to logits; may carry ``expected_loss_and_grad`` (EOT).
        x: clean images in [0, 1]. y: their labels (the default targets avoid them).
        theta: change of each chosen feature per step, clipped to [0, 1]; nonzero and finite. ``+1``
            (Papernot et al.'s setting) sets features to 1, ``-1`` sets them to 0.
        gamma: the L0 budget as a fraction of the C·H·W features, in (0, 1]; Papernot et al. used
            0.145 on MNIST, cleverhans defaults to 1 (no budget).
        target: each image's target class, or None for a random class other than ``y`` (from
            ``generator``).
        max_iter: at most this many steps per image, >= 0; None: no limit but the budget (with
            ``|theta| = 1``, ``floor(gamma * C*H*W / 2)`` steps).
        generator: where the default targets are drawn (on x's device); None uses torch's global RNG.

    Returns:
        A new detached tensor ``x_adv`` in [0, 1] that differs from ``x`` in at most
        ``floor(gamma * C*H*W)`` values per image.

    Shape:
        x: (B, C, H, W), floating, values in [0, 1]; y, target: (B,) int64; output: like x.
        model_fn output: (B, K), K >= 2.
    Raises:
        ShapeError, RangeError, DTypeError; NonDifferentiableError when the logits have no gradient
        with respect to x (wrap such stages with :func:`bpda`).
    Example:
        >>> clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1 * 6 * 6, 3))
        >>> x, y = torch.rand(4, 1, 6, 6), torch.tensor([0, 1, 2, 0])
        >>> adv = jsma(clf, x, y, gamma=0.25, target=torch.tensor([1, 2, 0, 2]))
        >>> bool(((adv != x).flatten(1).sum(1) <= 9).all()), adv.shape
        (True, torch.Size([4, 1, 6, 6]))
    """
    fn = "jsma"
    if not callable(model_fn):
        raise DTypeError(f"{fn}: expected model_fn to be callable (images -> logits), got {type(model_fn).__name__}")
    check_image_batch(fn, x)
    y = _check_labels(fn, y, x)
    theta = check_float(fn, theta, name="theta")
    if theta == 0.0:
        raise RangeError(f"{fn}: expected theta != 0, got 0; use theta = 1 to raise the chosen features to 1 or "
                         "theta = -1 to lower them to 0")
    gamma = check_float(fn, gamma, name="gamma", low=0.0, high=1.0, low_inclusive=False)
    if target is not None:
        target = _check_target(fn, target, x)
    if max_iter is not None:
        check_int(fn, max_iter, name="max_iter", low=0)
    check_generator(fn, generator, x.device)

    x0 = x.detach()
    b, d = x0.shape[0], math.prod(x0.shape[1:])
    # round() first: gamma * d is often an integer written inexactly (0.29 * 100 = 28.999999999999996).
    budget = math.floor(round(gamma * d, 6))
    flat = x0.flatten(1).clone()                                   # x_adv, (B, D)
    if b == 0 or max_iter == 0 or budget < 2:
        return flat.view_as(x0)
    if max_iter is None:
        # Each of the <= budget changed features can be chosen at most ceil(1/|theta|) times before it
        # reaches its bound (+1 for rounding in the sums); a step chooses two. The loop ends earlier
        # in practice, when every image has stopped: this only bounds it.
        max_iter = budget * (math.ceil(1.0 / abs(theta)) + 1) // 2
    sign = 1.0 if theta > 0 else -1.0
    domain = flat < 1.0 if theta > 0 else flat > 0.0              # features not yet at theta's bound
    modified = torch.zeros_like(domain)
    per_draw = callable(getattr(model_fn, "expected_loss_and_grad", None))
    active = torch.arange(b, device=x0.device)
    checked, steps = False, 0
    for steps in range(1, max_iter + 1):
        active = active[_can_move(domain[active], modified[active], budget)]
        if active.numel() == 0:
            break
        with torch.enable_grad():
            xa = flat[active].view(-1, *x0.shape[1:]).requires_grad_(not per_draw)
            if per_draw:
                with torch.no_grad():
                    logits = model_fn(xa)                          # the EOT prediction only
            else:
                logits = model_fn(xa)
            if not checked:
                target, checked = _first_call(fn, logits, y, target, active, per_draw, generator), True
            t = target[active]
            going = logits.detach().argmax(1) != t
            if not bool(going.any()):
                break
            a, s = _saliency_rows(fn, model_fn, xa, logits, t, per_draw)
        active = active[going]
        a, s = a.flatten(1)[going], s.flatten(1)[going]
        room = budget - modified[active].sum(1)
        p, q, found = _best_pairs(a, s, domain[active], modified[active], room, sign)
        active, pq = active[found], torch.stack([p[found], q[found]], 1)
        if active.numel() == 0:
            break
        rows = active[:, None]
        new = (flat[rows, pq] + theta).clamp(0.0, 1.0)
        flat[rows, pq] = new
        modified[rows, pq] = True
        domain[rows, pq] = new < 1.0 if theta > 0 else new > 0.0
    log.debug("jsma: stopped after %d steps, %d/%d images still moving", steps, int(active.numel()), b)
    return flat.view_as(x0)


def _check_target(fn: str, target: object, x: Tensor) -> Tensor:
    """``target`` must be an int64 (B,) tensor of classes >= 0 (< K is checked at the first forward)."""
    if not isinstance(target, Tensor):
        raise DTypeError(f"{fn}: expected target to be a torch.Tensor of int64 classes or None, got "
                         f"{type(target).__name__}; use torch.as_tensor(targets, dtype=torch.long)")
    if target.dtype != torch.int64:
        raise DTypeError(f"{fn}: expected target of dtype torch.int64, got {target.dtype}; convert with target.long()")
    if target.dim() != 1 or target.shape[0] != x.shape[0]:
        raise ShapeError(f"{fn}: expected target of shape ({x.shape[0]},), one class per image, got "
                         f"{tuple(target.shape)}; pass class indices, not one-hot vectors")
    if target.numel() and int(target.min()) < 0:
        raise RangeError(f"{fn}: expected target classes >= 0, got min {int(target.min())}")
    return target.to(x.device)


def _first_call(fn: str, logits: object, y: Tensor, target: Tensor | None, active: Tensor, per_draw: bool,
                generator: torch.Generator | None) -> Tensor:
    """Check the first output against the labels and targets; draw the default targets (K is known now)."""
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != active.shape[0]:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ShapeError(f"{fn}: expected model_fn to return logits of shape ({active.shape[0]}, K), got {got}; "
                         "flatten the classifier output or drop extra heads")
    k = logits.shape[1]
    if k < 2:
        raise ShapeError(f"{fn}: expected model_fn to return at least 2 classes, got {k}")
    if not per_draw:
        _check_differentiable(fn, logits)
    if int(y.max()) >= k:
        raise RangeError(f"{fn}: labels y must lie in [0, {k - 1}] for a model with {k} classes, "
                         f"got max {int(y.max())}")
    if target is None:      # uniform over the K - 1 classes other than y: an offset in 1..K-1, modulo K
        offset = torch.randint(1, k, y.shape, generator=generator, device=y.device)
        return (y + offset) % k
    if int(target.max()) >= k:
        raise RangeError(f"{fn}: target classes must lie in [0, {k - 1}] for a model with {k} classes, got max "
                         f"{int(target.max())}")
    return target


def _target_logit(logits: Tensor, t: Tensor) -> Tensor:
    return logits.gather(1, t[:, None]).squeeze(1)


def _other_logits(logits: Tensor, t: Tensor) -> Tensor:
    return logits.sum(1) - logits.gather(1, t[:, None]).squeeze(1)


def _saliency_rows(fn: str, model_fn: ModelFn, xa: Tensor, logits: Tensor, t: Tensor,
                   per_draw: bool) -> tuple[Tensor, Tensor]:
    """``a = d Z_t / dx`` and ``b = sum_{j != t} d Z_j / dx`` for every image of ``xa``."""
    if per_draw:
        _, a = loss_and_input_grad(fn, model_fn, xa, t, _target_logit)
        _, s = loss_and_input_grad(fn, model_fn, xa, t, _other_logits)
    else:
        onehot = F.one_hot(t, logits.shape[1]).to(logits.dtype)
        (a,) = torch.autograd.grad(logits, xa, grad_outputs=onehot, retain_graph=True, allow_unused=True)
        (s,) = torch.autograd.grad(logits, xa, grad_outputs=1.0 - onehot, allow_unused=True)
    if a is None or s is None:         # a graph through the weights only: x was detached on the way
        raise NonDifferentiableError(
            f"{fn}: model_fn's output does not depend differentiably on x (no autograd graph); "
            "wrap non-differentiable or no-grad stages with purify.attacks.bpda(stage), or use a transfer attack")
    return a.detach(), s.detach()


def _can_move(domain: Tensor, modified: Tensor, budget: int) -> Tensor:
    """Images with at least one pair of domain features that fits their remaining budget, (n,) bool.

    Saves the forward and backward passes that would only find that an image has no pair left.
    """
    room = (budget - modified.sum(1)).clamp_min(0)
    old = (domain & modified).sum(1)              # changing these again costs nothing
    fresh = (domain & ~modified).sum(1)
    return old + torch.minimum(fresh, room) >= 2


def _best_pairs(a: Tensor, s: Tensor, domain: Tensor, modified: Tensor, room: Tensor,
                sign: float) -> tuple[Tensor, Tensor, Tensor]:
    """The saliency map's best pair ``p < q`` per image, and whether any pair met the conditions.

    A pair qualifies when both features are in the domain, ``sign * (a_p + a_q) > 0``,
    ``sign * (b_p + b_q) < 0``, and its not-yet-changed features fit in ``room``. Ties go to
    the first pair in row-major order (p, then q), whatever the chunking.

    Shape:
        a, s: (n, D); domain, modified: (n, D) bool; room: (n,) int; output: p, q (n,) int64, found (n,) bool.
    """
    n, d = a.shape
    best = a.new_full((n,), float("-inf"))
    best_p = torch.zeros(n, dtype=torch.long, device=a.device)
    best_q = torch.zeros_like(best_p)
    fresh = (~modified).to(torch.uint8)
    idx = torch.arange(d, device=a.device)
    rows = max(1, _PAIR_ELEMS // max(n * d, 1))
    for start in range(0, d - 1, rows):           # the last feature has no partner q > p
        stop = min(d - 1, start + rows)
        # Rows p in [start, stop), columns q in (start, D): the pairs q <= start are in earlier chunks'
        # upper triangles, so this half of the square is all there is to search.
        p, q = slice(start, stop), slice(start + 1, d)
        pa = a[:, p, None] + a[:, None, q]                    # (n, rows, D - start - 1)
        ps = s[:, p, None] + s[:, None, q]
        ok = (sign * pa > 0) & (sign * ps < 0)
        ok &= domain[:, p, None] & domain[:, None, q]
        ok &= (idx[None, q] > idx[p, None])[None]             # each unordered pair once, never p == q
        ok &= (fresh[:, p, None] + fresh[:, None, q]) <= room[:, None, None]
        score = torch.where(ok, -pa * ps, float("-inf")).flatten(1)
        at = score.argmax(1)                      # the first maximum of the chunk, row-major
        val = score.gather(1, at[:, None]).squeeze(1)
        better = val > best                       # strict: an earlier chunk keeps its tie
        width = d - start - 1
        best = torch.where(better, val, best)
        best_p = torch.where(better, start + at // width, best_p)
        best_q = torch.where(better, start + 1 + at % width, best_q)
    return best_p, best_q, best > float("-inf")
