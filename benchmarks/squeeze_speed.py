"""Speed of :func:`purify.median_smooth` against ``scipy.ndimage.median_filter`` on batches of images.

    python -m benchmarks.squeeze_speed [--data-dir DIR] [--images 256] [--sizes 2 3] [--threads 1 2]
                                       [--repeats 7] [--out FILE]

On the first ``--images`` CIFAR-10 (3×32×32) and MNIST (1×28×28) test images it times, per
window size, one call on the whole batch of

* ``median_smooth(x, size=k)`` (float32, torch's intra-op threads set with ``torch.set_num_threads``);
* ``scipy.ndimage.median_filter(x, size=(1, 1, k, k), mode="reflect")`` on the same float32 array
  (single-threaded whatever the setting; it is timed at every thread count all the same, so that
  each row compares two runs made side by side).

Every job runs once per round, round-robin, and the report gives the median (and the best) of the
rounds: the machine this runs on is shared with other jobs, and interleaving makes a slow minute
hit both libraries alike. Before timing, every output is checked equal to scipy's, value for value.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy import ndimage

from purify import median_smooth
from purify.data import load_dataset

from .harness.report import machine

DATASETS = (("cifar10", "CIFAR-10 3x32x32"), ("mnist", "MNIST 1x28x28"))


@dataclass
class Job:
    data: str
    size: int
    method: str
    fn: Callable[[], object]
    times: list[float] = field(default_factory=list)


def _images(name: str, n: int, data_dir: str | None) -> np.ndarray:
    x, _ = load_dataset(name, "test", data_dir=data_dir).tensors(slice(0, n))
    return np.ascontiguousarray(x.float().numpy())


def run(args: argparse.Namespace) -> list[dict]:
    args.load = os.getloadavg()      # how busy the machine was: the 2-thread rows depend on it
    batches = {name: _images(name, args.images, args.data_dir) for name, _ in DATASETS}
    rows = []
    before = torch.get_num_threads()
    for threads in args.threads:
        torch.set_num_threads(threads)
        jobs = []
        for name, _ in DATASETS:
            xn = batches[name]
            xt = torch.from_numpy(xn)
            for k in args.sizes:
                ours = median_smooth(xt, size=k).numpy()
                ref = ndimage.median_filter(xn, size=(1, 1, k, k), mode="reflect")
                if not np.array_equal(ours, ref):
                    raise SystemExit(f"median_smooth(size={k}) differs from scipy on {name}; not timing a wrong result")
                jobs.append(Job(name, k, "purify median_smooth", lambda xt=xt, k=k: median_smooth(xt, size=k)))
                jobs.append(Job(name, k, "scipy median_filter",
                                lambda xn=xn, k=k: ndimage.median_filter(xn, size=(1, 1, k, k), mode="reflect")))
        for job in jobs:          # one warm-up call each, outside the timings
            job.fn()
        for _ in range(args.repeats):
            for job in jobs:
                t0 = time.perf_counter()
                job.fn()
                job.times.append(time.perf_counter() - t0)
        for job in jobs:
            rows.append({"data": job.data, "size": job.size, "threads": threads, "method": job.method,
                         "median_ms": 1e3 * statistics.median(job.times), "best_ms": 1e3 * min(job.times)})
    torch.set_num_threads(before)
    return rows


def write_markdown(rows: list[dict], args: argparse.Namespace, command: str, path: Path) -> None:
    names = dict(DATASETS)
    lines = [
        "# Median smoothing: purify against scipy.ndimage",
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine()} (the default; each row sets its own)",
        f"- Date: {dt.date.today().isoformat()}",
        f"- Input: the first {args.images} test images of each data set as one float32 batch (B, C, H, W); one call "
        f"filters the whole batch. scipy: `median_filter(x, size=(1, 1, k, k), mode=\"reflect\")`, which is "
        "single-threaded; purify: `median_smooth(x, size=k)` (sizes 2 and 3 are min/max networks on shifted "
        "views, larger sizes sort the k² shifted copies).",
        "- Both outputs were checked equal, value for value, before timing.",
        f"- Times: median (and best) of {args.repeats} rounds; each round runs every job once, interleaved, on a "
        "2-core machine shared with other jobs, so absolute times drift; compare within a row.",
        f"- Load average when the run started: {', '.join(f'{v:.2f}' for v in args.load)} (1, 5, 15 min) on "
        f"{os.cpu_count()} cores. Each min/max pass of purify's filter (5 for size 2, 18 for size 3) is one "
        "parallel region; when the other cores are busy, every region waits for a thread to be scheduled, so "
        "more threads can be slower than one (the project's advice for a shared CPU: `--threads 1`).",
        "",
        "| data | size | torch threads | purify ms (best) | scipy ms (best) | purify µs / image | scipy µs / image | "
        "speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    key = {(r["data"], r["size"], r["threads"], r["method"]): r for r in rows}
    for threads in args.threads:
        for name, _ in DATASETS:
            for k in args.sizes:
                ours = key[(name, k, threads, "purify median_smooth")]
                ref = key[(name, k, threads, "scipy median_filter")]
                lines.append(
                    f"| {names[name]} | {k} | {threads} | {ours['median_ms']:.1f} ({ours['best_ms']:.1f}) | "
                    f"{ref['median_ms']:.1f} ({ref['best_ms']:.1f}) | {1e3 * ours['median_ms'] / args.images:.1f} | "
                    f"{1e3 * ref['median_ms'] / args.images:.1f} | {ref['median_ms'] / ours['median_ms']:.1f}x |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.squeeze_speed", description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None, help="folder with cifar10_test.npz and mnist_test.npz "
                                                         "(default: $PURIFY_DATA_DIR)")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=7, help="interleaved timing rounds")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/squeeze_speed.md"))
    args = parser.parse_args(argv)
    command = "python -m benchmarks.squeeze_speed " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_markdown(rows, args, command.strip(), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
