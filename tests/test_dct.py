"""Tests for purify.dct: blockwise DCT against scipy, quantization against a numpy reference."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.fft import dct, dctn, idctn

from purify.dct import DCTQuantize, block_dct2d, block_idct2d, dct_matrix, dct_quantize
from purify.errors import DTypeError, NonDifferentiableError, RangeError, ShapeError


# ----------------------------------------------------------------------------- reference

def _pad_np(img: np.ndarray, m: int) -> np.ndarray:
    """Bottom/right padding to multiples of m: reflect when the pad is smaller than the side, else edge."""
    h, w = img.shape
    ph, pw = (-h) % m, (-w) % m
    img = np.pad(img, ((0, ph), (0, 0)), mode="reflect" if ph < h else "edge")
    return np.pad(img, ((0, 0), (0, pw)), mode="reflect" if pw < w else "edge")


def ref_coeffs(img: np.ndarray, m: int) -> np.ndarray:
    """Per-block scipy dctn of an (H, W) image whose sides are multiples of m."""
    out = np.empty_like(img)
    for i in range(0, img.shape[0], m):
        for j in range(0, img.shape[1], m):
            out[i:i + m, j:j + m] = dctn(img[i:i + m, j:j + m], norm="ortho")
    return out


def ref_quantize(x: np.ndarray, q, m: int = 8) -> np.ndarray:
    """Independent numpy/scipy dct_quantize: pad, per-block dctn, round(X*255/q)*q/255, idctn, crop, clip."""
    b, c, h, w = x.shape
    qs = np.broadcast_to(np.asarray(q, dtype=np.float64), (b,))
    out = np.empty((b, c, h, w), dtype=np.float64)
    for bi in range(b):
        for ci in range(c):
            img = _pad_np(x[bi, ci].astype(np.float64), m)
            rec = np.empty_like(img)
            for i in range(0, img.shape[0], m):
                for j in range(0, img.shape[1], m):
                    X = dctn(img[i:i + m, j:j + m], norm="ortho")
                    Xq = np.round(X * 255 / qs[bi]) * qs[bi] / 255
                    rec[i:i + m, j:j + m] = idctn(Xq, norm="ortho")
            out[bi, ci] = np.clip(rec[:h, :w], 0.0, 1.0)
    return out


def gamma(dtype: torch.dtype, m: int) -> float:
    """γ_m = m u / (1 - m u): the relative error bound of a length-m dot product in ``dtype``."""
    u = torch.finfo(dtype).eps / 2
    return m * u / (1 - m * u)


def ref_with_noise(x: np.ndarray, q, m: int, dtype: torch.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ref_quantize, and how far from it a correct implementation computing in ``dtype`` may land.

    Returns (ref, tied, bound), each (B, C, H, W): ``tied`` marks pixels of blocks with a coefficient
    within float error of a rounding boundary k + 1/2, which a correct implementation may round the
    other way (a whole step); elsewhere it is within ``bound`` of ``ref``.

    Why: ``D P Dᵀ`` evaluated in floats, in any summation order (any kernel, batch size, thread
    count), is within (2 γ_m + γ_m²) |D| |P| |D|ᵀ of the exact product. That bounds the coefficients
    before rounding (scaled by 255 / q, in steps: the tie test) and, where the rounding agrees, the
    inverse transform of the rounded coefficients X_q (the bound). The float64 reference's own error
    is the same formula with u = 2^-53, included; clipping to [0, 1] only shrinks differences.
    """
    b, c, h, w = x.shape
    qs = np.broadcast_to(np.asarray(q, dtype=np.float64), (b,))
    k = 2 * gamma(dtype, m) + gamma(dtype, m) ** 2 + 3 * gamma(torch.float64, m)
    d = np.abs(dct_matrix(m, dtype=torch.float64).numpy())
    ref = ref_quantize(x, q, m)
    tied, bound = np.zeros(ref.shape, dtype=bool), np.empty_like(ref)
    for bi in range(b):
        for ci in range(c):
            img = _pad_np(x[bi, ci].astype(np.float64), m)
            ti, bo = np.zeros(img.shape, dtype=bool), np.empty_like(img)
            for i in range(0, img.shape[0], m):
                for j in range(0, img.shape[1], m):
                    block = img[i:i + m, j:j + m]
                    r = dctn(block, norm="ortho") * 255 / qs[bi]
                    err = k * (d @ np.abs(block) @ d.T) * 255 / qs[bi]
                    ti[i:i + m, j:j + m] = bool((np.abs(r - np.floor(r) - 0.5) <= err).any())
                    bo[i:i + m, j:j + m] = k * (d.T @ np.abs(np.round(r) * qs[bi] / 255) @ d)
            tied[bi, ci], bound[bi, ci] = ti[:h, :w], bo[:h, :w]
    return ref, tied, bound


def assert_matches_off_ties(y: torch.Tensor, x: torch.Tensor, q, m: int = 8) -> np.ndarray:
    """``y = dct_quantize(x, q=q, block_size=m)`` is within float error of the reference off tied blocks.

    Returns the tied mask; a test comparing two kernels' outputs uses it and the same bound.
    """
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    ref, tied, bound = ref_with_noise(x.double().cpu().numpy(), q, m, compute)
    diff = np.abs(y.double().cpu().numpy() - ref)
    assert tied.mean() < 0.25                          # ties are rare; most of the image is compared
    assert (diff <= bound)[~tied].all(), float((diff - bound)[~tied].max())
    return tied


def assert_same_off_ties(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor, q, m: int = 8) -> None:
    """Two kernels' ``dct_quantize(x)`` (e.g. a batch and one image of it) agree where that is well defined.

    Each is within ``bound`` of the exact result off tied blocks (ref_with_noise), so they are
    within twice that of each other there; in a tied block either rounding is correct.
    """
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    _, tied, bound = ref_with_noise(x.double().cpu().numpy(), q, m, compute)
    diff = (a.double() - b.double()).abs().cpu().numpy()
    assert (diff <= 2 * bound)[~tied].all(), float((diff - 2 * bound)[~tied].max())


def rand(*shape, dtype=torch.float64, device="cpu", lo=0.0, hi=1.0, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=torch.float64)).to(dtype=dtype, device=device)


# ----------------------------------------------------------------------------- dct_matrix / block DCT

class TestDctMatrix:
    @pytest.mark.parametrize("m", [1, 2, 7, 8])
    def test_matches_scipy(self, m):
        expected = dct(np.eye(m), norm="ortho", axis=0)
        np.testing.assert_allclose(dct_matrix(m, dtype=torch.float64).numpy(), expected, atol=1e-14)

    def test_orthonormal_dtype_device(self, device):
        d = dct_matrix(8, dtype=torch.float64, device=device)
        assert d.dtype == torch.float64 and d.device.type == device.type
        torch.testing.assert_close(d @ d.T, torch.eye(8, dtype=torch.float64, device=device), atol=1e-14, rtol=0)

    def test_exception(self):
        with pytest.raises(RangeError, match="dct_matrix: expected m >= 1"):
            dct_matrix(0)


class TestBlockDCT:
    @pytest.mark.parametrize("m", [4, 8])
    def test_matches_scipy(self, m):
        x = rand(2, 3, 3 * m, 2 * m, lo=-1.0, hi=2.0)
        X = block_dct2d(x, block_size=m)
        for b in range(2):
            for c in range(3):
                np.testing.assert_allclose(X[b, c].numpy(), ref_coeffs(x[b, c].numpy(), m), atol=1e-12)

    @pytest.mark.parametrize("m", [1, 4, 8])
    def test_round_trip(self, m):
        x = rand(3, 2, 2 * m, 3 * m, seed=1)
        assert (block_idct2d(block_dct2d(x, block_size=m), block_size=m) - x).abs().max() <= 1e-12
        X = rand(3, 2, 2 * m, 3 * m, lo=-5.0, hi=5.0, seed=2)
        assert (block_dct2d(block_idct2d(X, block_size=m), block_size=m) - X).abs().max() <= 1e-12

    def test_cardinality(self, device, dtype):
        for b in (0, 1, 3):
            x = torch.rand(b, 3, 16, 24, dtype=dtype, device=device)
            X = block_dct2d(x)
            assert X.shape == x.shape and X.dtype == dtype and X.device == x.device
            assert block_idct2d(X).shape == x.shape

    def test_exception(self):
        with pytest.raises(ShapeError, match=r"block_dct2d: expected x with H and W multiples of block_size=8"):
            block_dct2d(torch.rand(1, 1, 37, 32))
        with pytest.raises(ShapeError, match=r"block_idct2d: expected X of shape \(B, C, H, W\)"):
            block_idct2d(torch.rand(8, 8))
        with pytest.raises(RangeError, match="block_size >= 1"):
            block_dct2d(torch.rand(1, 1, 8, 8), block_size=0)


# ----------------------------------------------------------------------------- dct_quantize

class TestDCTQuantize:
    def test_smoke(self, device, dtype):
        x = torch.rand(2, 3, 32, 32, dtype=dtype, device=device)
        y = dct_quantize(x, q=10.0)
        assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
        assert not torch.equal(y, x)

    @pytest.mark.parametrize("shape", [(0, 3, 32, 32), (1, 1, 32, 32), (3, 3, 37, 31), (2, 3, 1, 1),
                                       (2, 1, 5, 3), (1, 3, 8, 64), (3, 1, 9, 17)])
    def test_cardinality(self, shape, device):
        x = torch.rand(*shape, device=device)
        y = dct_quantize(x)
        assert y.shape == x.shape and y.device == x.device and y.dtype == x.dtype

    @pytest.mark.parametrize("dt", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
    def test_dtype_preserved(self, dt, device):
        x = rand(2, 3, 16, 16, device=device, seed=12).to(dt)
        y = dct_quantize(x, q=8.0)
        assert y.dtype == dt and y.device == x.device
        if dt in (torch.float32, torch.float64):
            assert_matches_off_ties(y, x, 8.0)
        else:
            # half types compute in float32 and round the output: bfloat16's half-ulp at 1 is 2e-3, and a
            # coefficient rounded the other way moves a pixel by at most (8 / 255) max|D|² < 8e-3
            ref = torch.from_numpy(ref_quantize(x.double().cpu().numpy(), 8.0)).to(device)
            assert (y.double() - ref).abs().max() <= 2e-2

    @pytest.mark.parametrize("shape,q,m", [((2, 3, 37, 31), 10.0, 8), ((1, 1, 32, 32), 8.0, 8),
                                           ((3, 3, 37, 31), 12.0, 4), ((2, 1, 5, 3), 10.0, 8),
                                           ((2, 3, 1, 1), 3.0, 8), ((1, 2, 3, 20), 25.0, 8),
                                           ((2, 1, 16, 9), 1.0, 16)])
    def test_matches_reference_float64(self, shape, q, m):
        x = rand(*shape, seed=3)
        y = dct_quantize(x, q=q, block_size=m)
        np.testing.assert_allclose(y.numpy(), ref_quantize(x.numpy(), q, m), atol=1e-12, rtol=0)

    def test_matches_reference_float32(self):
        # float32 arithmetic may land on the other side of a rounding tie than float64; compare every
        # block whose coefficients are farther from a tie than their float error (ref_with_noise).
        x = rand(3, 3, 37, 31, dtype=torch.float32, seed=4)
        assert_matches_off_ties(dct_quantize(x, q=10.0), x, 10.0)

    @settings(max_examples=25, deadline=None)
    @given(b=st.integers(1, 2), c=st.integers(1, 3), h=st.integers(1, 20), w=st.integers(1, 20),
           m=st.sampled_from([2, 4, 8]), q=st.floats(0.5, 60.0), seed=st.integers(0, 2**16))
    def test_matches_reference_property(self, b, c, h, w, m, q, seed):
        x = rand(b, c, h, w, seed=seed)
        y = dct_quantize(x, q=q, block_size=m)
        np.testing.assert_allclose(y.numpy(), ref_quantize(x.numpy(), q, m), atol=1e-12, rtol=0)

    def test_tiny_image_uses_replicate(self):
        # 3 rows with 8×8 blocks: reflect would need pad 5 < 3, so H is replicated; W=10 is reflected.
        x = rand(1, 1, 3, 10, seed=5)
        padded = torch.cat([x, x[:, :, -1:].expand(1, 1, 5, 10)], dim=2)
        padded = torch.cat([padded, padded[..., 3:9].flip(-1)], dim=3)  # columns 8, 7, ..., 3
        assert padded.shape[-2:] == (8, 16)
        q = 10.0
        c = block_dct2d(padded)
        expected = block_idct2d(torch.round(c * 255 / q) * q / 255)[..., :3, :10].clamp(0, 1)
        torch.testing.assert_close(dct_quantize(x, q=q), expected, atol=1e-12, rtol=0)

    @pytest.mark.parametrize("dt", [torch.float32, torch.float64])
    def test_small_q_is_identity(self, dt):
        x = rand(2, 3, 37, 31, dtype=dt, seed=6)
        assert (dct_quantize(x, q=1e-3) - x).abs().max() <= 1e-5

    def test_large_q_removes_checkerboard(self):
        # q = 255: the mean 0.5 gives a DC of exactly 4 steps, every AC of a ±0.05 pattern is < 0.5 step.
        n = torch.arange(16)
        cb = ((n[:, None] + n[None, :]) % 2 * 2 - 1).double()
        x = (0.5 + 0.05 * cb).expand(2, 3, 16, 16)
        torch.testing.assert_close(dct_quantize(x, q=255.0), torch.full_like(x, 0.5), atol=1e-12, rtol=0)

    def test_large_q_leaves_rounded_block_means(self):
        # q = 255*8 on x in [0.25, 0.75]: every AC coefficient rounds to 0 and the DC to round(block mean).
        x = rand(2, 3, 16, 24, lo=0.25, hi=0.75, seed=7)
        y = dct_quantize(x, q=255.0 * 8)
        means = x.reshape(2, 3, 2, 8, 3, 8).mean(dim=(3, 5))
        expected = torch.round(means)[:, :, :, None, :, None].expand(2, 3, 2, 8, 3, 8).reshape(x.shape)
        torch.testing.assert_close(y, expected, atol=1e-12, rtol=0)

    def test_output_on_quantization_lattice(self):
        # When nothing is clipped, the output's coefficients are integer multiples of q/255,
        # so quantizing again changes nothing.
        x = rand(2, 3, 32, 32, lo=0.3, hi=0.7, seed=8)
        y = dct_quantize(x, q=10.0)
        assert float(y.min()) > 0.0 and float(y.max()) < 1.0
        r = block_dct2d(y) * 255 / 10.0
        assert (r - torch.round(r)).abs().max() <= 1e-9
        torch.testing.assert_close(dct_quantize(y, q=10.0), y, atol=1e-12, rtol=0)

    def test_per_sample_q(self, device):
        # A batch and a single image may run different matmul kernels: each image is compared where
        # that is well defined (assert_matches_off_ties), not bitwise.
        x = rand(3, 3, 37, 31, dtype=torch.float32, device=device, seed=9)
        qs = [2.0, 10.0, 40.0]
        y = dct_quantize(x, q=torch.tensor(qs))
        assert_matches_off_ties(y, x, qs)
        for i, qi in enumerate(qs):
            assert_same_off_ties(y[i:i + 1], dct_quantize(x[i:i + 1], q=qi), x[i:i + 1], qi)
        assert (y[0] - dct_quantize(x[0:1], q=40.0)[0]).abs().max() > 0.01   # q = 2 is not q = 40
        assert torch.equal(dct_quantize(x, q=torch.tensor([2, 10, 40])), y)  # integer tensors are fine

    @pytest.mark.parametrize("dt", [torch.float32, torch.float64])
    def test_batch_consistency(self, dt, device):
        x = rand(5, 3, 37, 31, dtype=dt, device=device, seed=10)
        y = dct_quantize(x, q=10.0)
        assert_matches_off_ties(y, x, 10.0)
        for i in range(5):
            assert_same_off_ties(y[i:i + 1], dct_quantize(x[i:i + 1], q=10.0), x[i:i + 1], 10.0)

    def test_empty_batch(self):
        x = torch.rand(0, 3, 37, 31)
        assert dct_quantize(x, q=torch.empty(0)).shape == (0, 3, 37, 31)

    def test_input_untouched(self):
        x = rand(2, 3, 37, 31, dtype=torch.float32, seed=11)
        before = x.clone()
        y = dct_quantize(x, q=10.0)
        assert torch.equal(x, before)
        assert y.data_ptr() != x.data_ptr()

    # ------------------------------------------------------------------------- gradients

    def test_gradcheck(self):
        # With a negligible step (q = 1e-9 on the 0..255 scale) the forward is numerically the
        # identity, so finite differences can check the straight-through backward end to end.
        x = rand(1, 2, 5, 11, lo=0.2, hi=0.8, seed=12).requires_grad_(True)
        assert torch.autograd.gradcheck(lambda t: dct_quantize(t, q=1e-9, ste=True), (x,), eps=1e-6, atol=1e-5)

    def test_ste_jacobian_is_identity_when_not_clipped(self):
        # The STE gradient is that of the unquantized DCT -> IDCT, i.e. the identity.
        x = rand(1, 1, 5, 7, lo=0.3, hi=0.7, seed=13)
        y = dct_quantize(x, q=10.0, ste=True)
        assert float(y.min()) > 0.0 and float(y.max()) < 1.0 and not torch.allclose(y, x)
        jac = torch.autograd.functional.jacobian(lambda t: dct_quantize(t, q=10.0, ste=True), x)
        torch.testing.assert_close(jac.reshape(35, 35), torch.eye(35, dtype=torch.float64), atol=1e-12, rtol=0)

    def test_ste_gradient_is_masked_by_clip(self):
        n = torch.arange(16)
        x = ((n[None, :] % 8) < 4).double().expand(1, 1, 16, 16).clone().requires_grad_(True)
        q = 40.0
        pre = block_idct2d(torch.round(block_dct2d(x.detach()) * 255 / q) * q / 255)
        inside = ((pre >= 0) & (pre <= 1)).double()
        assert 0 < float(inside.mean()) < 1  # the test exercises both clipped and unclipped pixels
        g = rand(1, 1, 16, 16, lo=-1.0, hi=1.0, seed=14)
        (dct_quantize(x, q=q, ste=True) * g).sum().backward()
        torch.testing.assert_close(x.grad, g * inside, atol=1e-12, rtol=0)

    def test_ste_forward_equals_plain_forward(self):
        x = rand(2, 3, 37, 31, seed=15)
        assert torch.equal(dct_quantize(x, ste=True), dct_quantize(x, ste=False))

    def test_no_ste_backward_raises(self):
        x = rand(2, 3, 37, 31, seed=16).requires_grad_(True)
        y = dct_quantize(x, q=10.0)  # the forward itself works under grad mode
        assert y.requires_grad
        with pytest.raises(NonDifferentiableError, match=r"dct_quantize: .*ste=True.*bpda\(\)"):
            y.sum().backward()
        assert x.grad is None

    def test_forward_without_grad(self):
        x = rand(2, 3, 16, 16, seed=17).requires_grad_(True)
        with torch.no_grad():
            y = dct_quantize(x)
        assert not y.requires_grad
        q = torch.tensor([5.0, 10.0], dtype=torch.float64, requires_grad=True)
        assert not dct_quantize(x.detach(), q=q).requires_grad  # q gets no gradient

    # ------------------------------------------------------------------------- errors

    @pytest.mark.parametrize("x,kwargs,err,match", [
        (torch.rand(3, 32, 32), {}, ShapeError, r"dct_quantize: expected x of shape \(B, C, H, W\).*x\[None\]"),
        (torch.full((1, 1, 8, 8), float("nan")), {}, RangeError, "dct_quantize: x contains NaN"),
        (torch.full((1, 1, 8, 8), 1.5), {}, RangeError, r"expected x with values in \[0, 1\]"),
        (-torch.rand(1, 1, 8, 8) - 0.1, {}, RangeError, r"values in \[0, 1\]"),
        (torch.randint(0, 255, (1, 3, 8, 8), dtype=torch.uint8), {}, DTypeError, "floating dtype.*uint8"),
        (np.random.rand(1, 1, 8, 8), {}, DTypeError, "expected x to be a torch.Tensor"),
        (torch.rand(2, 1, 8, 8), {"q": 0.0}, RangeError, "dct_quantize: expected q > 0"),
        (torch.rand(2, 1, 8, 8), {"q": -3.0}, RangeError, "expected q > 0"),
        (torch.rand(2, 1, 8, 8), {"q": float("nan")}, RangeError, "q contains NaN"),
        (torch.rand(2, 1, 8, 8), {"q": float("inf")}, RangeError, "q contains NaN or Inf"),
        (torch.rand(2, 1, 8, 8), {"q": torch.tensor([1.0, 0.0])}, RangeError, "expected q > 0"),
        (torch.rand(2, 1, 8, 8), {"q": torch.tensor([1.0, 2.0, 3.0])}, ShapeError, r"q .*shape \(2,\).*got shape \(3,\)"),
        (torch.rand(2, 1, 8, 8), {"q": "10"}, DTypeError, "expected q to be a float or a"),
        (torch.rand(2, 1, 8, 8), {"block_size": 0}, RangeError, "dct_quantize: expected block_size >= 1, got 0"),
        (torch.rand(2, 1, 8, 8), {"block_size": 8.0}, DTypeError, "expected block_size to be an int"),
        (torch.rand(2, 1, 8, 8), {"ste": "yes"}, DTypeError, "expected ste to be a bool"),
    ])
    def test_exception(self, x, kwargs, err, match):
        with pytest.raises(err, match=match):
            dct_quantize(x, **kwargs)

    def test_errors_are_builtin_subclasses(self):
        with pytest.raises(ValueError):
            dct_quantize(torch.rand(1, 1, 8, 8), q=0.0)
        with pytest.raises(TypeError):
            dct_quantize(torch.zeros(1, 1, 8, 8, dtype=torch.int64))


# ----------------------------------------------------------------------------- module twin

class TestDCTQuantizeModule:
    def test_signature_matches_function(self):
        fn_params = {n: p.default for n, p in inspect.signature(dct_quantize).parameters.items()
                     if p.kind is inspect.Parameter.KEYWORD_ONLY}
        init = list(inspect.signature(DCTQuantize.__init__).parameters.values())[1:]
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in init)
        assert {p.name: p.default for p in init} == fn_params == {"q": 10.0, "block_size": 8, "ste": False}

    def test_module(self, device):
        x = torch.rand(3, 3, 37, 31, device=device)
        q = torch.tensor([4.0, 8.0, 12.0], device=device)
        mod = DCTQuantize(q=q, block_size=4, ste=True)
        assert torch.equal(mod(x), dct_quantize(x, q=q, block_size=4, ste=True))
        assert torch.equal(DCTQuantize()(x), dct_quantize(x))
        assert "block_size=4" in repr(mod) and "ste=True" in repr(mod)
        assert list(mod.parameters()) == [] and list(mod.buffers()) == []

    def test_module_backward(self):
        x = torch.rand(1, 3, 16, 16, dtype=torch.float64, requires_grad=True)
        with pytest.raises(NonDifferentiableError):
            DCTQuantize(q=10.0)(x).sum().backward()
        DCTQuantize(q=10.0, ste=True)(x).sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
