"""Train the generative cleaning network (GCLN) against a detector, on cached attacked images.

The recipe of ``../shared/papers/gcln-generative-cleaning.txt`` §3.3, with our choices stated:

* **Attacked images** come from the library's attacks on the target classifier (ResNet-56 from
  the data directory): FGSM and PGD (``--pgd-iters`` steps of eps/4 from a random start) at
  every eps of ``--eps`` (in 1/255, up to 16). Image i of a split gets attack setting
  ``i mod K``. They are made once and cached under ``<cache_root>/gcln_attacks/<key>/`` in
  chunks (an interrupted run resumes at the first missing chunk); the key is a sha256 of the
  classifier's weights, the attack settings, the seed and the images themselves, so nothing
  made for other weights, settings or data is ever reused. They are stored as uint8: every eps
  is a multiple of 1/255, so rounding to the pixel grid keeps ``‖x* − x‖∞ ≤ eps`` (and is what
  saving attacked images as PNG does).
* **Loss of G**: ``λ·L_P + (1 − λ)·L_A``, λ = 0.5. ``L_P`` is the mean squared distance between
  features of the frozen classifier at ``--perceptual-layer`` (default ``model.layer3``: ResNet-56's
  last residual stage, 64×8×8, before pooling) of the clean image and of G's output, averaged
  over G(x*) and G(x) — clean and attacked images both pass through G. The paper uses VGG-19
  ImageNet features, which cannot be downloaded here; ``--perceptual-layer`` (``model.layer1``,
  ``model.layer2``, ``logits``, ...) measures whether the choice matters. ``L_A`` is the
  cross-entropy of D(G(x*)) against "clean" (Eq. 5).
* **D** maximizes ``log D(x) + log(1 − D(G(x*)))`` (Eq. 6), after ``--d-warmup`` steps on clean
  vs. raw attacked images ("the initial phase"). With ``--feedback`` (the paper's option, off by
  default) G's outputs that the classifier labels correctly join a pool of clean samples that
  D also sees as real.
* The quantization layer runs with a straight-through gradient during training, so the stem in
  front of it learns ("included into the training process", §3.2).
* **Model selection** on ``--val-count`` images of the validation split (the last 5,000 training
  images): the epoch with the best mean of the classifier's accuracy on G(x*) and on G(x). The
  upstream ResNet-56 was trained on all 50,000 training images, so these are training images for
  the classifier: the figures track learning, they do not estimate test accuracy.

Run (writes ``<out>.safetensors``, ``<out>.json`` and ``<out>.log``; resumable with ``--resume``). The
shipped ``purify/weights/gcln_cifar10`` (q = 10) came from this command, 41 minutes on 2 CPU cores
(13 of them making the attacked images), 15,000 of the 45,000 training images for the CPU budget. On a
GPU, drop ``--train-count`` and add ``--device cuda`` with more epochs (not run here: no GPU was lent)::

    python -m purify.training.gcln --data-dir ../shared/data --out purify/weights/gcln_cifar10 --train-count 15000 --threads 2

and ``gcln_cifar10_q5`` (q = 5) was fine-tuned from it for one epoch::

    python -m purify.training.gcln --data-dir ../shared/data --out purify/weights/gcln_cifar10_q5 --q 5 --init-from gcln_cifar10 --epochs 1 --train-count 15000 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from purify._artifacts import artifact_log_path
from purify._checks import check_choice
from purify._download import cache_root
from purify.attacks import fgsm, pgd
from purify.dct import dct_quantize
from purify.errors import PurifyError
from purify.gcln import AttackDetector, CleaningGenerator, load_generator, save_generator
from purify.training._logging import training_log

__all__ = ["AttackSetting", "default_settings", "weights_sha256", "attack_cache_key", "cached_attacks",
           "FeatureTap", "Split", "accuracy", "train_gcln", "main"]

log = logging.getLogger("purify.training.gcln")

_CACHE_VERSION = 1


@dataclass(frozen=True)
class AttackSetting:
    """One way of attacking a training image: ``fgsm`` or ``pgd`` at ``eps``/255."""

    attack: str
    eps: int
    iters: int = 1
    step_ratio: float = 0.25
    random_start: bool = False

    def run(self, model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
        eps = self.eps / 255
        if self.attack == "fgsm":
            return fgsm(model, x, y, eps=eps)
        return pgd(model, x, y, eps=eps, step=self.step_ratio * eps, iters=self.iters,
                   random_start=self.random_start, generator=generator)


def default_settings(eps: Sequence[int] = (2, 4, 8, 16), pgd_iters: int = 10) -> tuple[AttackSetting, ...]:
    """FGSM and PGD (``pgd_iters`` steps of eps/4, random start) at every eps (in 1/255)."""
    return (*(AttackSetting("fgsm", e) for e in eps),
            *(AttackSetting("pgd", e, pgd_iters, 0.25, True) for e in eps))


def weights_sha256(model: nn.Module) -> str:
    """sha256 of a model's weights (names and bytes of its state dict, in name order).

    Hashes what is loaded, not the registered checkpoint name: a ``create_model`` built without
    ``pretrained=True`` carries the checkpoint's config but random weights.
    """
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _tensor_sha256(*tensors: Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(str((tuple(t.shape), t.dtype)).encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def attack_cache_key(classifier_sha256: str, settings: Sequence[AttackSetting], data_sha256: str, seed: int) -> str:
    """Folder name of a cache of attacked images: a sha256 of everything they depend on."""
    blob = json.dumps({"version": _CACHE_VERSION, "classifier_sha256": classifier_sha256, "data_sha256": data_sha256,
                       "attacks": [asdict(s) for s in settings], "seed": seed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def cached_attacks(classifier: nn.Module, images: Tensor, labels: Tensor, *, settings: Sequence[AttackSetting],
                   seed: int = 0, cache_dir: Path | None = None, chunk_size: int = 1000, batch_size: int = 250,
                   description: str = "", progress: bool = True) -> Tensor:
    """Attacked versions of ``images`` on ``classifier``, made once and cached in resumable chunks.

    Image i gets ``settings[i % len(settings)]``; PGD's random start of chunk c draws from a
    generator seeded with ``(seed, c)``, so a resumed run makes the same images.

    Shape:
        images: (N, C, H, W) uint8; labels: (N,) int64; output: (N, C, H, W) uint8.
    """
    folder = (cache_dir or cache_root() / "gcln_attacks") / attack_cache_key(
        weights_sha256(classifier), settings, _tensor_sha256(images, labels), seed)
    folder.mkdir(parents=True, exist_ok=True)
    meta = folder / "meta.json"
    if not meta.is_file():
        meta.write_text(json.dumps({"attacks": [asdict(s) for s in settings], "n": len(images), "seed": seed,
                                    "classifier_sha256": weights_sha256(classifier), "data": description}) + "\n")
    device = next(classifier.parameters()).device
    k = len(settings)
    chunks = []
    bar = tqdm(total=len(images), desc=f"attacks {description}".strip(), disable=not progress, leave=False)
    for c, start in enumerate(range(0, len(images), chunk_size)):
        path = folder / f"chunk_{c:05d}.pt"
        stop = min(start + chunk_size, len(images))
        if path.is_file():
            chunks.append(torch.load(path, weights_only=True))
            bar.update(stop - start)
            continue
        x, y = images[start:stop], labels[start:stop]
        out = torch.empty_like(x)
        g = torch.Generator(device).manual_seed(seed * 1_000_003 + c)
        which = torch.arange(start, stop) % k
        for j, setting in enumerate(settings):
            sel = torch.nonzero(which == j).flatten()
            for b in range(0, len(sel), batch_size):
                idx = sel[b:b + batch_size]
                adv = setting.run(classifier, x[idx].to(device).float() / 255, y[idx].to(device), g)
                out[idx] = adv.mul(255).round().to(torch.uint8).cpu()
                bar.update(len(idx))
        tmp = path.with_suffix(".tmp")
        torch.save(out, tmp)
        tmp.replace(path)             # an interrupted run leaves no half-written chunk
        chunks.append(out)
    bar.close()
    return torch.cat(chunks) if chunks else images.clone()


class FeatureTap:
    """``classifier(x)`` returning ``(logits, features at layer)`` from one forward pass.

    ``layer`` is a module name of the classifier (``model.layer3`` for ``create_model``'s
    ResNets) or ``"logits"``.
    """

    def __init__(self, classifier: nn.Module, layer: str) -> None:
        names = ["logits", *(n for n, _ in classifier.named_modules() if n)]
        check_choice("FeatureTap", layer, name="perceptual layer", choices=names)
        self.classifier = classifier
        self.layer = layer
        self.module = None if layer == "logits" else dict(classifier.named_modules())[layer]

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.module is None:
            logits = self.classifier(x)
            return logits, logits
        seen: list[Tensor] = []
        handle = self.module.register_forward_hook(lambda m, i, o: seen.append(o))
        try:
            logits = self.classifier(x)
        finally:
            handle.remove()
        return logits, seen[0]


class Split(NamedTuple):
    """Clean images, their attacked versions (both uint8, N×C×H×W) and labels (N,)."""

    clean: Tensor
    attacked: Tensor
    labels: Tensor


def accuracy(model_fn: Callable[[Tensor], Tensor], images: Tensor, labels: Tensor, *, batch_size: int = 500,
             device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy of ``model_fn`` on uint8 ``images``."""
    correct = 0
    with torch.no_grad():
        for s in range(0, len(images), batch_size):
            logits = model_fn(images[s:s + batch_size].to(device).float() / 255)
            correct += int((logits.argmax(1).cpu() == labels[s:s + batch_size]).sum())
    return correct / max(1, len(images))


def _validate(generator: CleaningGenerator, classifier: nn.Module, val: Split, device) -> dict[str, float]:
    generator.eval()
    out = {"val_attacked": accuracy(lambda v: classifier(generator(v)), val.attacked, val.labels, device=device),
           "val_clean": accuracy(lambda v: classifier(generator(v)), val.clean, val.labels, device=device)}
    generator.train()
    out["val_score"] = (out["val_attacked"] + out["val_clean"]) / 2
    return out


def _bce(logits: Tensor, clean: bool) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(clean)))


def train_gcln(generator: CleaningGenerator, detector: AttackDetector, classifier: nn.Module, train: Split,
               val: Split, *, epochs: int, batch_size: int = 64, lam: float = 0.5, layer: str = "model.layer3",
               lr_g: float = 2e-4, lr_d: float = 2e-4, d_warmup: int = 100, feedback: bool = False,
               pool_size: int = 2048, seed: int = 0, checkpoint: Path | None = None, resume: bool = False,
               device: torch.device | str = "cpu", progress: bool = True) -> list[dict[str, Any]]:
    """Train G against D (see the module docstring); G ends with the best validation epoch's weights.

    A checkpoint (models, optimizers, history, best weights, feedback pool) is written after
    every epoch; ``resume`` continues from it, and data order depends only on (seed, epoch), so
    a resumed run follows the same path as an uninterrupted one. Returns the per-epoch history.
    """
    settings = {"lam": lam, "layer": layer, "batch_size": batch_size, "lr_g": lr_g, "lr_d": lr_d,
                "d_warmup": d_warmup, "feedback": feedback, "pool_size": pool_size, "seed": seed,
                "generator": generator.config(), "detector_width": detector.width, "train_n": len(train.labels)}
    if feedback and pool_size < 2 * batch_size:
        raise PurifyError(f"train_gcln: expected pool_size >= 2 * batch_size = {2 * batch_size} with feedback, "
                          f"got {pool_size}; one step may add 2 * batch_size images to the pool")
    classifier.eval().requires_grad_(False)       # the target classifier and the perceptual network stay fixed
    tap = FeatureTap(classifier, layer)
    opt_g = torch.optim.Adam(generator.parameters(), lr=lr_g, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(detector.parameters(), lr=lr_d, betas=(0.5, 0.999))
    pool = torch.zeros(pool_size if feedback else 0, *train.clean.shape[1:], device=device)
    state: dict[str, Any] = {"epoch": 0, "step": 0, "pool_count": 0, "history": [], "best": None}
    if resume and checkpoint is not None and checkpoint.is_file():
        ck = torch.load(checkpoint, weights_only=True, map_location=device)
        if ck["settings"] != settings:
            changed = sorted(k for k in settings if ck["settings"].get(k) != settings[k])
            raise PurifyError(f"train_gcln: checkpoint {checkpoint} was made with other settings ({changed}); "
                              "resume with the same flags, or start afresh without --resume")
        generator.load_state_dict(ck["generator"])
        detector.load_state_dict(ck["detector"])
        opt_g.load_state_dict(ck["opt_g"])
        opt_d.load_state_dict(ck["opt_d"])
        pool = ck["pool"]
        state = {k: ck[k] for k in state}
        log.info("resumed from %s after epoch %d", checkpoint, state["epoch"])
    elif resume:
        log.warning("no checkpoint at %s; starting afresh", checkpoint)
    generator.train()
    n_steps = len(train.labels) // batch_size
    for epoch in range(state["epoch"], epochs):
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        perm = torch.randperm(len(train.labels), generator=g)
        sums: dict[str, float] = {}
        for i in tqdm(range(n_steps), desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            x0 = train.clean[idx].to(device).float() / 255
            xa = train.attacked[idx].to(device).float() / 255
            y = train.labels[idx].to(device)
            warm = state["step"] < d_warmup
            out = None if warm else generator(torch.cat([xa, x0]), ste=True)
            # D: clean (plus G's correctly classified outputs with --feedback) vs. G(x*) (raw x* while warming up)
            real = x0
            if state["pool_count"]:
                real = torch.cat([x0, pool[torch.randint(min(state["pool_count"], pool_size), (batch_size,),
                                                         generator=g)]])
            fake = xa if warm else out[:batch_size].detach()
            loss_d = _bce(detector(real), True) + _bce(detector(fake), False)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            row = {"loss_d": loss_d.item()}
            if not warm:
                with torch.no_grad():
                    _, f_clean = tap(x0)
                logits, feats = tap(out)
                loss_p = 0.5 * (F.mse_loss(feats[:batch_size], f_clean) + F.mse_loss(feats[batch_size:], f_clean))
                detector.requires_grad_(False)     # G's step needs D's input gradient, not its weight gradients
                loss_a = _bce(detector(out[:batch_size]), True)
                loss_g = lam * loss_p + (1 - lam) * loss_a
                opt_g.zero_grad(set_to_none=True)
                loss_g.backward()
                opt_g.step()
                detector.requires_grad_(True)
                right = logits.argmax(1) == torch.cat([y, y])
                row.update(loss_g=loss_g.item(), loss_p=loss_p.item(), loss_a=loss_a.item(),
                           train_attacked=float(right[:batch_size].float().mean()))
                if feedback:           # the paper's Ω_o grows by G's outputs that the classifier gets right
                    keep = out.detach()[right]
                    pool[(state["pool_count"] + torch.arange(len(keep), device=device)) % pool_size] = keep
                    state["pool_count"] += len(keep)
            state["step"] += 1
            for k, v in row.items():
                sums[k] = sums.get(k, 0.0) + v
                sums[f"n_{k}"] = sums.get(f"n_{k}", 0) + 1
        row = {"epoch": epoch + 1, **{k: sums[k] / sums[f"n_{k}"] for k in sums if not k.startswith("n_")}}
        train_s = time.perf_counter() - t0
        row.update(_validate(generator, classifier, val, device))
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        row["train_s_per_1000_images"] = round(1000 * train_s / max(1, n_steps * batch_size), 1)
        state["history"].append(row)
        if state["best"] is None or row["val_score"] > state["best"]["score"]:
            state["best"] = {"epoch": epoch + 1, "score": row["val_score"],
                             "state": copy.deepcopy(generator.state_dict())}
        state["epoch"] = epoch + 1
        log.info("epoch %d/%d  " + "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith(("loss", "val", "train")))
                 + "  %.0f s", epoch + 1, epochs, row["wall_s"])
        if checkpoint is not None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            tmp = checkpoint.with_suffix(".tmp")
            torch.save({**state, "settings": settings, "generator": generator.state_dict(),
                        "detector": detector.state_dict(), "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                        "pool": pool}, tmp)
            tmp.replace(checkpoint)
    if state["best"] is not None:
        generator.load_state_dict(state["best"]["state"])
    generator.eval()
    return state["history"]


def _subset(n_total: int, count: int | None, seed: int) -> np.ndarray:
    """``count`` sorted indices drawn without replacement (all when ``count`` is None)."""
    if count is None or count >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).choice(n_total, size=count, replace=False))


def _uint8_images(ds, idx: np.ndarray) -> tuple[Tensor, Tensor]:
    x = torch.from_numpy(np.ascontiguousarray(ds.x[idx])).permute(0, 3, 1, 2).contiguous()
    return x, torch.from_numpy(np.asarray(ds.y[idx], dtype=np.int64))


def _init_from(generator: CleaningGenerator, weights: str) -> dict[str, Any]:
    """Copy a trained artifact's weights into ``generator`` (same architecture; q is not a weight).

    Returns what the new artifact's json records of its starting point.
    """
    source = load_generator(weights)
    theirs = {k: v for k, v in source.config().items() if k != "q"}
    ours = {k: v for k, v in generator.config().items() if k != "q"}
    if theirs != ours:
        raise PurifyError(f"--init-from {weights}: its architecture {theirs} differs from this run's {ours}; "
                          "pass the same --width / --stem-width / --blocks / --block-size")
    generator.load_state_dict(source.state_dict())
    log.info("G starts from %s (sha256 %s, trained with q = %g); this run trains with q = %g", weights,
             source.artifact["sha256"][:12], source.q, generator.q)
    return {"weights": str(weights), "sha256": source.artifact["sha256"], "q": source.q}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m purify.training.gcln", description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--data-dir", default=None, help="folder with cifar10_*.npz and weights/ (default: $PURIFY_DATA_DIR)")
    a("--model", default="resnet56", help="target classifier and perceptual network (frozen)")
    a("--out", required=True, help="artifact path without extension, e.g. purify/weights/gcln_cifar10")
    a("--q", type=float, default=10.0, help="quantization step on the 0..255 scale")
    a("--block-size", type=int, default=8)
    a("--width", type=int, default=48, help="restoration network channels")
    a("--stem-width", type=int, default=32)
    a("--blocks", type=int, default=4, help="residual blocks of the restoration network")
    a("--d-width", type=int, default=32, help="detector base channels")
    a("--eps", default="2,4,8,16", help="attack budgets of the training images, in 1/255, comma-separated")
    a("--pgd-iters", type=int, default=10, help="PGD steps (step eps/4, random start)")
    a("--train-count", type=int, default=None, help="training images (a seeded random subset; default all 45,000)")
    a("--val-count", type=int, default=1000, help="validation images for model selection")
    a("--epochs", type=int, default=4)
    a("--batch-size", type=int, default=64)
    a("--lam", type=float, default=0.5, help="weight of the perceptual loss (the paper: 0.5)")
    a("--perceptual-layer", default="model.layer3", help="classifier module whose output L_P compares, or 'logits'")
    a("--lr-g", type=float, default=2e-4)
    a("--lr-d", type=float, default=2e-4)
    a("--d-warmup", type=int, default=100, help="first steps train only D, on clean vs. raw attacked images")
    a("--feedback", action="store_true", help="G's correctly classified outputs join D's clean pool (the paper)")
    a("--pool-size", type=int, default=2048, help="feedback pool capacity")
    a("--init-from", default=None,
      help="start G from a trained artifact (a shipped name or a path) of the same architecture; --q may differ "
           "(fine-tuning a generator to another quantization step)")
    a("--seed", type=int, default=0)
    a("--device", default="auto", help="auto (cuda when available), cpu or cuda[:N]")
    a("--threads", type=int, default=None, help="torch CPU threads")
    a("--checkpoint", default=None, help="epoch checkpoint (default: <cache>/gcln_runs/<out name>-<hash>.pt)")
    a("--resume", action="store_true", help="continue from the checkpoint's last epoch")
    a("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with training_log(log, artifact_log_path(out), append=args.resume):
        return _run(args, argv, out)


def _run(args: argparse.Namespace, argv: Sequence[str] | None, out: Path) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    from purify.data import load_dataset, resolve_data_dir
    from purify.models import create_model

    data_dir = resolve_data_dir(args.data_dir)
    command = "python -m purify.training.gcln " + " ".join(argv if argv is not None else sys.argv[1:])
    checkpoint = Path(args.checkpoint) if args.checkpoint else (
        cache_root() / "gcln_runs" / f"{out.name}-{hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:8]}.pt")
    log.info("command: %s", command)
    log.info("machine: %s, torch %s, %d threads, device %s", platform.platform(), torch.__version__,
             torch.get_num_threads(), device)
    log.info("checkpoint: %s", checkpoint)
    t0 = time.perf_counter()
    classifier = create_model(args.model, pretrained=True, data_dir=data_dir).to(device).eval().requires_grad_(False)
    settings = default_settings(tuple(int(e) for e in args.eps.split(",")), args.pgd_iters)
    splits = {}
    for name, count, seed in (("train", args.train_count, args.seed), ("val", args.val_count, args.seed + 1)):
        ds = load_dataset("cifar10", name, data_dir=data_dir)
        idx = _subset(len(ds), count, seed)
        clean, labels = _uint8_images(ds, idx)
        attacked = cached_attacks(classifier, clean, labels, settings=settings, seed=args.seed,
                                  description=f"cifar10 {name} ({len(idx)} images, seed {seed})",
                                  progress=not args.no_progress)
        splits[name] = Split(clean, attacked, labels)
    t_attacks = time.perf_counter() - t0
    val = splits["val"]
    baseline = {"val_clean_no_defense": accuracy(classifier, val.clean, val.labels, device=device),
                "val_attacked_no_defense": accuracy(classifier, val.attacked, val.labels, device=device),
                "val_attacked_dct_only": accuracy(lambda v: classifier(dct_quantize(v, q=args.q, block_size=args.block_size)),
                                                  val.attacked, val.labels, device=device)}
    log.info("attacked images ready in %.0f s; validation baselines: %s", t_attacks,
             "  ".join(f"{k} {v:.4f}" for k, v in baseline.items()))
    torch.manual_seed(args.seed)
    generator = CleaningGenerator(q=args.q, block_size=args.block_size, width=args.width, stem_width=args.stem_width,
                                  blocks=args.blocks).to(device)
    init_record = _init_from(generator, args.init_from) if args.init_from else None
    detector = AttackDetector(width=args.d_width).to(device)
    history = train_gcln(generator, detector, classifier, splits["train"], val, epochs=args.epochs,
                         batch_size=args.batch_size, lam=args.lam, layer=args.perceptual_layer, lr_g=args.lr_g,
                         lr_d=args.lr_d, d_warmup=args.d_warmup, feedback=args.feedback, pool_size=args.pool_size,
                         seed=args.seed, checkpoint=checkpoint, resume=args.resume, device=device,
                         progress=not args.no_progress)
    best = max(history, key=lambda r: r["val_score"])
    meta = {"classifier": {"name": args.model, "checkpoint_sha256": classifier.pretrained_cfg.sha256,
                           "weights_sha256": weights_sha256(classifier)},
            "training": {"command": command, "data": {"dataset": "cifar10", "train_split": "train (first 45,000)",
                                                      "train_count": len(splits["train"].labels),
                                                      "val_split": "val (last 5,000 training images)",
                                                      "val_count": len(val.labels), "subset_seed": args.seed},
                         "attacks": [asdict(s) for s in settings], "attack_assignment": "image i: attacks[i % K]",
                         "perceptual_layer": args.perceptual_layer, "lam": args.lam, "epochs": args.epochs,
                         "batch_size": args.batch_size, "lr_g": args.lr_g, "lr_d": args.lr_d,
                         "d_warmup": args.d_warmup, "feedback": args.feedback, "init_from": init_record, "detector_width": args.d_width,
                         "seed": args.seed, "device": str(device), "threads": torch.get_num_threads(),
                         "wall_s": round(time.perf_counter() - t0, 1), "attack_generation_s": round(t_attacks, 1),
                         "history": history},
            "validation": {**baseline, "best_epoch": best["epoch"],
                           **{k: best[k] for k in ("val_attacked", "val_clean", "val_score")}}}
    path = save_generator(out, generator, meta)
    log.info("best epoch %d: val attacked %.4f, val clean %.4f; wrote %s (%s) in %.0f s", best["epoch"],
             best["val_attacked"], best["val_clean"], path, json.loads(path.read_text())["sha256"][:12],
             time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
