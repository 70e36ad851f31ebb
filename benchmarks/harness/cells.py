"""Cells: one (attack, eps, threat model, swept parameters) combination, its cache key and cache file.

A cell's key holds everything its numbers depend on: the images (dataset, split and the sha256 of
the resolved indices), the model (with the sha256 of its weights where they could change under the
same name: your files, and the trained classifiers that ship in the package), the defense (with the
sha256 of a stage's shipped weights, the GCLN generator; left out under ``none`` and ``substitute``,
which never see it), the substitute model (only under ``substitute`` and ``blackbox``, the cells that
attack it), the attack and its resolved parameters, eps, the threat model, the EOT sample count,
the run seed and the batch size (randomness is drawn per batch). Descriptions, paper numbers and
output paths are not part of it.

The cache lives outside the results (which keep only ``cells.csv``, the table the reports are made
from): ``<cache>/<config name>/<slug>-<sha256(key)[:16]>.json``, where ``<cache>`` is
``--cache-dir`` or else ``cells/`` in purify's cache folder (``$PURIFY_CACHE_DIR``, default
``~/.cache/purify``). Each file holds its full key and is used only when that key equals the
cell's, so configs, ``--set`` overrides and ``--quick`` never read each other's numbers; the config
name only groups the files (``rm -r`` one folder to recompute a config). Runs of one config into
different ``--out`` folders share their cells.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import (EOT_THREAT_MODELS, SUBSTITUTE_SOURCE, UNDEFENDED_EVAL, UNDEFENDED_SOURCE,
                                      AttackEntry, Eps, RunConfig)

__all__ = ["CACHE_VERSION", "Cell", "expand_cells", "group_jobs", "base_key", "key_hash", "derive_seed",
           "read_json", "write_json", "default_cache_dir", "cells_dir"]

#: Bump when the meaning of a cached number changes; old cells are then recomputed.
CACHE_VERSION = 1


@dataclass(frozen=True)
class Cell:
    attack_id: str
    attack: str
    norm: str
    eps: Eps | None
    threat_model: str
    params: dict[str, Any]           # the attack's keyword arguments, resolved (no lists, no step_ratio)
    eot_samples: int | None
    key: dict[str, Any]
    hash: str
    through: str | None = None       # WNLL head: what the attack differentiates, when not the defense's choice

    @property
    def slug(self) -> str:
        eps = f"eps{self.eps.label.replace('/', 'over')}" if self.eps else "noeps"
        extra = "".join(f"_{k}{self.params[k]}" for k in ("iters",) if k in self.params)
        extra += f"_eot{self.eot_samples}" if self.eot_samples else ""
        return f"{self.attack_id}_{eps}_{self.threat_model.replace('+', '-')}{extra}"

    @property
    def filename(self) -> str:
        return f"{self.slug}-{self.hash}.json"

    @property
    def label(self) -> str:
        eps = f" eps={self.eps.label}" if self.eps else ""
        extra = f" iters={self.params['iters']}" if "iters" in self.params else ""
        extra += f" eot={self.eot_samples}" if self.eot_samples else ""
        return f"{self.attack_id}{eps} [{self.threat_model}]{extra}"

    @property
    def attack_hash(self) -> str:
        """Identifies the adversarial examples: shared by the ``none`` and ``transfer`` cells of one attack,
        and by its ``substitute`` and ``blackbox`` cells."""
        if self.threat_model in UNDEFENDED_SOURCE:
            source = "undefended"
        elif self.threat_model in SUBSTITUTE_SOURCE:
            source = "substitute"
        else:
            return self.hash
        key = {k: v for k, v in self.key.items() if k not in ("defense", "threat_model")}
        return key_hash({**key, "source": source})


def default_cache_dir() -> Path:
    """The cell cache of every config: ``cells/`` in purify's cache folder (``$PURIFY_CACHE_DIR`` moves it).

    Example:
        >>> default_cache_dir().name
        'cells'
    """
    from purify._download import cache_root
    return cache_root() / "cells"


def cells_dir(config_name: str, cache_dir: str | Path | None = None) -> Path:
    """The folder of a config's cached cells: ``<cache_dir or default_cache_dir()>/<config_name>``.

    Example:
        >>> cells_dir("quick_demo", "/tmp/cells").as_posix()
        '/tmp/cells/quick_demo'
    """
    return (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()) / config_name


def key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from the parts (stable across runs, processes and platforms)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def base_key(cfg: RunConfig, indices: np.ndarray, *, model: dict[str, Any] | None = None,
             data: dict[str, Any] | None = None) -> dict[str, Any]:
    """The part of every cell's key that comes from the run: images, model, defense, seed, batch size.

    ``model`` / ``data``: what identifies your own classifier and images (the sha256 of their files
    and pixels, :func:`benchmarks.harness.loading.load_classifier`), in place of the config's model
    dict and the built-in data set's name and split, which identify built-in ones.
    """
    idx_sha = hashlib.sha256(np.ascontiguousarray(indices, dtype=np.int64).tobytes()).hexdigest()
    model = dict(cfg.model if model is None else model)
    if cfg.head != "softmax":       # the head is part of the model every threat model sees, "none" included
        model["head"] = {"name": cfg.head, **cfg.head_params, "attack_through": cfg.attack_through}
    if data is not None:
        images = data
    elif "dataset" in cfg.data:
        images = {"dataset": cfg.data["dataset"], "split": cfg.data["split"]}
    else:                           # your images, before prepare() hashed them
        images = {"path": Path(cfg.data["path"]).name, "resize": cfg.data["resize"], "mode": cfg.data["mode"]}
    return {
        "version": CACHE_VERSION,
        "data": {**images, "n": int(len(indices)), "indices_sha256": idx_sha},
        "model": model,
        "defense": {"stages": [[n, p] for n, p in cfg.stages], "head": cfg.head},
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
    }


def _resolved_params(entry: AttackEntry, eps: Eps | None, combo: dict[str, Any]) -> dict[str, Any]:
    """The attack's keyword arguments of one cell: swept values chosen, ``<name>_ratio`` times eps."""
    return entry.spec.resolve({**entry.params, **combo}, eps.value if eps else None)


def expand_cells(cfg: RunConfig, base: dict[str, Any]) -> list[Cell]:
    """Every cell of the config, in config order: entry, eps, swept values, threat model, EOT samples."""
    cells = []
    for entry in cfg.attacks:
        sweep = [k for k in entry.spec.sweep if isinstance(entry.params.get(k), list)]
        combos = [dict(zip(sweep, vals)) for vals in itertools.product(*(entry.params[k] for k in sweep))]
        for eps in entry.eps or (None,):
            for combo in combos:
                params = _resolved_params(entry, eps, combo)
                for tm in entry.threat_models:
                    for n in entry.eot_samples if tm in EOT_THREAT_MODELS else (None,):
                        key = {k: v for k, v in base.items() if not (k == "defense" and tm in UNDEFENDED_EVAL)}
                        if tm in SUBSTITUTE_SOURCE:
                            key["substitute"] = dict(cfg.substitute)
                        key.update(attack=entry.name, params=params, eps=eps.value if eps else None,
                                   threat_model=tm, eot_samples=n)
                        through = entry.through if entry.through not in (None, cfg.attack_through) else None
                        if through is not None:      # only then: the cells of every other entry keep their keys
                            key["through"] = through
                        cells.append(Cell(entry.id, entry.name, entry.norm, eps, tm, params, n, key, key_hash(key),
                                          through))
    return cells


def group_jobs(cells: list[Cell]) -> list[list[Cell]]:
    """Cells that share adversarial examples (see :attr:`Cell.attack_hash`) form one job."""
    jobs: dict[str, list[Cell]] = {}
    for c in cells:
        jobs.setdefault(c.attack_hash, []).append(c)
    return list(jobs.values())


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_json(path: Path, obj: dict[str, Any]) -> None:
    """Write atomically, so an interrupted run never leaves a half-written cell behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)
