"""Square attack (Andriushchenko et al., ECCV'20): a score-based random search, the query half of AutoAttack.

It only reads the model's scores, always under ``torch.no_grad()``, and never differentiates, so
it runs unchanged through non-differentiable, iterative or randomized stages. Where it finds
adversarial examples that the gradient attacks miss, the defense masks gradients.

Each query changes one random square of the current perturbation and keeps the change when
the margin ``z_y - max_{j != y} z_j`` goes down. The square's side follows the schedule of
the authors' code: a fraction ``p`` of the pixels, ``p_init`` halved at queries
10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of a 10,000-query budget (rescaled to
``queries``). L∞: the start is vertical stripes of ±eps, a square is set to ±eps per channel.
L2: the start is a grid of ±bump blocks, a square gets a new ±bump, another square's mass is
moved there, and the perturbation is rescaled to norm eps (as in the authors' code).

An image stops when it is misclassified (margin <= 0); the others go on until the budget is
spent. Squares, colours and starts are drawn for the whole batch from ``generator`` at every
query, so an image's result depends only on its own data and its position in the batch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from purify._checks import check_choice, check_float, check_generator, check_image_batch, check_int, per_sample
from purify.attacks.gradient import NORMS, ModelFn, _check_labels, _check_logits, _flat_norm, margin_loss
from purify.errors import DTypeError

__all__ = ["square", "square_p"]

#: (query index of a 10,000-query budget after which p is divided by 2**(i + 1)): the authors' schedule.
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_p(it: int, budget: int, p_init: float) -> float:
    """Fraction of pixels of the square at loop iteration ``it`` of ``budget`` (the authors' schedule).

    Example:
        >>> [square_p(i, 10000, 0.8) for i in (0, 10, 11, 51, 8001)]
        [0.8, 0.8, 0.4, 0.2, 0.0015625]
    """
    scaled = int(it / max(budget, 1) * 10000)
    return p_init / 2 ** sum(scaled > t for t in _HALVINGS)


def square(model_fn: ModelFn, x: Tensor, y: Tensor, *, eps: float | Tensor, norm: str = "linf",
           queries: int = 5000, p_init: float = 0.8, generator: torch.Generator | None = None) -> Tensor:
    """Square attack in the L∞ or L2 ball of radius ``eps`` around ``x``, ``queries`` model calls per image.

    The first query scores the start, each later one a random square update; an image stops
    at its first misclassification. Per image it returns the point with the lowest margin
    found (the first misclassified one when it succeeds). ``queries=0`` or ``eps=0`` returns an
    exact copy of ``x`` without calling the model. ``model_fn`` is called under
    ``torch.no_grad()`` only: no gradient is ever needed or computed.

    Args:
        model_fn: images in [0, 1] -> scores (logits, or log-probabilities such as an EOT's).
        x: clean images in [0, 1]. y: true labels.
        eps: radius, a float or one value per image, >= 0.
        norm: ``"linf"`` or ``"l2"``.
        queries: model calls per image, >= 0 (the start and ``queries - 1`` updates).
        p_init: initial fraction of pixels in a square, in (0, 1].
        generator: randomness of the search (on x's device); None uses torch's global RNG.

    Returns:
        A new detached ``x_adv`` with ``||x_adv - x|| <= eps`` and values in [0, 1].

    Shape:
        x: (B, C, H, W), floating, values in [0, 1]; y: (B,) int64; eps: float or (B,);
        output: same shape, dtype and device as x. model_fn output: (B, K).
    Raises:
        ShapeError, RangeError, DTypeError, UnknownNameError
    Example:
        >>> clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
        >>> x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
        >>> adv = square(clf, x, y, eps=8 / 255, queries=50, generator=torch.Generator().manual_seed(0))
        >>> bool((adv - x).abs().max() <= 8 / 255 + 1e-6), adv.shape
        (True, torch.Size([4, 3, 8, 8]))
    """
    fn = "square"
    if not callable(model_fn):
        raise DTypeError(f"{fn}: expected model_fn to be callable (images -> scores), got {type(model_fn).__name__}")
    check_image_batch(fn, x)
    y = _check_labels(fn, y, x)
    b = x.shape[0]
    eps_t = per_sample(fn, eps, name="eps", batch=b, like=x)
    check_choice(fn, norm, name="norm", choices=NORMS)
    check_int(fn, queries, name="queries", low=0)
    p_init = check_float(fn, p_init, name="p_init", low=0.0, high=1.0, low_inclusive=False)
    check_generator(fn, generator, x.device)

    x0 = x.detach()
    if queries == 0 or b == 0 or not bool((eps_t > 0).any()):
        return x0.clone()
    with torch.no_grad():
        return _square(fn, model_fn, x0, y, eps_t, norm, queries, p_init, generator)


def _square(fn: str, model_fn: ModelFn, x0: Tensor, y: Tensor, eps: Tensor, norm: str, queries: int,
            p_init: float, generator: torch.Generator | None) -> Tensor:
    b, c, h, w = x0.shape
    draw = _Draws(b, c, h, w, x0, generator)
    if norm == "linf":
        x_best = (x0 + eps * draw.signs((b, c, 1, w))).clamp(0.0, 1.0)
    else:
        x_best = (x0 + _normalize(_l2_start(draw, b, c, h, w, x0)) * eps).clamp(0.0, 1.0)
    logits = model_fn(x_best)
    _check_logits(fn, logits, y)
    margin = -margin_loss(logits.to(x0.dtype), y)
    n_features = c * h * w
    for it in range(queries - 1):
        p = square_p(it, queries - 1, p_init)
        side = max(int(round(math.sqrt(p * n_features / c))), 1 if norm == "linf" else 3)
        if norm == "l2" and side % 2 == 0:
            side += 1
        side = min(side, h, w)
        if norm == "linf":
            corner, colours = draw.corner(side), draw.signs((b, c, 1, 1))
        else:
            corner, corner2, colours, flip = draw.corner(side), draw.corner(side), draw.signs((b, c, 1, 1)), draw.coin()
        act = torch.nonzero((margin > 0) & (eps.view(-1) > 0)).view(-1)
        if act.numel() == 0:
            break
        xa, xb, ea = x0[act], x_best[act], eps[act]
        if norm == "linf":
            win = _window_mask(corner[0][act], corner[1][act], side, h, w)
            x_new = torch.where(win, xa + ea * colours[act], xb)
        else:
            x_new = _l2_update(xa, xb, ea, side, (corner[0][act], corner[1][act]),
                               (corner2[0][act], corner2[1][act]), colours[act], flip[act])
        x_new = torch.minimum(torch.maximum(x_new, xa - ea), xa + ea).clamp(0.0, 1.0) if norm == "linf" else x_new
        m_new = -margin_loss(model_fn(x_new).to(x0.dtype), y[act])
        better = m_new < margin[act]
        if bool(better.any()):
            idx = act[better]
            x_best[idx] = x_new[better]
            margin[idx] = m_new[better]
    return x_best


class _Draws:
    """Every random draw of the search, made for the whole batch in a fixed order."""

    def __init__(self, b: int, c: int, h: int, w: int, like: Tensor, generator: torch.Generator | None) -> None:
        self.b, self.h, self.w, self.like, self.g = b, h, w, like, generator

    def signs(self, shape: tuple[int, ...]) -> Tensor:
        bits = torch.randint(0, 2, shape, generator=self.g, device=self.like.device)
        return (2 * bits - 1).to(self.like.dtype)

    def corner(self, side: int) -> tuple[Tensor, Tensor]:
        kw = dict(generator=self.g, device=self.like.device)
        return (torch.randint(0, self.h - side + 1, (self.b,), **kw),
                torch.randint(0, self.w - side + 1, (self.b,), **kw))

    def coin(self) -> Tensor:
        return torch.randint(0, 2, (self.b,), generator=self.g, device=self.like.device).bool()


def _window_mask(vh: Tensor, vw: Tensor, side: int, h: int, w: int) -> Tensor:
    """(n, 1, h, w) mask of the squares with top-left corners (vh, vw)."""
    rows = torch.arange(h, device=vh.device)
    cols = torch.arange(w, device=vh.device)
    in_h = (rows >= vh[:, None]) & (rows < vh[:, None] + side)
    in_w = (cols >= vw[:, None]) & (cols < vw[:, None] + side)
    return (in_h[:, :, None] & in_w[:, None, :])[:, None]


def _window_index(t: Tensor, vh: Tensor, vw: Tensor, side: int) -> tuple[Tensor, ...]:
    """Advanced-indexing tuple selecting each image's (C, side, side) square of ``t``."""
    n, c = t.shape[:2]
    ar = torch.arange(side, device=t.device)
    return (torch.arange(n, device=t.device)[:, None, None, None],
            torch.arange(c, device=t.device)[None, :, None, None],
            (vh[:, None] + ar)[:, None, :, None], (vw[:, None] + ar)[:, None, None, :])


def _normalize(t: Tensor) -> Tensor:
    return t / (_flat_norm(t) + 1e-12)


def _rectangles(a: int, b: int, like: Tensor) -> Tensor:
    """The authors' ``eta_rectangles``: nested rectangles weighted 1 / (k + 1)^2, unit L2 norm."""
    delta = torch.zeros(a, b, dtype=like.dtype, device=like.device)
    ca, cb = a // 2, b // 2
    for k in range(max(ca + 1, cb + 1)):
        rows = slice(max(ca - k, 0), min(ca + k + 1, a))
        delta[rows, max(cb - k, 0):min(cb + k + 1, b)] += 1.0 / (k + 1) ** 2
    return delta / delta.square().sum().sqrt()


def _eta(side: int, like: Tensor) -> Tensor:
    """The authors' ``eta``: a +bump over a -bump, unit L2 norm (transposed at random by the caller)."""
    delta = torch.zeros(side, side, dtype=like.dtype, device=like.device)
    delta[: side // 2] = _rectangles(side // 2, side, like)
    delta[side // 2:] = -_rectangles(side - side // 2, side, like)
    return delta / delta.square().sum().sqrt()


def _l2_start(draw: _Draws, b: int, c: int, h: int, w: int, like: Tensor) -> Tensor:
    """A grid of ±bump blocks of side h // 5, one sign per image, channel and block."""
    s = max(h // 5, 1)
    off = (h - 5 * s) // 2 if h >= 5 else 0
    bump = _rectangles(s, s, like).view(1, 1, s, s)
    delta = torch.zeros(b, c, h, w, dtype=like.dtype, device=like.device)
    for i in range(h // s):
        for j in range(w // s):
            vh, vw = off + i * s, off + j * s
            if vh + s <= h and vw + s <= w:
                delta[:, :, vh:vh + s, vw:vw + s] += bump * draw.signs((b, c, 1, 1))
    return delta


def _l2_update(x0: Tensor, x_best: Tensor, eps: Tensor, side: int, c1: tuple[Tensor, Tensor],
               c2: tuple[Tensor, Tensor], colours: Tensor, flip: Tensor) -> Tensor:
    """One L2 proposal: a new ±bump in square 1 (plus its old content), square 2 emptied, norm eps."""
    n, c, h, w = x0.shape
    delta = x_best - x0
    i1, i2 = _window_index(delta, *c1, side), _window_index(delta, *c2, side)
    old = delta[i1]                                                        # (n, c, s, s)
    norm_w1 = old.square().sum(dim=(-2, -1), keepdim=True).sqrt()
    both = _window_mask(*c1, side, h, w) | _window_mask(*c2, side, h, w)
    norm_windows = _flat_norm(delta * both)
    norm_image = _flat_norm(delta)
    eta = _eta(side, x0)
    eta = torch.where(flip.view(-1, 1, 1, 1), eta.T.expand(n, 1, side, side), eta.expand(n, 1, side, side))
    new = eta * colours + old / (1e-12 + norm_w1)
    room = ((eps.square() - norm_image.square()).clamp_min(0.0) / c + norm_windows.square()).sqrt()
    new = new / (1e-12 + new.square().sum(dim=(-2, -1), keepdim=True).sqrt()) * room
    delta = delta.clone()
    delta[i2] = 0.0
    delta[i1] = new
    return (x0 + _normalize(delta) * eps).clamp(0.0, 1.0)
