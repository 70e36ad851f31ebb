"""Clean CIFAR-10 test accuracy: ResNet-56 softmax vs. WNLL heads, both modes, several template counts.

For each head (``resnet56_wnll_plain``: templates on the untouched penultimate features;
``resnet56_wnll``: the trained buffer block) it labels all 10,000 test images

* inductively (each image against the templates alone; batch-consistent), and
* transductively in batches of 500 (the paper's setting: a batch shares the graph),

with the shipped 500 templates (50 per class) and with 5,000 and 45,000 templates drawn from the
same training split (45,000 = all of it), to measure whether more templates help. Features come
from the frozen backbone once (the training script's cache), so the whole table takes minutes.

    python -m benchmarks.wnll_accuracy --data-dir ../shared/data   # -> benchmarks/results/wnll_accuracy.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import torch

from .harness.report import machine
from purify.data import resolve_data_dir
from purify.models import create_model
from purify.training.wnll import balanced_split, cached_features
from purify.wnll import TemplateSet, WNLLHead, wnll_interpolate

RESULTS = Path(__file__).resolve().parent / "results" / "wnll_accuracy.md"
HEADS = {"plain (no buffer, nothing trained)": "resnet56_wnll_plain",
         "trained buffer block (frozen backbone)": "resnet56_wnll"}


def _accuracy(head: WNLLHead, ts: TemplateSet, feats: torch.Tensor, labels: torch.Tensor, mode: str,
              batch: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(feats), batch):
            u = wnll_interpolate(head.embed(feats[start:start + batch]), ts, k=head.k, k_sigma=head.k_sigma, mode=mode)
            correct += int((u.argmax(1) == labels[start:start + batch]).sum())
    return 100.0 * correct / len(feats), time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.wnll_accuracy", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--template-counts", type=int, nargs="+", default=[500, 5000, 45000])
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = resolve_data_dir(args.data_dir)
    model = create_model("resnet56", pretrained=True, data_dir=data_dir).eval().requires_grad_(False)
    train_x, train_y = cached_features("resnet56", "train", data_dir=data_dir)
    test_x, test_y = cached_features("resnet56", "test", data_dir=data_dir)
    with torch.no_grad():
        softmax_acc = 100.0 * float((model.model.linear(test_x).argmax(1) == test_y).float().mean())
    rows = [("ResNet-56 softmax (the checkpoint's own linear layer)", "–", "–", f"{softmax_acc:.2f}", "")]
    for label, name in HEADS.items():
        head = WNLLHead.load(name)
        for count in args.template_counts:
            if count == len(head.template_labels):
                ts, source = head.templates, "shipped"
            else:
                idx, _ = balanced_split(train_y, count // 10, 10, torch.Generator().manual_seed(0))
                with torch.no_grad():
                    ts = TemplateSet(head.embed(train_x[idx]), train_y[idx])
                source = "drawn from the train split, seed 0"
            for mode, batch in (("inductive", 1000), ("transductive", 500)):
                acc, wall = _accuracy(head, ts, test_x, test_y, mode, batch)
                print(f"{label} {count} {mode}: {acc:.2f}% ({wall:.1f} s)", file=sys.stderr)
                rows.append((f"WNLL, {label}", f"{count:,} ({source})", f"{mode}" + (", batch 500" if batch == 500 and
                             mode == "transductive" else ""), f"{acc:.2f}", f"{wall:.1f}"))
    command = "python -m benchmarks.wnll_accuracy " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# Clean CIFAR-10 test accuracy: softmax vs. WNLL heads on ResNet-56", "",
        f"- Command: `{command}`",
        f"- Machine: {machine()}",
        f"- Date: {dt.date.today().isoformat()}",
        "- All 10,000 test images. Backbone: the pretrained ResNet-56 (frozen), its 64-d penultimate features. "
        "Templates come from the train split (the first 45,000 training images); k = 15, σ = 8th neighbour.",
        "- Transductive = the paper's mode: a batch of 500 test images shares one graph with the templates. "
        "Inductive = each image against the templates alone (batch-consistent; the serving default).",
        "- Wall time = the WNLL labelling of all 10,000 feature vectors (features precomputed).", "",
        "| classifier | templates | mode | accuracy % | wall s |", "|---|---|---|---:|---:|",
        *[f"| {' | '.join(r)} |" for r in rows], "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
