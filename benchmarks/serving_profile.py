"""The three per-request costs the server was tuned against, each measured on its own.

Usage::

    OMP_NUM_THREADS=1 python -m benchmarks.serving_profile --data-dir ../shared/data

* **Head layout**: the built-in default's classifier (and ResNet-20 when its checkpoint is in the
  data directory), contiguous (NCHW) against channels_last, at batch 1 and 32, one torch thread
  (``serving.backends.TorchBackend``'s ``backend.memory_format``).
* **Full garbage collection**: ``gc.collect()`` in a process that has loaded the served default model,
  as is, and after ``gc.freeze()`` (what ``serving.app`` does once its models are loaded).
* **Answer compression**: ``serving.protocol.encode_body`` on a one-image answer of the default
  model, with ``Accept-Encoding: gzip`` on a body this size (what the server did before
  ``MIN_COMPRESS_BYTES``) and now.

Writes ``benchmarks/results/serving_profile.md`` with the command, the machine and the date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import gzip
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from . import _serving   # the server's modules, under their name beside this package

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "serving_profile.md"


def _median_ms(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def head_layouts(images: torch.Tensor, data_dir: str | None) -> list[str]:
    """Rows: model, batch, ms per image contiguous, ms per image channels_last, speed-up."""
    from purify.errors import DataNotFoundError
    from purify.models import create_model

    rows = []
    for name in ("small_cnn_cifar10", "resnet20"):
        try:
            model = create_model(name, pretrained=True, data_dir=data_dir)
        except DataNotFoundError:
            rows.append(f"| {name} | - | not measured: no checkpoint in the data directory | | |")
            continue
        for batch in (1, 32):
            x = images[:batch].contiguous()
            repeats = max(20, 600 // batch)
            with torch.inference_mode():
                model.to(memory_format=torch.contiguous_format)
                plain = _median_ms(lambda: model(x), repeats) / batch
                model.to(memory_format=torch.channels_last)
                x_cl = x.contiguous(memory_format=torch.channels_last)
                fast = _median_ms(lambda: model(x_cl), repeats) / batch
            rows.append(f"| {name} | {batch} | {plain:.3f} | {fast:.3f} | {plain / fast:.2f}x |")
    return rows


def gc_pauses(repeats: int = 5) -> tuple[float, float, int]:
    """Median ms of a full collection with the served default model loaded: as is, then frozen."""
    server_config = _serving.module("config")
    DEFAULT_CONFIG, load_config = server_config.DEFAULT_CONFIG, server_config.load_config
    ServedModel = _serving.module("model").ServedModel

    served = ServedModel(load_config(DEFAULT_CONFIG))  # loads torch, numba and the model, as a server does
    before = _median_ms(gc.collect, repeats, warmup=1)
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    after = _median_ms(gc.collect, repeats, warmup=1)
    gc.unfreeze()
    del served
    return before, after, frozen


def compression() -> tuple[int, float, float]:
    """(answer bytes, µs to gzip it as before, µs through encode_body now) for one image's answer."""
    from purify.data import CIFAR10_CLASSES
    topk_labels = _serving.module("model").topk_labels
    server = _serving.module("protocol")
    encode_body, encode_response = server.encode_body, server.encode_response

    scores = torch.softmax(torch.randn(1, 10, generator=torch.Generator().manual_seed(0)), 1).numpy()
    labels = topk_labels(scores, 3, CIFAR10_CLASSES)
    body, _ = encode_response("cifar10_tvm", "1", "7", [("probabilities", "FP32", scores, True),
                                                         ("labels", "BYTES", labels, True)])
    old = _median_ms(lambda: gzip.compress(body, compresslevel=1), 2000) * 1000
    new = _median_ms(lambda: encode_body(body, "gzip, deflate"), 2000) * 1000
    return len(body), old, new


def main(argv: list[str] | None = None) -> int:
    from .harness.report import machine
    from purify.data import load_dataset

    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m benchmarks.serving_profile", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None, help="folder with cifar10_test.npz (default: $PURIFY_DATA_DIR)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    images, _ = load_dataset("cifar10", "test", data_dir=args.data_dir).tensors(slice(0, 32))
    layout_rows = head_layouts(images, args.data_dir)
    before, after, frozen = gc_pauses()
    size, old_us, new_us = compression()
    text = "\n".join([
        "# Serving: per-request costs, measured one at a time",
        "",
        "Head layout (`backend.memory_format`), one torch thread, ms per image (median of repeated calls):",
        "",
        "| classifier | batch | contiguous | channels_last | speed-up |",
        "|---|---:|---:|---:|---:|",
        *layout_rows,
        "",
        "Full garbage collection (`gc.collect()`, median of 5) in a process holding the served default model:",
        "",
        f"- as loaded: {before:.2f} ms",
        f"- after `gc.freeze()` ({frozen:,} objects frozen): {after:.2f} ms",
        "",
        f"One-image answer of the default model ({size} bytes, binary outputs), with the client's "
        "`Accept-Encoding: gzip, deflate`:",
        "",
        f"- gzip level 1, as the server did before `MIN_COMPRESS_BYTES`: {old_us:.1f} µs per answer",
        f"- `encode_body` now (sent as is): {new_us:.2f} µs per answer",
        "",
        "## Run",
        "",
        "```",
        "OMP_NUM_THREADS=1 python -m benchmarks.serving_profile " + " ".join(argv),
        "```",
        "",
        f"- machine: {machine()}",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        "",
    ])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
