"""Train the small CIFAR-10 CNN that ``purify-serve`` ships as its built-in default.

Command (what made ``purify/weights/small_cnn_cifar10.*``; a few minutes on one CPU thread)::

    OMP_NUM_THREADS=1 python -m purify.training.classifier --data-dir ../shared/data

Recipe: :class:`~purify.models.small_cnn.SmallCNN` on the ``train`` split (45,000 images),
SGD with Nesterov momentum under a one-cycle learning rate, random crops and flips, and a
fraction of every batch passed through TVM with the served settings (drop 0.3, weight 0.1),
so the classifier has seen purified images before it serves behind TVM. Validation accuracy
(the ``val`` split: the last 5,000 training images) is logged after every epoch; the test set
is read once, at the end, for the figures written into the json config.

Output: ``<out-dir>/<name>.safetensors`` (tensors only), ``<name>.json`` (architecture,
normalization, the command, sha256 of the weights, test accuracy with and without TVM) and
``<name>.log`` (the per-epoch log).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from purify._artifacts import artifact_paths, save_artifact
from purify.data import load_dataset
from purify.models.small_cnn import ARTIFACT_FORMAT, WEIGHTS_DIR, SmallCNN
from purify.models.normalize import Normalized
from purify.tv import tv_minimize
from purify.training._logging import training_log

log = logging.getLogger("purify.training.classifier")

# Per-channel statistics of the CIFAR-10 training split (the usual published values).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# The served TVM settings (benchmarks/results/tvm_selection.md, chosen on validation).
SERVED_TVM = {"drop_prob": 0.3, "weight": 0.1}


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 4-pixel-padded 32x32 crops and horizontal flips, per image."""
    b, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    dy = torch.randint(0, 9, (b,), generator=gen)
    dx = torch.randint(0, 9, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(b, x.shape[1], h, w + 8)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(b, x.shape[1], h, w)
    out = out.gather(3, cols)
    flip = torch.rand(b, generator=gen) < 0.5
    out[flip] = out[flip].flip(3)
    return out


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, tvm: bool = False,
             batch_size: int = 500, seed: int = 0) -> float:
    """Top-1 accuracy in percent, optionally with the served TVM in front.

    Shape:
        x: (N, 3, 32, 32) in [0, 1]; y: (N,) int64.
    Example:
        >>> evaluate(Normalized(SmallCNN(), CIFAR10_MEAN, CIFAR10_STD).eval(), torch.rand(4, 3, 32, 32),
        ...          torch.zeros(4, dtype=torch.long)) <= 100.0
        True
    """
    gen = torch.Generator().manual_seed(seed)
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            if tvm:
                xb = tv_minimize(xb, generator=gen, **SERVED_TVM)
            correct += int((model(xb).argmax(1) == y[i:i + batch_size]).sum())
    return 100.0 * correct / max(1, len(x))


def train(args: argparse.Namespace) -> dict:
    """Run the recipe and write the artifact; returns the json config written."""
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    train_x, train_y = load_dataset("cifar10", "train", data_dir=args.data_dir).tensors()
    val_x, val_y = load_dataset("cifar10", "val", data_dir=args.data_dir).tensors()
    if args.limit:
        n = args.limit
        train_x, train_y, val_x, val_y = train_x[:n], train_y[:n], val_x[:n], val_y[:n]
    model = Normalized(SmallCNN(tuple(args.widths)), CIFAR10_MEAN, CIFAR10_STD)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps = args.epochs * ((len(train_x) + args.batch_size - 1) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.25)
    n_tvm = int(round(args.tvm_fraction * args.batch_size))
    log.info(f"training SmallCNN{tuple(args.widths)} ({sum(p.numel() for p in model.parameters()):,} parameters) "
             f"on {len(train_x):,} images, {args.epochs} epochs, batch {args.batch_size}, "
             f"{n_tvm} of each batch through TVM {SERVED_TVM}")
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(train_x), generator=gen)
        total, seen = 0.0, 0
        for i in range(0, len(order), args.batch_size):
            idx = order[i:i + args.batch_size]
            xb = _augment(train_x[idx], gen)
            k = min(n_tvm, len(idx))
            if k:
                with torch.no_grad():
                    xb[:k] = tv_minimize(xb[:k].clamp(0, 1), generator=gen, **SERVED_TVM)
            loss = F.cross_entropy(model(xb), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        model.eval()
        val_acc = evaluate(model, val_x, val_y)
        log.info(f"epoch {epoch}/{args.epochs}: train loss {total / seen:.4f}, val accuracy {val_acc:.2f}%, "
                 f"{time.perf_counter() - start:.0f} s")
    test_x, test_y = load_dataset("cifar10", "test", data_dir=args.data_dir).tensors(slice(0, args.limit or None))
    test_acc = evaluate(model, test_x, test_y)
    test_tvm = evaluate(model, test_x, test_y, tvm=True)
    log.info(f"test accuracy {test_acc:.2f}% (TVM in front: {test_tvm:.2f}%); {time.perf_counter() - start:.0f} s")
    return _write(args, model, val_acc, test_acc, test_tvm, time.perf_counter() - start)


def _write(args: argparse.Namespace, model: Normalized, val_acc: float, test_acc: float, test_tvm: float,
           seconds: float) -> dict:
    out = Path(args.out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.model.state_dict().items()}
    config = {
        "format": ARTIFACT_FORMAT,
        "name": args.name,
        "arch": {"type": "SmallCNN", "widths": list(args.widths), "num_classes": 10},
        "dataset": "cifar10",
        "input_size": [3, 32, 32],
        "mean": list(CIFAR10_MEAN),
        "std": list(CIFAR10_STD),
        "classes": list(load_dataset("cifar10", "val", data_dir=args.data_dir).classes),
        "val_accuracy": round(val_acc, 2),
        "test_accuracy": round(test_acc, 2),
        "test_accuracy_tvm": round(test_tvm, 2),
        "tvm": SERVED_TVM,
        "training": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                     "tvm_fraction": args.tvm_fraction, "images": args.limit or 45000,
                     "seconds": round(seconds), "threads": torch.get_num_threads(),
                     "torch": torch.__version__},
        "command": "python -m purify.training.classifier " + shlex.join(args.argv),
    }
    json_path = save_artifact(out / args.name, state, config)     # adds weights_file and sha256
    weights = artifact_paths(json_path)[0]
    log.info(f"wrote {weights} ({weights.stat().st_size:,} bytes) and {json_path.name}")
    return json.loads(json_path.read_text())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m purify.training.classifier", description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=None, help="folder with cifar10_{train,test}.npz (default: $PURIFY_DATA_DIR)")
    p.add_argument("--out-dir", default=str(WEIGHTS_DIR), help="where the artifact goes (default: purify/weights)")
    p.add_argument("--name", default="small_cnn_cifar10")
    p.add_argument("--widths", type=int, nargs=3, default=[32, 64, 128])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--tvm-fraction", type=float, default=0.25, help="share of each batch purified with TVM")
    p.add_argument("--limit", type=int, default=0, help="smoke runs: train on the first N images and evaluate "
                   "on the first N validation and test images (0: all, as for the shipped artifact)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    if args.epochs < 1 or args.batch_size < 1 or not 0.0 <= args.tvm_fraction <= 1.0:
        build_parser().error("--epochs and --batch-size must be >= 1 and --tvm-fraction in [0, 1]")
    torch.set_num_threads(args.threads)
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    with training_log(log, Path(args.out_dir) / f"{args.name}.log", timestamps=False):
        log.info("command: python -m purify.training.classifier " + shlex.join(argv))
        train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
