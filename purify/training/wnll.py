"""Train a WNLL head on a frozen backbone: buffer block, alternating linear / WNLL branches.

The paper's recipe (``../shared/papers/wnll-tvm-defense.txt`` §3.2, Fig. 1c): on top of the
network a buffer block (fully connected + ReLU), then two branches, a linear classifier and WNLL,
trained alternately. WNLL has no usable gradient for training, so its loss reaches the buffer
block by straight-through estimation through the linear branch: the forward value is the WNLL
interpolation, the backward is the linear branch's Jacobian. At test time the linear branch is
dropped and the head is ``WNLL(buffer(features))`` against a template set.

What this script trains (and why): the backbone (ResNet-56 from the data directory) stays
frozen, as the shipped artifact must contain only what the project trained. Its 64-d
penultimate features are computed once per split and cached, so every epoch costs seconds on a
CPU. Phases alternate per epoch (``linear``, ``wnll``, ...). In a WNLL step a mini-batch is
split into templates (``--wnll-templates`` of it, balanced) and queries; the queries are
interpolated transductively, as in the paper, and their cross-entropy reaches the buffer through
the linear branch as if WNLL's scores were the branch's softmax: gradient ``u - onehot(y)`` on its
logits (the linear branch's own weights are not changed by WNLL steps).

Run (writes ``<out>.safetensors``, ``<out>.json`` and ``<out>.log``)::

    python -m purify.training.wnll --data-dir ../shared/data --out purify/weights/resnet56_wnll

The plain head (no buffer, templates on the untouched ResNet-56 features, nothing trained)::

    python -m purify.training.wnll --data-dir ../shared/data --plain --out purify/weights/resnet56_wnll_plain

Caveat on model selection: the upstream ResNet-56 checkpoint was trained on all 50,000 training
images, so the validation split's features are training features for the backbone; validation
accuracy here tracks the learning curve but does not estimate test accuracy.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from purify._artifacts import artifact_log_path
from purify._download import cache_root
from purify._checks import check_choice, check_int
from purify.errors import RangeError
from purify.training._logging import training_log
from purify.wnll import TemplateSet, WNLLError, WNLLHead, make_buffer, wnll_interpolate

__all__ = ["cached_features", "balanced_split", "wnll_straight_through", "WNLLAlternating", "train_buffer",
           "build_head", "main"]

log = logging.getLogger("purify.training.wnll")


def cached_features(model_name: str, split: str, *, data_dir: str | Path | None, flip: bool = False,
                    batch_size: int = 500, cache_dir: Path | None = None, progress: bool = True) -> tuple[Tensor, Tensor]:
    """Penultimate features (N, D) of the pretrained ``model_name`` and labels (N,) of a CIFAR-10 split.

    Computed once and cached as ``<cache_root>/features/<model>_cifar10_<split>[_flip].pt``
    (tensors only, read back with ``weights_only=True``), keyed by the checkpoint's sha256 so a
    cache made from other weights is recomputed, never reused. ``flip`` takes the features of
    the horizontally flipped images (the standard CIFAR augmentation), a second view of every
    image for the same frozen backbone.
    """
    from purify.data import load_dataset
    from purify.models import create_model, get_model_config

    sha = get_model_config(model_name).sha256
    folder = cache_dir or cache_root() / "features"
    path = folder / f"{model_name}_cifar10_{split}{'_flip' if flip else ''}.pt"
    if path.is_file():
        hit = torch.load(path, weights_only=True)
        if hit.get("weights_sha256") == sha:
            return hit["features"], hit["labels"]
    model = create_model(model_name, pretrained=True, data_dir=data_dir).eval().requires_grad_(False)
    ds = load_dataset("cifar10", split, data_dir=data_dir)
    feats, labels = [], []
    with torch.no_grad():
        for start in tqdm(range(0, len(ds), batch_size), desc=f"features {split}{' flip' if flip else ''}",
                          disable=not progress):
            x, y = ds.tensors(slice(start, start + batch_size))
            if flip:
                x = x.flip(3)
            feats.append(model.features(x).float())
            labels.append(y)
    out = {"features": torch.cat(feats), "labels": torch.cat(labels), "weights_sha256": sha}
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(out, tmp)
    tmp.replace(path)           # an interrupted run leaves no half-written cache
    return out["features"], out["labels"]


def balanced_split(labels: Tensor, per_class: int, num_classes: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Indices of ``per_class`` templates per class drawn from a batch, and the rest (the queries).

    A class with fewer than ``per_class`` images in the batch gives all of them as templates.
    Indices are on ``labels``' device; ``g`` may live on the CPU or on that device.
    """
    tmpl = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        tmpl.append(idx[torch.randperm(len(idx), generator=g, device=g.device).to(idx.device)[:per_class]])
    tmpl = torch.cat(tmpl)
    mask = torch.ones(len(labels), dtype=torch.bool, device=labels.device)
    mask[tmpl] = False
    return tmpl, torch.nonzero(mask).flatten()


def wnll_straight_through(h: Tensor, y: Tensor, linear: nn.Linear, *, per_class: int, num_classes: int,
                          generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """One WNLL step of the paper's alternating recipe: (loss, query scores u, query labels).

    The batch's features ``h`` are split into balanced templates and queries; the queries are
    interpolated transductively (one graph with the templates, as in the paper). WNLL has no
    usable gradient, so its scores ``u`` stand in for the linear branch's softmax: the loss's value
    is WNLL's cross-entropy, its gradient the one cross-entropy would have if softmax(z) were u,
    i.e. ``u - onehot(y)`` on the linear logits z of the queries, back through the linear branch
    (whose own weights are held fixed) to ``h``. Differentiating ``-log u_y`` directly would give
    ``-1/u_y``, unbounded when ``u_y -> 0``.

    Shape:
        h: (B, D) with a gradient; y: (B,). u: (Q, C), the queries' labels (Q,).
    """
    t_idx, q_idx = balanced_split(y, per_class, num_classes, generator)
    with torch.no_grad():
        templates = TemplateSet(h[t_idx].detach(), y[t_idx], {"num_classes": num_classes})
        u = wnll_interpolate(h[q_idx].detach(), templates, mode="transductive")
    z = nn.functional.linear(h[q_idx], linear.weight.detach(), linear.bias.detach())
    target = nn.functional.one_hot(y[q_idx], num_classes).to(z.dtype)
    surrogate = ((u - target) * z).sum(1).mean()
    value = nn.functional.nll_loss(torch.log(u.clamp_min(1e-12)), y[q_idx])
    return surrogate + (value - surrogate).detach(), u, y[q_idx]


def _linear_branch(model: nn.Module) -> nn.Linear:
    """The classifier's last linear layer (``linear`` or ``fc`` of the model or of the model it wraps)."""
    inner = getattr(model, "model", model)
    for name in ("linear", "fc"):
        layer = getattr(inner, name, None)
        if isinstance(layer, nn.Linear):
            return layer
    raise WNLLError(f"WNLLAlternating: {type(inner).__name__} has no nn.Linear 'linear' or 'fc' layer on its "
                    "features(); the linear branch is that layer")


class WNLLAlternating:
    """The WNLL/TVM paper's alternating recipe with the whole network trainable (end-to-end WNLL).

    Epochs alternate (``schedule``): a ``linear`` epoch is cross-entropy on the network's own
    linear classifier; a ``wnll`` epoch splits every batch into ``templates_per_class`` templates
    per class and queries and trains on WNLL's loss by straight-through estimation
    (:func:`wnll_straight_through`), reaching every layer below the features. The network itself
    is the buffer: its penultimate features are what the WNLL head interpolates at test time, and
    its linear classifier is the linear branch (the attack surrogate). The trainer calls
    :meth:`start_epoch`; :meth:`validate` gives WNLL's accuracy on the validation images (half of
    them, balanced, as templates; the rest queried, inductively), which selects the epoch.

    Shape:
        x: (B, C, H, W) in [0, 1]; y: (B,); the model has ``features(x) -> (B, D)`` and a linear layer.
    Example:
        >>> from purify.models.resnet_cifar import CifarResNet
        >>> net, recipe = CifarResNet(depth=8), WNLLAlternating(templates_per_class=2)
        >>> recipe.start_epoch(1)          # a "wnll" epoch
        >>> x, y = torch.rand(40, 3, 32, 32), torch.arange(40) % 10
        >>> loss, stats = recipe(net, x, y, generator=torch.Generator().manual_seed(0))
        >>> recipe.phase, loss.requires_grad
        ('wnll', True)
    """

    adversarial = False
    score_key = "wnll"
    score_text = ("WNLL accuracy on the validation images (half of them as templates, balanced by class, the "
                  "other half queried, inductive)")

    def __init__(self, *, templates_per_class: int = 6, schedule: Sequence[str] = ("linear", "wnll"),
                 num_classes: int = 10) -> None:
        fn = "WNLLAlternating"
        self.templates_per_class = check_int(fn, templates_per_class, name="templates_per_class", low=1)
        self.num_classes = check_int(fn, num_classes, name="num_classes", low=2)
        self.schedule = tuple(check_choice(fn, p, name="schedule", choices=("linear", "wnll")) for p in schedule)
        if not self.schedule:
            raise RangeError(f"{fn}: expected a non-empty schedule such as ('linear', 'wnll')")
        self.phase = self.schedule[0]

    @property
    def name(self) -> str:
        return "wnll_alternating"

    def start_epoch(self, epoch: int) -> None:
        self.phase = self.schedule[epoch % len(self.schedule)]

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, *,
                 generator: torch.Generator | None) -> tuple[Tensor, dict[str, float]]:
        if self.phase == "linear":
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            return loss, {"loss": float(loss.detach()), "acc": 100.0 * float((logits.argmax(1) == y).float().mean())}
        g = generator if generator is not None else torch.Generator(device=x.device).manual_seed(0)
        loss, u, yq = wnll_straight_through(model.features(x), y, _linear_branch(model),
                                            per_class=self.templates_per_class, num_classes=self.num_classes,
                                            generator=g)
        return loss, {"loss": float(loss.detach()), "acc": 100.0 * float((u.argmax(1) == yq).float().mean())}

    def validate(self, model: nn.Module, x: Tensor, y: Tensor, *, seed: int) -> dict[str, float]:
        """``{"wnll": accuracy in percent}``: half of ``x`` (balanced) as templates, the rest queried inductively."""
        with torch.no_grad():
            feats = torch.cat([model.features(x[i:i + 500]) for i in range(0, len(x), 500)])
        g = torch.Generator(device=x.device).manual_seed(seed)
        t_idx, q_idx = balanced_split(y, len(y) // (2 * self.num_classes), self.num_classes, g)
        templates = TemplateSet(feats[t_idx], y[t_idx], {"num_classes": self.num_classes})
        u = torch.cat([wnll_interpolate(feats[q_idx[i:i + 500]], templates) for i in range(0, len(q_idx), 500)])
        return {"wnll": 100.0 * int((u.argmax(1) == y[q_idx]).sum()) / max(1, len(q_idx))}

    def validation_score(self, row: dict[str, Any]) -> float:
        return row["val_wnll"]

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "templates_per_class": self.templates_per_class, "schedule": list(self.schedule)}


def wnll_accuracy(buffer: nn.Module | None, train_x: Tensor, train_y: Tensor, query_x: Tensor, query_y: Tensor, *,
                  per_class: int, seed: int, mode: str = "inductive", batch: int = 500) -> float:
    """Accuracy of WNLL on ``query_x`` with ``per_class`` templates per class drawn from the training features."""
    g = torch.Generator().manual_seed(seed)
    idx, _ = balanced_split(train_y, per_class, int(train_y.max()) + 1, g)
    with torch.no_grad():
        emb = (lambda z: z) if buffer is None else buffer
        ts = TemplateSet(emb(train_x[idx]), train_y[idx])
        correct = 0
        for start in range(0, len(query_x), batch):
            u = wnll_interpolate(emb(query_x[start:start + batch]), ts, mode=mode)
            correct += int((u.argmax(1) == query_y[start:start + batch]).sum())
    return correct / len(query_x)


def train_buffer(train_x: Tensor, train_y: Tensor, val_x: Tensor, val_y: Tensor, *, dim: int, epochs: int,
                 batch_size: int, wnll_batch: int, wnll_templates: int, lr: float, seed: int,
                 schedule: Sequence[str] = ("linear", "wnll"),
                 progress: bool = True) -> tuple[nn.Module, nn.Linear, list[dict]]:
    """Train buffer block + linear branch on fixed features, alternating phases per epoch.

    Returns the buffer block, the linear branch and the per-epoch history (phase, loss,
    validation accuracies).
    """
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    num_classes = int(train_y.max()) + 1
    buffer = make_buffer(train_x.shape[1], dim)
    linear = nn.Linear(dim, num_classes)
    opt = torch.optim.SGD([*buffer.parameters(), *linear.parameters()], lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    history = []
    for epoch in range(epochs):
        phase = schedule[epoch % len(schedule)]
        t0 = time.perf_counter()
        perm = torch.randperm(len(train_x), generator=g)
        losses = []
        step = batch_size if phase == "linear" else wnll_batch
        for start in tqdm(range(0, len(perm) - step + 1, step), desc=f"epoch {epoch + 1}/{epochs} {phase}",
                          disable=not progress, leave=False):
            idx = perm[start:start + step]
            x, y = train_x[idx], train_y[idx]
            h = buffer(x)
            logits = linear(h)
            if phase == "linear":
                loss = nn.functional.cross_entropy(logits, y)
            else:
                loss = wnll_straight_through(h, y, linear, per_class=wnll_templates // num_classes,
                                             num_classes=num_classes, generator=g)[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        sched.step()
        with torch.no_grad():
            val_linear = float((linear(buffer(val_x)).argmax(1) == val_y).float().mean())
        val_wnll = wnll_accuracy(buffer, train_x, train_y, val_x, val_y, per_class=50, seed=seed)
        row = {"epoch": epoch + 1, "phase": phase, "loss": float(np.mean(losses)), "val_linear": val_linear,
               "val_wnll_500": val_wnll, "wall_s": round(time.perf_counter() - t0, 2)}
        history.append(row)
        log.info("epoch %d/%d %-6s loss %.4f  val linear %.4f  val wnll(500) %.4f  %.1fs", row["epoch"], epochs,
                 phase, row["loss"], val_linear, val_wnll, row["wall_s"])
    return buffer, linear, history


def build_head(buffer: nn.Module | None, train_x: Tensor, train_y: Tensor, *, per_class: int, seed: int,
               classes: Sequence[str], meta: dict, surrogate: nn.Linear | None = None) -> WNLLHead:
    """The shipped head: ``per_class`` templates per class from the training split, embedded by ``buffer``."""
    g = torch.Generator().manual_seed(seed)
    idx, _ = balanced_split(train_y, per_class, len(classes), g)
    idx = torch.sort(idx).values
    with torch.no_grad():
        feats = train_x[idx] if buffer is None else buffer(train_x[idx])
    ts = TemplateSet(feats, train_y[idx], {"num_classes": len(classes), "class_names": list(classes),
                                           "source": "cifar10 train split (first 45,000 training images)",
                                           "indices": idx.tolist(), "per_class": per_class, "seed": seed})
    return WNLLHead(ts, buffer=buffer, surrogate=surrogate, meta=meta)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m purify.training.wnll", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None, help="folder with cifar10_*.npz and weights/ (default: $PURIFY_DATA_DIR)")
    p.add_argument("--model", default="resnet56", help="backbone registry name (frozen)")
    p.add_argument("--out", required=True, help="artifact path without extension, e.g. purify/weights/resnet56_wnll")
    p.add_argument("--plain", action="store_true", help="no buffer block, nothing trained: templates on the backbone's features")
    p.add_argument("--dim", type=int, default=64, help="buffer block width")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128, help="linear-phase mini-batch")
    p.add_argument("--wnll-batch", type=int, default=2000, help="WNLL-phase mini-batch (templates + queries)")
    p.add_argument("--wnll-templates", type=int, default=500, help="templates within a WNLL mini-batch")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--templates-per-class", type=int, default=50, help="templates in the shipped set, per class")
    p.add_argument("--no-flip", action="store_true", help="do not add the flipped training images' features")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with training_log(log, artifact_log_path(out)):
        return _run(args, argv, out)


def _run(args: argparse.Namespace, argv: Sequence[str] | None, out: Path) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    from purify.data import load_dataset, resolve_data_dir

    data_dir = resolve_data_dir(args.data_dir)
    command = "python -m purify.training.wnll " + " ".join(argv if argv is not None else sys.argv[1:])
    log.info("command: %s", command)
    log.info("machine: %s, torch %s, %d threads", platform.platform(), torch.__version__, torch.get_num_threads())
    t0 = time.perf_counter()
    feats = {s: cached_features(args.model, s, data_dir=data_dir, progress=not args.no_progress)
             for s in ("train", "val")}
    train_x, train_y = feats["train"]
    val_x, val_y = feats["val"]
    classes = load_dataset("cifar10", "val", data_dir=data_dir).classes
    meta = {"backbone": args.model, "backbone_layer": "features (global-average-pooled, 64-d)", "dataset": "cifar10",
            "training": {"command": command, "plain": args.plain}}
    if args.plain:
        buffer, linear, history = None, None, []
    else:
        fx, fy = train_x, train_y
        if not args.no_flip:
            flip_x, flip_y = cached_features(args.model, "train", data_dir=data_dir, flip=True,
                                             progress=not args.no_progress)
            fx, fy = torch.cat([train_x, flip_x]), torch.cat([train_y, flip_y])
        buffer, linear, history = train_buffer(fx, fy, val_x, val_y, dim=args.dim, epochs=args.epochs,
                                       batch_size=args.batch_size, wnll_batch=args.wnll_batch,
                                       wnll_templates=args.wnll_templates, lr=args.lr, seed=args.seed,
                                       progress=not args.no_progress)
        buffer.eval().requires_grad_(False)
        linear.eval().requires_grad_(False)
        meta["training"].update({k: getattr(args, k) for k in ("dim", "epochs", "batch_size", "wnll_batch",
                                                              "wnll_templates", "lr", "seed")})
        meta["training"]["flip"] = not args.no_flip
        meta["training"]["history"] = history
    head = build_head(buffer, train_x, train_y, per_class=args.templates_per_class, seed=args.seed,
                      classes=classes, meta=meta, surrogate=linear)
    val_acc = wnll_accuracy(buffer, train_x, train_y, val_x, val_y, per_class=args.templates_per_class, seed=args.seed)
    head.meta["training"]["val_wnll_accuracy"] = val_acc
    head.meta["training"]["wall_s"] = round(time.perf_counter() - t0, 1)
    path = head.save(out)
    log.info("validation WNLL accuracy (%d templates, inductive): %.4f", len(head.template_labels), val_acc)
    log.info("wrote %s (%s) in %.0f s", path, json.loads(path.read_text())["sha256"][:12], time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
