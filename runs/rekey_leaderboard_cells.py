"""One-off migration (2026-12-03) of the committed leaderboard cells to the harness's new cell keys.

The keys of cells made with shipped, re-trainable weights now name those weights' sha256: the model's
(``model.weights_sha256``, the trained classifiers of ``purify/weights``) and a stage's artifact
(``defense.artifacts``, the GCLN generator). Before, a re-trained artifact shipped under the same name would
have reused the old cells. This re-keys the cells of ``benchmarks/results/leaderboard/cells/`` made before
the change, but only where the current weights are shown to be the ones they were made with: the config's
clean pass is computed again and must give the cached per-image clean correctness exactly (undefended, and
defended when a stage's artifact is keyed). Folders that fail the check are left as they are (their cells are
then recomputed by the next run). The rows' ``cells.csv`` name each cell by its key's hash: they are
rewritten to the new hashes (their numbers unchanged). Idempotent. Run from the repository root:

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python runs/rekey_leaderboard_cells.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from benchmarks.harness.cells import key_hash, read_json, write_json
from benchmarks.harness.config import load_config
from benchmarks.harness.runner import _batches, _defended_pred, prepare

ROOT = Path(__file__).resolve().parent.parent
LEADERBOARD = ROOT / "benchmarks" / "results" / "leaderboard"


def old_base(base: dict) -> dict:
    """The base key as the harness built it before the change."""
    old = copy.deepcopy(base)
    old["model"].pop("weights_sha256", None)
    old["defense"].pop("artifacts", None)
    return old


@torch.no_grad()
def same_clean(p, hit: dict) -> tuple[bool, str]:
    und, dfd = [], []
    for b, xb, yb in _batches(p):
        und.append((p.classifier(xb).argmax(1) == yb).cpu())
        if p.pipeline is not None and "artifacts" in p.base["defense"]:
            dfd.append((_defended_pred(p, xb, b)[1] == yb).cpu())
    und = torch.cat(und).int().tolist()
    if und != hit["undefended_correct"]:
        n = sum(a != b for a, b in zip(und, hit["undefended_correct"]))
        return False, f"undefended clean correctness differs on {n} images"
    if dfd and torch.cat(dfd).int().tolist() != hit["defended_correct"]:
        return False, "defended clean correctness differs"
    return True, f"clean correctness identical on {len(und)} images"


def rekey(folder: Path, old: dict, new: dict) -> int:
    n = 0
    for f in sorted(folder.glob("*.json")):
        d = read_json(f)
        key = d["key"]
        before = key_hash(key)
        if not f.stem.endswith(before):
            raise SystemExit(f"{f}: its name does not end with its key's hash {before}")
        if key.get("model") == old["model"]:
            key["model"] = new["model"]
        if key.get("defense") == old["defense"]:
            key["defense"] = new["defense"]
        after = key_hash(key)
        if after == before:
            continue
        if d.get("row", {}).get("cell") == before:
            d["row"]["cell"] = after
        write_json(f.with_name(f.name.replace(before, after)), d)
        f.unlink()
        for npz in folder.glob(f"*-{before}-examples*.npz"):
            npz.rename(npz.with_name(npz.name.replace(before, after)))
        n += 1
    return n


def patch_csv(folder: Path) -> int:
    """Rename the old hashes of ``folder``'s re-keyed cells in its row's ``cells.csv``."""
    csv = LEADERBOARD / folder.name.removeprefix("leaderboard-") / "cells.csv"
    if not csv.is_file():
        return 0
    text, n = csv.read_text(), 0
    for f in folder.glob("*.json"):
        key = read_json(f)["key"]
        old = copy.deepcopy(key)
        if isinstance(old.get("model"), dict):
            old["model"].pop("weights_sha256", None)
        if isinstance(old.get("defense"), dict):
            old["defense"].pop("artifacts", None)
        before, after = key_hash(old), key_hash(key)
        if before != after and f"{before}," in text:
            text, n = text.replace(f"{before},", f"{after},"), n + 1
    csv.write_text(text)
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    report = {}
    for cfg_path in sorted((LEADERBOARD / "configs").glob("*.toml")):
        cfg = load_config(cfg_path)
        folder = LEADERBOARD / "cells" / cfg.name
        if not folder.is_dir():
            continue
        p = prepare(cfg, data_dir=args.data_dir)
        old = old_base(p.base)
        if old == p.base:
            report[cfg.name] = "no re-trainable weights: keys unchanged"
            continue
        if (folder / f"clean-{key_hash(p.base)}.json").is_file():
            report[cfg.name] = f"already re-keyed; {patch_csv(folder)} cells.csv rows renamed"
            continue
        hit = read_json(folder / f"clean-{key_hash(old)}.json")
        if hit is None or hit.get("key") != old:
            report[cfg.name] = "no clean pass under the old key: left (already re-keyed, or recomputed next run)"
            continue
        ok, why = same_clean(p, hit)
        if not ok:
            report[cfg.name] = f"LEFT: {why}"
            continue
        report[cfg.name] = f"{why}; re-keyed {rekey(folder, old, p.base)} files, {patch_csv(folder)} cells.csv rows"
        print(f"{cfg.name}: {report[cfg.name]}", flush=True)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
