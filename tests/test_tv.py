"""Tests for purify.tv (masked TV minimization) against the exact cvxpy oracle and its defining properties."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from purify.errors import DTypeError, RangeError, ShapeError, UnknownNameError
from purify.tv import DEFAULT_TV_ITERS, TVMinimize, _div, _grad_h, _grad_w, bernoulli_mask, tv_minimize
from purify.tv_reference import tv_minimize_exact, tv_objective, total_variation

BACKENDS = ["numba", "torch"]


def _synthetic(n: int, h: int = 32, w: int = 32, seed: int = 3) -> torch.Tensor:
    """Uniform noise and noisy piecewise-constant images: harder than natural ones for TV."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(n, 3, h, w, generator=g, dtype=torch.float64)
    blocks = torch.rand(n, 3, 4, 4, generator=g, dtype=torch.float64)
    blocks = torch.nn.functional.interpolate(blocks, size=(h, w), mode="nearest")
    blocks = (blocks + 0.1 * torch.randn(n, 3, h, w, generator=g, dtype=torch.float64)).clamp(0, 1)
    return torch.cat([noise[: (n + 1) // 2], blocks[: n // 2]])


def _cifar(data_dir, n: int) -> torch.Tensor:
    arr = np.load(data_dir / "cifar10_test.npz", allow_pickle=False)["x"][:n]
    return torch.from_numpy(arr).permute(0, 3, 1, 2).double() / 255


class TestAgainstOracle:
    """The default iteration count reaches a relative objective gap <= 1e-3 (issue contract)."""

    @pytest.mark.slow
    @pytest.mark.parametrize("drop", [0.0, 0.5])
    @pytest.mark.parametrize("weight", [0.01, 0.03, 0.1])
    def test_gap_default_iters(self, data_dir, drop, weight):
        x = torch.cat([_cifar(data_dir, 3), _synthetic(2)])
        g = torch.Generator().manual_seed(11)
        mask = (torch.rand(len(x), 1, 32, 32, generator=g) < drop).double()
        exact = torch.stack([tv_minimize_exact(x[i], mask[i, 0], weight) for i in range(len(x))])
        f_star = tv_objective(exact, x, mask, weight)
        for backend in BACKENDS:
            z = tv_minimize(x.float(), weight=weight, mask=mask.float(), backend=backend)
            gap = (tv_objective(z, x, mask, weight) - f_star) / f_star
            assert gap.max().item() <= 1e-3, (backend, gap.tolist())
            assert gap.min().item() >= -1e-6  # the oracle is optimal: nobody beats it

    def test_converges_to_exact_optimum_float64_odd_size(self):
        # The iteration's fixed point is the exact minimizer: run long and the gap vanishes.
        x = _synthetic(2, h=9, w=7)[:, :1]
        mask = (torch.rand(2, 1, 9, 7, generator=torch.Generator().manual_seed(1)) < 0.5).double()
        exact = torch.stack([tv_minimize_exact(x[i], mask[i, 0], 0.05) for i in range(2)])
        f_star = tv_objective(exact, x, mask, 0.05)
        for backend in BACKENDS:
            z = tv_minimize(x, weight=0.05, mask=mask, iters=6000, backend=backend)
            gap = (tv_objective(z, x, mask, 0.05) - f_star) / f_star
            assert gap.abs().max().item() <= 1e-6

    def test_oracle_matches_hand_solution(self):
        # Two pixels, one channel, no drop: min (z1-0)^2 + (z2-1)^2 + w|z2-z1| has z = (w/2, 1-w/2) for w < 1.
        x = torch.tensor([[[0.0, 1.0]]], dtype=torch.float64)
        z = tv_minimize_exact(x, None, 0.4)
        assert torch.allclose(z, torch.tensor([[[0.2, 0.8]]], dtype=torch.float64), atol=1e-6)
        assert torch.allclose(tv_minimize(x[None], weight=0.4, drop_prob=0.0, iters=300)[0], z, atol=1e-5)


class TestProperties:
    def test_grad_div_adjoint(self, rng):
        u = torch.randn(2, 3, 7, 5, generator=rng, dtype=torch.float64)
        ph, pw = torch.randn(2, 2, 3, 7, 5, generator=rng, dtype=torch.float64)
        lhs = (_grad_h(u) * ph).sum() + (_grad_w(u) * pw).sum()
        assert torch.allclose(lhs, -(u * _div(ph, pw)).sum())

    def test_total_variation_gradient_finite_at_flat(self):
        z = torch.zeros(1, 1, 3, 3, requires_grad=True)
        total_variation(z).backward()
        assert torch.equal(z.grad, torch.zeros_like(z))

    def test_total_variation_by_hand(self):
        z = torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]])
        # pixel (0,0): sqrt(0^2 + 1^2); (0,1): |0-1| vertical; (1,0): |0-0|; (1,1): 0
        assert total_variation(z).item() == pytest.approx(2.0)

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_zero_weight_no_drop_is_identity(self, backend, rng):
        x = torch.rand(3, 3, 8, 6, generator=rng)
        assert torch.allclose(tv_minimize(x, weight=0.0, drop_prob=0.0, backend=backend), x, atol=1e-6)

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_constant_image_is_fixed_point(self, backend):
        x = torch.full((2, 3, 10, 10), 0.3)
        assert torch.allclose(tv_minimize(x, weight=0.1, backend=backend), x, atol=1e-6)

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_dropped_pixel_inpainted(self, backend):
        x = torch.full((1, 1, 5, 5), 0.5)
        x[0, 0, 2, 2] = 1.0  # an outlier that is dropped must be replaced by its neighbourhood
        mask = torch.zeros(5, 5)
        mask[2, 2] = 1
        z = tv_minimize(x, weight=0.01, mask=mask, backend=backend)
        assert z[0, 0, 2, 2].item() == pytest.approx(0.5, abs=1e-4)

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_all_dropped_is_finite(self, backend, rng):
        x = torch.rand(2, 3, 6, 6, generator=rng)
        z = tv_minimize(x, weight=0.03, mask=torch.ones(6, 6), backend=backend)
        assert torch.isfinite(z).all() and z.min() >= 0 and z.max() <= 1
        assert total_variation(z).max().item() < 1e-3  # no fidelity left: the solve flattens the image

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_larger_weight_smooths_more(self, backend, rng):
        x = torch.rand(2, 3, 16, 16, generator=rng)
        mask = torch.zeros(16, 16)
        tvs = [total_variation(tv_minimize(x, weight=w, mask=mask, backend=backend)) for w in (0.01, 0.05, 0.2)]
        assert (tvs[0] > tvs[1]).all() and (tvs[1] > tvs[2]).all()


class TestBackendsAndBatching:
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_numba_equals_torch(self, dtype, rng):
        x = torch.rand(3, 3, 37, 31, generator=rng).to(dtype)
        mask = (torch.rand(3, 1, 37, 31, generator=rng) < 0.5).to(dtype)
        weight = torch.tensor([0.01, 0.03, 0.1], dtype=dtype)
        a = tv_minimize(x, weight=weight, mask=mask, backend="numba")
        b = tv_minimize(x, weight=weight, mask=mask, backend="torch")
        # Two kernels: each of the 160 primal-dual iterations is non-expansive and adds a few ulp of
        # |z| <= 1, so the backends drift apart by at most ~iters * 4u: 4e-5 (float32), 7e-14 (float64).
        assert torch.allclose(a, b, atol=1e-4 if dtype == torch.float32 else 1e-10)

    def test_numba_launch_keeps_torch_thread_setting(self):
        # numba's OpenMP pool start used to reset torch's thread count to NUMBA_NUM_THREADS.
        before = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            for _ in range(2):
                tv_minimize(torch.rand(2, 3, 8, 8), backend="numba")
                assert torch.get_num_threads() == 1
        finally:
            torch.set_num_threads(before)

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_batch_consistency(self, backend, rng):
        x = torch.rand(3, 3, 12, 9, generator=rng)
        mask = (torch.rand(3, 1, 12, 9, generator=rng) < 0.5).float()
        full = tv_minimize(x, weight=0.05, mask=mask, backend=backend)
        for i in range(3):
            one = tv_minimize(x[i:i + 1], weight=0.05, mask=mask[i:i + 1], backend=backend)
            assert torch.allclose(full[i], one[0], atol=1e-6)

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_per_sample_weight(self, backend, rng):
        x = torch.rand(3, 3, 8, 8, generator=rng)
        mask = torch.zeros(8, 8)
        w = torch.tensor([0.0, 0.05, 0.2])
        batched = tv_minimize(x, weight=w, mask=mask, backend=backend)
        for i in range(3):
            single = tv_minimize(x[i:i + 1], weight=float(w[i]), mask=mask, backend=backend)
            assert torch.allclose(batched[i], single[0], atol=1e-6)

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_tol_is_per_plane(self, backend, rng):
        # An easy image (constant) converges at once; a hard one (noise) does not. The easy
        # image's result must be the same alone and beside the hard one.
        easy = torch.full((1, 3, 16, 16), 0.4)
        easy[..., :8, :] = 0.6
        hard = torch.rand(1, 3, 16, 16, generator=rng)
        mask = torch.zeros(16, 16)
        alone = tv_minimize(easy, weight=0.05, mask=mask, iters=500, tol=1e-4, backend=backend)
        paired = tv_minimize(torch.cat([easy, hard]), weight=0.05, mask=mask, iters=500, tol=1e-4, backend=backend)
        # exact: the iterations are elementwise and the stopping test a per-plane max, so no kernel
        # sees the batch size (no GEMM, no summation order)
        assert torch.equal(alone[0], paired[0])

    def test_tol_close_to_fixed_iters(self, rng):
        x = torch.rand(2, 3, 16, 16, generator=rng)
        mask = torch.zeros(16, 16)
        loose = tv_minimize(x, weight=0.03, mask=mask, iters=2000, tol=1e-6)
        tight = tv_minimize(x, weight=0.03, mask=mask, iters=2000)
        assert torch.allclose(loose, tight, atol=1e-4)

    @pytest.mark.parametrize("shape", [(0, 3, 8, 8), (1, 3, 8, 8), (3, 1, 37, 31), (2, 3, 1, 1), (1, 2, 1, 7)])
    @pytest.mark.parametrize("backend", BACKENDS)
    def test_cardinality(self, shape, backend):
        x = torch.rand(shape)
        z = tv_minimize(x, backend=backend, generator=torch.Generator().manual_seed(0))
        assert z.shape == x.shape and z.dtype == x.dtype
        assert ((z >= 0) & (z <= 1)).all()

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
    def test_dtypes_preserved(self, dtype):
        x = torch.rand(2, 3, 8, 8).to(dtype)
        assert tv_minimize(x).dtype == dtype

    def test_device(self, device):
        x = torch.rand(2, 3, 8, 8, device=device)
        assert tv_minimize(x, generator=torch.Generator(device=device.type).manual_seed(0)).device == x.device

    def test_input_untouched(self, rng):
        x = torch.rand(2, 3, 8, 8, generator=rng)
        copy = x.clone()
        tv_minimize(x)
        assert torch.equal(x, copy)

    def test_generator_reproducible(self):
        x = torch.rand(2, 3, 8, 8)
        a = tv_minimize(x, generator=torch.Generator().manual_seed(5))
        b = tv_minimize(x, generator=torch.Generator().manual_seed(5))
        c = tv_minimize(x, generator=torch.Generator().manual_seed(6))
        assert torch.equal(a, b) and not torch.equal(a, c)

    def test_mask_modes_and_rate(self):
        x = torch.rand(4, 3, 64, 64)
        g = torch.Generator().manual_seed(0)
        pixel = bernoulli_mask(x, 0.3, generator=g)
        element = bernoulli_mask(x, torch.tensor([0.0, 0.3, 0.6, 1.0]), mask_mode="element", generator=g)
        assert pixel.shape == (4, 1, 64, 64) and element.shape == (4, 3, 64, 64)
        assert pixel.mean().item() == pytest.approx(0.3, abs=0.02)
        rates = element.mean(dim=(1, 2, 3))
        assert rates[0] == 0 and rates[3] == 1 and rates[1].item() == pytest.approx(0.3, abs=0.02)

    def test_mask_overrides_drop_prob(self, rng):
        x = torch.rand(2, 3, 8, 8, generator=rng)
        mask = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
        assert torch.equal(tv_minimize(x, mask=mask, drop_prob=0.9), tv_minimize(x, mask=mask, drop_prob=0.1))


class TestGradients:
    def test_gradcheck_unrolled(self):
        g = torch.Generator().manual_seed(0)
        x = (0.3 + 0.4 * torch.rand(1, 1, 4, 5, generator=g, dtype=torch.float64)).requires_grad_()
        mask = torch.zeros(4, 5, dtype=torch.float64)
        mask[1, 2] = 1
        assert torch.autograd.gradcheck(lambda t: tv_minimize(t, weight=0.02, mask=mask, iters=15), (x,))

    def test_auto_backend_differentiates(self, rng):
        x = torch.rand(2, 3, 8, 8, generator=rng, requires_grad=True)
        tv_minimize(x, weight=0.05, generator=torch.Generator().manual_seed(0)).sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0

    def test_gradient_wrt_weight(self, rng):
        x = torch.rand(2, 3, 8, 8, generator=rng)
        w = torch.tensor([0.05, 0.05], requires_grad=True)
        total_variation(tv_minimize(x, weight=w, drop_prob=0.0)).sum().backward()
        assert (w.grad < 0).all()  # more weight, less TV

    def test_no_nan_gradient_at_flat_regions(self):
        x = torch.full((1, 1, 6, 6), 0.5, requires_grad=True)
        tv_minimize(x, weight=0.1, drop_prob=0.0).sum().backward()
        assert torch.isfinite(x.grad).all()


class TestExceptions:
    @pytest.mark.parametrize("x, kwargs, err, match", [
        (torch.rand(3, 8, 8), {}, ShapeError, r"x\[None\]"),
        (torch.rand(1, 3, 8, 8) * 2, {}, RangeError, r"\[0, 1\]"),
        (torch.full((1, 3, 8, 8), float("nan")), {}, RangeError, "NaN"),
        (torch.randint(0, 255, (1, 3, 8, 8), dtype=torch.uint8), {}, DTypeError, "floating"),
        (torch.rand(1, 3, 8, 8), {"weight": -0.1}, RangeError, "weight"),
        (torch.rand(2, 3, 8, 8), {"weight": torch.tensor([0.1, 0.2, 0.3])}, ShapeError, "weight"),
        (torch.rand(1, 3, 8, 8), {"drop_prob": 1.5}, RangeError, "drop_prob"),
        (torch.rand(1, 3, 8, 8), {"mask": torch.zeros(7, 8)}, ShapeError, "mask"),
        (torch.rand(1, 3, 8, 8), {"mask": torch.full((8, 8), 0.5)}, RangeError, "mask"),
        (torch.rand(1, 3, 8, 8), {"mask_mode": "row"}, UnknownNameError, "pixel"),
        (torch.rand(1, 3, 8, 8), {"backend": "jax"}, UnknownNameError, "numba"),
        (torch.rand(1, 3, 8, 8), {"iters": 0}, RangeError, "iters"),
        (torch.rand(1, 3, 8, 8), {"tol": -1.0}, RangeError, "tol"),
        (torch.rand(1, 3, 8, 8), {"generator": 3}, DTypeError, "generator"),
    ])
    def test_exception(self, x, kwargs, err, match):
        with pytest.raises(err, match=match):
            tv_minimize(x, **kwargs)

    def test_numba_refuses_grad(self):
        with pytest.raises(DTypeError, match="backend='torch'"):
            tv_minimize(torch.rand(1, 3, 8, 8, requires_grad=True), backend="numba")

    def test_message_names_function(self):
        with pytest.raises(ShapeError, match=r"^tv_minimize: expected x of shape \(B, C, H, W\), got \(3, 8, 8\)"):
            tv_minimize(torch.rand(3, 8, 8))


class TestModule:
    def test_signature_matches_function(self):
        fn = {k: v.default for k, v in inspect.signature(tv_minimize).parameters.items() if v.kind == v.KEYWORD_ONLY}
        mod = {k: v.default for k, v in inspect.signature(TVMinimize.__init__).parameters.items()
               if v.kind == v.KEYWORD_ONLY}
        assert fn == mod

    def test_module_equals_function(self, rng):
        x = torch.rand(2, 3, 8, 8, generator=rng)
        mask = (torch.rand(2, 1, 8, 8, generator=rng) < 0.5).float()
        assert torch.equal(TVMinimize(weight=0.07, mask=mask)(x), tv_minimize(x, weight=0.07, mask=mask))
        assert "weight=0.07" in repr(TVMinimize(weight=0.07))

    def test_default_iters(self):
        assert inspect.signature(tv_minimize).parameters["iters"].default == DEFAULT_TV_ITERS == 160


def test_concurrent_calls_from_threads(rng):
    # A threaded server calls tv_minimize from several threads at once: results must equal the
    # sequential ones, and the process must survive (numba's threading layer is not re-entrant).
    from concurrent.futures import ThreadPoolExecutor

    xs = [torch.rand(4, 3, 16, 16, generator=rng) for _ in range(8)]
    masks = [(torch.rand(4, 1, 16, 16, generator=rng) < 0.5).float() for _ in range(8)]
    expected = [tv_minimize(x, mask=m) for x, m in zip(xs, masks)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda xm: tv_minimize(xm[0], mask=xm[1]), zip(xs, masks)))
    for got, want in zip(results, expected):
        assert torch.equal(got, want)
