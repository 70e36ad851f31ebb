"""Fused CPU kernel for the masked-TV primal-dual iteration (numba).

Why a kernel: the iteration is a handful of stencil and pointwise operations on
tiny planes (32x32 for CIFAR). Eager torch runs each as a separate pass over the
whole batch and is memory-bound: 12.3 ms per 32x32x3 image for 160 iterations on
one core, about 77 us per iteration. ``torch.compile`` fuses a step but still
sweeps the batch once per iteration and compiles on first use; it lost to this
kernel in a development prototype that is not kept. This kernel instead runs
*all* iterations of one (image, channel) plane while its arrays (~20 KB) stay in
L1 cache, with branch-free inner loops that LLVM vectorizes: 0.40 ms per image
for 160 iterations on one core, about 2.5 us per iteration. Both figures are
from ``python -m benchmarks.tv_speed`` (``benchmarks/results/tv_speed.md``).
Planes are independent, so ``prange`` spreads them over threads.

The kernel computes exactly the iteration of :func:`purify.tv._pdhg_torch`
(relaxed Chambolle-Pock, primal step first); a test keeps the two in agreement.

Threading layer: numba picks its thread pool at the first parallel launch, by default TBB, else
OpenMP. With GNU OpenMP (Linux) that pool makes every later ``fork()`` abort the child
("fork() called from a process already using GNU OpenMP"), which kills fork-started DataLoader
workers once TVM has run in the parent. :func:`choose_threading_layer` asks numba for a fork-safe
layer instead (TBB when installed, else numba's own ``workqueue``); ``workqueue`` must not be
entered by two Python threads at once, which the caller's launch lock (``purify.tv``) guarantees.

Compilation and its cache: the first call for a dtype compiles the kernel (measured in a fresh process
with an empty cache on a 2-core machine running two other jobs: 3.5-3.8 s for float32 and another
3.3-3.6 s for float64; README "The TV solver"). numba then keeps the machine code on disk, and later
processes load it in 0.5 s. :func:`run_pdhg_planes` logs a warning before a call that will compile, once
per dtype and process. The cache lives next to this module (numba's ``cache=True``) when that folder
is writable, else in purify's cache folder (``~/.cache/purify/numba``, or ``numba/`` under
``$PURIFY_CACHE_DIR``: a read-only site-packages), else nowhere (every process compiles; numba alone
would fail to import the module). ``NUMBA_CACHE_DIR`` set by the user wins over all of these.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from pathlib import Path

import numba as nb
import numpy as np

from purify._download import cache_root

log = logging.getLogger(__name__)

# numba's name for "TBB if it loads, else workqueue" on Linux (OpenMP too where it is not GNU's).
FORK_SAFE_LAYER = "forksafe"


def choose_threading_layer() -> str | None:
    """Ask numba for a fork-safe threading layer, unless one is running or the user chose one.

    Must run before numba starts its threads (``numba.set_num_threads`` or the first parallel
    launch); afterwards the layer is fixed for the life of the process and this does nothing.
    A choice made with ``NUMBA_THREADING_LAYER``, a ``.numba_config.yaml`` or
    ``numba.config.THREADING_LAYER`` is left alone.

    Returns:
        The layer name now requested from numba, or None when this call changed nothing.
    Example:
        >>> choose_threading_layer() in (None, "forksafe")
        True
    """
    try:
        nb.threading_layer()  # raises ValueError until the threads have been launched
        return None
    except ValueError:
        pass
    if os.environ.get("NUMBA_THREADING_LAYER") or str(nb.config.THREADING_LAYER).lower() != "default":
        return None
    nb.config.THREADING_LAYER = FORK_SAFE_LAYER
    return FORK_SAFE_LAYER


def _writable(folder: Path) -> bool:
    """Whether ``folder`` exists or can be made, and a file can be written in it (numba's own test)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError:
        return False
    return True


def choose_cache_dir(module_dir: str | os.PathLike = Path(__file__).parent) -> str | None | bool:
    """Where numba should cache the compiled kernels of a module in ``module_dir``.

    Returns:
        None: numba's own choice (``NUMBA_CACHE_DIR`` when the user set it, else ``__pycache__``
        beside the module, which is writable); a folder (purify's cache, ``numba/`` under
        :func:`purify._download.cache_root`) when the module's folder is not writable, e.g. a
        read-only site-packages; False when neither is writable (compile in every process).
    Example:
        >>> choose_cache_dir() is None or isinstance(choose_cache_dir(), (str, bool))
        True
    """
    if nb.config.CACHE_DIR or _writable(Path(module_dir) / "__pycache__"):
        return None
    ours = cache_root() / "numba"
    return str(ours) if _writable(ours) else False


#: Where this module's kernels are cached (see :func:`choose_cache_dir`), chosen once at import.
CACHE_DIR = choose_cache_dir()


def _jit(**options):
    """``numba.njit(cache=True, **options)`` with the cache in :data:`CACHE_DIR`.

    numba reads ``numba.config.CACHE_DIR`` when it decorates a function (its cache locator keeps the
    folder), so the setting is made for the decoration only and put back: numba functions of other
    packages keep their own cache.
    """
    def decorate(fn):
        if CACHE_DIR is False:
            return nb.njit(cache=False, **options)(fn)
        saved = nb.config.CACHE_DIR
        if CACHE_DIR is not None:
            nb.config.CACHE_DIR = CACHE_DIR
        try:
            return nb.njit(cache=True, **options)(fn)
        finally:
            nb.config.CACHE_DIR = saved
    return decorate


def cache_folder() -> str | None:
    """The folder the kernel is cached in, or None when it is not cached on disk."""
    try:
        return pdhg_planes._cache._impl.locator.get_cache_path()
    except AttributeError:   # caching off (numba's NullCache), or numba's internals moved
        return None


def kernel_state(args: tuple) -> str:
    """Whether a call of :func:`pdhg_planes` with ``args`` will compile.

    Returns ``"ready"`` (compiled in this process), ``"cached"`` (numba's disk cache holds it: loaded
    in well under a second), ``"compile"``, or ``"unknown"`` (numba's cache internals are not the
    ones this reads; treated as a possible compile).
    """
    disp = pdhg_planes
    try:
        sig = tuple(disp.typeof_pyval(a) for a in args)
    except Exception:  # noqa: BLE001 - typing a value is numba's business; only a hint depends on it
        return "unknown"
    if sig in disp.overloads:
        return "ready"
    if CACHE_DIR is False:
        return "compile"
    try:
        cache = disp._cache
        key = cache._index_key(sig, disp.targetctx.codegen())
        return "cached" if key in cache._cache_file._load_index() else "compile"
    except Exception:  # noqa: BLE001 - private numba API (0.59-0.68); a missing piece only loses the hint
        return "unknown"


# dtypes the kernel has run with in this process (compiled or loaded): their calls skip the check below.
_READY: set[np.dtype] = set()


def _announce(args: tuple) -> bool:
    """Log, before a call that compiles, what the wait is for; True when it did."""
    state = kernel_state(args)
    if state in ("ready", "cached"):
        return False
    where = cache_folder()
    after = (f"cached in {where} for later processes" if where else
             "not cached: no writable folder for numba's cache, so every process compiles it again; set "
             "PURIFY_CACHE_DIR or NUMBA_CACHE_DIR to a writable folder")
    verb = "compiling" if state == "compile" else "loading or compiling"
    log.warning("purify: %s the TV kernel for %s (first call in this process: a few seconds, 4 s on a busy "
                "2-core machine; %s)", verb, args[0].dtype, after)
    return True


@_jit(parallel=True, fastmath=True, boundscheck=False, nogil=True)
def pdhg_planes(x, keep, z, tau_p, sig_p, lam_p, consts, iters, tol, iters_done):  # pragma: no cover - compiled
    """Run the relaxed primal-dual iteration on P independent planes, writing the result into ``z``.

    The initial guess is :func:`purify.tv._inpaint_init`'s: x on kept values, the mean of the kept
    3x3 neighbours on dropped ones, the plane's mean of x where no neighbour is kept.

    Args (numpy, one dtype throughout):
        x, keep, z: (P, H, W); ``z`` receives the result (clipped to [0, 1]).
        tau_p, sig_p, lam_p: (P,) primal step, dual step and TV weight per plane.
        consts: (4,) = [relaxation rho, tiny, 0, 1] in the working dtype (keeps float32 math in float32).
        iters: maximum number of iterations; tol: stop a plane once its change, max(|dz|, 2 tau |dp|)
            over the plane, is <= tol (tol < 0: never). The dual term matters: from p = 0 the first
            primal step can be exactly zero while the dual still moves.
        iters_done: (P,) int64, receives the iterations each plane ran.
    """
    n_planes, h, w = x.shape
    rho = consts[0]
    tiny = consts[1]
    zero = consts[2]
    one = consts[3]
    two = one + one
    track = tol >= 0  # loop-invariant: LLVM unswitches the sweeps, so fixed-iteration runs pay nothing for it
    for pi in nb.prange(n_planes):
        tau = tau_p[pi]
        sig = sig_p[pi]
        lam = lam_p[pi]
        xs = x[pi]
        ks = keep[pi]
        zs = z[pi]
        # Padded dual variables: ph_pad[i + 1, j] = p_h[i, j] and pw_pad[i, j + 1] = p_w[i, j]. The
        # zero row / column in front and the invariant p_h[H-1, :] = p_w[:, W-1] = 0 (their gradient
        # is zero, so they never move) make the divergence branch-free.
        ph_pad = np.zeros((h + 1, w), x.dtype)
        pw_pad = np.zeros((h, w + 1), x.dtype)
        # Over-relaxed primal point with a replicated last row / column, so forward differences
        # across the border are zero without a branch.
        zbar = np.empty((h + 1, w + 1), x.dtype)
        a = np.empty((h, w), x.dtype)
        b = np.empty((h, w), x.dtype)
        for i in range(h):
            for j in range(w):
                a[i, j] = one / (one + two * tau * ks[i, j])
                b[i, j] = two * tau * ks[i, j] * xs[i, j] * a[i, j]
        _inpaint_init_plane(xs, ks, zs, zero, one)
        done = iters
        for it in range(iters):
            change = zero
            # Primal step: z~ = prox_{tau f}(z + tau div p), f = ||keep (z - x)||^2.
            for i in range(h):
                for j in range(w):
                    d = ph_pad[i + 1, j] - ph_pad[i, j] + pw_pad[i, j + 1] - pw_pad[i, j]
                    zi = zs[i, j]
                    zt = (zi + tau * d) * a[i, j] + b[i, j]
                    zbar[i, j] = two * zt - zi
                    step = rho * (zt - zi)
                    zs[i, j] = zi + step
                    if track:
                        change = max(change, abs(step))
                zbar[i, w] = zbar[i, w - 1]
            for j in range(w + 1):
                zbar[h, j] = zbar[h - 1, j]
            # Dual step: p~ = projection onto the lam-ball of p + sig grad(2 z~ - z).
            for i in range(h):
                for j in range(w):
                    qh = ph_pad[i + 1, j] + sig * (zbar[i + 1, j] - zbar[i, j])
                    qw = pw_pad[i, j + 1] + sig * (zbar[i, j + 1] - zbar[i, j])
                    s = lam / max(max(lam, math.sqrt(qh * qh + qw * qw)), tiny)
                    dph = rho * (qh * s - ph_pad[i + 1, j])
                    dpw = rho * (qw * s - pw_pad[i, j + 1])
                    ph_pad[i + 1, j] += dph
                    pw_pad[i, j + 1] += dpw
                    if track:
                        change = max(change, two * tau * max(abs(dph), abs(dpw)))
            if track and change <= tol:
                done = it + 1
                break
        iters_done[pi] = done
        for i in range(h):
            for j in range(w):
                zs[i, j] = min(one, max(zero, zs[i, j]))


@_jit(fastmath=True, boundscheck=False, nogil=True)
def _inpaint_init_plane(xs, ks, zs, zero, one):  # pragma: no cover - compiled
    h, w = xs.shape
    mean = zero
    for i in range(h):
        for j in range(w):
            mean += xs[i, j]
    mean = mean / (h * w)
    for i in range(h):
        for j in range(w):
            if ks[i, j] > zero:
                zs[i, j] = xs[i, j]
                continue
            num = zero
            den = zero
            for di in range(max(i - 1, 0), min(i + 2, h)):
                for dj in range(max(j - 1, 0), min(j + 2, w)):
                    num += ks[di, dj] * xs[di, dj]
                    den += ks[di, dj]
            zs[i, j] = num / den if den > zero else mean


def run_pdhg_planes(x: np.ndarray, keep: np.ndarray, tau: np.ndarray, sig: np.ndarray,
                    lam: np.ndarray, *, rho: float, iters: int, tol: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Call the kernel on C-contiguous (P, H, W) arrays; returns (z clipped to [0, 1], iterations per plane)."""
    dt = x.dtype
    z = np.empty_like(x)
    consts = np.array([rho, np.finfo(dt).tiny * 1e4, 0.0, 1.0], dtype=dt)
    done = np.zeros(x.shape[0], dtype=np.int64)
    args = (np.ascontiguousarray(x), np.ascontiguousarray(keep, dtype=dt), z, np.ascontiguousarray(tau, dtype=dt),
            np.ascontiguousarray(sig, dtype=dt), np.ascontiguousarray(lam, dtype=dt), consts, int(iters),
            -1.0 if tol is None else float(tol), done)
    compiling = dt not in _READY and _announce(args)
    t0 = time.perf_counter()
    pdhg_planes(*args)
    _READY.add(dt)
    if compiling:
        log.info("purify: the TV kernel for %s was ready after %.1f s", dt, time.perf_counter() - t0)
    return z, done
