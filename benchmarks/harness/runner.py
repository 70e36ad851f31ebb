"""Run a checked config: load images and model, compute (or load cached) cells, write the outputs.

Evaluation protocol (stated in every report):

* the clean forward pass is computed once per batch for the whole run (undefended and defended)
  and cached like a cell;
* a randomized defense is evaluated with one fresh draw per image from a ``torch.Generator``
  seeded by (run seed, batch index). The same seed serves the clean and every adversarial
  evaluation of a batch, so each image meets the same drop mask clean and attacked (common random
  numbers: differences between cells are not drawing noise);
* the attack's own draws (its model_fn's defense randomness, PGD's random start) come from
  generators seeded by (run seed, the cell's attack key, batch index);
* ``none`` and ``transfer`` share one set of adversarial examples per attack x eps, made on the
  undefended classifier; so do ``substitute`` and ``blackbox``, made on the ``[substitute]`` model;
* accuracy = fraction of the images whose evaluated prediction equals the label; attack success
  rate = among the images the evaluated model classifies correctly when clean, the fraction it
  misclassifies after the attack (the attack *fooled* those images);
* ``rho2`` = mean ``||δ||₂ / ||x||₂`` over all images; ``rho2_success`` the same over the fooled
  images only (the empirical robustness of DeepFool and of Zantedeschi et al.), ``rhoinf_success``
  with L∞ norms (ART's ``empirical_robustness`` of an L∞ attack); ``train_dist`` (``[metrics]``) the
  fooled images' mean distance to their nearest training image (:mod:`benchmarks.harness.metrics`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .cells import (Cell, base_key, cells_dir, derive_seed, expand_cells, group_jobs, key_hash,
                                      read_json, write_json)
from .config import SUBSTITUTE_SOURCE, UNDEFENDED_EVAL, ConfigError, RunConfig
from .inputs import attack_keys, check_eps_scale
from .metrics import TrainingSet, fooled_distances, load_training_set, model_metrics
from .threats import attack_model_fn, full_pipeline, run_attack
from .stats import CellStats, cell_row
from .worst import worst_entries
from purify.errors import PurifyError
from purify.pipeline import Pipeline

__all__ = ["Prepared", "RunResult", "prepare", "run_config", "RESULTS_DIR", "default_results_dir"]

log = logging.getLogger(__name__)

#: The repository's committed results (``benchmarks/results``, indexed by its README.md). Runs do not
#: write here unless they are started from the repository root or given ``--out``.
RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"


def default_results_dir() -> Path:
    """Where a run without ``out`` writes: ``benchmarks/results`` under the working directory.

    Never the package's own folder, which an installed package may not be allowed to write to. From
    the repository root this is :data:`RESULTS_DIR`, so the commands in its results index reproduce
    their folders in place.

    Example:
        >>> default_results_dir() == Path.cwd() / "benchmarks" / "results"
        True
    """
    return Path.cwd() / "benchmarks" / "results"


@dataclass
class Prepared:
    """Everything a run needs, loaded and checked before the first attack."""

    cfg: RunConfig
    device: torch.device
    x: torch.Tensor                 # (N, C, H, W) on the CPU
    y: torch.Tensor
    indices: np.ndarray
    classes: tuple[str, ...]
    classifier: torch.nn.Module        # what is evaluated: the model, with its WNLL head when there is one
    attack_classifier: torch.nn.Module # what attacks differentiate (the classifier, or the head's surrogate)
    pipeline: Pipeline | None          # None: no [defense] (every threat model is "none" / "substitute")
    full: Pipeline | None
    cells: list[Cell]
    base: dict[str, Any]
    substitute: torch.nn.Module | None = None   # [substitute]: what substitute / blackbox attacks differentiate
    other_side: torch.nn.Module | None = None   # WNLL head: the side not chosen by attack_through (entries' through)
    training: TrainingSet | None = None         # [metrics] training_set_distance: the training images


@dataclass
class RunResult:
    rows: list[dict[str, Any]]
    clean: dict[str, Any]
    out_dir: Path
    computed: list[str] = field(default_factory=list)    # labels of the cells computed by this run
    cached: list[str] = field(default_factory=list)      # labels of the cells read from the cache
    wall_s: float = 0.0
    examples: Path | None = None
    cells_dir: Path | None = None                        # where the cells are cached (see cells.cells_dir)
    files: list[str] = field(default_factory=list)       # what was written to out_dir (no plots without matplotlib)
    plots_missing: str | None = None                     # why no plots were drawn, or None
    metrics: dict[str, Any] | None = None                # [metrics]: the model-level numbers (metrics.model_metrics)


def _error(cfg: RunConfig, key: str, msg: str) -> ConfigError:
    return ConfigError(f"{cfg.path}: {key}: {msg}")


def resolve_device(cfg: RunConfig, device: str | None) -> torch.device:
    name = device or cfg.device
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise _error(cfg, "device", f"{name!r} asked for but no CUDA device is available; use 'auto' or 'cpu'")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise _error(cfg, "device", str(e)) from None


def prepare(cfg: RunConfig, *, data_dir: str | Path | None = None, device: str | None = None) -> Prepared:
    """Check what the config needs from the machine (data directory, files, shapes, device) and load it.

    Raises:
        ConfigError: naming the config file and the key to change.
    """
    from .loading import (check_fit, check_registered_fit, images_sha256, load_classifier,
                                            load_images, select)

    dev = resolve_device(cfg, device)
    check_registered_fit(cfg)          # before the data directory is looked at
    ds, folder = load_images(cfg, data_dir)
    indices, x, y = select(cfg, ds)
    n_own = len(cfg.attacks) - len(worst_entries(cfg.worst, cfg.stages))
    check_eps_scale(lambda key, msg: _error(cfg, key, msg), cfg.attacks, attack_keys(cfg.attacks, n_own),
                    x[0].numel())        # L2 budgets against your images' size (L-inf: at parse time)
    sections = ["model"] + (["substitute"] if cfg.substitute is not None else [])
    models, identity = {}, {}
    for section in sections:
        models[section], identity[section] = load_classifier(cfg, section, folder, dev)
        check_fit(cfg, section, models[section], ds, x, y, dev)
    classifier, attack_classifier, other_side = _with_head(cfg, models["model"], dev, len(ds.classes))
    user_data = None if "dataset" in cfg.data else {
        "path": Path(cfg.data["path"]).name, "resize": cfg.data["resize"], "mode": cfg.data["mode"],
        "images_sha256": images_sha256(x)}
    base = base_key(cfg, indices, model=identity["model"], data=user_data)
    if cfg.head != "softmax":     # cells made with other head weights are recomputed, not reused
        base["model"]["head"]["sha256"] = classifier.head.sha256
    pipeline, full = (Pipeline.from_spec(list(cfg.stages)), full_pipeline(cfg.stages)) if cfg.stages else (None, None)
    # ... and so are cells made with other stage weights (the GCLN generator): a stage that loaded an artifact
    # names its sha256, keyed by the stage's position in the pipeline.
    artifacts = {str(i): sha for i, m in enumerate(pipeline.purifiers if pipeline is not None else ())
                 if (sha := getattr(m, "artifact_sha256", None)) is not None}
    if artifacts:
        base["defense"]["artifacts"] = artifacts
    return Prepared(cfg=cfg, device=dev, x=x, y=y, indices=indices, classes=ds.classes, classifier=classifier,
                    attack_classifier=attack_classifier, other_side=other_side, pipeline=pipeline, full=full,
                    cells=expand_cells(cfg, base), base=base, substitute=models.get("substitute"),
                    training=load_training_set(cfg, folder, tuple(x.shape[1:])))


class _Surrogate(torch.nn.Module):
    """The WNLL head's linear branch on the backbone's features: the paper's attack surrogate."""

    def __init__(self, model: torch.nn.Module, head) -> None:
        super().__init__()
        self.model, self.head = model, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.surrogate_logits(self.model.features(x))


def _with_head(cfg: RunConfig, model: torch.nn.Module, dev: torch.device,
               num_classes: int) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module | None]:
    """(evaluated classifier, attacked classifier, the head's other side) for the config's head.

    With a WNLL head the attacker differentiates the head itself (``attack_through = "head"``) or
    its surrogate, the linear branch (a plain head has none: the backbone's own softmax classifier
    stands in); the side not chosen is the third value, for entries with their own ``through``.
    """
    if cfg.head == "softmax":
        return model, model, None
    from purify.pipeline import DefendedClassifier
    from purify.wnll import WNLLHead

    hp = cfg.head_params
    try:
        head = WNLLHead.load(hp["artifact"], mode=hp["mode"], k=hp.get("k"), k_sigma=hp.get("k_sigma"), device=dev)
    except PurifyError as e:
        raise _error(cfg, "defense.head_params", str(e)) from None
    if head.num_classes != num_classes:
        raise _error(cfg, "defense.head_params.artifact", f"the head has {head.num_classes} classes, "
                     f"{cfg.data['dataset']} has {num_classes}")
    backbone = head.meta.get("backbone")
    if backbone is not None and backbone != cfg.model.get("name"):
        raise _error(cfg, "defense.head_params.artifact", f"the head was built on {backbone} features, the config's "
                     f"model is {cfg.model.get('name') or 'your own'}; use a head made for it")
    classifier = DefendedClassifier(None, model, head=head).eval()
    surrogate = model if head.surrogate is None else _Surrogate(model, head).eval()
    if cfg.attack_through == "head":
        return classifier, classifier, surrogate
    return classifier, surrogate, classifier


def _generator(device: torch.device, *parts: Any) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derive_seed(*parts))


def _batches(p: Prepared):
    bs = p.cfg.batch_size
    for b, start in enumerate(range(0, len(p.x), bs)):
        yield b, p.x[start:start + bs].to(p.device), p.y[start:start + bs].to(p.device)


@torch.no_grad()
def _defended_pred(p: Prepared, x: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Purified images and the defended prediction, with the batch's evaluation draw."""
    z = p.pipeline(x, generator=_generator(p.device, p.cfg.seed, "eval", batch))
    return z, p.classifier(z).argmax(1)


def clean_pass(p: Prepared, cache: Path) -> dict[str, Any]:
    """Per-image clean correctness of the undefended and the defended model (cached)."""
    key = {k: v for k, v in p.base.items()}
    path = cache / f"clean-{key_hash(key)}.json"
    hit = read_json(path)
    if hit is not None and hit.get("key") == key:
        return {**hit, "cached": True}
    t0 = time.perf_counter()
    und, dfd = [], []
    with torch.no_grad():
        for b, xb, yb in _batches(p):
            und.append((p.classifier(xb).argmax(1) == yb).cpu())
            if p.pipeline is not None:
                dfd.append((_defended_pred(p, xb, b)[1] == yb).cpu())
    out = {"key": key, "undefended_correct": torch.cat(und).int().tolist(),
           "defended_correct": torch.cat(dfd).int().tolist() if dfd else None, "wall_s": time.perf_counter() - t0}
    out["undefended_accuracy"] = float(np.mean(out["undefended_correct"]))
    out["defended_accuracy"] = float(np.mean(out["defended_correct"])) if dfd else None
    write_json(path, out)
    return {**out, "cached": False}


def _run_job(p: Prepared, job: list[Cell], clean: dict[str, Any], bar, example: tuple[Cell, int, Path] | None,
             examples_only: bool = False) -> dict[str, dict[str, Any]]:
    """Attack once per batch for all cells of ``job``; returns ``{cell hash: row}``."""
    first = job[0]
    stats = {c.hash: CellStats() for c in job}
    und = torch.tensor(clean["undefended_correct"], dtype=torch.bool)
    dfd = torch.tensor(clean["defended_correct"] or [], dtype=torch.bool)
    bs = p.cfg.batch_size
    attacked = (p.substitute if first.threat_model in SUBSTITUTE_SOURCE
                else p.other_side if first.through is not None else p.attack_classifier)
    for b, xb, yb in _batches(p):
        t0 = time.perf_counter()
        model_fn, counted = attack_model_fn(first.threat_model, attacked, p.pipeline, p.full,
                                            _generator(p.device, p.cfg.seed, "attack-defense", first.attack_hash, b),
                                            first.eot_samples)
        x_adv = run_attack(first.attack, model_fn, xb, yb, eps=first.eps.value if first.eps else None,
                           params=first.params, generator=_generator(p.device, p.cfg.seed, "attack",
                                                                     first.attack_hash, b))
        attack_s = time.perf_counter() - t0
        sl = slice(b * bs, b * bs + len(xb))
        evaluated = []
        for cell in job:
            t1 = time.perf_counter()
            with torch.no_grad():
                if cell.threat_model in UNDEFENDED_EVAL:
                    pred, ok0 = p.classifier(x_adv).argmax(1), und[sl]
                else:
                    pred, ok0 = _defended_pred(p, x_adv, b)[1], dfd[sl]
            evaluated.append((cell, (pred == yb).cpu(), ok0, time.perf_counter() - t1))
        t2 = time.perf_counter()
        dist = fooled_distances(p.training, x_adv, [ok0 & ~ok for _, ok, ok0, _ in evaluated])
        dist_s = time.perf_counter() - t2      # shared by the job's cells, like the attack
        for cell, adv_ok, ok0, eval_s in evaluated:
            s = stats[cell.hash]
            s.add(xb.cpu(), x_adv.cpu(), adv_ok, ok0, dist)
            s.wall += attack_s + dist_s + eval_s
            s.forwards += counted.forwards
            s.backwards += counted.backwards
            if example is not None and b == 0 and cell.hash == example[0].hash:
                _save_examples(p, example, xb, x_adv, yb, b)
        bar.update(1)
        if examples_only:
            return {}
    return {c.hash: cell_row(c, stats[c.hash], clean["undefended_accuracy" if c.threat_model in UNDEFENDED_EVAL
                                                     else "defended_accuracy"], train_dist=p.training is not None)
            for c in job}


def _execute(p: Prepared, todo: list[tuple[list[Cell], bool]], clean: dict[str, Any], bar, ex,
             ray: dict[str, Any] | None):
    """Yield ``(job, rows)`` for every job of ``todo``: here, in order, or on Ray as workers finish."""
    if ray is None:
        for job, only in todo:
            bar.set_postfix_str(", ".join(c.label for c in job)[:80])
            yield job, _run_job(p, job, clean, bar, ex, examples_only=only)
        return
    from .distributed import ray_jobs

    n_batches = -(-len(p.x) // p.cfg.batch_size)
    for job, new in ray_jobs(p, [job for job, only in todo if not only], clean, **ray):
        bar.update(n_batches)
        yield job, new
    if ex is not None and not ex[2].is_file():        # the example images are made here, one batch
        _run_job(p, [ex[0]], clean, bar, ex, examples_only=True)


def _save_examples(p: Prepared, example: tuple[Cell, int, Path], x, x_adv, y, b: int) -> None:
    """Clean, adversarial and purified images (uint8) of the first images of the example cell."""
    _, n, path = example
    n = min(n, len(x))
    if p.pipeline is None:                                # no defense: the third column repeats the attack
        z, defended = x_adv, p.classifier(x_adv).argmax(1)
    else:
        z, defended = _defended_pred(p, x_adv, b)       # the evaluation draw of this batch
    with torch.no_grad():
        clean_pred = p.classifier(x[:n]).argmax(1)
        adv_pred = p.classifier(x_adv[:n]).argmax(1)
    to8 = lambda t: (t[:n].detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()  # noqa: E731
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, clean=to8(x), adv=to8(x_adv), purified=to8(z), label=y[:n].cpu().numpy(),
                        clean_pred=clean_pred.cpu().numpy(), adv_pred=adv_pred.cpu().numpy(),
                        purified_pred=defended[:n].cpu().numpy(), index=p.indices[:n], classes=np.array(p.classes),
                        has_defense=np.array(p.pipeline is not None))


def example_cell(p: Prepared) -> Cell | None:
    """The cell shown in examples.png: ``[examples]``, else the first defended eps cell, else the first cell."""
    ex = p.cfg.examples
    if ex:
        for c in p.cells:
            if (c.attack_id == ex["attack"] and c.threat_model == ex["threat_model"]
                    and ("eps" not in ex or (c.eps is not None and abs(c.eps.value - ex["eps"]) < 1e-12))):
                return c
    for c in p.cells:
        if c.eps is not None and c.threat_model not in UNDEFENDED_EVAL:
            return c
    return p.cells[0] if p.cells else None


def run_config(p: Prepared, out_dir: Path, *, progress: bool = True, cache_dir: str | Path | None = None,
               ray: dict[str, Any] | None = None) -> RunResult:
    """Compute every cell not in the cell cache and return all rows, in config order.

    The cache is ``cells_dir(config name, cache_dir)`` (:func:`~benchmarks.harness.cells.cells_dir`);
    each cell is written there as soon as its job finishes, so a killed run resumes. ``ray``: the
    keyword arguments of :func:`benchmarks.harness.distributed.ray_jobs` (address, workers,
    threads, data_dir, device) to run the missing jobs on a Ray cluster instead of here.
    """
    t0 = time.perf_counter()
    cache = cells_dir(p.cfg.name, cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    clean = clean_pass(p, cache)
    metrics = model_metrics(p, cache)
    ex_cell = example_cell(p)
    n_examples = (p.cfg.examples or {}).get("n", 6)
    ex = (ex_cell, n_examples, cache / f"{ex_cell.slug}-{ex_cell.hash}-examples{n_examples}.npz") if ex_cell else None
    rows: dict[str, dict[str, Any]] = {}
    todo: list[tuple[list[Cell], bool]] = []
    result = RunResult(rows=[], clean=clean, out_dir=out_dir, examples=ex[2] if ex else None, cells_dir=cache,
                       metrics=metrics)
    train_set = p.training.identity if p.training is not None else None
    for job in group_jobs(p.cells):
        missing = []
        for c in job:
            hit = read_json(cache / c.filename)
            # A cell cached before rows carried their per-image result (adv_correct) is computed again, and
            # so is one without train_dist over this training set when the config asks for it. Without
            # [metrics] a cell's train_dist is left out: the rows show what the config asks for.
            if (hit is not None and hit.get("key") == c.key and "adv_correct" in hit.get("row", {})
                    and (train_set is None or hit.get("train_set") == train_set)):
                rows[c.hash] = hit["row"] if train_set is not None else \
                    {k: v for k, v in hit["row"].items() if k != "train_dist"}
                result.cached.append(c.label)
            else:
                missing.append(c)
        if missing:
            todo.append((missing, False))
        elif ex and any(c.hash == ex[0].hash for c in job) and not ex[2].is_file():
            todo.append(([ex[0]], True))          # cells cached, example images not: one batch of that cell
    n_batches = -(-len(p.x) // p.cfg.batch_size)
    total = sum(1 if only else n_batches for _, only in todo)
    with tqdm(total=total, desc=p.cfg.name, unit="batch", disable=not progress or total == 0) as bar:
        for job, new in _execute(p, todo, clean, bar, ex, ray):
            for c in job:
                if c.hash in new:
                    write_json(cache / c.filename, {"key": c.key, "label": c.label, "row": new[c.hash],
                                                    **({"train_set": train_set} if train_set is not None else {})})
                    rows[c.hash] = new[c.hash]
                    result.computed.append(c.label)
    result.rows = [rows[c.hash] for c in p.cells]
    result.wall_s = time.perf_counter() - t0
    return result
