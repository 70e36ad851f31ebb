"""Tests for purify.squeeze: median smoothing against scipy.ndimage, bit-depth reduction by hand."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from scipy import ndimage

from purify import (BitDepthReduce, DefendedClassifier, MedianSmooth, Pipeline, bit_depth_reduce, create_purifier,
                    get_purifier_spec, median_smooth, purify)
from purify.errors import DTypeError, NonDifferentiableError, RangeError, ShapeError, UnknownNameError


def rand(*shape, dtype=torch.float64, seed=0, device="cpu") -> torch.Tensor:
    return torch.rand(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed)).to(device)


def distinct(*shape, seed=0) -> torch.Tensor:
    """float64 values in [0.05, 0.95] at least 0.9 / n - 2e-4 apart: no two pixels tie, and a
    finite-difference step of 1e-6 cannot change any order (a median's gradient is then defined)."""
    n = int(np.prod(shape))
    g = torch.Generator().manual_seed(seed)
    ranks = torch.randperm(n, generator=g).double()
    return (0.05 + 0.9 * (ranks + 0.5) / n + 1e-4 * (torch.rand(n, generator=g, dtype=torch.float64) - 0.5)).reshape(shape)


def scipy_median(x: torch.Tensor, size: int) -> np.ndarray:
    return ndimage.median_filter(x.cpu().numpy(), size=(1, 1, size, size), mode="reflect")


def keyword_params(fn) -> dict:
    return {n: p.default for n, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY}


# ---------------------------------------------------------------------------------------------- median_smooth

class TestMedianSmooth:
    # The filter selects input values and computes nothing, so it equals scipy's value for value;
    # the comparisons below are exact (torch.equal / np.array_equal), in every dtype.
    @pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
    @pytest.mark.parametrize("shape", [(2, 3, 37, 31), (3, 1, 28, 28), (1, 2, 16, 15), (2, 1, 3, 2), (1, 1, 1, 1)])
    @pytest.mark.parametrize("dt", [torch.float32, torch.float64])
    def test_matches_scipy(self, size, shape, dt):
        # (2, 1, 3, 2) and (1, 1, 1, 1) have pads longer than the image: scipy's reflect repeats with period 2n.
        x = rand(*shape, dtype=dt, seed=size)
        assert np.array_equal(median_smooth(x, size=size).numpy(), scipy_median(x, size))

    @pytest.mark.parametrize("size", [2, 3, 4])
    def test_matches_scipy_with_ties(self, size):
        # Eight grey levels: windows hold many equal values (the min/max networks and the sort agree on them).
        x = torch.round(rand(2, 3, 19, 23, seed=1) * 7) / 7
        assert np.array_equal(median_smooth(x, size=size).numpy(), scipy_median(x, size))

    def test_even_size_takes_the_upper_median_and_scipys_window(self):
        # Output (i, j) of a 2x2 filter sees rows i-1, i and columns j-1, j; of the four values it takes
        # the third smallest. torch.median would give the second smallest (0.1 at (1, 1)).
        x = torch.tensor([[0.0, 0.1], [0.8, 0.9]]).view(1, 1, 2, 2)
        expected = torch.tensor([[0.0, 0.1], [0.8, 0.8]]).view(1, 1, 2, 2)
        assert torch.equal(median_smooth(x, size=2), expected)
        assert float(x.flatten().median()) == pytest.approx(0.1)

    def test_smoke(self, device, dtype):
        x = rand(2, 3, 32, 32, dtype=dtype, device=device)
        y = median_smooth(x)
        assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
        assert 0.0 <= float(y.min()) and float(y.max()) <= 1.0

    @pytest.mark.parametrize("b", [0, 1, 3])
    @pytest.mark.parametrize("size", [2, 3, 5])
    def test_cardinality(self, b, size, device):
        x = rand(b, 3, 37, 31, dtype=torch.float32, device=device)
        assert median_smooth(x, size=size).shape == (b, 3, 37, 31)

    @pytest.mark.parametrize("dt", [torch.float16, torch.bfloat16])
    def test_low_precision_dtype_kept(self, dt):
        # Widening float16 / bfloat16 to float32 is exact and keeps the order, so the selection is the same.
        x = rand(2, 3, 13, 11, dtype=torch.float32, seed=3).to(dt)
        for size in (2, 3, 4):
            y = median_smooth(x, size=size)
            assert y.dtype == dt and torch.equal(y, median_smooth(x.float(), size=size).to(dt))

    @pytest.mark.parametrize("size", [2, 3, 5])
    def test_batch_consistency(self, size):
        x = rand(3, 3, 37, 31, dtype=torch.float32, seed=4)
        y = median_smooth(x, size=size)
        for i in range(3):
            assert torch.equal(y[i:i + 1], median_smooth(x[i:i + 1], size=size))

    def test_input_untouched(self):
        x = rand(2, 3, 16, 16, seed=5)
        before = x.clone()
        for size in (1, 2, 3, 4):
            y = median_smooth(x, size=size)
            assert y.data_ptr() != x.data_ptr()
        assert torch.equal(x, before)

    # ------------------------------------------------------------------------------------------ gradients

    @pytest.mark.parametrize("size", [2, 3, 4])
    def test_gradcheck(self, size):
        # Sizes 2 and 3 (min/max networks) and 4 (sort): the selection's gradient, checked by finite differences.
        x = distinct(1, 2, 5, 6, seed=size).requires_grad_(True)
        assert torch.autograd.gradcheck(lambda t: median_smooth(t, size=size), (x,), eps=1e-6, atol=1e-7)

    @pytest.mark.parametrize("size", [2, 3, 5])
    def test_gradient_goes_to_the_selected_pixel(self, size):
        # With distinct values each output equals exactly one input pixel of its channel; the
        # gradient of sum(g * y) is g summed onto those pixels.
        x = distinct(1, 2, 7, 6, seed=10 + size).requires_grad_(True)
        y = median_smooth(x, size=size)
        # Integer weights: their sums are exact in any order (autograd's and index_add's differ).
        g = torch.randint(1, 100, (1, 2, 7, 6), generator=torch.Generator().manual_seed(20)).double()
        (y * g).sum().backward()
        expected = torch.zeros_like(x)
        for c in range(2):
            flat = x.detach()[0, c].flatten()
            src = (y.detach()[0, c].flatten()[:, None] == flat[None, :]).double().argmax(dim=1)
            expected[0, c].view(-1).index_add_(0, src, g[0, c].flatten())
        assert torch.equal(x.grad, expected)

    def test_ste_is_identity_gradient_and_same_forward(self):
        x = rand(1, 2, 5, 7, seed=6)
        for size in (2, 3, 4):
            assert torch.equal(median_smooth(x, size=size, ste=True), median_smooth(x, size=size))
            jac = torch.autograd.functional.jacobian(lambda t: median_smooth(t, size=size, ste=True), x)
            assert torch.equal(jac.reshape(70, 70), torch.eye(70, dtype=torch.float64))

    # ------------------------------------------------------------------------------------------ errors

    @pytest.mark.parametrize("x,kwargs,err,match", [
        (torch.rand(3, 32, 32), {}, ShapeError, r"median_smooth: expected x of shape \(B, C, H, W\).*x\[None\]"),
        (torch.full((1, 1, 8, 8), float("nan")), {}, RangeError, "median_smooth: x contains NaN"),
        (torch.full((1, 1, 8, 8), 1.5), {}, RangeError, r"median_smooth: expected x with values in \[0, 1\]"),
        (torch.randint(0, 255, (1, 3, 8, 8), dtype=torch.uint8), {}, DTypeError, "floating dtype.*uint8"),
        (np.random.rand(1, 1, 8, 8), {}, DTypeError, "median_smooth: expected x to be a torch.Tensor"),
        (torch.rand(1, 1, 8, 8), {"size": 0}, RangeError, "median_smooth: expected size >= 1, got 0"),
        (torch.rand(1, 1, 8, 8), {"size": 2.0}, DTypeError, "median_smooth: expected size to be an int"),
        (torch.rand(1, 1, 8, 8), {"size": True}, DTypeError, "expected size to be an int"),
        (torch.rand(1, 1, 8, 8), {"ste": 1}, DTypeError, "median_smooth: expected ste to be a bool"),
    ])
    def test_exception(self, x, kwargs, err, match):
        with pytest.raises(err, match=match):
            median_smooth(x, **kwargs)

    # ------------------------------------------------------------------------------------------ module twin

    def test_module(self, device):
        assert keyword_params(MedianSmooth.__init__) == keyword_params(median_smooth) == {"size": 2, "ste": False}
        x = rand(3, 3, 37, 31, dtype=torch.float32, device=device, seed=7)
        mod = MedianSmooth(size=3, ste=True)
        assert torch.equal(mod(x), median_smooth(x, size=3, ste=True))
        assert torch.equal(mod.run(x), mod(x))
        assert repr(mod) == "MedianSmooth(size=3, ste=True)"
        assert list(mod.parameters()) == [] and list(mod.buffers()) == []
        with pytest.raises(UnknownNameError, match="MedianSmooth.run: unknown per-sample override"):
            mod.run(x, size=torch.tensor([2.0, 2.0, 2.0]))
        with pytest.raises(RangeError):
            mod(x + 1.0)      # forward is the checked boundary; run is not


# ---------------------------------------------------------------------------------------------- bit_depth_reduce

class TestBitDepthReduce:
    def test_hand_computed(self):
        # 2 bits: levels k/3. 0.5 * 3 = 1.5 exactly, and torch.round goes half to even: level 2.
        x = torch.tensor([0.0, 0.1, 0.2, 0.5, 0.6, 0.9, 1.0]).view(1, 1, 1, 7)
        assert torch.equal(bit_depth_reduce(x, bits=2), torch.tensor([0.0, 0, 1, 2, 2, 3, 3]).view(1, 1, 1, 7) / 3)
        # 1 bit: a threshold at 1/2 (itself rounding to 0).
        assert bit_depth_reduce(x, bits=1).flatten().tolist() == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]

    def test_output_on_the_levels(self):
        x = rand(2, 3, 37, 31, dtype=torch.float32, seed=1)
        for bits in (1, 3, 5):
            levels = 2 ** bits - 1
            y = bit_depth_reduce(x, bits=bits)
            assert torch.unique(y).numel() == levels + 1       # 37 x 31 x 6 pixels reach every level
            k = torch.round(y.double() * levels)
            assert torch.equal(y, (k / levels).float())
            assert float((y - x).abs().max()) <= 0.5 / levels + 1e-7

    def test_eight_bits_keep_uint8_images(self):
        x = torch.arange(256, dtype=torch.float32).view(1, 1, 16, 16) / 255
        assert torch.equal(bit_depth_reduce(x, bits=8), x)

    def test_smoke(self, device, dtype):
        x = rand(2, 3, 32, 32, dtype=dtype, device=device)
        y = bit_depth_reduce(x)
        assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
        assert 0.0 <= float(y.min()) and float(y.max()) <= 1.0

    @pytest.mark.parametrize("b", [0, 1, 3])
    def test_cardinality(self, b, device):
        assert bit_depth_reduce(rand(b, 3, 37, 31, device=device), bits=4).shape == (b, 3, 37, 31)

    @pytest.mark.parametrize("dt", [torch.float16, torch.bfloat16])
    def test_low_precision_computed_in_float32(self, dt):
        x = rand(2, 3, 8, 8, dtype=torch.float32, seed=2).to(dt)
        y = bit_depth_reduce(x, bits=3)
        assert y.dtype == dt and torch.equal(y, bit_depth_reduce(x.float(), bits=3).to(dt))

    def test_batch_consistency(self):
        x = rand(3, 3, 37, 31, dtype=torch.float32, seed=3)
        y = bit_depth_reduce(x, bits=4)
        for i in range(3):
            assert torch.equal(y[i:i + 1], bit_depth_reduce(x[i:i + 1], bits=4))

    def test_input_untouched(self):
        x = rand(2, 3, 16, 16, seed=4)
        before = x.clone()
        y = bit_depth_reduce(x, bits=3, ste=True)
        assert torch.equal(x, before) and y.data_ptr() != x.data_ptr()

    # ------------------------------------------------------------------------------------------ gradients

    def test_gradcheck(self):
        # The straight-through backward is the identity. At 24 bits the forward is within one step
        # (6e-8) of the identity, so central differences with eps = 1e-3 see slope 1 up to 3e-5.
        x = rand(1, 2, 5, 6, seed=5, dtype=torch.float64) * 0.6 + 0.2
        x.requires_grad_(True)
        assert torch.autograd.gradcheck(lambda t: bit_depth_reduce(t, bits=24, ste=True), (x,), eps=1e-3, atol=1e-4)
        jac = torch.autograd.functional.jacobian(lambda t: bit_depth_reduce(t, bits=3, ste=True), x.detach())
        assert torch.equal(jac.reshape(60, 60), torch.eye(60, dtype=torch.float64))

    @pytest.mark.parametrize("bits", [1, 4])
    def test_smooth_ste_is_the_surrogates_gradient_on_the_exact_forward(self, bits):
        # ste_temperature changes the backward only: the value is the rounding, bit for bit, and the
        # gradient is autograd's through bit_depth_surrogate (the same logistic, written out in closed form).
        from purify.squeeze import bit_depth_surrogate

        x = rand(2, 3, 6, 5, seed=10 + bits, dtype=torch.float64).requires_grad_(True)
        w = rand(2, 3, 6, 5, seed=20 + bits, dtype=torch.float64)
        y = bit_depth_reduce(x, bits=bits, ste=True, ste_temperature=0.1)
        # the same rounding on the same values: no tolerance beyond float64 resolution (a level is 1/15 at most)
        torch.testing.assert_close(y.detach(), bit_depth_reduce(x.detach(), bits=bits), rtol=0, atol=1e-12)
        got = torch.autograd.grad((y * w).sum(), x)[0]
        want = torch.autograd.grad((bit_depth_surrogate(x, bits=bits, temperature=0.1) * w).sum(), x)[0]
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        # without ste the temperature does not open a gradient; 0 keeps the identity
        with pytest.raises(NonDifferentiableError):
            bit_depth_reduce(x, bits=bits, ste_temperature=0.1).sum().backward()
        ident = torch.autograd.grad(bit_depth_reduce(x, bits=bits, ste=True, ste_temperature=0.0).sum(), x)[0]
        torch.testing.assert_close(ident, torch.ones_like(x), rtol=0, atol=1e-12)

    def test_no_ste_backward_raises(self):
        x = rand(2, 3, 8, 8, seed=6).requires_grad_(True)
        y = bit_depth_reduce(x, bits=3)
        assert y.requires_grad and torch.equal(y, bit_depth_reduce(x.detach(), bits=3, ste=True))
        with pytest.raises(NonDifferentiableError, match=r"bit_depth_reduce: .*ste=True.*bpda\(\)"):
            y.sum().backward()
        assert x.grad is None
        with torch.no_grad():
            assert not bit_depth_reduce(x, bits=3).requires_grad

    # ------------------------------------------------------------------------------------------ errors

    @pytest.mark.parametrize("x,kwargs,err,match", [
        (torch.rand(3, 32, 32), {}, ShapeError, r"bit_depth_reduce: expected x of shape \(B, C, H, W\)"),
        (torch.full((1, 1, 4, 4), float("inf")), {}, RangeError, "bit_depth_reduce: x contains NaN or Inf"),
        (-torch.rand(1, 1, 4, 4) - 0.1, {}, RangeError, r"expected x with values in \[0, 1\]"),
        (torch.zeros(1, 1, 4, 4, dtype=torch.int64), {}, DTypeError, "floating dtype"),
        (torch.rand(1, 1, 4, 4), {"bits": 0}, RangeError, "bit_depth_reduce: expected bits >= 1, got 0"),
        (torch.rand(1, 1, 4, 4), {"bits": 25}, RangeError, r"bit_depth_reduce: expected bits in \[1, 24\], got 25"),
        (torch.rand(1, 1, 4, 4), {"bits": 5.0}, DTypeError, "bit_depth_reduce: expected bits to be an int"),
        (torch.rand(1, 1, 4, 4), {"ste": "yes"}, DTypeError, "bit_depth_reduce: expected ste to be a bool"),
        (torch.rand(1, 1, 4, 4), {"ste_temperature": -0.1}, RangeError, "expected ste_temperature >= 0"),
        (torch.rand(1, 1, 4, 4), {"ste_temperature": float("nan")}, RangeError, "expected ste_temperature >= 0"),
        (torch.rand(1, 1, 4, 4), {"ste_temperature": float("inf")}, RangeError, "expected ste_temperature >= 0"),
        (torch.rand(1, 1, 4, 4), {"ste_temperature": True}, RangeError, "expected ste_temperature >= 0"),
    ])
    def test_exception(self, x, kwargs, err, match):
        with pytest.raises(err, match=match):
            bit_depth_reduce(x, **kwargs)

    # ------------------------------------------------------------------------------------------ module twin

    def test_module(self, device):
        assert keyword_params(BitDepthReduce.__init__) == keyword_params(bit_depth_reduce) == {
            "bits": 5, "ste": False, "ste_temperature": 0.0}
        x = rand(3, 3, 37, 31, dtype=torch.float32, device=device, seed=7)
        mod = BitDepthReduce(bits=3)
        assert torch.equal(mod(x), bit_depth_reduce(x, bits=3))
        assert torch.equal(mod.run(x), mod(x))
        assert repr(mod) == "BitDepthReduce(bits=3, ste=False, ste_temperature=0.0)"
        with pytest.raises(UnknownNameError, match="BitDepthReduce.run: unknown per-sample override"):
            mod.run(x, bits=torch.full((3,), 4.0))

    def test_rounding_margin(self):
        # Pixels on a boundary (k + 1/2) / 7 have margin 0; pixels on a level, half a step (1 / 14).
        mod = BitDepthReduce(bits=3)
        on_level = torch.tensor([0.0, 1 / 7, 6 / 7, 1.0], dtype=torch.float64).view(1, 1, 2, 2)
        on_boundary = torch.tensor([0.5 / 7, 3.5 / 7, 0.3, 0.6], dtype=torch.float64).view(1, 1, 2, 2)
        margin = mod.rounding_margin(torch.cat([on_level, on_boundary]))
        assert margin.shape == (2,)
        assert float(margin[0]) == pytest.approx(1 / 14, abs=1e-12) and float(margin[1]) < 1e-12
        assert mod.rounding_margin(torch.rand(0, 1, 2, 2)).shape == (0,)


# ---------------------------------------------------------------------------------------------- everywhere stages work

def test_registry_entries():
    bit, med = get_purifier_spec("bit_depth"), get_purifier_spec("median_smooth")
    assert (bit.function, bit.module, bit.differentiable, bit.rounds) == (bit_depth_reduce, BitDepthReduce, False, True)
    assert (med.function, med.module, med.differentiable, med.rounds) == (median_smooth, MedianSmooth, True, False)
    assert not bit.per_sample and not med.per_sample and not bit.randomized and not med.randomized
    assert repr(create_purifier("median_smooth", size=3)) == "MedianSmooth(size=3, ste=False)"


def test_pipeline():
    x = rand(3, 3, 37, 31, dtype=torch.float32, seed=8)
    pipe = Pipeline.from_spec([("bit_depth", {"bits": 4}), ("median_smooth", {"size": 2})])
    assert pipe.names == ["bit_depth", "median_smooth"]
    assert torch.equal(pipe(x), median_smooth(bit_depth_reduce(x, bits=4), size=2))
    assert pipe.differentiable is False and pipe.randomized is False
    assert Pipeline.from_spec("median_smooth").differentiable is True
    assert Pipeline.from_spec(("bit_depth", {"ste": True})).differentiable is True
    # A defended classifier is attacked through the straight-through rounding and the exact median.
    clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 37 * 31, 10))
    model = DefendedClassifier([("bit_depth", {"ste": True}), "median_smooth"], clf)
    xg = x.clone().requires_grad_(True)
    model(xg).sum().backward()
    assert torch.isfinite(xg.grad).all() and float(xg.grad.abs().sum()) > 0
    assert model.pipeline.purifiers[1].size == 2


def test_purify_on_a_uint8_image_matches_scipy():
    img = np.random.default_rng(0).integers(0, 256, (37, 31, 3), dtype=np.uint8)   # HWC, as an image file
    for size in (2, 3):
        out = purify(img, "median_smooth", size=size, device="cpu")
        assert out.dtype == np.uint8 and np.array_equal(out, ndimage.median_filter(img, size=(size, size, 1),
                                                                                   mode="reflect"))
    out = purify(img, "bit_depth", bits=3, device="cpu")
    assert np.unique(out).size == 8 and np.array_equal(
        out, np.round(np.round(img / 255 * 7) / 7 * 255).astype(np.uint8))
    x = rand(2, 3, 16, 16, dtype=torch.float32, seed=9)
    assert torch.equal(purify(x, MedianSmooth(size=3)), median_smooth(x, size=3))


def test_harness_threat_models():
    """The harness attacks the median exactly (autograd) and the rounding straight through or by BPDA."""
    from benchmarks.harness.threats import full_pipeline, ste_stages
    from benchmarks.harness.worst import gradient_threat_models
    from purify.squeeze import bit_depth_surrogate

    assert gradient_threat_models((("median_smooth", {"size": 2}),)) == ("full",)
    assert gradient_threat_models((("bit_depth", {}),)) == ("bpda", "full")
    assert gradient_threat_models((("bit_depth", {}), ("median_smooth", {}))) == ("bpda", "full")
    stages = (("bit_depth", {"bits": 4}), ("median_smooth", {"size": 2}))
    assert ste_stages(stages) == ["bit_depth"]
    full = full_pipeline(stages)
    assert [m.ste for m in full.purifiers] == [True, False] and full.differentiable
    # A row asks for the smooth staircase by the stage's parameter: `full` then differentiates it.
    smooth = full_pipeline((("bit_depth", {"bits": 1, "ste_temperature": 0.1}),))
    assert (smooth.purifiers[0].ste, smooth.purifiers[0].ste_temperature) == (True, 0.1)
    x = rand(1, 1, 4, 4, seed=11).requires_grad_(True)
    g = torch.autograd.grad(smooth.run(x).sum(), x)[0]
    want = torch.autograd.grad(bit_depth_surrogate(x, bits=1, temperature=0.1).sum(), x)[0]
    torch.testing.assert_close(g, want)          # float32: the closed-form slope against autograd's
    assert (g - 1).abs().max() > 0.1             # not the identity's gradient


# ----------------------------------------------------------------------------- the smooth BPDA surrogate

class TestBitDepthSurrogate:
    @pytest.mark.parametrize("bits", [1, 3, 5])
    def test_close_to_the_rounding_away_from_its_boundaries(self, bits):
        from purify.squeeze import bit_depth_surrogate

        x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(bits), dtype=torch.float64)
        levels = 2 ** bits - 1
        d = ((x * levels) - torch.floor(x * levels) - 0.5).abs()     # distance to the boundary, in steps
        far = d >= 0.3
        diff = (bit_depth_surrogate(x, bits=bits, temperature=0.05) - bit_depth_reduce(x, bits=bits)).abs() * levels
        # sigma(-d / t) steps at distance d: sigma(-6) = 0.0025 at d = 0.3
        assert far.any() and diff[far].max() <= torch.sigmoid(torch.tensor(-6.0)).item() + 1e-12

    def test_gradient_is_steepest_at_the_boundary(self):
        from purify.squeeze import bit_depth_surrogate

        x = torch.tensor([0.0, 0.2, 0.49, 0.5, 0.51, 0.8, 1.0], dtype=torch.float64).view(1, 1, 1, 7).requires_grad_()
        g = torch.autograd.grad(bit_depth_surrogate(x, bits=1, temperature=0.1).sum(), x)[0].flatten()
        # d/dx sigma((x - 1/2) / t) = sigma' / t, 2.5 at the boundary for t = 0.1
        assert g[3].item() == pytest.approx(2.5, rel=1e-9)
        assert (g > 0).all() and g[3] == g.max() and g[0] < 0.1 and g[6] < 0.1

    def test_bpda_with_the_surrogate_gives_the_rounding_forward(self):
        from purify.attacks import bpda
        from purify.squeeze import bit_depth_surrogate

        x = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(0)).requires_grad_()
        f = bpda(BitDepthReduce(bits=1), backward=lambda v: bit_depth_surrogate(v, bits=1))
        out = f(x)
        torch.testing.assert_close(out.detach(), bit_depth_reduce(x.detach(), bits=1))   # levels 0 / 1: a flip is off by 1
        assert torch.autograd.grad(out.sum(), x)[0].abs().sum() > 0

    @pytest.mark.parametrize("kwargs, err", [({"temperature": 0.0}, RangeError), ({"temperature": -1.0}, RangeError),
                                             ({"temperature": True}, RangeError), ({"bits": 0}, RangeError)])
    def test_exception(self, kwargs, err):
        from purify.squeeze import bit_depth_surrogate

        with pytest.raises(err, match="bit_depth_surrogate"):
            bit_depth_surrogate(torch.rand(1, 1, 2, 2), **kwargs)
