"""Tests for purify(): every input kind round-trips, bad input gets a typed error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from purify import DTypeError, Pipeline, RangeError, ShapeError, UnknownNameError, dct_quantize, purify, tv_minimize

TYPED = (ShapeError, RangeError, DTypeError)


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


class TestKinds:
    def test_torch_batch_equals_function(self, rng):
        x = torch.rand(2, 3, 16, 16, generator=rng)
        out = purify(x, "tvm", weight=0.05, generator=_gen(), device="cpu")
        assert torch.equal(out, tv_minimize(x, weight=0.05, generator=_gen()))

    def test_torch_chw(self, rng):
        x = torch.rand(3, 16, 12, generator=rng)
        out = purify(x, "dct", q=20, device="cpu")
        assert out.shape == (3, 16, 12)
        assert torch.equal(out, dct_quantize(x[None], q=20)[0])

    def test_torch_uint8_and_float64(self, rng):
        x8 = (torch.rand(1, 3, 8, 8, generator=rng) * 255).to(torch.uint8)
        out8 = purify(x8, "dct", q=1e-3, device="cpu")
        assert out8.dtype == torch.uint8 and torch.equal(out8, x8)  # tiny q is the identity
        x64 = torch.rand(2, 1, 8, 8, generator=rng, dtype=torch.float64)
        assert purify(x64, "dct", device="cpu").dtype == torch.float64

    @pytest.mark.parametrize("shape", [(16, 12), (16, 12, 1), (16, 12, 3), (16, 12, 4), (5, 16, 12, 3), (0, 8, 8, 3)])
    @pytest.mark.parametrize("dtype", [np.uint8, np.float16, np.float32, np.float64])
    def test_numpy_layouts(self, shape, dtype):
        rng = np.random.default_rng(0)
        x = rng.random(shape)
        x = (x * 255).astype(np.uint8) if dtype == np.uint8 else x.astype(dtype)
        out = purify(x, "tvm", generator=_gen(), device="cpu")
        assert isinstance(out, np.ndarray) and out.shape == x.shape and out.dtype == x.dtype

    def test_numpy_matches_torch_path(self):
        rng = np.random.default_rng(1)
        x = rng.random((2, 10, 9, 3)).astype(np.float32)
        out = purify(x, "tvm", weight=0.04, generator=_gen(), device="cpu")
        ref = tv_minimize(torch.from_numpy(x).permute(0, 3, 1, 2), weight=0.04, generator=_gen())
        assert np.allclose(out, ref.permute(0, 2, 3, 1).numpy(), atol=1e-7)

    def test_uint8_rounding(self):
        x = np.full((8, 8, 3), 128, np.uint8)
        assert np.array_equal(purify(x, "tvm", device="cpu"), x)  # a constant image is a fixed point

    @pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
    def test_pil(self, mode):
        rng = np.random.default_rng(2)
        channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
        arr = (rng.random((12, 10, channels)) * 255).astype(np.uint8).squeeze()
        img = Image.fromarray(arr, mode=mode)
        out = purify(img, "tvm", weight=0.05, device="cpu")
        assert isinstance(out, Image.Image) and out.mode == mode and out.size == img.size
        if mode == "RGBA":
            assert np.array_equal(np.asarray(out)[..., 3], arr[..., 3])  # alpha untouched
        assert not np.array_equal(np.asarray(out), arr)

    def test_pipeline_list_and_object(self, rng):
        x = torch.rand(2, 3, 16, 16, generator=rng)
        a = purify(x, ["tvm", ("dct", {"q": 10})], generator=_gen(), device="cpu")
        b = purify(x, Pipeline.from_spec(["tvm", ("dct", {"q": 10})]), generator=_gen(), device="cpu")
        c = dct_quantize(tv_minimize(x, generator=_gen()), q=10)
        assert torch.equal(a, b) and torch.equal(a, c)

    def test_device_cpu_and_default(self, rng):
        x = torch.rand(1, 3, 8, 8, generator=rng)
        assert purify(x, "dct").device == x.device

    def test_input_untouched(self, rng):
        x = np.random.default_rng(3).random((8, 8, 3))
        copy = x.copy()
        purify(x, device="cpu")
        assert np.array_equal(x, copy)

    def test_gradients_pass_through_torch_input(self, rng):
        x = torch.rand(1, 3, 8, 8, generator=rng, requires_grad=True)
        purify(x, "tvm", generator=_gen(), device="cpu").sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0


class TestErrors:
    @pytest.mark.parametrize("x, err, match", [
        (np.zeros((8,)), ShapeError, "shape"),
        (np.zeros((1, 2, 8, 8, 3)), ShapeError, "shape"),
        (np.zeros((0, 8, 3)), ShapeError, "non-empty"),
        (np.zeros((8, 8, 0)), ShapeError, "non-empty"),
        (np.zeros((10, 28, 28)), ShapeError, r"\(N, H, W, 1\)"),
        (np.full((8, 8, 3), np.nan), RangeError, "NaN"),
        (np.full((8, 8, 3), np.inf, np.float32), RangeError, "NaN or Inf"),
        (np.full((8, 8, 3), 2.0), RangeError, r"\[0, 1\]"),
        (np.full((8, 8, 3), -0.5), RangeError, r"\[0, 1\]"),
        (np.zeros((8, 8, 3), np.int32), DTypeError, "uint8"),
        (np.zeros((8, 8, 3), bool), DTypeError, "astype"),
        (np.zeros((8, 8, 3), np.complex64), DTypeError, "dtype"),
        (torch.zeros(8, 8), ShapeError, r"\(C, H, W\)"),
        (torch.zeros(3, 0, 8), ShapeError, "non-empty"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.int64), DTypeError, "uint8"),
        ([[0.0, 1.0]], DTypeError, "numpy.asarray"),
        (Image.new("P", (4, 4)), DTypeError, "convert"),
    ])
    def test_bad_input(self, x, err, match):
        with pytest.raises(err, match=match):
            purify(x, device="cpu")

    def test_unknown_method_lists_known(self):
        with pytest.raises(UnknownNameError, match="'tvm'.*'dct'"):
            purify(np.zeros((8, 8)), "jpeg")

    def test_unknown_param(self):
        with pytest.raises(UnknownNameError, match="weight"):
            purify(np.zeros((8, 8)), "tvm", wieght=0.1)

    def test_params_with_list_are_refused(self):
        with pytest.raises(DTypeError, match="per stage"):
            purify(np.zeros((8, 8)), ["tvm"], weight=0.1)

    def test_bad_device(self):
        from purify import DeviceError

        with pytest.raises(DeviceError, match="device"):
            purify(np.zeros((8, 8)), device="tpu")
        if not torch.cuda.is_available():
            with pytest.raises(DeviceError, match="CUDA is not available"):
                purify(np.zeros((8, 8)), device="cuda")

    def test_error_classes_are_builtin_subclasses(self):
        with pytest.raises(ValueError):
            purify(np.full((4, 4), 3.0))
        with pytest.raises(TypeError):
            purify(np.zeros((4, 4), np.int64))


_dtypes = st.sampled_from([np.uint8, np.float16, np.float32, np.float64, np.int16, np.bool_, np.int64])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_property_any_array_gives_image_or_typed_error(data):
    dtype = data.draw(_dtypes)
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=6))
    elements = None
    if np.dtype(dtype).kind == "f":
        width = np.dtype(dtype).itemsize * 8
        elements = st.one_of(st.floats(-0.5, 1.5, width=width), st.floats(0, 1, width=width),
                             st.sampled_from([float("nan"), float("inf"), -float("inf")]))
    x = data.draw(hnp.arrays(dtype, shape, elements=elements))
    method = data.draw(st.sampled_from(["tvm", "dct", ["tvm", ("dct", {"q": 8})]]))
    try:
        out = purify(x, method, device="cpu", generator=_gen(), **({"iters": 5} if method == "tvm" else {}))
    except TYPED:
        return
    assert isinstance(out, np.ndarray) and out.shape == x.shape and out.dtype == x.dtype
    if out.size:
        if out.dtype == np.uint8:
            return
        vals = out.astype(np.float64)
        assert np.isfinite(vals).all() and vals.min() >= 0 and vals.max() <= 1
