"""Blockwise DCT and the quantized nonlinear transform of the generative cleaning network.

The image is split into M×M blocks (M = 8 by default), each block goes through the
orthonormal 2-D DCT-II, every coefficient is quantized as ``round(X / q) · q``, and the
inverse DCT brings the block back (Wang et al., "generative cleaning", §3.2).

``q`` lives on the 0..255 pixel scale used by the paper (q ≈ 8–12 works best), while
our images live on [0, 1]. The DCT is linear, so a coefficient of the 0..255 image is
``255 · X``; the quantizer is therefore computed, in this exact order, as
``round(X · 255 / q) · q / 255`` on the [0, 1] coefficients ``X``.

Rounding has a zero gradient almost everywhere. With ``ste=False`` a backward pass
through :func:`dct_quantize` raises :class:`~purify.errors.NonDifferentiableError`
instead of returning silent zeros; with ``ste=True`` the rounding passes the gradient
straight through (identity), so the op differentiates as ``DCT -> IDCT -> clip``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from purify._checks import check_image_batch, check_int, per_sample
from purify.errors import DTypeError, NonDifferentiableError, ShapeError, UnknownNameError

__all__ = ["dct_matrix", "block_dct2d", "block_idct2d", "dct_quantize", "DCTQuantize", "rounding_margin"]

# Dtypes the transform is computed in; float16 / bfloat16 inputs are promoted to float32.
_COMPUTE_DTYPES = (torch.float32, torch.float64)


def dct_matrix(m: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """The orthonormal DCT-II matrix ``D`` with ``D[k, n] = c_k cos(pi (2n + 1) k / (2m))``.

    ``c_0 = sqrt(1/m)`` and ``c_k = sqrt(2/m)`` otherwise, so ``D @ D.T == I`` and
    ``D @ v`` equals ``scipy.fft.dct(v, norm="ortho")``. Built in float64 on every call
    (it is tiny) and then cast.

    Shape:
        output: (m, m).
    Raises:
        DTypeError, RangeError: ``m`` is not an int >= 1.
    Example:
        >>> D = dct_matrix(8, dtype=torch.float64)
        >>> torch.allclose(D @ D.T, torch.eye(8, dtype=torch.float64))
        True
    """
    m = check_int("dct_matrix", m, name="m", low=1)
    k = torch.arange(m, dtype=torch.float64, device=device).unsqueeze(1)
    n = torch.arange(m, dtype=torch.float64, device=device).unsqueeze(0)
    d = torch.cos(math.pi * (2.0 * n + 1.0) * k / (2.0 * m)) * math.sqrt(2.0 / m)
    d[0] = math.sqrt(1.0 / m)
    return d.to(dtype)


def _check_blocks(fn: str, x: object, block_size: object, name: str) -> tuple[Tensor, int]:
    x = check_image_batch(fn, x, name=name, check_range=False)
    m = check_int(fn, block_size, name="block_size", low=1)
    h, w = x.shape[-2:]
    if h % m or w % m:
        raise ShapeError(
            f"{fn}: expected {name} with H and W multiples of block_size={m}, got {tuple(x.shape)}; "
            "pad the image first, or use dct_quantize(), which pads and crops for you"
        )
    return x, m


def _separable(x: Tensor, left: Tensor, m: int) -> Tensor:
    """Apply ``left @ block @ left.T`` to every m×m block of ``x`` (B, C, H, W), batched."""
    b, c, h, w = x.shape
    # along W: each row segment v of length m becomes left @ v, i.e. v @ left.T
    y = (x.reshape(b, c, h, w // m, m) @ left.T).reshape(b, c, h, w)
    # along H: bring each column segment to the last axis, transform, move back
    y = y.reshape(b, c, h // m, m, w).transpose(-1, -2)
    y = (y @ left.T).transpose(-1, -2)
    return y.reshape(b, c, h, w)


def block_dct2d(x: Tensor, /, *, block_size: int = 8) -> Tensor:
    """Orthonormal 2-D DCT-II of every ``block_size``×``block_size`` block.

    Each block ``B`` becomes ``D @ B @ D.T`` (``D = dct_matrix(block_size)``), i.e.
    ``scipy.fft.dctn(B, norm="ortho")``, written back at the block's position.
    Values are not range-checked (coefficients may lie anywhere).

    Shape:
        x: (B, C, H, W), floating, H and W multiples of ``block_size``; output: same shape,
        dtype and device.
    Raises:
        ShapeError, DTypeError, RangeError (``block_size`` < 1).
    Example:
        >>> X = block_dct2d(torch.ones(1, 1, 8, 8))
        >>> round(float(X[0, 0, 0, 0]), 4), round(float(X[0, 0, 1:, 1:].abs().max()), 4)
        (8.0, 0.0)
    """
    x, m = _check_blocks("block_dct2d", x, block_size, "x")
    return _separable(x, dct_matrix(m, dtype=x.dtype, device=x.device), m)


def block_idct2d(X: Tensor, /, *, block_size: int = 8) -> Tensor:
    """Inverse of :func:`block_dct2d`: ``D.T @ C @ D`` for every coefficient block ``C``.

    Shape:
        X: (B, C, H, W), floating, H and W multiples of ``block_size``; output: same shape,
        dtype and device.
    Raises:
        ShapeError, DTypeError, RangeError (``block_size`` < 1).
    Example:
        >>> x = torch.rand(2, 3, 16, 8, dtype=torch.float64)
        >>> torch.allclose(block_idct2d(block_dct2d(x)), x)
        True
    """
    X, m = _check_blocks("block_idct2d", X, block_size, "X")
    return _separable(X, dct_matrix(m, dtype=X.dtype, device=X.device).T, m)


def _quantize(coeffs: Tensor, q: Tensor) -> Tensor:
    # q is on the 0..255 scale, coefficients on the [0, 1] scale; keep this exact order.
    return torch.round(coeffs * 255.0 / q) * q / 255.0


class _Round(torch.autograd.Function):
    """Coefficient quantization; subclasses decide what backward does."""

    @staticmethod
    def forward(ctx, coeffs: Tensor, q: Tensor) -> Tensor:  # type: ignore[override]
        return _quantize(coeffs, q)


class _RoundNoGrad(_Round):
    """Quantization whose backward refuses to run."""

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        raise NonDifferentiableError(
            "dct_quantize: backward through the coefficient rounding has no useful gradient "
            "(it is zero almost everywhere), got a backward call with ste=False; "
            "pass ste=True for a straight-through (identity) gradient, "
            "or wrap the stage with bpda()"
        )


class _RoundSTE(_Round):
    """Quantization with a straight-through (identity) gradient; none for q."""

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad, None


def _pad_bottom_right(x: Tensor, m: int) -> Tensor:
    """Pad H and W up to multiples of m: reflect where the pad is smaller than the side, else replicate."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % m, (-w) % m
    if pw:
        x = F.pad(x, (0, pw, 0, 0), mode="reflect" if pw < w else "replicate")
    if ph:
        x = F.pad(x, (0, 0, 0, ph), mode="reflect" if ph < h else "replicate")
    return x


def dct_quantize(x: Tensor, /, *, q: float | Tensor = 10.0, block_size: int = 8, ste: bool = False) -> Tensor:
    """Blockwise DCT quantization: DCT-II per block, ``round(X / q) · q``, inverse DCT, clip to [0, 1].

    ``q`` is on the 0..255 pixel scale of the paper: the coefficients ``X`` of the [0, 1]
    image are quantized as ``round(X · 255 / q) · q / 255``. Images whose H or W is not a
    multiple of ``block_size`` are padded on the bottom / right with reflect padding and
    cropped back; where the pad is not smaller than that side (e.g. a 3-pixel-high image
    and 8×8 blocks) that side falls back to replicate padding. float16 / bfloat16 inputs
    are computed in float32 and cast back. Deterministic and batch-consistent.

    Gradients: with ``ste=False`` the output of an input that requires grad still carries
    a graph, but calling backward raises :class:`NonDifferentiableError`; with ``ste=True``
    the rounding has an identity gradient, so backward is that of ``DCT -> IDCT -> clip``
    (the identity where the result was not clipped). ``q`` gets no gradient.

    Args:
        x: image batch with values in [0, 1].
        q: quantization step > 0 on the 0..255 scale; a float or a ``(B,)`` tensor (one per image).
        block_size: DCT block side M >= 1.
        ste: straight-through gradient for the rounding.

    Shape:
        x: (B, C, H, W), floating, values in [0, 1]; q: float or (B,); output: same shape,
        dtype and device as x.
    Raises:
        ShapeError, RangeError, DTypeError; NonDifferentiableError on backward with ``ste=False``.
    Example:
        >>> x = torch.rand(2, 3, 37, 31)
        >>> dct_quantize(x, q=10.0).shape
        torch.Size([2, 3, 37, 31])
        >>> y = dct_quantize(x, q=torch.tensor([5.0, 12.0]))
    """
    fn = "dct_quantize"
    x = check_image_batch(fn, x)
    m = check_int(fn, block_size, name="block_size", low=1)
    if not isinstance(ste, bool):
        raise DTypeError(
            f"{fn}: expected ste to be a bool, got {type(ste).__name__}; pass ste=True or ste=False"
        )
    work = x if x.dtype in _COMPUTE_DTYPES else x.to(torch.float32)
    step = per_sample(fn, q, name="q", batch=x.shape[0], like=work, low=0.0, low_inclusive=False)
    return _dct_core(x, q=step, block_size=m, ste=ste)


def _coefficients(x: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """The blockwise DCT coefficients of ``x`` padded to whole blocks, and the DCT matrix."""
    work = x if x.dtype in _COMPUTE_DTYPES else x.to(torch.float32)
    d = dct_matrix(m, dtype=work.dtype, device=work.device)
    return _separable(_pad_bottom_right(work, m), d, m), d


def _step(q: float | Tensor, like: Tensor) -> Tensor:
    """A float or (B,) / (B, 1, 1, 1) step as a detached (B, 1, 1, 1) tensor (no checks)."""
    t = torch.as_tensor(q, dtype=like.dtype, device=like.device).detach()
    b = like.shape[0]
    return t.expand(b).reshape(b, 1, 1, 1) if t.dim() == 0 else t.reshape(b, 1, 1, 1)


def _dct_core(x: Tensor, *, q: float | Tensor, block_size: int, ste: bool) -> Tensor:
    """:func:`dct_quantize` without its checks: for callers that checked once (pipelines, attack loops)."""
    h, w = x.shape[-2:]
    coeffs, d = _coefficients(x, block_size)
    coeffs = (_RoundSTE if ste else _RoundNoGrad).apply(coeffs, _step(q, coeffs))
    out = _separable(coeffs, d.T, block_size)[..., :h, :w].clamp(0.0, 1.0)
    return out.to(x.dtype)


def rounding_margin(x: Tensor, *, q: float | Tensor = 10.0, block_size: int = 8) -> Tensor:
    """Per image, the smallest distance of a DCT coefficient to a rounding boundary ``(k + 1/2)·q/255``.

    On the scale of the coefficients of the [0, 1] image (one quantization step is ``q / 255``, so
    the largest possible margin is ``q / 510``). Two correct implementations may round a
    coefficient differently when its margin is below their float noise; comparisons of a
    quantizing stage across kernels are well defined only for images whose margin exceeds it.

    Shape:
        x: (B, C, H, W) in [0, 1]; q: float or (B,); output: (B,), same dtype family as x.
    Example:
        >>> x = torch.zeros(1, 1, 8, 8)            # every coefficient is 0: half a step from a boundary
        >>> torch.allclose(rounding_margin(x, q=10.0), torch.tensor([5.0 / 255]))
        True
    """
    coeffs, _ = _coefficients(x, block_size)
    step = _step(q, coeffs)
    scaled = coeffs * 255.0 / step   # the order _quantize rounds in
    frac = scaled - torch.floor(scaled)
    margin = (frac - 0.5).abs() * step / 255.0
    return margin.amin(dim=(1, 2, 3)) if x.shape[0] else scaled.new_zeros(0)


class DCTQuantize(nn.Module):
    """Module twin of :func:`dct_quantize`; ``forward`` only calls the function.

    Shape:
        x: (B, C, H, W), floating, values in [0, 1]; output: same shape, dtype and device.
    Raises:
        ShapeError, RangeError, DTypeError; NonDifferentiableError on backward with ``ste=False``.
    Example:
        >>> DCTQuantize(q=8.0)(torch.rand(1, 3, 32, 32)).shape
        torch.Size([1, 3, 32, 32])
    """

    def __init__(self, *, q: float | Tensor = 10.0, block_size: int = 8, ste: bool = False) -> None:
        super().__init__()
        self.q = q
        self.block_size = block_size
        self.ste = ste

    def forward(self, x: Tensor) -> Tensor:
        return dct_quantize(x, q=self.q, block_size=self.block_size, ste=self.ste)

    def _merged(self, overrides: dict) -> dict:
        unknown = set(overrides) - {"q"}
        if unknown:
            raise UnknownNameError(f"DCTQuantize.run: unknown per-sample override(s) {sorted(unknown)}; expected 'q'")
        return {"q": self.q, "block_size": self.block_size, **overrides}

    def run(self, x: Tensor, *, generator: torch.Generator | None = None, **overrides: Tensor | float) -> Tensor:
        """The unchecked quantization with a per-sample ``q`` override; ``generator`` is unused (deterministic)."""
        return _dct_core(x, ste=self.ste, **self._merged(overrides))

    def rounding_margin(self, x: Tensor, **overrides: Tensor | float) -> Tensor:
        """:func:`rounding_margin` of ``x`` at this stage's settings; (B,)."""
        return rounding_margin(x, **self._merged(overrides))

    def extra_repr(self) -> str:
        q = f"tensor{tuple(self.q.shape)}" if isinstance(self.q, Tensor) else repr(self.q)
        return f"q={q}, block_size={self.block_size}, ste={self.ste}"
