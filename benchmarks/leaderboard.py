"""``python -m benchmarks leaderboard``: every shipped defense ranked by its worst case, on one page.

    python -m benchmarks leaderboard --data-dir ../shared/data                 # run what is missing, write the page
    python -m benchmarks leaderboard --rows tvm,dct --data-dir ../shared/data  # some rows only
    python -m benchmarks leaderboard --report-only                             # the page from the results, in seconds
    python -m benchmarks leaderboard --measure-costs --data-dir ../shared/data # the cost column again, quietly

The rows and the budgets are in ``benchmarks/leaderboard.toml``. Each row (a model, its stages,
its head) and each budget (L∞ 8/255, L2 0.5) becomes one ordinary harness config with a
``[worst]`` table (:mod:`benchmarks.harness.worst`) and a PGD ``transfer`` entry, written to
``<out>/configs/<row>-<norm>.toml`` so any cell can be re-run by hand, and run into
``<out>/<row>-<norm>/``. Finished cells are cached in ``<out>/cells/`` and committed with the
results (a few kB each), so a row that takes longer than one session resumes on the next machine
where the last one stopped. The page,
``benchmarks/results/leaderboard.md`` with the scatter plot ``leaderboard.png``, is built from the
rows' ``cells.csv`` (which carry each cell's per-image results), so ``--report-only`` rebuilds it
without attacking anything. A row whose model cannot be loaded (a reference still training) is
listed as pending. Adding a defense to the leaderboard is one ``[[rows]]`` entry.

Columns: clean accuracy (the defended model, one draw per image); the worst case per budget with
its 95 % interval and the cell that achieved it; the transfer figure (what the papers report);
the defense's own cost per image (its stages and head, not the classifier) at 1 and 2 threads;
the sanity flags.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import shlex
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .harness.config import ConfigError, load_config
from .harness.report import machine
from .harness.worst import WORST_KEYS, sanity_flags, worst_rows

__all__ = ["Row", "load_leaderboard", "row_config", "measure_cost", "build_page", "main", "DEFAULT_SPEC"]

DEFAULT_SPEC = Path(__file__).resolve().parent / "leaderboard.toml"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "leaderboard"
_ROW_KEYS = {"id", "name", "model", "stages", "head", "head_params", "dataset", "budgets", "reference", "attacks",
             "retrofit"}
_SETTING_KEYS = {"dataset", "split", "seed", "count_deterministic", "count_randomized", "batch_size", "budgets",
                 "worst", "transfer"}


@dataclass(frozen=True)
class Row:
    id: str
    name: str
    model: str
    stages: tuple[dict[str, Any], ...] = ()
    head: str = "softmax"
    head_params: dict[str, Any] = field(default_factory=dict)
    #: The row's dataset and budgets (settings' when the row does not name its own, e.g. MNIST at L∞ 0.3).
    dataset: str = "cifar10"
    budgets: tuple[dict[str, Any], ...] = ()
    #: The robust reference of its dataset: the row every stack on the same model is compared with.
    reference: bool = False
    #: Extra harness attack entries (without eps; the row's norm is filled in) that join the worst
    #: case, e.g. APGD with EOT over TVM's exact (unrolled-solver) gradient.
    attacks: tuple[dict[str, Any], ...] = ()
    #: The model's ReLUs replaced (``[model] retrofit``), e.g. ``{activation = "jumprelu", kappa = 0.2}``.
    retrofit: dict[str, Any] | None = None

    @property
    def randomized(self) -> bool:
        from purify.registry import get_purifier_spec
        return any(get_purifier_spec(s["name"]).randomized for s in self.stages)


def load_leaderboard(path: Path) -> tuple[dict[str, Any], list[Row]]:
    """Read and check the leaderboard file: ``([settings], [[rows]])``; errors name the key."""
    try:
        doc = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the leaderboard: {e}") from None
    s = doc.get("settings")
    if not isinstance(s, dict) or set(s) - _SETTING_KEYS or not {"budgets", "worst"} <= set(s):
        raise ConfigError(f"{path}: settings: expected a table with budgets and worst (keys: {sorted(_SETTING_KEYS)})")
    _check_budgets(path, "settings.budgets", s["budgets"])
    unknown = sorted(set(s["worst"]) - (WORST_KEYS - {"norm", "eps"}))
    if unknown:
        raise ConfigError(f"{path}: settings.worst.{unknown[0]}: unknown key")
    rows, seen = [], set()
    for i, r in enumerate(doc.get("rows", [])):
        if not isinstance(r, dict) or set(r) - _ROW_KEYS or not {"id", "name", "model"} <= set(r):
            raise ConfigError(f"{path}: rows[{i}]: expected id, name, model (and stages, head, head_params)")
        if r["id"] in seen:
            raise ConfigError(f"{path}: rows[{i}].id: {r['id']!r} is used twice")
        seen.add(r["id"])
        budgets = r.get("budgets", s["budgets"])
        _check_budgets(path, f"rows[{i}].budgets", budgets)
        rows.append(Row(r["id"], r["name"], r["model"], tuple(r.get("stages", ())), r.get("head", "softmax"),
                        dict(r.get("head_params", {})), str(r.get("dataset", s.get("dataset", "cifar10"))),
                        tuple(budgets), bool(r.get("reference", False)), tuple(r.get("attacks", ())),
                        dict(r["retrofit"]) if "retrofit" in r else None))
        for j, a in enumerate(r.get("attacks", ())):
            if not isinstance(a, dict) or not {"name", "id"} <= set(a) or "eps" in a:
                raise ConfigError(f"{path}: rows[{i}].attacks[{j}]: expected a harness attack entry with name and id "
                                  "(no eps: the row's budget is used)")
    if not rows:
        raise ConfigError(f"{path}: rows: expected at least one [[rows]] entry")
    for ds in {r.dataset for r in rows}:
        if sum(r.reference for r in rows if r.dataset == ds) > 1:
            raise ConfigError(f"{path}: rows: more than one reference = true row on {ds}")
    return s, rows


def _check_budgets(path: Path, where: str, budgets: Any) -> None:
    if not isinstance(budgets, list) or not budgets:
        raise ConfigError(f"{path}: {where}: expected a list of {{ norm = ..., eps = ... }} entries")
    for b in budgets:
        if not isinstance(b, dict) or set(b) != {"norm", "eps"}:
            raise ConfigError(f"{path}: {where}: expected {{ norm = ..., eps = ... }} entries, got {b!r}")


def row_config(settings: dict[str, Any], row: Row, budget: dict[str, Any]) -> dict[str, Any]:
    """The harness config of one row at one budget (a TOML-able document)."""
    norm, eps = budget["norm"], budget["eps"]
    count = settings.get("count_randomized" if row.randomized else "count_deterministic", 500)
    doc: dict[str, Any] = {
        "name": f"leaderboard-{row.id}-{norm}",
        "description": f"leaderboard: {row.name}, {norm} {eps}",
        "batch_size": settings.get("batch_size", 100), "seed": settings.get("seed", 0),
        "data": {"dataset": row.dataset, "split": settings.get("split", "test"),
                 "count": count, "seed": settings.get("seed", 0)},
        "model": {"name": row.model, "pretrained": True, **({"retrofit": row.retrofit} if row.retrofit else {})},
        "worst": {"norm": norm, "eps": [eps], **settings["worst"]},
    }
    if row.stages or row.head != "softmax":
        doc["defense"] = {"stages": [dict(s) for s in row.stages], "head": row.head,
                          **({"head_params": row.head_params} if row.head != "softmax" else {})}
    if row.head == "wnll":
        # the gradient attacks differentiate both sides of the head: through the WNLL solve (its own
        # gradient, which the first measurement showed masked) and its linear surrogate (the paper's BPDA)
        doc["worst"]["through"] = ["head", "surrogate"]
    if row.stages:
        t = settings.get("transfer", {})
        doc["attacks"] = [{"name": "pgd", "id": "transfer-pgd", "eps": [eps], "threat_models": ["transfer"],
                           "params": {"norm": norm, "iters": t.get("iters", 20), "step_ratio": t.get("step_ratio", 0.25),
                                      "random_start": True}}]
    if row.attacks:
        extra = [{**a, "eps": [eps], "params": {**a.get("params", {}), "norm": norm}} for a in row.attacks]
        doc.setdefault("attacks", []).extend(extra)
        doc["worst"]["include"] = [a["id"] for a in extra]
    return doc


def to_toml(doc: dict[str, Any]) -> str:
    """A small TOML writer for :func:`row_config`'s documents (tables, arrays of tables, scalars)."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        return "[" + ", ".join(value(x) for x in v) + "]"

    top = [f"{k} = {value(v)}" for k, v in doc.items() if not isinstance(v, dict) and k != "attacks"]
    out = ["# written by python -m benchmarks leaderboard", *top]
    for k, v in doc.items():
        if isinstance(v, dict):
            out += ["", f"[{k}]", *[f"{kk} = {value(vv)}" for kk, vv in v.items()]]
    for a in doc.get("attacks", []):
        out += ["", "[[attacks]]", *[f"{kk} = {value(vv)}" for kk, vv in a.items()]]
    return "\n".join(out) + "\n"


def _available(row: Row, data_dir: str | None) -> str | None:
    """None when the row's model loads, else why not (the row is then pending)."""
    from purify.errors import DataNotFoundError, PurifyError
    from purify.models import create_model, list_models

    if row.model not in list_models():
        return f"model {row.model!r} is not registered yet"
    try:
        create_model(row.model, pretrained=True, data_dir=data_dir)
    except DataNotFoundError:
        return (f"model {row.model!r}: weights not found (a pretrained model needs --data-dir; a reference still "
                "training has none yet)")
    except (PurifyError, OSError) as e:
        return f"model {row.model!r} cannot be loaded: {e}"
    return None


def measure_cost(row: Row, *, threads: int, data_dir: str | None, batch: int = 64, repeats: int = 3) -> float:
    """Milliseconds per image of the defense itself (its stages, its head over the classifier's
    features: median of ``repeats``; and what a retrofit adds to the classifier's own time: the
    difference of the fastest of ``2 · repeats + 1`` alternating runs), batch ``batch``; 0 for an
    undefended row."""
    from purify.data import load_dataset
    from purify.models import create_model
    from purify.pipeline import Pipeline

    if not row.stages and row.head == "softmax" and not row.retrofit:
        return 0.0
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x, _ = load_dataset(row.dataset, "test", data_dir=data_dir).tensors(slice(0, batch))
        pipeline = Pipeline.from_spec([(s["name"], dict(s.get("params", {}))) for s in row.stages]) if row.stages else None
        head = features = None
        if row.head == "wnll":
            from purify.wnll import WNLLHead
            head = WNLLHead.load(row.head_params.get("artifact", "resnet56_wnll"), mode=row.head_params.get("mode"))
            with torch.inference_mode():
                features = create_model(row.model, pretrained=True, data_dir=data_dir).features(x)
        gen = torch.Generator().manual_seed(0)

        def median_ms(fn) -> float:
            times = []
            with torch.inference_mode():
                for _ in range(repeats + 1):          # the first run warms caches and kernels up
                    t0 = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - t0)
            return 1000 * sorted(times[1:])[len(times[1:]) // 2] / batch

        ms = 0.0
        if pipeline is not None or head is not None:
            ms += median_ms(lambda: (pipeline.run(x, generator=gen) if pipeline is not None else None,
                                     head.log_scores(features) if head is not None else None))
        if row.retrofit:
            # What the retrofit adds to the classifier: the two timed alternately, the fastest of each
            # (the least disturbed by other work on the machine), their difference.
            from purify.activations import retrofit
            plain = create_model(row.model, pretrained=True, data_dir=data_dir).eval()
            jumpy = retrofit(plain, **row.retrofit).eval()
            best = {"plain": float("inf"), "jumpy": float("inf")}
            with torch.inference_mode():
                for _ in range(2 * repeats + 1):
                    for tag, net in (("plain", plain), ("jumpy", jumpy)):
                        t0 = time.perf_counter()
                        net(x)
                        best[tag] = min(best[tag], time.perf_counter() - t0)
            ms += 1000 * (best["jumpy"] - best["plain"]) / batch
        return ms
    finally:
        torch.set_num_threads(before)


def read_cells(path: Path) -> list[dict[str, Any]]:
    """A results folder's ``cells.csv`` with numbers as numbers (what worst_rows and the flags read)."""
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            for k in ("eps", "accuracy", "clean_accuracy", "wall_s"):
                r[k] = float(r[k]) if r[k] not in ("", "nan") else (float("nan") if r[k] == "nan" else "")
            r["n_images"] = int(r["n_images"])
            rows.append(r)
    return rows


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def row_results(out: Path, settings: dict[str, Any], row: Row) -> dict[str, Any] | None:
    """What the page shows for one row, from its results folders; None when a budget has no results yet."""
    res: dict[str, Any] = {"row": row, "budgets": {}}
    for b in row.budgets:
        folder = out / f"{row.id}-{b['norm']}"
        if not (folder / "cells.csv").is_file():
            return None
        cfg = load_config(out / "configs" / f"{row.id}-{b['norm']}.toml")
        cells = read_cells(folder / "cells.csv")
        (w,) = worst_rows(cfg, cells)
        transfer = [c for c in cells if c["attack"] == "transfer-pgd"]
        res["budgets"][b["norm"]] = {"worst": w, "flags": sanity_flags(cfg, cells, [w]),
                                     "transfer": transfer[0]["accuracy"] if transfer else None}
        res["clean"] = next(c["clean_accuracy"] for c in cells if c["attack"].startswith("worst-"))
        res["n_images"] = w["n_images"]
    return res


_DATASET_TITLES = {"cifar10": "CIFAR-10", "mnist": "MNIST"}


def build_page(out: Path, settings: dict[str, Any], rows: list[Row], pending: dict[str, str],
               costs: dict[str, dict[str, float]], command: str) -> str:
    """``leaderboard.md``: one table per dataset (best worst case first), pending rows, the reading; writes the plot."""
    done = [r for r in (row_results(out, settings, row) for row in rows if row.id not in pending) if r is not None]
    missing = [row for row in rows if row.id not in pending and row.id not in {r["row"].id for r in done}]
    datasets = list(dict.fromkeys(row.dataset for row in rows))
    w = settings["worst"]
    lines = ["# Leaderboard: every defense under the strongest attack that applies", "",
             f"- Command: `{command}`", f"- Machine: {machine()}", f"- Date: {dt.date.today().isoformat()}",
             f"- Images: the {settings.get('split', 'test')} split, {settings.get('count_deterministic')} for "
             f"deterministic defenses, {settings.get('count_randomized')} for randomized ones (seed "
             f"{settings.get('seed', 0)})",
             f"- Worst case: per image, over APGD-CE, APGD-DLR-targeted (top {w.get('n_target_classes')} classes) "
             f"and Square ({w.get('queries')} queries); APGD {w.get('iters')} iterations × {w.get('restarts')} "
             f"restart(s); EOT {w.get('eot_samples')} draws on randomized defenses; BPDA where a stage has no "
             "gradient. These budgets are cut for 2 CPU cores (AutoAttack: 100 iterations, 9 target classes, "
             "5,000 queries); the sanity column says whether twice the budget lowered the figure.",
             "- Cost: the defense's own time per image (stages, and a head over the classifier's features: median "
             "of 3; a retrofit: what it adds to the classifier, the fastest of 7 alternating runs each), batch 64; "
             "the classifier's own time is not included. Measured on the machine above, often while other rows ran."]
    for ds in datasets:
        ds_done = [r for r in done if r["row"].dataset == ds]
        if not ds_done:
            continue
        budgets = ds_done[0]["row"].budgets
        first = budgets[0]["norm"]
        ds_done.sort(key=lambda r: -r["budgets"][first]["worst"]["accuracy"])
        budget_cols = [f"worst {b['norm']} {b['eps']} % [95 %] (by)" for b in budgets]
        lines += ["", f"## {_DATASET_TITLES.get(ds, ds)}", "",
                  "| defense | model | clean % | " + " | ".join(budget_cols) + " | transfer % | cost ms (1 / 2 threads) "
                  "| sanity |", "|---|---|---:|" + "---|" * len(budget_cols) + "---:|---|---|"]
        for r in ds_done:
            lines.append(_table_row(r, costs))
    if pending or missing:
        lines += ["", "Pending rows:", ""]
        lines += [f"- {row.name}: {pending[row.id]}" for row in rows if row.id in pending]
        lines += [f"- {row.name}: not run (or not finished) yet (`--rows {row.id}`)" for row in missing]
    lines += ["", "## Reading", ""]
    for ds in datasets:
        lines += [f"{_DATASET_TITLES.get(ds, ds)}:", "", *_reading([r for r in done if r["row"].dataset == ds], costs), ""]
    flagged = [(r["row"], b["norm"], f) for r in done for b in r["row"].budgets
               for f in r["budgets"][b["norm"]]["flags"] if f["status"] == "FLAG"]
    if flagged:
        lines += ["Sanity flags, with their evidence (a flag says an attack in the ensemble is weaker than it should "
                  "be there; the worst case still takes the strongest cell):", ""]
        lines += [f"- {row.name}, {norm}: {f['check']}: {f['evidence']}" for row, norm, f in flagged]
        lines += [""]
    lines += ["Each row's report (every cell, the flags' evidence): `benchmarks/results/leaderboard/<row>-<norm>/"
              "report.md`; its config: `benchmarks/results/leaderboard/configs/`.", "", "![robust vs clean](leaderboard.png)", ""]
    _plot(done, datasets, out.parent / "leaderboard.png")
    return "\n".join(lines)


def _table_row(r: dict[str, Any], costs: dict[str, dict[str, float]]) -> str:
    row = r["row"]
    cols = []
    for b in row.budgets:
        x = r["budgets"][b["norm"]]["worst"]
        cols.append(f"**{_pct(x['accuracy'])}** [{_pct(x['ci_low'])}, {_pct(x['ci_high'])}] ({x['strongest']})")
    tr = r["budgets"][row.budgets[0]["norm"]]["transfer"]
    flags = [f for b in row.budgets for f in r["budgets"][b["norm"]]["flags"]]
    bad = [f["check"] for f in flags if f["status"] == "FLAG"]
    sanity = "ok" if not bad else "FLAG: " + "; ".join(bad)
    c = costs.get(row.id, {})
    cost = f"{c.get('1', float('nan')):.2f} / {c.get('2', float('nan')):.2f}" if c else "–"
    # a head row names the head's artifact beside the backbone (both are what a user loads)
    model = row.model + (f" + {row.head_params['artifact']}" if row.head_params.get("artifact") else "")
    return (f"| {row.name} | {model} | {_pct(r['clean'])} | " + " | ".join(cols)
            + f" | {_pct(tr) if tr is not None else '–'} | {cost} | {sanity} |")


def _reading(done: list[dict[str, Any]], costs: dict[str, dict[str, float]]) -> list[str]:
    """Does any stack beat the robust reference alone, and at what clean-accuracy and latency cost? From the numbers."""
    ref = next((r for r in done if r["row"].reference), None)
    if ref is None:
        return ["The robust reference has no results yet, so the question this page answers (does any stack beat "
                "it?) is open."]
    first = ref["row"].budgets[0]["norm"]
    rw = ref["budgets"][first]["worst"]
    out = [f"The robust reference alone keeps {_pct(rw['accuracy'])} % [{_pct(rw['ci_low'])}, {_pct(rw['ci_high'])}] "
           f"under the worst case at {first}, with {_pct(ref['clean'])} % clean accuracy."]
    stacks = [r for r in done if r["row"].model == ref["row"].model and not r["row"].reference
              and (r["row"].stages or r["row"].head != "softmax" or r["row"].retrofit)]
    for s in stacks:
        sw = s["budgets"][first]["worst"]
        verdict = ("beats it" if sw["ci_low"] > rw["ci_high"] else "falls below it" if sw["ci_high"] < rw["ci_low"]
                   else "is not distinguishable from it (the intervals overlap)")
        c = costs.get(s["row"].id, {})
        latency = f", {c['1']:.2f} ms per image on one thread" if "1" in c else ""
        out.append(f"- {s['row'].name}: {_pct(sw['accuracy'])} % [{_pct(sw['ci_low'])}, {_pct(sw['ci_high'])}], "
                   f"{verdict}; clean {_pct(s['clean'])} % ({_pct(s['clean'] - ref['clean'])} points){latency}.")
    if not stacks:
        out.append("No stack in front of it has results yet.")
    return out


def _plot(done: list[dict[str, Any]], datasets: list[str], path: Path) -> None:
    """One panel per dataset: worst case at its first budget against clean accuracy, with 95 % intervals."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [ds for ds in datasets if any(r["row"].dataset == ds for r in done)] or datasets[:1]
    fig, axes = plt.subplots(1, len(shown), figsize=(6.5 * len(shown), 4.5), squeeze=False)
    for ax, ds in zip(axes[0], shown):
        rows = [r for r in done if r["row"].dataset == ds]
        norm = rows[0]["row"].budgets[0] if rows else {"norm": "", "eps": ""}
        for r in rows:
            w = r["budgets"][norm["norm"]]["worst"]
            ax.errorbar(100 * r["clean"], 100 * w["accuracy"], yerr=[[100 * (w["accuracy"] - w["ci_low"])],
                        [100 * (w["ci_high"] - w["accuracy"])]], fmt="o", capsize=3)
            ax.annotate(r["row"].id, (100 * r["clean"], 100 * w["accuracy"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
        ax.set_title(f"{_DATASET_TITLES.get(ds, ds)}, {norm['norm']} {norm['eps']}")
        ax.set_xlabel("clean accuracy %")
        ax.set_ylabel("worst-case robust accuracy %")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _store_cost(path: Path, row: Row, data_dir: str | None) -> dict[str, dict[str, float]]:
    """Measure ``row``'s cost at 1 and 2 threads and merge it into ``costs.json``; returns the file's contents."""
    measured = {str(t): measure_cost(row, threads=t, data_dir=data_dir) for t in (1, 2)}
    # Re-read before writing: another leaderboard process may have added its rows meanwhile.
    costs = json.loads(path.read_text()) if path.is_file() else {}
    costs[row.id] = measured
    path.write_text(json.dumps(costs, indent=1) + "\n")
    return costs


def main(argv: list[str] | None = None) -> int:
    from .harness import run

    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks leaderboard", description=__doc__.split("\n")[0])
    p.add_argument("--spec", default=str(DEFAULT_SPEC), help="the rows and budgets (default: benchmarks/leaderboard.toml)")
    p.add_argument("--rows", default=None, help="comma-separated row ids to run (default: all)")
    p.add_argument("--report-only", action="store_true", help="rebuild the page from the results; attack nothing")
    p.add_argument("--measure-costs", action="store_true",
                   help="re-measure the defense costs of the rows (e.g. on a quiet machine), attack nothing")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="the rows' results folder; the page goes beside it")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--cache-dir", default=None,
                   help="the finished cells (default: <out>/cells, committed with the results, so a row that "
                        "outlasts one session or machine resumes where it stopped)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    command = "python -m benchmarks leaderboard " + " ".join(shlex.quote(a) for a in argv)
    try:
        settings, rows = load_leaderboard(Path(args.spec))
        wanted = set(args.rows.split(",")) if args.rows else {r.id for r in rows}
        unknown = wanted - {r.id for r in rows}
        if unknown:
            raise ConfigError(f"--rows: unknown row(s) {sorted(unknown)}; rows: {', '.join(r.id for r in rows)}")
        out = Path(args.out)
        (out / "configs").mkdir(parents=True, exist_ok=True)
        cache_dir = Path(args.cache_dir) if args.cache_dir else out / "cells"
        costs_path = out / "costs.json"
        costs = json.loads(costs_path.read_text()) if costs_path.is_file() else {}
        pending = {}
        for row in rows:
            has_results = all((out / f"{row.id}-{b['norm']}" / "cells.csv").is_file() for b in row.budgets)
            # The page needs no model: a row with results is shown even where its weights are not found.
            reason = None if args.report_only and has_results else _available(row, args.data_dir)
            if reason:
                pending[row.id] = reason
                continue
            for b in row.budgets:
                (out / "configs" / f"{row.id}-{b['norm']}.toml").write_text(to_toml(row_config(settings, row, b)))
            if args.measure_costs and row.id in wanted:
                costs = _store_cost(costs_path, row, args.data_dir)
            if args.report_only or args.measure_costs or row.id not in wanted:
                continue
            for b in row.budgets:
                config = out / "configs" / f"{row.id}-{b['norm']}.toml"
                shown = config.resolve().relative_to(Path.cwd()) if config.resolve().is_relative_to(Path.cwd()) else config
                run(config, data_dir=args.data_dir, out=out / f"{row.id}-{b['norm']}", cache_dir=cache_dir,
                    progress=not args.no_progress, threads=args.threads,
                    command=f"python -m benchmarks run {shown} --data-dir {args.data_dir or '$PURIFY_DATA_DIR'}")
            if row.id not in costs:     # a cost measured before (e.g. on a quiet machine) is kept: --measure-costs
                costs = _store_cost(costs_path, row, args.data_dir)
        page = build_page(out, settings, rows, pending, costs, command)
        (out.parent / "leaderboard.md").write_text(page)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out.parent / 'leaderboard.md'} and {out.parent / 'leaderboard.png'}")
    return 0

