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
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from purify.data import load_dataset
from purify.tv import DEFAULT_TV_ITERS, bernoulli_mask, tv_minimize
from purify.tv_reference import tv_minimize_exact, tv_objective

WEIGHT = 0.03   # Guo et al.'s lambda
DROP = 0.5      # Guo et al.'s drop rate


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


@dataclass
class Job:
    """One timed configuration; ``fn`` returns the purified images of the first ``n`` test images."""

    method: str
    problem: str
    batch: int
    setting: str
    n: int
    fn: Callable[[], torch.Tensor]
    times: list[float] = field(default_factory=list)
    output: torch.Tensor | None = None


def _run_rounds(jobs: list[Job], rounds: int) -> None:
    """Time every job once per round, round-robin, so slow drifts of a shared machine hit all methods alike."""
    for _ in tqdm(range(rounds), desc="timing rounds", leave=False):
        for job in jobs:
            t0 = time.perf_counter()
            out = job.fn()
            job.times.append(time.perf_counter() - t0)
            if job.output is None:
                job.output = out


def run(args: argparse.Namespace) -> list[dict]:
    ds = load_dataset("cifar10", "test", data_dir=args.data_dir)
    x, _ = ds.tensors(np.arange(args.images))
    x64 = x.double()
    n = len(x)
    mask = bernoulli_mask(x, DROP, generator=torch.Generator().manual_seed(0))
    no_mask = torch.zeros_like(mask)
    print(f"oracle on {n} images, masked (drop {DROP}) and unmasked problems, weight {WEIGHT} ...")
    z_star_m, _ = _oracle(x64, mask.double())
    z_star_u, _ = _oracle(x64, None)
    f_star = {"masked": tv_objective(z_star_m, x64, mask.double(), WEIGHT),
              "unmasked": tv_objective(z_star_u, x64, None, WEIGHT)}
    _ours(x[:2], mask[:2], 2, 2, "numba")  # compile / load the kernel outside the timings

    def jobs_for_threads() -> list[Job]:
        jobs = [Job("purify (numba)", "masked", b, f"iters={DEFAULT_TV_ITERS}", n,
                    lambda b=b: _ours(x, mask, b, DEFAULT_TV_ITERS, "numba")) for b in args.batch_sizes]
        jobs += [Job("purify (numba)", "masked", n, f"iters={it}", n, lambda it=it: _ours(x, mask, n, it, "numba"))
                 for it in args.iters if it != DEFAULT_TV_ITERS]
        jobs.append(Job("purify (torch eager)", "masked", n, f"iters={DEFAULT_TV_ITERS}", n,
                        lambda: _ours(x, mask, n, DEFAULT_TV_ITERS, "torch")))
        jobs += [Job("purify (numba)", "unmasked", n, f"iters={it}", n, lambda it=it: _ours(x, no_mask, n, it, "numba"))
                 for it in (80, DEFAULT_TV_ITERS)]
        jobs += [Job("skimage denoise_tv_chambolle", "unmasked", 1, f"eps={eps:g} max_num_iter={it}", n,
                     lambda eps=eps, it=it: _skimage(x, eps, it)) for eps, it in ((2e-4, 200), (0.0, 25), (0.0, 50))]
        if args.art:
            k = args.art_images
            jobs += [Job("ART TotalVarMin", "masked", 1, f"lamb={lamb:g} max_iter={it}", k,
                         lambda lamb=lamb, it=it: _art(x[:k], mask[:k], lamb, it))
                     for lamb, it in ((WEIGHT, 10), (0.3, 10), (0.3, 100))]
        k = args.oracle_timing_images
        jobs.append(Job("cvxpy + Clarabel (oracle)", "masked", 1, "default tolerances", k,
                        lambda: _oracle(x64[:k], mask[:k].double())[0]))
        return jobs

    rows: list[dict] = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"threads = {threads}: {args.repeats} interleaved rounds")
        jobs = jobs_for_threads()
        _run_rounds(jobs, args.repeats)
        rows += [_row(job, threads, x64, mask, f_star) for job in jobs]

    if torch.cuda.is_available():
        xg = x.repeat(4096 // n + 1, 1, 1, 1)[:4096].cuda()
        mg = mask.repeat(4096 // n + 1, 1, 1, 1)[:4096].cuda()
        tv_minimize(xg[:8], mask=mg[:8])
        torch.cuda.synchronize()

        def gpu_run() -> torch.Tensor:
            out = tv_minimize(xg, weight=WEIGHT, mask=mg)
            torch.cuda.synchronize()
            return out[:n].cpu()

        job = Job("purify (torch, CUDA)", "masked", 4096, f"iters={DEFAULT_TV_ITERS}", 4096, gpu_run)
        _run_rounds([job], args.repeats)
        rows.append(_row(job, "-", x64, mask, f_star))
    return rows


def _row(job: Job, threads, x64: torch.Tensor, mask: torch.Tensor, f_star: dict) -> dict:
    z = job.output
    m = mask[:len(z)] if job.problem == "masked" else None
    gm, gx = _gaps(z, x64[:len(z)], m, f_star[job.problem][:len(z)])
    best, median = min(job.times), statistics.median(job.times)
    row = dict(method=job.method, problem=job.problem, threads=threads, batch=job.batch, setting=job.setting,
               ms_per_image=1e3 * best / job.n, ms_median=1e3 * median / job.n, images_per_s=job.n / best,
               gap_mean=gm, gap_max=gx)
    print(f"  {job.method:28s} {job.problem:8s} t={threads} b={job.batch!s:5s} {job.setting:28s} "
          f"{row['ms_per_image']:8.3f} ms/img (median {row['ms_median']:.3f})  gap mean {gm:.1e} max {gx:.1e}")
    return row


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
        f"- ms/image = wall time / number of images: best (and median) of {args.repeats} rounds; each round runs "
        "every method once, interleaved, because this shared virtual machine's speed drifts by up to 2x over "
        "minutes. Threads set with `torch.set_num_threads` (our numba kernel follows it); scikit-image, ART "
        "and cvxpy run one image at a time (batch 1).",
        "- scikit-image weight = lambda / 2 (its objective halves the fidelity). ART: prob = 1 - drop (it keeps, "
        "not drops, `prob`), our keep mask passed to its solver, norm = 2 (unsquared fidelity, row/column-norm "
        "TV: a different objective, so no lamb reaches our optimum); ART timed on the first "
        f"{args.art_images} images.",
        "",
        "| method | problem | threads | batch | setting | ms / image (best) | median | images / s | gap mean | gap max |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['method']} | {r['problem']} | {r['threads']} | {r['batch']} | {r['setting']} | "
                     f"{r['ms_per_image']:.3f} | {r['ms_median']:.3f} | {r['images_per_s']:.0f} | {r['gap_mean']:.1e} | {r['gap_max']:.1e} |")
    if not torch.cuda.is_available():
        lines += ["", "No GPU was available for this run, so there is no CUDA row (batch 4096)."]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tv_speed", description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None, help="folder with cifar10_test.npz (default: $PURIFY_DATA_DIR)")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 256])
    parser.add_argument("--iters", type=int, nargs="+", default=[80, 120, DEFAULT_TV_ITERS, 240])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds")
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
