"""The one training loop every recipe runs in: :func:`fit`.

A recipe (:mod:`purify.training.recipes`) says what one step minimizes; this loop owns the rest,
so every shipped classifier is trained, checkpointed and selected the same way:

* **data**: the caller passes the ``train`` split only (the validation split, the last 5,000
  training images, never enters it); the order of epoch ``e`` is a permutation drawn from a
  generator seeded with ``(seed, e)``, so it does not depend on where a run was interrupted;
* **augmentation** (``"crop_flip"``: random 32x32 crops of the image zero-padded by 4 pixels, and
  horizontal flips — the usual CIFAR-10 recipe; ``"none"`` for MNIST), drawn from one explicit
  CPU generator whose state travels in the checkpoint; the recipe's own randomness (random
  starts) comes from a second one on the training device;
* **optimizer**: SGD with momentum and weight decay; the learning rate is a pure function of the
  global step (:func:`lr_at`: ``cyclic`` one-cycle, ``piecewise`` /10 at 50 % and 75 %, or
  ``cosine``), so the schedule's state is the step counter saved in the checkpoint;
* **validation** after every epoch on a fixed subset of the validation split (its first
  ``val_count`` images, eval mode): clean accuracy and, for adversarial recipes, accuracy under
  PGD-``val_iters`` at the training eps from a seeded random start — the learning curve. A
  recipe with a ``validate(model, x, y, *, seed)`` method adds its own figures (accuracy behind
  TVM for :class:`~purify.training.recipes.TVMAugment`, WNLL accuracy for
  :class:`~purify.training.recipes.WNLLAlternating`; same seed every epoch, ``seed + 2``) as
  ``val_<name>`` entries, and one with ``validation_score(row)`` says what epochs are selected on;
* **phases**: a recipe with ``start_epoch(epoch)`` is told when each epoch begins (also after a
  resume), e.g. to alternate its loss per epoch; one with ``after_step(model)`` is called after
  every optimizer step (e.g. Parseval training's retraction of the weights towards orthonormality);
* **catastrophic overfitting** (Wong et al. 2020): when the PGD validation accuracy falls more
  than ``co_threshold`` percentage points below its best (:func:`catastrophic_overfitting`),
  the run says so in a warning, stops, and ends with the best epoch's weights. Adversarial
  recipes always end with the best-PGD-validation epoch's weights (early stopping, as Rice et al.
  2020 recommend); ``standard`` with the best clean-validation epoch's;
* **checkpoints** (model, optimizer, generators, step, epoch, position in the epoch, running
  sums, learning curve, best weights) written atomically (temp file + rename) every
  ``checkpoint_every_s`` seconds and at each epoch end. ``resume=True`` continues from one along
  the same path bit for bit (same thread count and device: kernels may round differently
  elsewhere).

Example:
    >>> from purify.training.recipes import Standard
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    >>> x, y = torch.rand(16, 3, 4, 4), torch.randint(0, 2, (16,))
    >>> cfg = TrainConfig(epochs=2, batch_size=8, lr=0.1, augment="none", val_count=8)
    >>> result = fit(net, Standard(), (x, y), (x[:8], y[:8]), config=cfg, progress=False)
    >>> len(result.history), result.best_epoch in (1, 2)
    (2, True)
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from purify._checks import check_choice, check_float, check_int
from purify.attacks import pgd
from purify.errors import PurifyError
from purify.training.recipes import Recipe

__all__ = ["SCHEDULES", "AUGMENTATIONS", "TrainConfig", "FitResult", "lr_at", "crop_flip", "evaluate",
           "catastrophic_overfitting", "recipe_validation", "fit"]

log = logging.getLogger("purify.training.trainer")

SCHEDULES = ("cyclic", "piecewise", "cosine")
AUGMENTATIONS = ("crop_flip", "none")


def lr_at(step: int, total: int, *, lr: float, schedule: str, peak: float = 0.5) -> float:
    """Learning rate of optimizer step ``step`` (0-based) of ``total``.

    Evaluated at the step's midpoint ``t = (step + 0.5) / total`` so no step gets exactly 0:
    ``cyclic`` rises linearly from 0 to ``lr`` at ``t = peak`` and falls back to 0 at ``t = 1``
    (Wong et al.'s one cycle; their CIFAR-10 peak is halfway, MNIST's at 2/5); ``piecewise`` is
    ``lr`` until 50 %, ``lr / 10`` until 75 %, then ``lr / 100``; ``cosine`` is ``lr·(1 + cos πt) / 2``.

    Example:
        >>> [round(lr_at(s, 4, lr=1.0, schedule="cyclic"), 3) for s in range(4)]
        [0.25, 0.75, 0.75, 0.25]
    """
    t = (step + 0.5) / total
    if schedule == "cyclic":
        return lr * (t / peak if t <= peak else max(0.0, (1.0 - t) / (1.0 - peak)))
    if schedule == "piecewise":
        return lr if t < 0.5 else lr / 10 if t < 0.75 else lr / 100
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * t))
    check_choice("lr_at", schedule, name="schedule", choices=SCHEDULES)
    raise AssertionError("unreachable")


def crop_flip(x: Tensor, generator: torch.Generator, *, pad: int = 4) -> Tensor:
    """Per image: a random crop of the image zero-padded by ``pad`` pixels, then a flip with probability 1/2.

    Zero padding, as ``torchvision.transforms.RandomCrop(32, padding=4)`` in the papers' code.

    Shape:
        x: (B, C, H, W) on the CPU (the generator's device); output: same shape.
    Example:
        >>> crop_flip(torch.rand(3, 3, 8, 6), torch.Generator().manual_seed(0)).shape
        torch.Size([3, 3, 8, 6])
    """
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]                  # (B, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :]                  # (B, 1, W)
    out = padded[torch.arange(b)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)   # (B, H, W, C) -> NCHW
    flip = torch.rand(b, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out).contiguous()


@dataclass(frozen=True)
class TrainConfig:
    """Everything :func:`fit` needs besides the model, the recipe and the data.

    Attributes:
        epochs, batch_size: length of the run; the last batch of an epoch may be smaller.
        lr, momentum, weight_decay, nesterov: SGD (``lr`` is the schedule's peak).
        schedule, peak: see :func:`lr_at`.
        augment: ``"crop_flip"`` or ``"none"``.
        seed: data order, augmentation, random starts and the validation attack's start.
        val_count: validation images evaluated after each epoch (the first ones of the split).
        val_eps, val_step, val_iters: the validation PGD (L∞, random start); ``val_eps = 0``: clean only.
        co_threshold: percentage points below the best PGD validation accuracy that count as
            catastrophic overfitting (stop early).
        checkpoint_every_s: seconds between mid-epoch checkpoints (one is also written at each epoch end).
    """

    epochs: int
    batch_size: int = 128
    lr: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "cyclic"
    peak: float = 0.5
    augment: str = "crop_flip"
    seed: int = 0
    val_count: int = 1000
    val_eps: float = 0.0
    val_step: float = 0.0
    val_iters: int = 10
    co_threshold: float = 20.0
    checkpoint_every_s: float = 300.0

    def __post_init__(self) -> None:
        fn = "TrainConfig"
        for name in ("epochs", "batch_size", "val_count"):
            check_int(fn, getattr(self, name), name=name, low=1)
        check_int(fn, self.val_iters, name="val_iters", low=0)
        check_int(fn, self.seed, name="seed", low=0)
        for name in ("lr", "momentum", "weight_decay", "val_eps", "val_step", "co_threshold", "checkpoint_every_s"):
            check_float(fn, getattr(self, name), name=name, low=0.0)
        check_float(fn, self.peak, name="peak", low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
        check_choice(fn, self.schedule, name="schedule", choices=SCHEDULES)
        check_choice(fn, self.augment, name="augment", choices=AUGMENTATIONS)


@dataclass
class FitResult:
    """What :func:`fit` returns; the model itself ends with the selected epoch's weights.

    Attributes:
        history: one row per epoch (lr, train loss / accuracy, val clean / PGD accuracy, seconds).
        best_epoch: the epoch whose weights the model ends with (1-based), and ``best`` its row.
        stopped: why the run ended before ``epochs`` (``"catastrophic overfitting at epoch k"``), or None.
        interrupted: True when ``stop_after_steps`` cut the run (the checkpoint holds the rest).
        train_seconds: time in training steps, summed over resumed sessions.
        images_per_s: training throughput over the whole run.
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best: dict[str, Any] | None = None
    stopped: str | None = None
    interrupted: bool = False
    train_seconds: float = 0.0
    images_per_s: float = 0.0


def _as_images(x: Tensor) -> Tensor:
    """uint8 pixels (how the data is kept in memory: 4x smaller) -> float in [0, 1]; floats pass through."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def evaluate(model: nn.Module, x: Tensor, y: Tensor, *, eps: float = 0.0, step: float = 0.0,
             iters: Sequence[int] = (), batch_size: int = 500, seed: int = 0,
             device: torch.device | str = "cpu", progress: bool = False, desc: str = "eval") -> dict[str, float]:
    """Accuracy in percent, clean and under L∞ PGD-k (random start) for each ``k`` in ``iters``.

    The model is put in eval mode. Each attack's random start comes from a generator seeded
    with ``seed`` (the same images get the same start in every call).

    Shape:
        x: (N, C, H, W) float in [0, 1] or uint8; y: (N,) int64. Output: ``{"clean": .., "pgd<k>": ..}``.
    Example:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
        >>> sorted(evaluate(net, torch.rand(4, 3, 2, 2), torch.zeros(4, dtype=torch.long), eps=0.1,
        ...                 step=0.05, iters=(3,)))
        ['clean', 'pgd3']
    """
    device = torch.device(device)
    model.eval()
    correct = {"clean": 0, **{f"pgd{k}": 0 for k in iters}}
    gens = {k: torch.Generator(device=device).manual_seed(seed) for k in iters}
    for i in tqdm(range(0, len(x), batch_size), desc=desc, disable=not progress, leave=False, mininterval=10):
        xb, yb = _as_images(x[i:i + batch_size]).to(device), y[i:i + batch_size].to(device)
        with torch.no_grad():
            correct["clean"] += int((model(xb).argmax(1) == yb).sum())
        for k in iters:
            adv = pgd(model, xb, yb, eps=eps, step=step, iters=k, random_start=True, generator=gens[k])
            with torch.no_grad():
                correct[f"pgd{k}"] += int((model(adv).argmax(1) == yb).sum())
    return {k: 100.0 * v / max(1, len(x)) for k, v in correct.items()}


def recipe_validation(model: nn.Module, recipe: Recipe, x: Tensor, y: Tensor, *, seed: int,
                      device: torch.device | str = "cpu") -> dict[str, float]:
    """The recipe's own validation figures (``recipe.validate``), in percent; ``{}`` for recipes without one.

    Shape:
        x: (N, C, H, W) uint8 or float in [0, 1]; y: (N,).
    """
    if not hasattr(recipe, "validate"):
        return {}
    model.eval()
    with torch.no_grad():
        return recipe.validate(model, _as_images(x).to(device), y.to(device), seed=seed)


def catastrophic_overfitting(curve: Sequence[float], threshold: float) -> int | None:
    """Index of the first value more than ``threshold`` below the best value before it, or None.

    ``curve`` is the PGD validation accuracy per epoch; a collapse of robust accuracy while the
    FGSM training accuracy jumps is Wong et al.'s catastrophic overfitting.

    Example:
        >>> catastrophic_overfitting([20.0, 35.0, 38.0, 36.0, 4.0, 0.0], threshold=20.0)
        4
        >>> catastrophic_overfitting([20.0, 35.0, 30.0], threshold=20.0) is None
        True
    """
    best = -math.inf
    for i, v in enumerate(curve):
        if best - v > threshold:
            return i
        best = max(best, v)
    return None


def _save_atomic(payload: dict[str, Any], path: Path) -> None:
    """torch.save to a temp file in the same folder, then rename: a crash never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def fit(model: nn.Module, recipe: Recipe, train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor], *,
        config: TrainConfig, checkpoint: str | os.PathLike | None = None, resume: bool = False,
        device: torch.device | str = "cpu", progress: bool = True,
        stop_after_steps: int | None = None) -> FitResult:
    """Train ``model`` in place with ``recipe``; see the module docstring for the loop.

    Args:
        model: takes [0, 1] images (normalization inside), on ``device``.
        recipe: ``recipe(model, x, y, *, generator) -> (loss, stats)``.
        train, val: ``(x, y)`` of the training and validation splits (x uint8 or float in [0, 1],
            NCHW, on the CPU). Only the first ``config.val_count`` validation images are used.
        checkpoint: file for the checkpoints (None: none are written).
        resume: continue from ``checkpoint`` when it exists (its settings must match).
        stop_after_steps: end after this many optimizer steps in total, with a checkpoint, as an
            interruption would (for tests of resumption).

    Returns:
        :class:`FitResult`; the model holds the selected epoch's weights (unless interrupted).
    Raises:
        PurifyError: the checkpoint was written with other settings.
    """
    device = torch.device(device)
    cfg = config
    (train_x, train_y), (val_x, val_y) = train, (val[0][:cfg.val_count], val[1][:cfg.val_count])
    n, bs = len(train_x), cfg.batch_size
    per_epoch = math.ceil(n / bs)
    total = cfg.epochs * per_epoch
    settings = {"config": asdict(cfg), "recipe": recipe.config(), "train_n": n, "val_n": len(val_x),
                "model": type(getattr(model, "model", model)).__name__}
    select = "pgd" if recipe.adversarial and cfg.val_eps > 0 else "clean"
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          nesterov=cfg.nesterov)
    data_gen = torch.Generator().manual_seed(cfg.seed)
    recipe_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    state: dict[str, Any] = {"epoch": 0, "batch": 0, "step": 0, "sums": {}, "history": [], "best": None,
                             "stopped": None, "train_seconds": 0.0}
    path = Path(checkpoint) if checkpoint is not None else None
    if resume and path is not None and path.is_file():
        ck = torch.load(path, map_location=device, weights_only=True)
        if ck["settings"] != settings:
            changed = sorted(k for k in set(settings) | set(ck["settings"]) if ck["settings"].get(k) != settings.get(k))
            raise PurifyError(f"fit: checkpoint {path} was written with other settings ({', '.join(changed)}); "
                              "resume with the same flags, or start afresh without --resume")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        data_gen.set_state(ck["data_rng"].cpu())           # generator states are CPU byte tensors
        recipe_gen.set_state(ck["recipe_rng"].cpu())
        state = {k: ck[k] for k in state}
        if ck.get("threads") != torch.get_num_threads():
            log.warning("checkpoint written with %s threads, resuming with %d: the path may differ in the last bits",
                        ck.get("threads"), torch.get_num_threads())
        log.info("resumed from %s at epoch %d, batch %d/%d (step %d/%d)", path, state["epoch"] + 1,
                 state["batch"], per_epoch, state["step"], total)
    elif resume:
        log.warning("no checkpoint at %s; starting afresh", path)

    def save() -> None:
        if path is not None:
            _save_atomic({**state, "settings": settings, "model": model.state_dict(), "optimizer": opt.state_dict(),
                          "data_rng": data_gen.get_state(), "recipe_rng": recipe_gen.get_state(),
                          "threads": torch.get_num_threads(), "torch": str(torch.__version__)}, path)

    last_save = time.monotonic()
    result = FitResult()
    while state["epoch"] < cfg.epochs and state["stopped"] is None:
        epoch = state["epoch"]
        if hasattr(recipe, "start_epoch"):
            recipe.start_epoch(epoch)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        model.train()
        sums = state["sums"]
        bar = tqdm(range(state["batch"], per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", initial=state["batch"],
                   total=per_epoch, disable=not progress, leave=False, mininterval=10)
        for i in bar:
            t0 = time.perf_counter()
            idx = order[i * bs:(i + 1) * bs]
            xb = _as_images(train_x[idx])
            if cfg.augment == "crop_flip":
                xb = crop_flip(xb, data_gen)
            xb, yb = xb.to(device), train_y[idx].to(device)
            lr = lr_at(state["step"], total, lr=cfg.lr, schedule=cfg.schedule, peak=cfg.peak)
            for group in opt.param_groups:
                group["lr"] = lr
            loss, stats = recipe(model, xb, yb, generator=recipe_gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if hasattr(recipe, "after_step"):
                recipe.after_step(model)
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v * len(idx)
            sums["n"] = sums.get("n", 0) + len(idx)
            sums["seconds"] = sums.get("seconds", 0.0) + time.perf_counter() - t0
            state["step"] += 1
            state["batch"] = i + 1
            bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{stats['acc']:.1f}", lr=f"{lr:.4f}", refresh=False)
            if stop_after_steps is not None and state["step"] >= stop_after_steps:
                save()
                result.interrupted = True
                return result
            if path is not None and time.monotonic() - last_save >= cfg.checkpoint_every_s:
                save()
                last_save = time.monotonic()
        bar.close()
        state["train_seconds"] += sums.get("seconds", 0.0)
        metrics = evaluate(model, val_x, val_y, eps=cfg.val_eps, step=cfg.val_step,
                           iters=(cfg.val_iters,) if select == "pgd" and cfg.val_iters else (), seed=cfg.seed,
                           device=device)
        extra = recipe_validation(model, recipe, val_x, val_y, seed=cfg.seed + 2, device=device)
        lr = lr_at(state["step"] - 1, total, lr=cfg.lr, schedule=cfg.schedule, peak=cfg.peak)
        row = {"epoch": epoch + 1, "lr_end": lr, "train_loss": sums["loss"] / sums["n"],
               "train_acc": sums["acc"] / sums["n"], "val_clean": metrics["clean"],
               "val_pgd": metrics.get(f"pgd{cfg.val_iters}"), "train_s": round(sums.get("seconds", 0.0), 1),
               "images_per_s": round(sums["n"] / max(sums.get("seconds", 0.0), 1e-9), 1)}
        row.update({f"val_{k}": v for k, v in extra.items()})
        state["history"].append(row)
        score = (row["val_pgd"] if select == "pgd" else recipe.validation_score(row)
                 if hasattr(recipe, "validation_score") else row["val_clean"])
        if state["best"] is None or score > state["best"]["score"]:
            state["best"] = {"epoch": epoch + 1, "score": score, "state": copy.deepcopy(model.state_dict())}
        log.info("epoch %d/%d: lr %.4f, train loss %.4f acc %.2f%% (%s inputs), val clean %.2f%%%s, "
                 "%.0f img/s, best epoch %d", epoch + 1, cfg.epochs, lr, row["train_loss"], row["train_acc"],
                 recipe.name, row["val_clean"],
                 f" pgd{cfg.val_iters} {row['val_pgd']:.2f}%" if row["val_pgd"] is not None else
                 "".join(f", {k} {v:.2f}%" for k, v in extra.items()),
                 row["images_per_s"], state["best"]["epoch"])
        if select == "pgd":
            hit = catastrophic_overfitting([r["val_pgd"] for r in state["history"]], cfg.co_threshold)
            if hit is not None:
                state["stopped"] = f"catastrophic overfitting at epoch {hit + 1}"
                log.warning("!!! CATASTROPHIC OVERFITTING at epoch %d: PGD validation accuracy %.2f%% is more than "
                            "%.0f points below its best (%.2f%%, epoch %d) while the %s training accuracy is "
                            "%.2f%%; stopping and keeping epoch %d's weights", hit + 1, row["val_pgd"],
                            cfg.co_threshold, state["best"]["score"], state["best"]["epoch"], recipe.name,
                            row["train_acc"], state["best"]["epoch"])
        state.update(epoch=epoch + 1, batch=0, sums={})
        save()
        last_save = time.monotonic()
    best = state["best"]
    model.load_state_dict(best["state"])
    images = sum(r["images_per_s"] * r["train_s"] for r in state["history"])
    return FitResult(history=state["history"], best_epoch=best["epoch"],
                     best=next(r for r in state["history"] if r["epoch"] == best["epoch"]),
                     stopped=state["stopped"], train_seconds=state["train_seconds"],
                     images_per_s=images / max(state["train_seconds"], 1e-9))
