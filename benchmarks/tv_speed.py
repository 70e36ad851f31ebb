"""Side-by-side speed of masked-TV solvers, each paired with its objective gap against the exact oracle.

    python -m benchmarks.tv_speed [--data-dir DIR] [--images 256] [--threads 1 2] [--out FILE]

On the same CIFAR-10 test images and the same drop masks it times:

* ours (``purify.tv_minimize``): numba backend at several batch sizes and iteration counts,
  the differentiable torch backend, and CUDA at batch 4096 when a GPU is present;
* scikit-image ``denoise_tv_chambolle`` on the *unmasked* problem (it has no mask). Its
  objective is ``0.5 ||u - f||^2 + w TV(u)``, ours ``||u - f||^2 + lam TV(u)``, so ``w = lam / 2``
  (checked numerically: the gap vanishes at that conversion);
* IBM ART ``TotalVarMin`` (when installed). Its ``prob`` is the probability of *keeping* a value
  and its objective is different: an unsquared fidelity ``||m (z - x)||_2`` plus ``lamb`` times
  the sum of 2-norms of whole rows / columns of differences. We call its solver
  (``_minimize``) directly with our keep mask (1 - drop mask, all channels) so it sees exactly
  our pixels, and report its output's gap on *our* objective for several ``lamb``;
* the cvxpy / Clarabel oracle itself.

Every gap is ``(F(z) - F*) / F*`` with F* from the oracle, over the same images.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from purify.data import load_dataset
from purify.tv import DEFAULT_TV_ITERS, bernoulli_mask, tv_minimize
from purify.tv_reference import tv_minimize_exact, tv_objective

WEIGHT = 0.03   # Guo et al.'s lambda
DROP = 0.5      # Guo et al.'s drop rate


def _timed(fn, repeats: int) -> tuple[float, object]:
    """Best-of-``repeats`` wall time in seconds (the usual estimator for a quiet machine) and the result."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def _gaps(z: torch.Tensor, x: torch.Tensor, mask, f_star: torch.Tensor) -> tuple[float, float]:
    g = (tv_objective(z, x, mask, WEIGHT) - f_star) / f_star
    return float(g.mean()), float(g.max())


def _ours(x: torch.Tensor, mask: torch.Tensor, batch: int, iters: int, backend: str) -> torch.Tensor:
    outs = [tv_minimize(x[i:i + batch], weight=WEIGHT, mask=mask[i:i + batch], iters=iters, backend=backend)
            for i in range(0, len(x), batch)]
    return torch.cat(outs)


def _skimage(x: torch.Tensor, eps: float, max_num_iter: int) -> torch.Tensor:
    from skimage.restoration import denoise_tv_chambolle

    hwc = x.permute(0, 2, 3, 1).double().numpy()
    out = np.stack([denoise_tv_chambolle(img, weight=WEIGHT / 2, eps=eps, max_num_iter=max_num_iter, channel_axis=-1)
                    for img in hwc])
    return torch.from_numpy(out).permute(0, 3, 1, 2)


def _art(x: torch.Tensor, mask: torch.Tensor, lamb: float, max_iter: int) -> torch.Tensor:
    from art.defences.preprocessor import TotalVarMin

    tvm = TotalVarMin(prob=1 - DROP, norm=2, lamb=lamb, max_iter=max_iter, clip_values=(0.0, 1.0))
    hwc = x.permute(0, 2, 3, 1).double().numpy()
    keep = (1 - mask.expand_as(x)).permute(0, 2, 3, 1).numpy().astype(int)
    out = np.stack([tvm._minimize(img, k) for img, k in zip(hwc, keep)])
    return torch.from_numpy(out).permute(0, 3, 1, 2)


def _oracle(x: torch.Tensor, mask) -> tuple[torch.Tensor, float]:
    t0 = time.perf_counter()
    zs = [tv_minimize_exact(x[i], None if mask is None else mask[i, 0], WEIGHT)
          for i in tqdm(range(len(x)), desc="oracle", leave=False)]
    return torch.stack(zs), (time.perf_counter() - t0) / len(x)


def _machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), GPU: {gpu}, "
            f"torch {torch.__version__}, Python {platform.python_version()}")


def run(args: argparse.Namespace) -> list[dict]:
    ds = load_dataset("cifar10", "test", data_dir=args.data_dir)
    x, _ = ds.tensors(np.arange(args.images))
    x64 = x.double()
    mask = bernoulli_mask(x, DROP, generator=torch.Generator().manual_seed(0))
    print(f"oracle on {len(x)} images, masked (drop {DROP}) and unmasked problems, weight {WEIGHT} ...")
    z_star_m, oracle_ms = _oracle(x64, mask.double())
    z_star_u, _ = _oracle(x64, None)
    f_m = tv_objective(z_star_m, x64, mask.double(), WEIGHT)
    f_u = tv_objective(z_star_u, x64, None, WEIGHT)
    rows: list[dict] = []

    def add(method, problem, threads, batch, setting, seconds, n, z, m, f_star):
        gm, gx = _gaps(z, x64[:len(z)], m, f_star)
        rows.append(dict(method=method, problem=problem, threads=threads, batch=batch, setting=setting,
                         ms_per_image=1e3 * seconds / n, images_per_s=n / seconds, gap_mean=gm, gap_max=gx))
        print(f"  {method:28s} {problem:8s} t={threads} b={batch!s:5s} {setting:28s} "
              f"{1e3 * seconds / n:8.3f} ms/img  gap mean {gm:.1e} max {gx:.1e}")

    n = len(x)
    _ours(x[:2], mask[:2], 2, 2, "numba")  # compile / load the kernel outside the timings
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"threads = {threads}")
        for batch in args.batch_sizes:
            s, z = _timed(lambda: _ours(x, mask, batch, DEFAULT_TV_ITERS, "numba"), args.repeats)
            add("purify (numba)", "masked", threads, batch, f"iters={DEFAULT_TV_ITERS}", s, n, z, mask, f_m)
        for iters in args.iters:
            if iters != DEFAULT_TV_ITERS:
                s, z = _timed(lambda: _ours(x, mask, n, iters, "numba"), args.repeats)
                add("purify (numba)", "masked", threads, n, f"iters={iters}", s, n, z, mask, f_m)
        s, z = _timed(lambda: _ours(x, mask, n, DEFAULT_TV_ITERS, "torch"), 1)
        add("purify (torch eager)", "masked", threads, n, f"iters={DEFAULT_TV_ITERS}", s, n, z, mask, f_m)
        no_mask = torch.zeros_like(mask)
        for iters in (40, DEFAULT_TV_ITERS):
            s, z = _timed(lambda: _ours(x, no_mask, n, iters, "numba"), args.repeats)
            add("purify (numba)", "unmasked", threads, n, f"iters={iters}", s, n, z, None, f_u)
        for eps, max_it in ((2e-4, 200), (0.0, 25), (0.0, 50)):
            s, z = _timed(lambda: _skimage(x, eps, max_it), 1)
            add("skimage denoise_tv_chambolle", "unmasked", threads, 1, f"eps={eps:g} max_num_iter={max_it}",
                s, n, z, None, f_u)
        if args.art:
            k = args.art_images
            for lamb, max_iter in ((WEIGHT, 10), (0.3, 10), (0.3, 100)):
                s, z = _timed(lambda: _art(x[:k], mask[:k], lamb, max_iter), 1)
                add("ART TotalVarMin", "masked", threads, 1, f"lamb={lamb:g} max_iter={max_iter}", s, k, z,
                    mask[:k], f_m[:k])
        k = args.oracle_timing_images
        s, z = _timed(lambda: _oracle(x64[:k], mask[:k].double())[0], 1)
        add("cvxpy + Clarabel (oracle)", "masked", threads, 1, "default tolerances", s, k, z, mask[:k], f_m[:k])

    if torch.cuda.is_available():
        xg = x.repeat(4096 // n + 1, 1, 1, 1)[:4096].cuda()
        mg = mask.repeat(4096 // n + 1, 1, 1, 1)[:4096].cuda()
        tv_minimize(xg[:8], mask=mg[:8])
        torch.cuda.synchronize()

        def gpu_run():
            out = tv_minimize(xg, weight=WEIGHT, mask=mg)
            torch.cuda.synchronize()
            return out

        s, z = _timed(gpu_run, args.repeats)
        add("purify (torch, CUDA)", "masked", "-", 4096, f"iters={DEFAULT_TV_ITERS}", s, 4096,
            z[:n].cpu(), mask, f_m)
    print(f"(oracle build+solve, measured during setup: {1e3 * oracle_ms:.1f} ms/image)")
    return rows


def write_markdown(rows: list[dict], args: argparse.Namespace, command: str, path: Path) -> None:
    lines = [
        "# Masked TV: speed at equal quality",
        "",
        f"- Command: `{command}`",
        f"- Machine: {_machine()}",
        f"- Date: {dt.date.today().isoformat()}",
        f"- Problem: {args.images} CIFAR-10 test images (first {args.images}), 32x32x3, weight (lambda) = {WEIGHT}; "
        f"`masked` = pixel drop rate {DROP} with one fixed mask per image (seed 0), shared by every method; "
        "`unmasked` = drop rate 0 (the problem scikit-image solves).",
        "- Gap = (F(z) - F*) / F* on our objective `||(1-X)(z-x)||^2 + lambda TV(z)`, F* from the cvxpy/Clarabel "
        "oracle on the same images; mean and max over the images.",
        "- ms/image = wall time over all images / number of images, best of "
        f"{args.repeats} runs for ours, one run for the others. Threads set with `torch.set_num_threads` "
        "(our numba kernel follows it); scikit-image, ART and cvxpy run one image at a time (batch 1).",
        "- scikit-image weight = lambda / 2 (its objective halves the fidelity). ART: prob = 1 - drop (it keeps, "
        "not drops, `prob`), our keep mask passed to its solver, norm = 2 (unsquared fidelity, row/column-norm "
        "TV: a different objective, so no lamb reaches our optimum); ART timed on the first "
        f"{args.art_images} images.",
        "",
        "| method | problem | threads | batch | setting | ms / image | images / s | gap mean | gap max |",
        "|---|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['method']} | {r['problem']} | {r['threads']} | {r['batch']} | {r['setting']} | "
                     f"{r['ms_per_image']:.3f} | {r['images_per_s']:.0f} | {r['gap_mean']:.1e} | {r['gap_max']:.1e} |")
    if not torch.cuda.is_available():
        lines += ["", "No GPU was available for this run, so there is no CUDA row (batch 4096)."]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tv_speed", description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None, help="folder with cifar10_test.npz (default: $PURIFY_DATA_DIR)")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 256])
    parser.add_argument("--iters", type=int, nargs="+", default=[40, 60, DEFAULT_TV_ITERS, 160])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--art-images", type=int, default=64)
    parser.add_argument("--oracle-timing-images", type=int, default=16)
    parser.add_argument("--no-art", dest="art", action="store_false", help="skip IBM ART even when installed")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/tv_speed.md"))
    args = parser.parse_args(argv)
    if args.art:
        try:
            import art  # noqa: F401
        except ImportError:
            print("IBM ART not installed: skipping its TotalVarMin (pip install 'purify[art]')")
            args.art = False
    command = "python -m benchmarks.tv_speed " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    rows = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_markdown(rows, args, command.strip(), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
