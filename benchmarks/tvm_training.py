"""Seed 000 in full: ResNet-56s trained on TVM images and with WNLL end to end, measured.

    python -m benchmarks.tvm_training --data-dir ../shared/data --threads 1     # clean table, then the page
    python -m benchmarks.tvm_training --report-only                             # the page only

1. **Clean accuracy** of every model of :data:`MODELS` on the full test set (10,000 images),
   without and with TVM in front (weight 0.1, drop 0.3, as everywhere in the project; one seeded
   draw of masks per image), WNLL models through their head (inductive: each image against the
   templates alone). One JSON per model in ``benchmarks/results/tvm_training/``; a finished model
   is not recomputed (``--force``).
2. **The paper's Tables 1 and 2** are harness configs (``benchmarks/configs/wnll_tvm_table*``,
   ``wnll_head_table2*``), run with ``python -m benchmarks run <config>``; this page gathers
   their ``cells.csv`` beside the paper's numbers (a config without results is listed as pending).
3. **The honest columns** are the leaderboard's rows of these models (the ``worst`` ensemble with
   BPDA+EOT and exact-gradient EOT through TVM; through the WNLL head and its linear surrogate):
   this page quotes ``benchmarks/results/leaderboard/<row>/``, with the paper's transfer figure beside
   the worst case, and a reading generated from them (:data:`READING_PAIRS`): per trained model, whether
   its worst case differs from the same defense on the model before training, by the 95 % intervals.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .convergence import wilson
from .harness.report import machine

__all__ = ["MODELS", "TABLES", "READING_PAIRS", "clean_accuracy", "build_page", "main"]

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "tvm_training"
PAGE = HERE / "results" / "tvm_training.md"
TVM = {"weight": 0.1, "drop_prob": 0.3}
#: id -> (backbone model, WNLL head artifact or None, training data, how it was made)
MODELS: dict[str, tuple[str, str | None, str, str]] = {
    "resnet56": ("resnet56", None, "original", "the public checkpoint (all 50,000 training images)"),
    "resnet56_tvm_aug": ("resnet56_tvm_aug", None, "original + TVM",
                         "fine-tuned from resnet56 for 5 epochs on each batch and its TVM copy (fresh masks)"),
    "resnet56_tvm_data": ("resnet56_tvm_data", None, "TVM",
                          "fine-tuned from resnet56 for 3 epochs on TVM-purified images only (fresh masks)"),
    "resnet56_wnll": ("resnet56", "resnet56_wnll", "original",
                      "frozen resnet56, trained buffer block + WNLL head (the first wave)"),
    "resnet56_wnll_e2e": ("resnet56_wnll_e2e", "resnet56_wnll_e2e_head", "original",
                          "fine-tuned from resnet56 end to end, alternating linear / WNLL epochs"),
    "resnet56_wnll_e2e_tvm_data": ("resnet56_wnll_e2e_tvm_data", "resnet56_wnll_e2e_tvm_data_head", "TVM",
                                   "fine-tuned from resnet56 end to end for one linear and one WNLL epoch on "
                                   "TVM-purified images only"),
    "resnet56_wnll_e2e_tvm_aug": ("resnet56_wnll_e2e_tvm_aug", "resnet56_wnll_e2e_tvm_aug_head", "original + TVM",
                                  "fine-tuned from resnet56 end to end for one linear and one WNLL epoch on each "
                                  "batch and its TVM copy"),
}
#: Paper clean accuracy (Table 2's eps = 0 column) by (head, training data).
PAPER_CLEAN = {("softmax", "original"): 93.0, ("softmax", "TVM"): 88.3, ("softmax", "original + TVM"): 93.1,
               ("wnll", "original"): 94.5, ("wnll", "TVM"): 90.6, ("wnll", "original + TVM"): 94.7}
#: The harness configs that reproduce the paper's tables: (config, table, row label).
TABLES = (
    ("wnll_tvm_table2", "Table 2", "softmax, original data (public resnet56)"),
    ("wnll_tvm_table2_tvm_data", "Table 2", "softmax, TVM data (resnet56_tvm_data)"),
    ("wnll_tvm_table2_tvm_aug", "Table 2", "softmax, original + TVM data (resnet56_tvm_aug)"),
    ("wnll_head_table2", "Table 2", "WNLL, original data, frozen backbone (resnet56_wnll)"),
    ("wnll_head_table2_e2e", "Table 2", "WNLL, original data, end to end (resnet56_wnll_e2e)"),
    ("wnll_head_table2_e2e_tvm_data", "Table 2", "WNLL, TVM data, end to end (resnet56_wnll_e2e_tvm_data)"),
    ("wnll_head_table2_e2e_tvm_aug", "Table 2", "WNLL, original + TVM data, end to end (resnet56_wnll_e2e_tvm_aug)"),
    ("wnll_tvm_table1_softmax_on_wnll", "Table 1", "softmax classifies what attacking WNLL made (original data)"),
    ("wnll_tvm_table1_wnll_on_softmax", "Table 1", "WNLL classifies what attacking softmax made (original data)"),
)
#: Leaderboard rows of these models (the honest columns).
LEADERBOARD_ROWS = ("resnet56", "tvm", "wnll", "tvm-aug", "tvm-aug-tvm", "tvm-data", "tvm-data-tvm", "wnll-e2e",
                    "wnll-e2e-tvm-aug", "wnll-e2e-tvm-aug-tvm", "wnll-e2e-tvm-data")


def _load(model_id: str, data_dir: str | None):
    from purify.models import create_model
    from purify.pipeline import DefendedClassifier
    from purify.wnll import WNLLHead

    name, head, _, _ = MODELS[model_id]
    model = create_model(name, pretrained=True, data_dir=data_dir).eval()
    if head is None:
        return model
    return DefendedClassifier(None, model, head=WNLLHead.load(head, mode="inductive")).eval()


def clean_accuracy(model_id: str, *, data_dir: str | None, count: int | None = None, batch: int = 500,
                   seed: int = 0) -> dict[str, Any]:
    """Accuracy of one model on the test set without and with TVM in front (one seeded draw per batch)."""
    from purify.data import load_dataset
    from purify.tv import tv_minimize

    ds = load_dataset("cifar10", "test", data_dir=data_dir)
    n = len(ds) if count is None else min(count, len(ds))
    model = _load(model_id, data_dir)
    correct = {"clean": 0, "tvm": 0}
    t0 = time.perf_counter()
    with torch.no_grad():
        for start in range(0, n, batch):
            x, y = ds.tensors(slice(start, min(n, start + batch)))
            correct["clean"] += int((model(x).argmax(1) == y).sum())
            g = torch.Generator().manual_seed(seed * 1_000_003 + start)
            correct["tvm"] += int((model(tv_minimize(x, generator=g, **TVM)).argmax(1) == y).sum())
    out = {"model": model_id, "n": n, "tvm": dict(TVM), "seed": seed, "wall_s": round(time.perf_counter() - t0, 1)}
    for k, c in correct.items():
        lo, hi = wilson(c, n)
        out[k] = {"accuracy": 100.0 * c / n, "ci": [100.0 * lo, 100.0 * hi]}
    return out


def _read_cells(config: str) -> list[dict[str, str]] | None:
    path = HERE / "results" / config / "cells.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _paper(config: str) -> dict[tuple[str, str], list[float]]:
    from .harness import load_config

    cfg = load_config(config)
    paper = cfg.paper or {}
    return {(r["attack"], r["threat_model"]): list(r["accuracy"]) for r in paper.get("results", [])}


def _table_lines(config: str, label: str) -> list[str]:
    cells = _read_cells(config)
    if cells is None:
        return [f"**{label}** (`{config}`): pending — `python -m benchmarks run {config} --data-dir ../shared/data`", ""]
    paper = _paper(config)
    lines = [f"**{label}** (`{config}`, {cells[0]['n_images']} test images; "
             f"[report]({config}/report.md)) — ours / paper, in %:", "",
             "| attack | threat model | " + " | ".join(f"ε {e}" for e in ("0.02", "0.04", "0.06", "0.08", "0.1")) + " |",
             "|---|---|" + "---|" * 5]
    by: dict[tuple[str, str], dict[str, float]] = {}
    for c in cells:
        by.setdefault((c["attack"], c["threat_model"]), {})[c["eps"]] = 100.0 * float(c["accuracy"])
    for (attack, tm), vals in by.items():
        ref = paper.get((attack, tm), [])
        if "" in vals:       # CW-L2 has no budget: one value, the paper's five columns beside it
            row = [f"{vals['']:.1f} / {p:g}" for p in ref] or [f"{vals['']:.1f}"]
        else:
            keys = sorted(vals, key=float)
            row = [f"{vals[k]:.1f}" + (f" / {ref[i]:g}" if i < len(ref) else "") for i, k in enumerate(keys)]
        lines.append(f"| {attack} | {tm} | " + " | ".join(row) + " |")
    return lines + [""]


#: The reading's comparisons: (baseline row, trained row, what the training changed).
READING_PAIRS = (
    ("resnet56", "tvm-aug", "softmax, no defense in front: original + TVM training"),
    ("resnet56", "tvm-data", "softmax, no defense in front: TVM-only training"),
    ("tvm", "tvm-aug-tvm", "TVM in front: original + TVM training"),
    ("tvm", "tvm-data-tvm", "TVM in front: TVM-only training"),
    ("wnll-e2e", "wnll-e2e-tvm-aug", "WNLL head, end to end: original + TVM training"),
    ("wnll-e2e", "wnll-e2e-tvm-data", "WNLL head, end to end: TVM-only training"),
    ("tvm", "wnll-e2e-tvm-aug-tvm", "TVM in front: the paper's full defense (+ WNLL head, + original + TVM training)"),
)


def _leaderboard_results() -> dict[str, dict[str, Any]]:
    """Row id -> ``{"row": the spec's row, "res": its results (None while pending)}``, in the spec's order."""
    from .leaderboard import load_leaderboard, row_results

    settings, rows = load_leaderboard(HERE / "leaderboard.toml")
    out_dir = HERE / "results" / "leaderboard"
    return {row.id: {"row": row, "res": row_results(out_dir, settings, row)}
            for row in rows if row.id in LEADERBOARD_ROWS}


def _pct_ci(w: dict[str, Any]) -> str:
    return f"{100 * w['accuracy']:.1f} [{100 * w['ci_low']:.1f}, {100 * w['ci_high']:.1f}]"


def _leaderboard_lines(board: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| row | clean % | transfer L∞ % | worst L∞ 8/255 % [95 %] | worst L2 0.5 % [95 %] | flags |",
             "|---|---|---|---|---|---|"]
    for entry in board.values():
        row, res = entry["row"], entry["res"]
        if res is None:
            lines.append(f"| {row.name} | pending | | | | |")
            continue
        cols = [_pct_ci(res["budgets"][n]["worst"]) if n in res["budgets"] else "pending" for n in ("linf", "l2")]
        transfer = res["budgets"].get("linf", {}).get("transfer")
        flags = sorted({f["check"] for b in res["budgets"].values() for f in b["flags"] if f["status"] == "FLAG"})
        lines.append(f"| {row.name} | {100 * res['clean']:.1f} | "
                     f"{'' if transfer is None else f'{100 * float(transfer):.1f}'} | {cols[0]} | {cols[1]} | "
                     f"{'; '.join(flags) or 'none'} |")
    return lines


def _change(base: dict[str, Any], new: dict[str, Any]) -> str:
    """The worst-case change from ``base`` to ``new`` at L∞, judged by their 95 % intervals."""
    a, b = base["budgets"]["linf"]["worst"], new["budgets"]["linf"]["worst"]
    if b["ci_low"] > a["ci_high"]:
        return "higher (the intervals do not overlap)"
    if b["ci_high"] < a["ci_low"]:
        return "lower (the intervals do not overlap)"
    return "no measurable change (the intervals overlap)"


def _reading(board: dict[str, dict[str, Any] | None]) -> list[str]:
    """One line per comparison whose two rows are measured: clean, transfer (the paper's protocol) and the
    worst case at L∞ 8/255, then the verdict; generated from the numbers, so it follows the results."""
    lines = []
    for base_id, new_id, what in READING_PAIRS:
        base, new = (board.get(base_id) or {}).get("res"), (board.get(new_id) or {}).get("res")
        if base is None or new is None:
            lines.append(f"- {what}: pending (`{base_id}` → `{new_id}`).")
            continue
        bt, nt = base["budgets"]["linf"].get("transfer"), new["budgets"]["linf"].get("transfer")
        transfer = ("" if bt is None or nt is None else
                    f"transfer {100 * float(bt):.1f} → {100 * float(nt):.1f} %, ")
        lines.append(f"- {what} (`{base_id}` → `{new_id}`): clean {100 * base['clean']:.1f} → "
                     f"{100 * new['clean']:.1f} %, {transfer}worst L∞ {_pct_ci(base['budgets']['linf']['worst'])} → "
                     f"{_pct_ci(new['budgets']['linf']['worst'])} %: {_change(base, new)}.")
    return lines


def build_page(clean: dict[str, dict[str, Any]], command: str) -> str:
    lines = ["# Seed 000 in full: TVM-augmented and end-to-end WNLL ResNet-56", "",
             f"- Page: `{command}`", f"- Machine: {machine()}", f"- Date: {dt.date.today().isoformat()}",
             f"- TVM: weight {TVM['weight']}, drop {TVM['drop_prob']} (the project's default, chosen on validation "
             "data: results/tvm_selection.md), one seeded draw of masks per image.",
             "- Training commands, budgets and learning curves: each model's `purify/weights/<name>.json` and "
             "`.log`.", "", "## Clean accuracy on the full test set", "",
             "| model | head | training data | how | clean % [95 %] | with TVM in front % [95 %] | paper clean |",
             "|---|---|---|---|---|---|---|"]
    for mid, (name, head, data, how) in MODELS.items():
        r = clean.get(mid)
        paper = PAPER_CLEAN.get(("wnll" if head else "softmax", data))
        if r is None:
            lines.append(f"| {name} | {head or 'softmax'} | {data} | {how} | pending | pending | {paper} |")
            continue
        c, t = r["clean"], r["tvm"]
        lines.append(f"| {name} | {head or 'softmax'} | {data} | {how} | {c['accuracy']:.2f} [{c['ci'][0]:.1f}, "
                     f"{c['ci'][1]:.1f}] | {t['accuracy']:.2f} [{t['ci'][0]:.1f}, {t['ci'][1]:.1f}] | {paper} |")
    lines += ["", "Paper clean = Table 2's ε = 0 column (the paper reports no accuracy with TVM in front on clean "
              "images).", "", "## The paper's tables (its protocol: attacks on the undefended model, TVM in front "
              "as transfer; WNLL models attacked through their linear branch)", ""]
    for config, _table, label in TABLES:
        lines += _table_lines(config, label)
    lines += ["## The honest columns: the leaderboard's worst case", "",
              "Per image, the worst over APGD-CE, APGD-DLR-targeted and Square (plus exact-gradient EOT through "
              "TVM, and attacks through both sides of a WNLL head); see results/leaderboard.md for the protocol. "
              "Transfer = the paper's protocol on the same images (PGD made on the undefended ResNet-56).", ""]
    board = _leaderboard_results()
    lines += _leaderboard_lines(board)
    lines += ["", "## Reading: does training on TVM images change the adaptive picture?", "",
              "Each line compares a row with the same defense on the model before the training named; the verdict "
              "is the worst case's, by its 95 % interval.", ""]
    lines += _reading(board)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m benchmarks.tvm_training", description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated (default: all: {', '.join(MODELS)})")
    ap.add_argument("--count", type=int, default=None, help="test images (default: all 10,000)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--force", action="store_true", help="recompute models that have results")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in MODELS]
    if unknown:
        ap.error(f"unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}")
    OUT.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        from purify.errors import PurifyError
        for mid in wanted:
            path = OUT / f"clean_{mid}.json"
            if path.is_file() and not args.force:
                continue
            try:
                res = clean_accuracy(mid, data_dir=args.data_dir, count=args.count)
            except PurifyError as e:     # a model not trained yet: its row stays pending
                print(f"{mid}: pending ({e})", file=sys.stderr)
                continue
            res.update(command="python -m benchmarks.tvm_training " + shlex.join(argv), machine=machine(),
                       date=dt.date.today().isoformat())
            path.write_text(json.dumps(res, indent=2) + "\n")
            print(f"{mid}: clean {res['clean']['accuracy']:.2f} %, with TVM {res['tvm']['accuracy']:.2f} % "
                  f"({res['wall_s']} s)")
    clean = {p.stem[len("clean_"):]: json.loads(p.read_text()) for p in sorted(OUT.glob("clean_*.json"))}
    PAGE.write_text(build_page(clean, "python -m benchmarks.tvm_training " + shlex.join(argv)))
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
