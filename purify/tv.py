"""Masked total-variation minimization (TVM), batched, on CPU and CUDA.

Solves, independently for every image b and channel c::

    min_z  ||(1 - X) * (z - x)||_2^2  +  weight_b * TV(z)

where ``X`` is a Bernoulli drop mask (1 = dropped: no fidelity term, so the
solve inpaints those pixels from their neighbours) and TV is the isotropic total
variation with forward differences (see :mod:`purify.tv_reference` for the
exact oracle and :func:`purify.tv_reference.tv_objective`).

Algorithm: over-relaxed Chambolle-Pock / Condat primal-dual iteration (primal
step first, relaxation rho = 1.9), started from a normalized-convolution
inpainting of the dropped pixels. The step-size ratio is set per sample from its
TV weight and kept fraction, ``tau / sigma = r^2`` with
``r = 0.4 / keep_fraction * (0.03 / weight)`` and ``tau * sigma * 8 = 1``. The rule
and the default of 160 iterations were chosen on 1,000 CIFAR-10 validation images
(never the test set) so that the *worst* relative objective gap over drop rates
{0, 0.5} and weights {0.01, 0.03, 0.1} is <= 1e-3 with margin (measured 6.7e-4);
smooth, low-TV images converge slowest. ``benchmarks/tv_tuning.py`` reproduces the
choice, ``benchmarks/results/tv_speed.md`` has the timings, and the test suite
checks the gap against the exact cvxpy solution.

Two interchangeable executions of the same iteration:

* ``numba`` (CPU, no autograd): one fused kernel per (image, channel) plane that
  keeps the plane in L1 cache for all iterations, 0.40 ms per 32x32x3 image on
  one core at 160 iterations (``benchmarks/results/tv_speed.md``);
* ``torch`` (any device, differentiable): the same iteration in plain tensor
  ops, so an attack can differentiate through the unrolled solve.

``backend="auto"`` picks numba for CPU tensors that need no gradient and torch
otherwise. Both stop planes individually when ``tol`` is given, so an image's
result never depends on its batch-mates.
"""

from __future__ import annotations

import logging
import math
import os
import threading

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from purify._checks import (check_choice, check_float, check_generator, check_image_batch, check_int,
                            per_sample)
from purify.errors import DTypeError, RangeError, ShapeError, UnknownNameError

__all__ = ["tv_minimize", "TVMinimize", "bernoulli_mask", "check_mask", "set_threads", "DEFAULT_TV_ITERS",
           "DEFAULT_TV_WEIGHT", "DEFAULT_DROP_PROB"]

log = logging.getLogger(__name__)

DEFAULT_TV_ITERS = 160
#: TVM's default TV weight and drop rate, the library's one setting (purify(), the CLI, the server's
#: default config, the harness's configs): the best of 20 (drop rate, weight) pairs on 500 CIFAR-10
#: validation images, scored on clean accuracy and four transfer attacks
#: (``benchmarks/results/tvm_selection.md``, ``python -m benchmarks.select_tvm``). Its price on the
#: test set: ResNet-56 93.0 -> 73.8 % clean accuracy (``benchmarks/results/wnll_tvm_table2/report.md``).
DEFAULT_TV_WEIGHT = 0.1
DEFAULT_DROP_PROB = 0.3
_RELAXATION = 1.9
# Step-size ratio r = STEP_RATIO_SCALE / keep_fraction * (0.03 / weight); see the module docstring.
STEP_RATIO_SCALE = 0.4
_MASK_MODES = ("pixel", "element")
_BACKENDS = ("auto", "torch", "numba")
_PER_SAMPLE = frozenset({"weight", "drop_prob", "mask"})
# numba's fork-safe 'workqueue' threading layer (chosen in _pdhg_numba when TBB is missing) aborts
# the process when two Python threads launch a parallel kernel at once (e.g. the server's thread
# pool). Launches are serialized; each launch is itself parallel.
_NUMBA_LAUNCH = threading.Lock()
if hasattr(os, "register_at_fork"):
    # Fork only between launches: a child forked mid-launch would inherit the lock held (a
    # DataLoader worker would hang on its first TVM call) and the thread pool mid-job.
    os.register_at_fork(before=_NUMBA_LAUNCH.acquire, after_in_parent=_NUMBA_LAUNCH.release,
                        after_in_child=_NUMBA_LAUNCH.release)


def bernoulli_mask(x: Tensor, drop_prob: float | Tensor, *, mask_mode: str = "pixel",
                   generator: torch.Generator | None = None) -> Tensor:
    """Draw the TVM drop mask for a batch: 1 = dropped, with probability ``drop_prob`` per sample.

    ``pixel`` drops whole pixels (all channels together, as in Guo et al.), ``element``
    drops each channel value on its own.

    Shape:
        x: (B, C, H, W); drop_prob: float or (B,); output: (B, 1, H, W) for ``pixel``,
        (B, C, H, W) for ``element``, same dtype and device as x.
    Example:
        >>> m = bernoulli_mask(torch.rand(2, 3, 8, 8), 0.5, generator=torch.Generator().manual_seed(0))
        >>> m.shape
        torch.Size([2, 1, 8, 8])
    """
    fn = "bernoulli_mask"
    check_image_batch(fn, x, check_range=False)
    check_choice(fn, mask_mode, name="mask_mode", choices=_MASK_MODES)
    check_generator(fn, generator, x.device)
    p = per_sample(fn, drop_prob, name="drop_prob", batch=x.shape[0], like=x, high=1.0)
    return _draw_mask(x, p, mask_mode, generator)


def _draw_mask(x: Tensor, p: Tensor, mask_mode: str, generator: torch.Generator | None) -> Tensor:
    b, c, h, w = x.shape
    shape = (b, 1, h, w) if mask_mode == "pixel" else (b, c, h, w)
    u = torch.rand(shape, generator=generator, device=x.device, dtype=torch.float32)
    return (u < p.detach().float()).to(x.dtype)


def tv_minimize(x: Tensor, /, *, weight: float | Tensor = DEFAULT_TV_WEIGHT,
                drop_prob: float | Tensor = DEFAULT_DROP_PROB,
                mask: Tensor | None = None, mask_mode: str = "pixel", iters: int = DEFAULT_TV_ITERS,
                tol: float | None = None, generator: torch.Generator | None = None,
                backend: str = "auto") -> Tensor:
    """Masked total-variation purification (TVM).

    Args:
        x: images in [0, 1].
        weight: TV weight lambda, a float or one value per image, >= 0 (default 0.1, chosen on
            validation images with ``drop_prob`` 0.3: see :data:`DEFAULT_TV_WEIGHT`).
        drop_prob: probability that a pixel is dropped (float or per image, in [0, 1]);
            ignored when ``mask`` is given. At 1 every pixel is dropped and each channel comes out flat.
        mask: fixed drop mask, 1 = dropped; overrides the random draw.
        mask_mode: ``"pixel"`` (drop all channels of a pixel together) or ``"element"``.
        iters: number of primal-dual iterations (the maximum when ``tol`` is set).
        tol: stop each (image, channel) plane once its largest per-iteration change,
            ``max(|dz|, 2 tau |dp|)`` (primal step, and the dual step in pixel units), is <= tol;
            None runs exactly ``iters`` iterations.
        generator: source of randomness for the mask (on x's device); None uses torch's global RNG.
        backend: ``"auto"``, ``"torch"`` (differentiable, any device) or ``"numba"`` (CPU fast path).

    Returns:
        A new tensor, the minimizer clipped to [0, 1]. Gradients flow through the unrolled
        iteration when ``x`` (or a tensor ``weight``) requires grad.

    Shape:
        x: (B, C, H, W), floating, values in [0, 1]; output: same shape, dtype and device.
        mask: (H, W), or 4-D broadcastable to (B, C, H, W), e.g. (B, 1, H, W) or (B, C, H, W).
    Raises:
        ShapeError, RangeError, DTypeError, UnknownNameError
    Example:
        >>> tv_minimize(torch.rand(2, 3, 32, 32), weight=0.05).shape
        torch.Size([2, 3, 32, 32])
    """
    fn = "tv_minimize"
    check_image_batch(fn, x)
    check_choice(fn, mask_mode, name="mask_mode", choices=_MASK_MODES)
    check_choice(fn, backend, name="backend", choices=_BACKENDS)
    check_int(fn, iters, name="iters", low=1)
    if tol is not None:
        check_float(fn, tol, name="tol", low=0.0)
    check_generator(fn, generator, x.device)
    b = x.shape[0]
    like = x.to(_work_dtype(x))
    weight = per_sample(fn, weight, name="weight", batch=b, like=like)
    if mask is None:
        drop_prob = per_sample(fn, drop_prob, name="drop_prob", batch=b, like=like, high=1.0)
    else:
        mask = check_mask(fn, mask, like)
    if backend == "numba":
        _require_numba(fn, x, torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    return _tv_core(x, weight=weight, drop_prob=drop_prob, mask=mask, mask_mode=mask_mode, iters=iters, tol=tol,
                    generator=generator, backend=backend)


def _work_dtype(x: Tensor) -> torch.dtype:
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _as_column(value: float | Tensor, b: int, like: Tensor) -> Tensor:
    """A float or a (B,) / (B, 1, 1, 1) tensor as a (B, 1, 1, 1) tensor like ``like`` (no checks)."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return t.expand(b).reshape(b, 1, 1, 1) if t.dim() == 0 else t.reshape(b, 1, 1, 1)


def _tv_core(x: Tensor, *, weight: float | Tensor, drop_prob: float | Tensor, mask: Tensor | None,
             mask_mode: str, iters: int, tol: float | None, generator: torch.Generator | None,
             backend: str) -> Tensor:
    """:func:`tv_minimize` without its checks: for callers that checked once (pipelines, attack loops).

    ``mask`` may be any 0/1 tensor broadcastable to x (as :func:`check_mask` returns); ``weight`` and
    ``drop_prob`` floats or per-image tensors.
    """
    b = x.shape[0]
    xw = x.to(_work_dtype(x))
    lam = _as_column(weight, b, xw)
    if mask is None:
        mask = _draw_mask(xw, _as_column(drop_prob, b, xw), mask_mode, generator)
    else:
        mask = (mask[None, None] if mask.dim() == 2 else mask).to(device=xw.device, dtype=xw.dtype)
    if b == 0:
        return x.clone()

    keep = (1.0 - mask).expand_as(xw)
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or lam.requires_grad)
    use_numba = backend != "torch" and xw.device.type == "cpu" and not needs_grad \
        and xw.dtype in (torch.float32, torch.float64) and _numba_kernel() is not None
    tau, sig = _step_sizes(lam, keep)
    if use_numba:
        z = _pdhg_numba(xw, keep, tau, sig, lam, iters=iters, tol=tol)
    else:
        z = _pdhg_torch(xw, keep, _inpaint_init(xw, keep), tau, sig, lam, iters=iters, tol=tol)
    return z.to(x.dtype)


def check_mask(fn: str, mask: object, x: Tensor) -> Tensor:
    """Check a drop mask for ``x`` (0/1 or bool, (H, W) or broadcastable to x) and return it in x's dtype."""
    if not isinstance(mask, Tensor):
        raise DTypeError(f"{fn}: expected mask to be a torch.Tensor or None, got {type(mask).__name__}")
    b, c, h, w = x.shape
    m = mask[None, None] if mask.dim() == 2 else mask
    ok = m.dim() == 4 and all(ms in (1, xs) for ms, xs in zip(m.shape, x.shape)) and m.shape[2:] == (h, w)
    if not ok:
        raise ShapeError(
            f"{fn}: expected mask of shape ({h}, {w}) or broadcastable to {(b, c, h, w)} such as "
            f"{(b, 1, h, w)}, got {tuple(mask.shape)}; for a (B, H, W) mask use mask[:, None]"
        )
    if m.dtype == torch.bool:
        m = m.to(x.dtype)
    elif m.is_floating_point() or m.dtype in (torch.uint8, torch.int32, torch.int64):
        if m.numel() and not bool(((m == 0) | (m == 1)).all()):
            raise RangeError(f"{fn}: expected mask values in {{0, 1}} (1 = dropped), got other values")
        m = m.to(x.dtype)
    else:
        raise DTypeError(f"{fn}: expected a bool or 0/1 mask, got dtype {m.dtype}")
    return m.to(x.device)


def _require_numba(fn: str, x: Tensor, needs_grad: bool) -> None:
    """Refuse ``backend='numba'`` where it cannot run (``auto`` falls back to torch by itself)."""
    if x.device.type != "cpu":
        raise DTypeError(f"{fn}: backend='numba' runs on the CPU, got x on {x.device}; use backend='auto'")
    if needs_grad:
        raise DTypeError(f"{fn}: backend='numba' has no autograd; use backend='torch' to differentiate")
    if _numba_kernel() is None:
        raise ImportError(f"{fn}: backend='numba' needs numba: pip install numba")


def _numba_kernel():
    """The compiled kernel module, or None when numba cannot be imported (torch path then)."""
    try:
        from purify import _tv_numba
    except ImportError:  # numba missing or broken for this platform
        log.info("numba unavailable; tv_minimize runs its torch implementation on the CPU")
        return None
    return _tv_numba


def _step_sizes(lam: Tensor, keep: Tensor, *, scale: float = STEP_RATIO_SCALE,
                exponent: float = 1.0) -> tuple[Tensor, Tensor]:
    """Per-sample primal / dual steps with tau * sigma * ||grad||^2 = 1 (||grad||^2 <= 8).

    ``tau / sigma = r^2`` with ``r = scale / keep_fraction * (0.03 / weight) ** exponent``
    (``benchmarks/tv_tuning.py`` compares rules through ``scale`` and ``exponent``).
    """
    keep_frac = keep.detach().mean(dim=(1, 2, 3), keepdim=True).clamp_min(0.05)
    r = scale / keep_frac * (0.03 / lam.detach().clamp_min(1e-3)) ** exponent
    tau = r / math.sqrt(8.0)
    return tau, 1.0 / (8.0 * tau)


def _inpaint_init(x: Tensor, keep: Tensor) -> Tensor:
    """Initial guess: x on kept values, the mean of kept 3x3 neighbours on dropped ones.

    A plane whose dropped value has no kept neighbour falls back to that plane's mean.
    (3x3 sums as shifted adds: a single-channel conv2d costs as much as the whole solve on CPU.)
    """
    num = _box3(keep * x)
    den = _box3(keep)
    estimate = torch.where(den > 0, num / den.clamp_min(1e-12), x.mean(dim=(2, 3), keepdim=True))
    return torch.where(keep > 0, x, estimate)


def _box3(u: Tensor) -> Tensor:
    """Sum over each 3x3 neighbourhood (zero outside the image), separably."""
    u = F.pad(u, (1, 1, 1, 1))
    u = u[..., :-2, :] + u[..., 1:-1, :] + u[..., 2:, :]
    return u[..., :-2] + u[..., 1:-1] + u[..., 2:]


def _grad_h(u: Tensor) -> Tensor:
    return F.pad(u[..., 1:, :] - u[..., :-1, :], (0, 0, 0, 1))


def _grad_w(u: Tensor) -> Tensor:
    return F.pad(u[..., :, 1:] - u[..., :, :-1], (0, 1, 0, 0))


def _div(ph: Tensor, pw: Tensor) -> Tensor:
    """Negative adjoint of (_grad_h, _grad_w): the discrete divergence."""
    ph = F.pad(ph[..., :-1, :], (0, 0, 1, 1))
    pw = F.pad(pw[..., :, :-1], (1, 1, 0, 0))
    return ph[..., 1:, :] - ph[..., :-1, :] + pw[..., :, 1:] - pw[..., :, :-1]


def _pdhg_torch(x: Tensor, keep: Tensor, z: Tensor, tau: Tensor, sig: Tensor, lam: Tensor, *,
                iters: int, tol: float | None) -> Tensor:
    """The relaxed primal-dual iteration in differentiable tensor ops (same math as the numba kernel)."""
    rho = _RELAXATION
    a = 1.0 / (1.0 + 2.0 * tau * keep)
    b = 2.0 * tau * keep * x * a
    ph = torch.zeros_like(z)
    pw = torch.zeros_like(z)
    lam2 = lam * lam
    running = None if tol is None else torch.ones(z.shape[0], z.shape[1], 1, 1, dtype=torch.bool, device=z.device)
    for it in range(iters):
        zt = (z + tau * _div(ph, pw)) * a + b
        zbar = 2.0 * zt - z
        qh = ph + sig * _grad_h(zbar)
        qw = pw + sig * _grad_w(zbar)
        # Projection onto the lam-ball, written so that no sqrt(0) is ever differentiated.
        n2 = qh * qh + qw * qw
        outside = n2 > lam2
        scale = torch.where(outside, lam * torch.rsqrt(torch.where(outside, n2, torch.ones_like(n2))), torch.ones_like(n2))
        step = rho * (zt - z)
        z_new = z + step
        ph_new = ph + rho * (qh * scale - ph)
        pw_new = pw + rho * (qw * scale - pw)
        if running is None:
            z, ph, pw = z_new, ph_new, pw_new
            continue
        # Per-plane stopping: a plane that converged keeps its values; batch-mates never matter.
        change = torch.maximum(step.detach().abs(),
                               2.0 * tau * torch.maximum((ph_new - ph).detach().abs(), (pw_new - pw).detach().abs()))
        still = running & (change.amax(dim=(2, 3), keepdim=True) > tol)
        z = torch.where(running, z_new, z)
        ph = torch.where(running, ph_new, ph)
        pw = torch.where(running, pw_new, pw)
        running = still
        if (it + 1) % 10 == 0 and not bool(running.any()):
            break
    return z.clamp(0.0, 1.0)


def _pdhg_numba(x: Tensor, keep: Tensor, tau: Tensor, sig: Tensor, lam: Tensor, *,
                iters: int, tol: float | None) -> Tensor:
    import numba

    kernel = _numba_kernel()
    b, c, h, w = x.shape

    def planes(t: Tensor):
        return t.detach().contiguous().reshape(b * c, h, w).numpy()

    def per_plane(t: Tensor):
        return t.detach().reshape(b, 1).expand(b, c).reshape(b * c).contiguous().numpy()

    with _NUMBA_LAUNCH:
        # Before numba starts its threads: a fork-safe pool, so DataLoader workers forked after a
        # TVM call in the parent survive (see purify._tv_numba).
        kernel.choose_threading_layer()
        # Follow torch's thread setting, so one knob (torch.set_num_threads) controls both backends.
        torch_threads = torch.get_num_threads()
        numba.set_num_threads(max(1, min(torch_threads, numba.config.NUMBA_NUM_THREADS)))
        z, _ = kernel.run_pdhg_planes(planes(x), planes(keep), per_plane(tau), per_plane(sig),
                                      per_plane(lam), rho=_RELAXATION, iters=iters, tol=tol)
        # numba's OpenMP layer (when a user chooses it) shares the OpenMP runtime with torch and resets
        # its thread count to NUMBA_NUM_THREADS when it starts its pool; put torch's setting back.
        if torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)
    return torch.from_numpy(z).reshape(b, c, h, w)


def set_threads(n: int) -> None:
    """Use ``n`` CPU threads in torch and in the TV solver's numba kernel: one setting for both.

    Sets ``torch.set_num_threads(n)``, which the kernel follows at every launch, and numba's own
    count (capped at ``NUMBA_NUM_THREADS``) after asking numba for its fork-safe threading layer
    (:func:`purify._tv_numba.choose_threading_layer`). On a machine whose cores are busy with other
    processes, fewer threads than cores is often much faster (README, "Threads").

    Raises:
        DTypeError, RangeError: ``n`` is not an int >= 1.
    Example:
        >>> before = torch.get_num_threads()
        >>> set_threads(1); torch.get_num_threads()
        1
        >>> set_threads(before)
    """
    check_int("set_threads", n, name="n", low=1)
    torch.set_num_threads(n)
    kernel = _numba_kernel()
    if kernel is None:
        return
    import numba

    with _NUMBA_LAUNCH:
        kernel.choose_threading_layer()
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
        # numba's OpenMP layer, when a user chose it, resets the shared OpenMP runtime as it starts.
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


class TVMinimize(nn.Module):
    """Module twin of :func:`tv_minimize`; ``forward`` only calls the function.

    Shape:
        input: (B, C, H, W) in [0, 1]; output: same.
    Example:
        >>> TVMinimize(weight=0.05)(torch.rand(1, 3, 16, 16)).shape
        torch.Size([1, 3, 16, 16])
    """

    def __init__(self, *, weight: float | Tensor = DEFAULT_TV_WEIGHT, drop_prob: float | Tensor = DEFAULT_DROP_PROB,
                 mask: Tensor | None = None, mask_mode: str = "pixel", iters: int = DEFAULT_TV_ITERS,
                 tol: float | None = None, generator: torch.Generator | None = None,
                 backend: str = "auto") -> None:
        super().__init__()
        self.weight = weight
        self.drop_prob = drop_prob
        self.mask = mask
        self.mask_mode = mask_mode
        self.iters = iters
        self.tol = tol
        self.generator = generator
        self.backend = backend

    def forward(self, x: Tensor) -> Tensor:
        return tv_minimize(x, weight=self.weight, drop_prob=self.drop_prob, mask=self.mask,
                           mask_mode=self.mask_mode, iters=self.iters, tol=self.tol,
                           generator=self.generator, backend=self.backend)

    def _merged(self, generator: torch.Generator | None, overrides: dict) -> dict:
        params = {"weight": self.weight, "drop_prob": self.drop_prob, "mask": self.mask, "mask_mode": self.mask_mode,
                  "iters": self.iters, "tol": self.tol, "backend": self.backend,
                  "generator": generator if generator is not None else self.generator}
        unknown = set(overrides) - _PER_SAMPLE
        if unknown:
            raise UnknownNameError(f"TVMinimize.run: unknown per-sample override(s) {sorted(unknown)}; "
                                   f"expected some of {sorted(_PER_SAMPLE)}")
        params.update(overrides)
        return params

    def run(self, x: Tensor, *, generator: torch.Generator | None = None, **overrides: Tensor | float) -> Tensor:
        """The unchecked solve with per-sample ``overrides`` (``weight``, ``drop_prob``, ``mask``).

        For callers that checked ``x`` and the overrides once (a pipeline, an attack loop, the server).
        """
        return _tv_core(x, **self._merged(generator, overrides))

    def draw_inputs(self, x: Tensor, *, generator: torch.Generator | None = None,
                    **overrides: Tensor | float) -> dict[str, Tensor]:
        """The drop mask this stage would draw for ``x``: ``run(x, mask=...)`` is then deterministic.

        A fixed ``mask`` (given at construction or in ``overrides``) is returned as is.

        Shape:
            x: (B, C, H, W); output: ``{"mask": (B, 1, H, W)}`` (``(B, C, H, W)`` for ``element``).
        """
        p = self._merged(generator, overrides)
        if p["mask"] is not None:
            return {"mask": p["mask"]}
        xw = x.to(_work_dtype(x))
        return {"mask": _draw_mask(xw, _as_column(p["drop_prob"], x.shape[0], xw), p["mask_mode"], p["generator"])}

    def extra_repr(self) -> str:
        return (f"weight={self.weight}, drop_prob={self.drop_prob}, mask_mode={self.mask_mode!r}, "
                f"iters={self.iters}, tol={self.tol}, backend={self.backend!r}")
