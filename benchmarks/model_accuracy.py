"""Top-1 accuracy of the pretrained classifiers on the full CIFAR-10 test set.

Usage::

    python -m benchmarks.model_accuracy [--data-dir DIR] [--models resnet20 resnet56]

Writes a markdown table (model, correct/total, top-1, upstream figure, wall time) together with
the exact command, the machine and the date to ``benchmarks/results/model_accuracy.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from purify.data import load_dataset, resolve_data_dir
from purify.models import count_correct, create_model, get_model_config, list_models

logger = logging.getLogger("benchmarks.model_accuracy")

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "model_accuracy.md"


def machine_description(device: torch.device) -> list[str]:
    """Lines describing where the numbers were measured."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    cpu = platform.processor() or platform.machine()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return [
        f"- CPU cores (os.cpu_count): {os.cpu_count()} ({cpu}); torch threads: {torch.get_num_threads()}; "
        f"1-minute load average at the end: {load:.2f} (other processes share the machine when this is high)",
        f"- GPU: {gpu}",
        f"- torch {torch.__version__}, Python {platform.python_version()}, {platform.system()} {platform.release()}",
    ]


def evaluate(names: list[str], *, data_dir: str | None, batch_size: int, device: torch.device,
             progress: bool = True) -> list[dict]:
    """Evaluate each model on the CIFAR-10 test split; one result dict per model."""
    dataset = load_dataset("cifar10", "test", data_dir=data_dir)
    rows = []
    for name in names:
        model = create_model(name, pretrained=True, data_dir=data_dir).to(device)
        start = time.perf_counter()
        correct = count_correct(model, dataset, batch_size=batch_size, device=device, progress=progress)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        rows.append({"model": name, "correct": correct, "total": len(dataset), "seconds": seconds,
                     "expected": get_model_config(name).top1})
        logger.info("%s: %d/%d correct in %.1fs", name, correct, len(dataset), seconds)
    return rows


def render(rows: list[dict], *, command: str, device: torch.device, data_dir: Path, batch_size: int) -> str:
    """The markdown report."""
    lines = [
        "# Pretrained classifiers: CIFAR-10 test top-1",
        "",
        "Full CIFAR-10 test set (10,000 images, `cifar10_test.npz`), eval mode, images in [0, 1] with the",
        "ImageNet mean/std normalization inside the model (as in the upstream training), batches of "
        f"{batch_size}, `torch.inference_mode()`. Expected: the upstream README's test error "
        "(akamaster/pytorch_resnet_cifar10: 8.27% ResNet-20, 6.61% ResNet-56).",
        "",
        "| model | correct / total | top-1 (%) | expected (upstream, %) | match | wall time (s) |",
        "|---|---:|---:|---:|:---:|---:|",
    ]
    for r in rows:
        top1 = 100.0 * r["correct"] / r["total"]
        match = "yes" if round(top1, 2) == r["expected"] else "NO"
        lines.append(f"| {r['model']} | {r['correct']:,} / {r['total']:,} | {top1:.2f} | {r['expected']:.2f} | "
                     f"{match} | {r['seconds']:.1f} |")
    lines += [
        "",
        "Wall time is the evaluation loop only (data and weights already loaded), on the device below.",
        "",
        "## Run",
        "",
        "```",
        command,
        "```",
        "",
        f"- data directory: `{data_dir}`",
        f"- device: {device}",
        *machine_description(device),
        f"- date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        "",
    ]
    return "\n".join(lines)


def _cifar10_model(name: str) -> bool:
    """A registered CIFAR-10 classifier whose weights are there (a model still training has none yet)."""
    from purify.errors import PurifyError

    try:
        return get_model_config(name).dataset == "cifar10"
    except PurifyError:
        return False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks.model_accuracy", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder with cifar10_test.npz and weights/ "
                        "(default: $PURIFY_DATA_DIR, else ~/.cache/purify/data)")
    cifar = [m for m in list_models() if _cifar10_model(m)]          # the test set evaluated here
    parser.add_argument("--models", nargs="+", default=cifar, choices=cifar)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(args.device)
    rows = evaluate(args.models, data_dir=args.data_dir, batch_size=args.batch_size, device=device,
                    progress=not args.no_progress)
    command = shlex.join(["python", "-m", "benchmarks.model_accuracy", *argv])
    report = render(rows, command=command, device=device, data_dir=resolve_data_dir(args.data_dir),
                    batch_size=args.batch_size)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    sys.stdout.write(report)
    return 0 if all(round(100.0 * r["correct"] / r["total"], 2) == r["expected"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
