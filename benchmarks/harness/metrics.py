"""``[metrics]``: what a run measures beyond accuracy, the numbers of Zantedeschi et al. (2017), Sec. 4.1 / 4.4.

A config opts in with a top-level table (without it a config parses, and its cells hash, exactly as
before)::

    [metrics]
    training_set_distance = true   # per cell: train_dist, the mean Euclidean distance from the adversarial
                                   # images the attack fooled to their nearest training image
    training_split = "train"       # built-in data: the split searched ("train", the images purify's models
                                   # were trained on, default; "train_full"; "val")
    training_path = "train.npz"    # your images ([data] path): your training images, an .npz or a folder
                                   # read with [data]'s resize and mode; required with them
    loss_sensitivity = true        # once per config: mean ||dCE/dx||_2 over the config's images

The three metrics:

* **empirical robustness** needs no table: every cell has ``rho2`` (mean ``||δ||₂ / ||x||₂`` over
  all images, as before) and ``rho2_success``, the same mean over the images the attack fooled
  (correct clean, wrong after the attack, on the evaluated model): the paper's Eq. (2) as printed.
  ART's ``empirical_robustness`` (IBM's Adversarial Robustness Toolbox) also averages over the
  fooled images only, but divides in the attack's norm, L∞ for FGSM: that is ``rhoinf_success``,
  ``||δ||∞ / ||x||∞`` (about the mean eps that fooled the images when their brightest value is 1).
  With the minimal attack ``fgsm_minimal`` (:func:`purify.attacks.fgsm_minimal`) they are the
  paper's Table 2 column, in its two readings; images no eps up to ``eps_max`` fooled stay out of
  both (they are in the cell's accuracy). ART labels with the model's clean prediction, the
  harness with the true label: the two differ only on images the model gets wrong clean, which
  the harness never counts as fooled.
* **training set distance** (``train_dist``): over the same fooled images, the exact nearest
  neighbour among the training images (:func:`purify.metrics.nearest_distance`, chunked), of the
  attack's output ``x_adv`` (before any purification), in [0, 1] pixels over C·H·W values. The
  run also records the clean images' mean distance, the reference the adversarial ones move from.
* **loss sensitivity** (:func:`purify.metrics.loss_sensitivity`): the cross-entropy gradient of the
  true label, per image, through the classifier the attacks differentiate (the model, or a WNLL
  head's side as ``attack_through`` says), at the clean images: ``undefended``; and, with a
  defense, ``defended_bpda``: through ``classifier(bpda(pipeline)(x))`` with the clean
  evaluation's draw, the gradient the ``bpda`` threat model's attacks follow (the classifier's
  gradient at the purified image, passed back unchanged; ART's convention for preprocessing
  defenses such as feature squeezing).

Cells that recorded ``train_dist`` also record which training set they searched; a cached cell
without it (or with another training set) is computed again when the config asks for it. A
config that does not ask reads every cached cell as it is and shows no ``train_dist`` (– in the
report), whichever run made the cell. The model-level numbers are
cached like the clean pass (``metrics-<hash>.json`` beside the cells) and written to
``metrics.json`` beside ``cells.csv``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .schema import Ctx

__all__ = ["METRICS_KEYS", "TRAINING_SPLITS", "MetricsConfig", "TrainingSet", "parse_metrics", "load_training_set",
           "fooled_distances", "model_metrics", "metrics_lines", "metrics_notes"]

METRICS_KEYS = {"training_set_distance", "training_split", "training_path", "loss_sensitivity"}
#: Splits a built-in data set's training images may come from (``test`` is what is evaluated).
TRAINING_SPLITS = ("train", "train_full", "val")
#: Training images compared at once: about 50 MB of float64 CIFAR-10 images per chunk.
CHUNK_SIZE = 2048


@dataclass(frozen=True)
class MetricsConfig:
    """A parsed ``[metrics]`` table (None in :class:`~benchmarks.harness.schema.RunConfig` without one)."""

    training_set_distance: bool = False
    loss_sensitivity: bool = False
    training_split: str | None = None      # built-in data: the split searched
    training_path: str | None = None       # your images: your training images (resolved path)


def parse_metrics(ctx: Ctx, t: Any, data: dict[str, Any], model: dict[str, Any]) -> MetricsConfig | None:
    """Check a ``[metrics]`` table against the config's ``[data]`` and ``[model]``; None when it asks for nothing."""
    if t is None:
        return None
    from .inputs import _path

    t = ctx.table(t, "metrics")
    ctx.keys(t, METRICS_KEYS, "metrics")
    flags = {}
    for key in ("training_set_distance", "loss_sensitivity"):
        flags[key] = t.get(key, False)
        if not isinstance(flags[key], bool):
            raise ctx.error(f"metrics.{key}", f"expected true or false, got {flags[key]!r}")
    split = path = None
    for key in ("training_split", "training_path"):
        if key in t and not flags["training_set_distance"]:
            raise ctx.error(f"metrics.{key}", "only used with training_set_distance = true")
    if flags["training_set_distance"]:
        if "dataset" in data:
            if "training_path" in t:
                raise ctx.error("metrics.training_path", f"data.dataset = {data['dataset']!r} has its own training "
                                "images; choose them with training_split, or remove training_path")
            split = ctx.string(t.get("training_split", "train"), "metrics.training_split", TRAINING_SPLITS)
        else:
            if "training_split" in t:
                raise ctx.error("metrics.training_split", "only used with data.dataset; your images' training set "
                                "is training_path")
            if "training_path" not in t:
                raise ctx.error("metrics.training_path", "missing required key: training_set_distance with your "
                                "own images (data.path) needs your training images, an .npz or a class folder")
            path = _path(ctx, t["training_path"], "metrics.training_path")
    if flags["loss_sensitivity"] and "onnx" in model:
        raise ctx.error("metrics.loss_sensitivity", "an ONNX graph has no gradients; loss sensitivity needs "
                        "a torch model (factory or name)")
    if not any(flags.values()):
        return None
    return MetricsConfig(training_set_distance=flags["training_set_distance"],
                         loss_sensitivity=flags["loss_sensitivity"], training_split=split, training_path=path)


class TrainingSet:
    """The training images a config's adversarial images are compared with (``[metrics] training_set_distance``).

    Built-in images stay ``uint8`` (45,000 CIFAR-10 images: 138 MB, where float32 would be 553 MB);
    :func:`purify.metrics.nearest_distance` reads them as value / 255, a chunk at a time.

    Shape:
        images: (N, C, H, W), uint8 or float32; :meth:`distances`: x (B, C, H, W) -> (B,) float64.
    Example:
        >>> ts = TrainingSet(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), {"path": "toy"}, "toy")
        >>> ts.distances(torch.full((1, 1, 2, 2), 0.5)).tolist()
        [1.0]
    """

    def __init__(self, images: torch.Tensor, identity: dict[str, Any], text: str, *,
                 chunk_size: int = CHUNK_SIZE) -> None:
        self.images, self.identity, self.text, self.chunk_size = images, identity, text, chunk_size

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def distances(self, x: torch.Tensor) -> torch.Tensor:
        """Each image's Euclidean distance to its nearest training image (float64, on the CPU)."""
        from purify.metrics import nearest_distance

        if x.shape[0] == 0:
            return torch.zeros(0, dtype=torch.float64)
        d, _ = nearest_distance(x.detach().cpu().double(), self.images, chunk_size=self.chunk_size)
        return d


def load_training_set(cfg, folder: Path, image_shape: tuple[int, ...]) -> TrainingSet | None:
    """The training images of ``[metrics]``, checked against the evaluated images' shape; None when not asked for."""
    from purify.data import load_dataset
    from purify.errors import PurifyError
    from purify.user_data import load_user_dataset

    from .loading import images_sha256
    from .schema import ConfigError

    m = cfg.metrics
    if m is None or not m.training_set_distance:
        return None
    if m.training_split is not None:
        key = "metrics.training_split"
        try:
            ds = load_dataset(cfg.data["dataset"], m.training_split, data_dir=folder)
        except PurifyError as e:
            raise ConfigError(f"{cfg.path}: {key}: {e}") from None
        # torch.tensor copies: the data set's arrays are read-only
        images = torch.tensor(ds.x).permute(0, 3, 1, 2)
        identity = {"dataset": cfg.data["dataset"], "split": m.training_split, "n": len(ds)}
        text = f"{cfg.data['dataset']} {m.training_split}, {len(ds):,} images"
    else:
        key, d = "metrics.training_path", cfg.data
        try:
            images, _ = load_user_dataset(m.training_path, resize=d["resize"], mode=d["mode"]).tensors()
        except PurifyError as e:
            raise ConfigError(f"{cfg.path}: {key}: {e}") from None
        identity = {"path": Path(m.training_path).name, "n": int(images.shape[0]),
                    "images_sha256": images_sha256(images)}
        text = f"{Path(m.training_path).name}, {int(images.shape[0]):,} images"
    if tuple(images.shape[1:]) != tuple(image_shape):
        raise ConfigError(f"{cfg.path}: {key}: the training images have shape {tuple(images.shape[1:])}, the "
                          f"evaluated images {tuple(image_shape)}; distances need the same shape")
    return TrainingSet(images, identity, text)


def fooled_distances(training: TrainingSet | None, x_adv: torch.Tensor,
                     fooled: list[torch.Tensor]) -> torch.Tensor | None:
    """Each adversarial image's distance to its nearest training image, for the images some cell fooled.

    ``fooled``: one (B,) bool mask per cell sharing ``x_adv`` (``none`` and ``transfer`` fool different
    images); images no cell fooled are nan (no cell averages them) and cost nothing. None when there
    is no training set.

    Shape:
        x_adv: (B, C, H, W); fooled: masks (B,) on the CPU; output: (B,) float64 on the CPU.
    """
    if training is None:
        return None
    need = torch.zeros(len(x_adv), dtype=torch.bool)
    for mask in fooled:
        need |= mask
    dist = torch.full((len(x_adv),), float("nan"), dtype=torch.float64)
    if bool(need.any()):
        dist[need] = training.distances(x_adv[need.to(x_adv.device)])
    return dist


# ------------------------------------------------------------------------------------------------ once per config

def model_metrics(p, cache: Path) -> dict[str, Any] | None:
    """The config's model-level numbers (loss sensitivity; the clean images' training set distance), cached.

    Each part is cached on its own, keyed like the clean pass (images, model, defense, seed, batch
    size) plus what it depends on, so asking for one later does not recompute the other.
    """
    m = p.cfg.metrics
    if m is None:
        return None
    out: dict[str, Any] = {}
    if m.loss_sensitivity:
        out["loss_sensitivity"] = _cached(cache, "loss_sensitivity", {**p.base, "metric": "loss_sensitivity"},
                                          lambda: _loss_sensitivity(p))
    if p.training is not None:
        key = {**{k: v for k, v in p.base.items() if k not in ("model", "defense", "seed", "batch_size")},
               "metric": "train_dist_clean", "train_set": p.training.identity}
        out["train_dist_clean"] = _cached(cache, "train_dist_clean", key, lambda: _clean_distance(p))
    return out


def _cached(cache: Path, name: str, key: dict[str, Any], compute) -> dict[str, Any]:
    from .cells import key_hash, read_json, write_json   # cells imports config, which imports this module

    path = cache / f"metrics-{name}-{key_hash(key)}.json"
    hit = read_json(path)
    if hit is not None and hit.get("key") == key:
        return hit["value"]
    t0 = time.perf_counter()
    value = {**compute(), "wall_s": round(time.perf_counter() - t0, 3)}
    write_json(path, {"key": key, "value": value})
    return value


def _loss_sensitivity(p) -> dict[str, Any]:
    from purify.attacks import bpda
    from purify.metrics import loss_sensitivity

    from .runner import _batches, _generator     # the clean pass's batches and evaluation draws

    und, dfd = [], []
    for b, xb, yb in _batches(p):
        und.append(loss_sensitivity(p.attack_classifier, xb, yb, reduction="none").double().cpu())
        if p.pipeline is not None:
            g = _generator(p.device, p.cfg.seed, "eval", b)
            purified = bpda(lambda v, g=g: p.pipeline.run(v, generator=g))
            dfd.append(loss_sensitivity(lambda v: p.attack_classifier(purified(v)), xb, yb,
                                        reduction="none").double().cpu())
    return {"undefended": float(torch.cat(und).mean()),
            "defended_bpda": float(torch.cat(dfd).mean()) if dfd else None, "n_images": len(p.x)}


def _clean_distance(p) -> dict[str, Any]:
    bs = p.cfg.batch_size
    d = torch.cat([p.training.distances(p.x[s:s + bs]) for s in range(0, len(p.x), bs)])
    return {"mean": float(d.mean()), "n_images": len(p.x), "training_set": p.training.identity}


# ------------------------------------------------------------------------------------------------ report

def _num(v: Any, digits: int = 4) -> str:
    return "–" if v is None or v == "" or (isinstance(v, float) and np.isnan(v)) else f"{float(v):.{digits}g}"


def metrics_lines(metrics: dict[str, Any] | None, training: TrainingSet | None) -> list[str]:
    """The report's bullets for the model-level numbers (none without ``[metrics]``)."""
    if not metrics:
        return []
    lines = []
    ls = metrics.get("loss_sensitivity")
    if ls is not None:
        text = f"undefended {_num(ls['undefended'])}"
        if ls.get("defended_bpda") is not None:
            text += f", defended (BPDA through the defense) {_num(ls['defended_bpda'])}"
        lines.append(f"- Loss sensitivity (mean ‖∂CE/∂x‖₂ over the {ls['n_images']} images, true labels): {text}")
    td = metrics.get("train_dist_clean")
    if td is not None and training is not None:
        lines.append(f"- Distance to the nearest training image ({training.text}): clean images {_num(td['mean'])} "
                     "on average; per cell, `train dist` is the same mean over the adversarial images the attack "
                     "fooled")
    return lines


def metrics_notes(cfg, training: TrainingSet | None) -> list[str]:
    """How the ``[metrics]`` numbers were made (none without the table)."""
    m, out = cfg.metrics, []
    if m is None:
        return out
    if m.training_set_distance and training is not None:
        out.append(f"- train dist = mean Euclidean distance (pixels in [0, 1], over C·H·W values) from each "
                   f"adversarial image the attack fooled, as the attack made it (before any purification), to its "
                   f"nearest training image, searched exactly over {training.text}; – when it fooled "
                   "none or the cell was cached without it.")
    if m.loss_sensitivity:
        out.append("- Loss sensitivity = mean over the images of ‖∂CE(θ, x, y)/∂x‖₂, each image's own "
                   "cross-entropy of its true label (not a batch mean), through the classifier the attacks "
                   "differentiate"
                   + ("; defended: through classifier(bpda(defense)(x)) with the clean evaluation's draw, the "
                      "classifier's gradient at the purified image passed back unchanged, as `bpda` attacks see it"
                      if cfg.stages else "") + ".")
    return out
