"""Feature squeezing (Xu, Evans & Qi, NDSS 2018): bit-depth reduction and median smoothing.

Two cheap squeezers that remove the fine detail an adversarial perturbation lives in:

* :func:`bit_depth_reduce` keeps ``2^bits`` grey levels per channel, ``round(x·(2^bits − 1)) / (2^bits − 1)``
  (the paper uses 1 bit on MNIST and 4–5 bits on CIFAR-10);
* :func:`median_smooth` replaces every pixel by the median of its ``size``×``size`` neighbourhood in
  its own channel (2×2 in the paper for CIFAR-10, 2×2 or 3×3 for MNIST).

:func:`median_smooth` equals ``scipy.ndimage.median_filter(x, size=(1, 1, size, size), mode="reflect")``
exactly, also for even sizes: the window of output pixel ``i`` covers input pixels
``i − size//2 … i − size//2 + size − 1`` (scipy's origin 0), borders are extended half-sample
symmetrically (``d c b a | a b c d | d c b a``: scipy's "reflect", numpy's "symmetric", which is
*not* torch's ``"reflect"`` padding), and of the ``size²`` sorted values it takes the one of rank
``size²//2`` (counting from 0), i.e. the *upper* of the two middle values for an even count, where
``torch.median`` would return the lower one. Sizes 2 and 3 run as min/max networks on shifted
views of the padded image (no sort; a few elementwise passes), larger sizes sort the ``size²``
shifted views, which costs ``size²`` copies of the batch in memory.

Gradients, and what an attacker gets:

* Rounding has a zero gradient almost everywhere. With ``ste=False`` a backward pass through
  :func:`bit_depth_reduce` raises :class:`~purify.errors.NonDifferentiableError` instead of
  returning silent zeros (the registry marks it ``differentiable=False``); with ``ste=True`` it
  passes the gradient straight through (identity), which is the BPDA gradient of the stage.
  :func:`bit_depth_surrogate` is a smooth staircase, the stronger BPDA backward for few bits:
  ``bpda(BitDepthReduce(bits=1), backward=lambda v: bit_depth_surrogate(v, bits=1))``; its gradient
  lives near the rounding boundaries, where a pixel can actually change level, and vanishes on
  pixels that no small step moves across one (the identity sends the attack there in vain).
  ``ste_temperature > 0`` makes that the stage's own straight-through gradient (the forward stays
  the exact rounding), so a pipeline or a harness row asks for it by a parameter: the harness's
  ``full`` threat model, which turns ``ste`` on, then differentiates the smooth staircase while
  ``bpda`` keeps the identity.
* A median selects one of its inputs, so :func:`median_smooth` is piecewise linear and autograd
  gives its exact gradient almost everywhere (each output pixel's gradient goes to the input
  pixel it selected; on ties between different pixels, to one of them, a valid subgradient), as
  for max pooling. The registry therefore marks it ``differentiable=True``: an attacker under the
  ``full`` threat model differentiates the true filter. ``ste=True`` replaces that gradient by the
  identity (a BPDA approximation) for those who want to compare both.

Example:
    >>> x = torch.rand(2, 3, 32, 32)
    >>> squeezed = median_smooth(bit_depth_reduce(x, bits=5), size=2)
    >>> squeezed.shape
    torch.Size([2, 3, 32, 32])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from purify._checks import check_image_batch, check_int
from purify.errors import DTypeError, NonDifferentiableError, RangeError, UnknownNameError

__all__ = ["bit_depth_reduce", "BitDepthReduce", "bit_depth_surrogate", "median_smooth", "MedianSmooth", "MAX_BITS"]

#: Largest bit depth: float32 (what float16 / bfloat16 inputs are computed in) resolves 2^-24.
MAX_BITS = 24
# Dtypes the rounding is computed in; float16 / bfloat16 inputs are promoted to float32.
_COMPUTE_DTYPES = (torch.float32, torch.float64)


def _check_ste(fn: str, ste: object) -> bool:
    if not isinstance(ste, bool):
        raise DTypeError(f"{fn}: expected ste to be a bool, got {type(ste).__name__}; pass ste=True or ste=False")
    return ste


# ---------------------------------------------------------------------------------------------- gradients

class _StraightThrough(torch.autograd.Function):
    """``y`` forward (a squeezed ``x``, computed without a graph), the identity gradient to ``x``.

    Only tensors go in: the ONNX exporter inlines its forward (a copy of ``y``), which it cannot do
    for a Function that takes a Python number (its graph pass fails).
    """

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor) -> Tensor:  # type: ignore[override]
        return y.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad, None


class _SmoothStraightThrough(torch.autograd.Function):
    """``y`` forward (the exact rounding), ``grad · slope`` backward: ``slope`` is the derivative of
    :func:`bit_depth_surrogate` at ``x``, computed with the forward (tensors only, as above)."""

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, slope: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(slope)
        return y.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (slope,) = ctx.saved_tensors
        return grad * slope, None, None


class _RoundingHasNoGradient(_StraightThrough):
    """``y`` forward; backward refuses to run (bit-depth rounding with ``ste=False``)."""

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        raise NonDifferentiableError(
            "bit_depth_reduce: backward through the rounding has no useful gradient (it is zero almost "
            "everywhere), got a backward call with ste=False; pass ste=True for a straight-through "
            "(identity) gradient, or wrap the stage with bpda()"
        )


# ---------------------------------------------------------------------------------------------- bit depth

def _check_bits(fn: str, bits: object) -> int:
    bits = check_int(fn, bits, name="bits", low=1)
    if bits > MAX_BITS:
        raise RangeError(f"{fn}: expected bits in [1, {MAX_BITS}], got {bits}; finer steps than 2^-{MAX_BITS} are "
                         "below float32 resolution, so the stage would do nothing (leave it out instead)")
    return bits


def _check_temperature(fn: str, temperature: object, *, name: str, zero: bool) -> float:
    ok = not isinstance(temperature, bool) and isinstance(temperature, (int, float)) and (
        temperature >= 0 if zero else temperature > 0)
    if not ok or temperature != temperature or temperature == float("inf"):
        need = ">= 0 (0: the identity)" if zero else "> 0"
        raise RangeError(f"{fn}: expected {name} {need}, a finite number in quantization steps (e.g. 0.1), "
                         f"got {temperature!r}")
    return float(temperature)


def bit_depth_reduce(x: Tensor, /, *, bits: int = 5, ste: bool = False, ste_temperature: float = 0.0) -> Tensor:
    """Bit-depth reduction: ``round(x · (2^bits − 1)) / (2^bits − 1)``, ``2^bits`` levels per channel.

    ``torch.round`` rounds half to even; a [0, 1] input stays in [0, 1] (0 and 1 are levels).
    float16 / bfloat16 inputs are computed in float32 and cast back. Deterministic and
    batch-consistent.

    Gradients: with ``ste=False`` the output of an input that requires grad carries a graph, but
    calling backward raises :class:`NonDifferentiableError`; with ``ste=True`` the gradient is the
    identity (straight-through), or with ``ste_temperature > 0`` the gradient of
    :func:`bit_depth_surrogate` at that temperature (the smooth staircase; the value is still the
    exact rounding).

    Args:
        x: image batch with values in [0, 1].
        bits: bits per channel, 1 ≤ bits ≤ 24 (8 keeps a uint8 image as it is).
        ste: straight-through gradient for the rounding.
        ste_temperature: the straight-through gradient's shape when ``ste`` is on: 0 the identity,
            > 0 the smooth staircase's, in quantization steps (0.1 is the surrogate's default). It
            never changes the output.

    Shape:
        x: (B, C, H, W), floating, values in [0, 1]; output: same shape, dtype and device.
    Raises:
        ShapeError, RangeError, DTypeError; NonDifferentiableError on backward with ``ste=False``.
    Example:
        >>> bit_depth_reduce(torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0]).view(1, 1, 1, 5), bits=1).flatten().tolist()
        [0.0, 0.0, 0.0, 1.0, 1.0]
        >>> y = bit_depth_reduce(torch.tensor([0.1, 0.2, 0.6, 0.8]).view(1, 1, 1, 4), bits=2)  # levels k/3
        >>> (y * 3).flatten().tolist()
        [0.0, 1.0, 2.0, 2.0]
        >>> x = torch.tensor([0.1, 0.45]).view(1, 1, 1, 2).requires_grad_()
        >>> g = torch.autograd.grad(bit_depth_reduce(x, bits=1, ste=True, ste_temperature=0.1).sum(), x)[0]
        >>> bool(g[..., 1] > 10 * g[..., 0])     # the smooth staircase's gradient: steep near the boundary
        True
    """
    fn = "bit_depth_reduce"
    x = check_image_batch(fn, x)
    return _bit_depth_core(x, bits=_check_bits(fn, bits), ste=_check_ste(fn, ste),
                           ste_temperature=_check_temperature(fn, ste_temperature, name="ste_temperature", zero=True))


def _bit_depth_core(x: Tensor, *, bits: int, ste: bool, ste_temperature: float = 0.0) -> Tensor:
    """:func:`bit_depth_reduce` without its checks: for callers that checked once (pipelines, attack loops)."""
    work = x if x.dtype in _COMPUTE_DTYPES else x.to(torch.float32)
    levels = float(2 ** bits - 1)
    # Computed off the graph; the autograd Function then attaches the gradient the caller chose.
    out = (torch.round(work.detach() * levels) / levels).to(x.dtype)
    if not x.requires_grad:
        return out
    if ste and ste_temperature > 0:
        return _SmoothStraightThrough.apply(x, out, _surrogate_slope(work.detach(), levels, ste_temperature).to(x.dtype))
    return (_StraightThrough if ste else _RoundingHasNoGradient).apply(x, out)


def _surrogate_core(work: Tensor, levels: float, temperature: float) -> Tensor:
    """The smooth staircase of :func:`bit_depth_surrogate` (no checks; ``work`` in a compute dtype)."""
    z = work * levels
    base = torch.floor(z.detach())
    return (base + torch.sigmoid((z - base - 0.5) / temperature)) / levels


def _surrogate_slope(work: Tensor, levels: float, temperature: float) -> Tensor:
    """d :func:`_surrogate_core` / dx, elementwise: ``σ(u)(1 − σ(u)) / temperature`` with
    ``u = (frac(x · levels) − 1/2) / temperature`` (the chain rule's ``levels`` cancels the division)."""
    z = work * levels
    s = torch.sigmoid((z - torch.floor(z) - 0.5) / temperature)
    return s * (1 - s) / temperature


def _bit_depth_margin(x: Tensor, *, bits: int) -> Tensor:
    """Per image, the smallest distance of a pixel to a rounding boundary ``(k + 1/2) / (2^bits − 1)``."""
    work = x if x.dtype in _COMPUTE_DTYPES else x.to(torch.float32)
    levels = float(2 ** bits - 1)
    scaled = work * levels              # the product the core rounds
    margin = (scaled - torch.floor(scaled) - 0.5).abs() / levels
    return margin.amin(dim=(1, 2, 3)) if x.shape[0] else work.new_zeros(0)


def bit_depth_surrogate(x: Tensor, /, *, bits: int = 5, temperature: float = 0.1) -> Tensor:
    """A smooth staircase close to :func:`bit_depth_reduce`, differentiable: the backward of a BPDA attack.

    With ``z = x · (2^bits − 1)``, each step is a logistic ``σ((frac(z) − 1/2) / temperature)``
    centred on the rounding boundary: ``(floor(z) + σ(...)) / (2^bits − 1)``. ``temperature`` is in
    units of one quantization step; as it goes to 0 the staircase becomes the rounding: at a distance
    ``d`` (in steps) from the nearest boundary it differs from :func:`bit_depth_reduce` by
    ``σ(−d / temperature)`` steps (0.018 at d = 0.4, 0.0067 at d = 0.5 for the default 0.1). Its
    jumps at whole ``z`` are of that last size, where its gradient is ~0, so they do not disturb
    an attack.

    Args:
        x: image batch with values in [0, 1].
        bits: bits per channel, 1 ≤ bits ≤ 24, as the stage it stands in for.
        temperature: width of each step's logistic, in quantization steps, > 0.

    Shape:
        x: (B, C, H, W), floating, values in [0, 1]; output: same shape, dtype and device.
    Raises:
        ShapeError, RangeError, DTypeError
    Example:
        >>> x = torch.tensor([0.1, 0.45, 0.55, 0.9]).view(1, 1, 1, 4).requires_grad_()
        >>> y = bit_depth_surrogate(x, bits=1)
        >>> [round(v, 2) for v in y.flatten().tolist()]
        [0.02, 0.38, 0.62, 0.98]
        >>> g = torch.autograd.grad(y.sum(), x)[0].flatten()
        >>> bool(g[1] > 10 * g[0])           # steep at the boundary, flat far from it
        True
    """
    fn = "bit_depth_surrogate"
    x = check_image_batch(fn, x)
    levels = float(2 ** _check_bits(fn, bits) - 1)
    temperature = _check_temperature(fn, temperature, name="temperature", zero=False)
    work = x if x.dtype in _COMPUTE_DTYPES else x.to(torch.float32)
    return _surrogate_core(work, levels, temperature).to(x.dtype)


class BitDepthReduce(nn.Module):
    """Module twin of :func:`bit_depth_reduce`; ``forward`` only calls the function.

    Shape:
        x: (B, C, H, W), floating, values in [0, 1]; output: same shape, dtype and device.
    Raises:
        ShapeError, RangeError, DTypeError; NonDifferentiableError on backward with ``ste=False``.
    Example:
        >>> BitDepthReduce(bits=4)(torch.rand(1, 3, 32, 32)).unique().numel() <= 16
        True
    """

    def __init__(self, *, bits: int = 5, ste: bool = False, ste_temperature: float = 0.0) -> None:
        super().__init__()
        self.bits = bits
        self.ste = ste
        self.ste_temperature = ste_temperature

    def forward(self, x: Tensor) -> Tensor:
        return bit_depth_reduce(x, bits=self.bits, ste=self.ste, ste_temperature=self.ste_temperature)

    def run(self, x: Tensor, *, generator: torch.Generator | None = None, **overrides: object) -> Tensor:
        """The unchecked rounding; nothing varies per sample and ``generator`` is unused (deterministic)."""
        _no_overrides("BitDepthReduce", overrides)
        return _bit_depth_core(x, bits=self.bits, ste=self.ste, ste_temperature=self.ste_temperature)

    def rounding_margin(self, x: Tensor, **overrides: object) -> Tensor:
        """Per image, the smallest distance of a pixel of ``x`` to a rounding boundary, on the [0, 1]
        scale of the pixels (at most half a step, ``1 / (2 · (2^bits − 1))``); (B,)."""
        _no_overrides("BitDepthReduce", overrides)
        return _bit_depth_margin(x, bits=self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, ste={self.ste}, ste_temperature={self.ste_temperature}"


def _no_overrides(name: str, overrides: dict) -> None:
    if overrides:
        raise UnknownNameError(f"{name}.run: unknown per-sample override(s) {sorted(overrides)}; "
                               "this stage takes none (its settings are fixed per stage)")


# ---------------------------------------------------------------------------------------------- median

def _symmetric_indices(n: int, before: int, after: int, device: torch.device) -> Tensor:
    """Indices of a length-``n`` axis extended half-sample symmetrically (scipy's "reflect"),
    also when a pad exceeds ``n``: the extension is periodic with period ``2n``."""
    i = torch.arange(-before, n + after, device=device) % (2 * n)
    return torch.where(i < n, i, 2 * n - 1 - i)


def _med3(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    return torch.maximum(torch.minimum(a, b), torch.minimum(torch.maximum(a, b), c))


def _median(x: Tensor, k: int) -> Tensor:
    """The size-``k`` median filter of ``x`` (B, C, H, W) as scipy computes it (see the module docstring)."""
    if k == 1:
        return x.clone()
    h, w = x.shape[-2:]
    before = k // 2                          # scipy's origin 0: the window starts k//2 pixels up / left
    after = k - 1 - before
    p = (x.index_select(-2, _symmetric_indices(h, before, after, x.device))
          .index_select(-1, _symmetric_indices(w, before, after, x.device)))
    rows = [p[..., dy:dy + h, :] for dy in range(k)]       # (B, C, H, W + k - 1) each
    if k == 2:
        # Sort each vertical pair once (shared by the two windows it belongs to). Of the four values,
        # rank 2 (the upper median) is the second largest: the smaller of the two pair maxima or the
        # larger of the two pair minima, whichever is larger.
        lo, hi = torch.minimum(rows[0], rows[1]), torch.maximum(rows[0], rows[1])
        return torch.maximum(torch.minimum(hi[..., :w], hi[..., 1:]), torch.maximum(lo[..., :w], lo[..., 1:]))
    if k == 3:
        # Sort each vertical triple once; the median of the 3x3 window is then the median of
        # (largest of the three column minima, median of the column medians, smallest of the column maxima).
        a, b, c = rows
        lo, hi = torch.minimum(a, b), torch.maximum(a, b)
        mid = torch.maximum(lo, torch.minimum(hi, c))
        lo, hi = torch.minimum(lo, c), torch.maximum(hi, c)
        cols = (slice(0, w), slice(1, w + 1), slice(2, w + 2))
        max_lo = torch.maximum(torch.maximum(lo[..., cols[0]], lo[..., cols[1]]), lo[..., cols[2]])
        min_hi = torch.minimum(torch.minimum(hi[..., cols[0]], hi[..., cols[1]]), hi[..., cols[2]])
        return _med3(max_lo, _med3(mid[..., cols[0]], mid[..., cols[1]], mid[..., cols[2]]), min_hi)
    window = torch.stack([r[..., dx:dx + w] for r in rows for dx in range(k)], dim=-1)
    return torch.sort(window, dim=-1).values[..., (k * k) // 2]


def median_smooth(x: Tensor, /, *, size: int = 2, ste: bool = False) -> Tensor:
    """Per-channel ``size``×``size`` median filter, equal to scipy's ``median_filter(mode="reflect")``.

    Window placement, border extension and the rank taken for even sizes are scipy's (see the
    module docstring): ``median_smooth(x, size=k)`` equals
    ``scipy.ndimage.median_filter(x.numpy(), size=(1, 1, k, k), mode="reflect")`` value for value.
    ``size=1`` is the identity. Any floating dtype is kept (the median selects values; nothing is
    computed). Deterministic and batch-consistent.

    Gradients: with ``ste=False`` autograd gives the filter's exact gradient almost everywhere
    (the median is a selection: each output's gradient goes to the input pixel it took); with
    ``ste=True`` the gradient is the identity (straight-through).

    Args:
        x: image batch with values in [0, 1].
        size: window side k ≥ 1; sizes above 3 sort ``k²`` shifted copies of the batch (memory).
        ste: straight-through gradient instead of the selection's gradient.

    Shape:
        x: (B, C, H, W), floating, values in [0, 1]; output: same shape, dtype and device.
    Raises:
        ShapeError, RangeError, DTypeError.
    Example:
        >>> x = torch.tensor([[0.0, 0.1], [0.8, 0.9]]).view(1, 1, 2, 2)
        >>> median_smooth(x, size=2)     # the upper median of 4 values, as scipy
        tensor([[[[0.0000, 0.1000],
                  [0.8000, 0.8000]]]])
    """
    fn = "median_smooth"
    x = check_image_batch(fn, x)
    return _median_core(x, size=check_int(fn, size, name="size", low=1), ste=_check_ste(fn, ste))


def _median_core(x: Tensor, *, size: int, ste: bool) -> Tensor:
    """:func:`median_smooth` without its checks: for callers that checked once (pipelines, attack loops)."""
    if ste:
        # The filter off the graph (no selection graph to keep), the identity gradient attached.
        return _StraightThrough.apply(x, _median(x.detach(), size))
    return _median(x, size)


class MedianSmooth(nn.Module):
    """Module twin of :func:`median_smooth`; ``forward`` only calls the function.

    Shape:
        x: (B, C, H, W), floating, values in [0, 1]; output: same shape, dtype and device.
    Raises:
        ShapeError, RangeError, DTypeError.
    Example:
        >>> MedianSmooth(size=3)(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 1, 28, 28])
    """

    def __init__(self, *, size: int = 2, ste: bool = False) -> None:
        super().__init__()
        self.size = size
        self.ste = ste

    def forward(self, x: Tensor) -> Tensor:
        return median_smooth(x, size=self.size, ste=self.ste)

    def run(self, x: Tensor, *, generator: torch.Generator | None = None, **overrides: object) -> Tensor:
        """The unchecked filter; nothing varies per sample and ``generator`` is unused (deterministic)."""
        _no_overrides("MedianSmooth", overrides)
        return _median_core(x, size=self.size, ste=self.ste)

    def extra_repr(self) -> str:
        return f"size={self.size}, ste={self.ste}"
