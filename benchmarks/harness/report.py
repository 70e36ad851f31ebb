"""Outputs of a run: ``cells.csv``, ``report.md``, ``accuracy_vs_eps.png`` and ``examples.png``."""

from __future__ import annotations

import csv
import datetime as dt
import math
import os
import platform
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .schema import SUBSTITUTE_SOURCE, THREAT_MODELS, UNDEFENDED_EVAL

__all__ = ["COLUMNS", "machine", "repo_relative", "write_csv", "plotting_unavailable", "plot_accuracy", "plot_examples",
           "write_report"]

#: Columns of cells.csv, in order. Accuracies and rates are fractions in [0, 1]. New columns go at the end,
#: so a reader that goes by position still finds the old ones where they were.
COLUMNS = ("cell", "attack", "attack_name", "norm", "eps", "eps_label", "threat_model", "iters", "eot_samples",
           "params", "n_images", "clean_accuracy", "accuracy", "n_clean_correct", "attack_success_rate",
           "mean_l2", "mean_linf", "max_linf", "rho2", "wall_s", "forwards", "backwards", "adv_correct", "mean_l0",
           "rho2_success", "rhoinf_success", "train_dist")
#: ``adv_correct``: which images the evaluated model still got right after the attack, a hex bitmask in
#: image order (benchmarks.harness.worst.encode_bits); the per-image worst case is computed from it.
#: ``mean_l0``: the mean number of values (of C·H·W) the attack changed, JSMA's norm; empty for a cell read
#: from a cache written before the column existed (its other numbers are still valid, so it is not recomputed).
#: ``rho2_success``: mean ‖δ‖₂ / ‖x‖₂ over the images the attack fooled (``rho2`` is over all images);
#: ``rhoinf_success``: mean ‖δ‖∞ / ‖x‖∞ over them (ART's empirical robustness of an L∞ attack such as FGSM); empty
#: for a cell cached before they existed, nan when the attack fooled none. ``train_dist``: those images' mean
#: distance to their nearest training image, with ``[metrics] training_set_distance`` (benchmarks.harness.metrics).
#: The threat models of the headline's "worst defended" column. Not ``blackbox``: its attacker never
#: sees the target (it has a column of its own, as ``transfer`` has).
DEFENDED = ("transfer", "bpda", "eot", "bpda+eot", "full")
_COLORS = {"none": "black", "transfer": "tab:blue", "bpda": "tab:orange", "eot": "tab:green", "bpda+eot": "tab:red",
           "full": "tab:purple", "substitute": "dimgray", "blackbox": "tab:brown"}


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}, {platform.system()}), "
            f"{torch.get_num_threads()} torch threads, GPU: {gpu}, torch {torch.__version__}, "
            f"Python {platform.python_version()}")


#: The checkout's root: committed pages name its files relative to it, never by this machine's absolute path.
REPO_ROOT = Path(__file__).resolve().parents[2]


def repo_relative(text: str) -> str:
    """``text`` with this checkout's absolute root taken off every path in it (for committed pages).

    Example:
        >>> repo_relative(f"--out {REPO_ROOT / 'runs' / 'repro' / 'm'} --epochs 2")
        '--out runs/repro/m --epochs 2'
    """
    return text.replace(f"{REPO_ROOT}{os.sep}", "")


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k in COLUMNS for v in [r.get(k, "")]})


def _pct(v: Any) -> str:
    return "–" if v is None or v == "" or (isinstance(v, float) and math.isnan(v)) else f"{100 * float(v):.1f}"


def _worst(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    return min(rows, key=lambda r: r["accuracy"]) if rows else None


def _same_eps(a: Any, b: float) -> bool:
    return a != "" and abs(float(a) - b) < 1e-9


def plotting_unavailable() -> str | None:
    """Why this environment cannot draw the plots (matplotlib missing), or None when it can.

    Example:
        >>> plotting_unavailable() is None or "matplotlib" in plotting_unavailable()
        True
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        return (f"matplotlib is not installed ({err}); install it (pip install matplotlib, or the bench extra: "
                "pip install -e \".[bench]\") and run the same command again: the cells are cached, so only the "
                "outputs are made")
    return None


def plot_accuracy(rows: list[dict[str, Any]], clean: dict[str, Any], path: Path) -> None:
    """Accuracy vs eps: one panel per attack, one line per threat model (worst over swept iters / EOT)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps_attacks = list(dict.fromkeys(r["attack"] for r in rows if r["eps"] != ""))
    free = [r for r in rows if r["eps"] == ""]
    panels = len(eps_attacks) + (1 if free else 0)
    cols = min(3, max(panels, 1))
    nrows = -(-max(panels, 1) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.6 * nrows), squeeze=False)
    ref = (("undefended clean", clean["undefended_accuracy"], "gray"),
           ("defended clean", clean["defended_accuracy"], "tab:cyan"))
    ref = tuple(r for r in ref if r[1] is not None)
    for ax, attack in zip(axes.flat, eps_attacks):
        mine = [r for r in rows if r["attack"] == attack]
        for tm in THREAT_MODELS:
            sel = [r for r in mine if r["threat_model"] == tm]
            if not sel:
                continue
            by_eps: dict[float, list[float]] = defaultdict(list)
            for r in sel:
                by_eps[float(r["eps"])].append(100 * r["accuracy"])
            xs = sorted(by_eps)
            style = dict(color=_COLORS[tm], linestyle="--", label=f"{tm} (undefended)") if tm in UNDEFENDED_EVAL \
                else dict(color=_COLORS[tm], label=tm)
            ax.plot(xs, [min(by_eps[e]) for e in xs], marker="o", **style)
        for label, acc, color in ref:
            ax.axhline(100 * acc, color=color, linestyle=":", label=label)
        swept = any(r["iters"] != "" and len({s["iters"] for s in mine}) > 1 or r["eot_samples"] != "" for r in mine)
        ax.set_title(f"{attack} ({mine[0]['norm']})" + (" — worst over iters / EOT" if swept else ""), fontsize=9)
        ax.set_xlabel("eps")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    if free:
        ax = axes.flat[len(eps_attacks)]
        groups = list(dict.fromkeys(r["attack"] for r in free))
        tms = [tm for tm in THREAT_MODELS if any(r["threat_model"] == tm for r in free)]
        width = 0.8 / len(tms)
        for j, tm in enumerate(tms):
            vals = [(_worst([r for r in free if r["attack"] == g and r["threat_model"] == tm]) or {}).get("accuracy")
                    for g in groups]
            ax.bar([i + j * width for i in range(len(groups))], [100 * v if v is not None else 0 for v in vals],
                   width, label=tm, color=_COLORS[tm])
        for label, acc, color in ref:
            ax.axhline(100 * acc, color=color, linestyle=":", label=label)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))], groups)
        ax.set_title("attacks without an eps budget (minimal-norm)", fontsize=9)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 102)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[panels:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_examples(npz: Path, title: str, path: Path) -> None:
    """Rows of (clean, adversarial, purified) images, titled with labels and predictions."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with np.load(npz, allow_pickle=False) as f:
        d = {k: f[k] for k in f.files}
    classes = [str(c) for c in d["classes"]]
    n = len(d["clean"])
    ncols = 3 if bool(d.get("has_defense", True)) else 2
    fig, axes = plt.subplots(n, ncols, figsize=(2.2 * ncols, 2.3 * n + 0.4), squeeze=False)
    for i in range(n):
        lab = classes[d["label"][i]]
        cols = ((d["clean"][i], f"#{d['index'][i]} {lab}\nundefended: {classes[d['clean_pred'][i]]}"),
                (d["adv"][i], f"adversarial\nundefended: {classes[d['adv_pred'][i]]}"),
                (d["purified"][i], f"purified adversarial\ndefended: {classes[d['purified_pred'][i]]}"))[:ncols]
        for ax, (img, text) in zip(axes[i], cols):
            img = np.transpose(img, (1, 2, 0))
            ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray" if img.shape[2] == 1 else None,
                      vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(text, fontsize=7)
            ax.axis("off")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _count(v: Any) -> str:
    """A mean count of changed values: one decimal; – when the row does not carry it."""
    return "–" if v is None or v == "" else f"{float(v):.1f}"


def _opt(v: Any, fmt: str) -> str:
    """A number the row may not carry (a column added after the cell was cached) or that may be nan: – then."""
    return "–" if v is None or v == "" or (isinstance(v, float) and math.isnan(v)) else format(float(v), fmt)


def _num(v: float) -> str:
    """A paper's number as printed there: 94.38, 60.4, 0.0."""
    return f"{v:.2f}" if round(v, 1) != round(v, 2) else f"{v:.1f}"


def _paper_lines(paper: dict[str, Any], rows: list[dict[str, Any]], clean: dict[str, Any]) -> list[str]:
    skipped = 0
    lines = [f"Source: {paper['source']}.", ""]
    if paper.get("note"):
        lines += [paper["note"], ""]
    lines += ["| attack | threat model (ours) | eps | paper | ours | ours − paper |", "|---|---|---|---:|---:|---:|"]
    if paper.get("clean") is not None:
        ours = 100 * clean["undefended_accuracy"]
        lines.append(f"| clean (no attack) | none | 0 | {_num(paper['clean'])} | {ours:.1f} | {ours - paper['clean']:+.1f} |")
    if paper.get("clean_defended") is not None and clean.get("defended_accuracy") is not None:
        ours = 100 * clean["defended_accuracy"]
        lines.append(f"| clean (no attack), defended | – | 0 | {_num(paper['clean_defended'])} | {ours:.1f} | "
                     f"{ours - paper['clean_defended']:+.1f} |")
    for r in paper["results"]:
        label = f" ({r['label']})" if r["label"] else ""
        mine = [x for x in rows if x["attack"] == r["attack"] and x["threat_model"] == r["threat_model"]]
        budget_free = mine and all(x["eps"] == "" for x in mine)
        if not r["eps"] or budget_free:
            w = _worst(mine)
            paper_txt = ", ".join(f"{_num(a)} (eps {e:g})" for a, e in zip(r["accuracy"], r["eps"])) if r["eps"] \
                else _num(r["accuracy"][0])
            diff = f"{100 * w['accuracy'] - r['accuracy'][0]:+.1f}" if w and len(r["accuracy"]) == 1 else "–"
            lines.append(f"| {r['attack']}{label} | {r['threat_model']} | – | {paper_txt} | "
                         f"{_pct(w['accuracy']) if w else 'not run'} | {diff} |")
            continue
        for e, acc in zip(r["eps"], r["accuracy"]):
            w = _worst([x for x in mine if _same_eps(x["eps"], e)])
            if w is None:
                skipped += 1
                continue
            lines.append(f"| {r['attack']}{label} | {r['threat_model']} | {e:g} | {_num(acc)} | {_pct(w['accuracy'])} | "
                         f"{100 * w['accuracy'] - acc:+.1f} |")
        if r["note"]:
            lines.append(f"| | | | {r['note']} | | |")
    if skipped:
        lines += ["", f"({skipped} paper values at eps this run did not cover are left out.)"]
    return lines


def _head_text(cfg) -> str:
    if cfg.head == "softmax":
        return "softmax"
    params = ", ".join(f"{k} {v}" for k, v in cfg.head_params.items())
    through = ("attacks differentiate the WNLL solve" if cfg.attack_through == "head" else
               "attacks differentiate the linear branch (the paper's surrogate); WNLL labels the result")
    return f"WNLL ({params}); {through}. Undefended = no purification, same head"


def _headline(rows: list[dict[str, Any]]) -> list[str]:
    """One row per attack x eps: each single threat model's column, then the worst defended one."""
    keys = list(dict.fromkeys((r["attack"], r["eps_label"]) for r in rows))
    present = {r["threat_model"] for r in rows}
    defended = bool(present & set(DEFENDED))
    cols = ([("undefended (none)", "none")] if defended or "none" in present else []) + \
        ([("transfer", "transfer")] if defended else []) + \
        [(f"{tm} (undefended)" if tm in UNDEFENDED_EVAL else tm, tm) for tm in SUBSTITUTE_SOURCE if tm in present]
    head = [label for label, _ in cols] + (["worst defended", "its threat model"] if defended else [])
    lines = ["| attack | eps | " + " | ".join(head) + " |",
             "|---|---|" + "---:|" * len(cols) + ("---:|---|" if defended else "")]
    for attack, eps in keys:
        sel = [r for r in rows if r["attack"] == attack and r["eps_label"] == eps]
        worst = [_worst([r for r in sel if r["threat_model"] == tm]) for _, tm in cols]
        out = [_pct(w["accuracy"]) if w else "–" for w in worst]
        if defended:
            w = _worst([r for r in sel if r["threat_model"] in DEFENDED])
            how = ""
            if w:
                how = w["threat_model"] + (f", iters={w['iters']}" if w["iters"] != "" else "") + \
                    (f", EOT {w['eot_samples']}" if w["eot_samples"] != "" else "")
            out += [("**" + _pct(w["accuracy"]) + "**") if w else "–", how or "–"]
        lines.append(f"| {attack} | {eps or '–'} | " + " | ".join(out) + " |")
    return lines


def _headline_note(cfg, rows: list[dict[str, Any]]) -> str:
    present = {r["threat_model"] for r in rows}
    if not cfg.stages:
        return ""
    if "blackbox" in present and not present & set(DEFENDED):
        return (" No threat model here attacks the defense (`blackbox` feeds it the substitute's examples), so "
                "there is no worst defended case.")
    return (" The headline of a defense is its *worst* defended threat model (bold), not `transfer`"
            + (" or `blackbox`." if "blackbox" in present else "."))


def _worst_lines(cfg, rows: list[dict[str, Any]]) -> list[str]:
    """The ``[worst]`` headline (per-image worst over the ensemble, 95 % interval) and the sanity checks."""
    from .worst import sanity_flags, worst_rows

    worst = worst_rows(cfg, rows)
    if not worst:
        return []
    w = cfg.worst
    lines = ["## Worst case over an AutoAttack-grade ensemble", "",
             f"Per image, the worst over APGD-CE, APGD-DLR-targeted ({w.n_target_classes} target classes) and "
             f"Square ({w.queries} queries){' and ' + ', '.join(w.include) if w.include else ''}; gradient attacks "
             f"{w.iters} iterations × {w.restarts} restart(s) under {', '.join(w.threat_models)}"
             + (f" (EOT {w.eot_samples} draws)" if any('eot' in t for t in w.threat_models) else "")
             + ". An image counts as robust only if every cell left it correct. Interval: 95 % Wilson.", "",
             "| norm | eps | worst-case accuracy % | 95 % interval | images | strongest single cell (its accuracy) | "
             "images only one cell broke |", "|---|---|---:|---|---:|---|---|"]
    for r in worst:
        decisive = ", ".join(f"{k}: {v}" for k, v in r["decisive"].items()) or "none"
        lines.append(f"| {r['norm']} | {r['eps_label']} | **{_pct(r['accuracy'])}** | [{_pct(r['ci_low'])}, "
                     f"{_pct(r['ci_high'])}] | {r['n_images']} | {r['strongest']} ({_pct(r['strongest_accuracy'])}) "
                     f"| {decisive} |")
    lines += ["", "### Sanity checks (Carlini et al. 2019)", "",
              "| check | status | evidence |", "|---|---|---|"]
    lines += [f"| {f['check']} | {f['status']} | {f['evidence']} |" for f in sanity_flags(cfg, rows, worst)]
    return lines + [""]


def _cache_text(folder: Path | None) -> str:
    """`` in `~/.cache/purify/cells/<name>` ``: the home folder shortened, so reports do not carry a user name;
    a folder inside the checkout (the leaderboard's committed cells) relative to it."""
    if folder is None:
        return ""
    resolved = Path(folder).resolve()
    try:
        shown = resolved.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        try:
            shown = "~/" + resolved.relative_to(Path.home().resolve()).as_posix()
        except ValueError:
            shown = Path(folder).as_posix()
    return f" in `{shown}`"


def write_report(path: Path, *, cfg, prepared, result, command: str, total_wall_s: float,
                 ste: list[str], files: list[str], plots_missing: str | None = None) -> None:
    """``report.md``; ``plots_missing``: why there are no plots (said in the report), or None."""
    rows, clean = result.rows, result.clean
    with_substitute = any(r["threat_model"] in SUBSTITUTE_SOURCE for r in rows)
    substitute = f"; substitute: {cfg.substitute['name']} (pretrained={cfg.substitute['pretrained']})" \
        if with_substitute else ""
    from .loading import describe_data, describe_model
    from .metrics import metrics_lines, metrics_notes

    n = len(prepared.indices)
    data = cfg.data
    chosen = (f"images {data['indices']}" if "indices" in data else
              f"{n} images drawn with seed {data['seed']}" if "count" in data else f"all {n} images")
    stages = " → ".join(f"{s}({', '.join(f'{k}={v}' for k, v in p.items())})" for s, p in cfg.stages) or "none"
    lines = [
        f"# {cfg.name}{' (quick)' if cfg.is_quick else ''}",
        "",
        cfg.description,
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine()}; device used: {prepared.device}",
        f"- Date: {dt.datetime.now().isoformat(timespec='seconds')}",
        f"- Total wall time: {total_wall_s:.1f} s ({len(result.computed)} cells computed, {len(result.cached)} read "
        f"from the cell cache{_cache_text(result.cells_dir)}; cached cells keep the wall time of the run that "
        "computed them)",
        f"- Data: {describe_data(data, tuple(prepared.x.shape[1:]))}, {chosen} (sorted); batch size "
        f"{cfg.batch_size}; seed {cfg.seed}",
        f"- Model: {describe_model(cfg.model)}{substitute}; "
        f"defense: {stages}; head: {_head_text(cfg)}",
        f"- Clean accuracy: undefended {_pct(clean['undefended_accuracy'])}%"
        + (f", defended {_pct(clean['defended_accuracy'])}% (one draw per image)" if cfg.stages else ""),
        *metrics_lines(result.metrics, prepared.training),
        *([f"- **No plots**: {plots_missing}."] if plots_missing else []),
        "",
        "## Headline: worst case over threat models" if cfg.stages else "## Results",
        "",
        "Accuracy in % on the images above." + _headline_note(cfg, rows),
        "",
        *_headline(rows),
        "",
    ]
    lines += _worst_lines(cfg, rows)
    if cfg.paper:
        lines += ["## The paper's numbers next to ours", "", *_paper_lines(cfg.paper, rows, clean), ""]
    lines += [
        "## Every cell", "",
        "| attack | eps | threat model | iters | EOT | accuracy % | success % | mean L2 | mean Linf | max Linf | "
        "mean L0 | rho2 | rho2 success | rho∞ success | train dist | wall s | fwd | bwd |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['attack']} | {r['eps_label'] or '–'} | {r['threat_model']} | {r['iters']} | "
                     f"{r['eot_samples']} | {_pct(r['accuracy'])} | {_pct(r['attack_success_rate'])} | "
                     f"{r['mean_l2']:.3f} | {r['mean_linf']:.4f} | {r['max_linf']:.4f} | {_count(r.get('mean_l0'))} | "
                     f"{r['rho2']:.4f} | {_opt(r.get('rho2_success'), '.4f')} | "
                     f"{_opt(r.get('rhoinf_success'), '.4f')} | {_opt(r.get('train_dist'), '.3f')} | "
                     f"{r['wall_s']:.1f} | {r['forwards']} | {r['backwards']} |")
    lines += ["", "## How these numbers were made", "",
              "- Threat models: `none` attacks and evaluates the undefended classifier; `transfer` evaluates the "
              "defended model on the *same* adversarial examples (made on the undefended classifier, the papers' "
              "protocol); `bpda` attacks classifier(bpda(pipeline)) with an identity backward through the whole "
              "pipeline; `full` differentiates through every stage (the TV solver's unrolled torch iteration); "
              "`eot` / `bpda+eot` average the attack's gradients over n fresh draws of the defense."
              + (" `substitute` attacks the substitute model (trained separately on the same data; a softmax "
                 "classifier whatever the target's head) and evaluates the undefended target on its adversarial "
                 "examples; `blackbox` evaluates the defended model on the *same* examples (black-box transfer, "
                 "the GCLN paper's Table 3). Their attacker never sees the target, so `blackbox` is not part of "
                 "the worst defended case." if with_substitute else ""),
              "- Randomized defenses are evaluated with one fresh draw per image from a `torch.Generator` seeded "
              "by (seed, batch index); the clean and every attacked evaluation of an image use the same draw, so "
              "cells differ by the attack, not by drawing noise. Attack-time draws use separate seeded generators.",
              "- Success % = among the images the evaluated model gets right when clean, the share it gets wrong "
              "after the attack. Norms are of δ = x_adv − x over all images; mean L0 = how many of the "
              "C·H·W values δ changes (– for cells cached before it was recorded); "
              "rho2 = mean ‖δ‖₂ / ‖x‖₂ over all images; rho2 success = the same mean over the images the attack "
              "fooled (right when clean, wrong after it, on the evaluated model), the empirical robustness of "
              "DeepFool and of Zantedeschi et al.'s Eq. (2); rho∞ success = mean ‖δ‖∞ / ‖x‖∞ over the same images, "
              "what ART's `empirical_robustness` computes for an L∞ attack such as FGSM (it divides in the attack's "
              "norm; for images whose brightest value is 1, about the mean eps that fooled them); – when the attack "
              "fooled none or the cell was cached before they were recorded.",
              *(["- `fgsm_minimal` is FGSM at the smallest eps of the grid eps_step, 2·eps_step, … ≤ eps_max that "
                 "changes each image's prediction (one gradient sign at x, ART's `minimal=True`): its rho2 success "
                 "(Eq. (2) as printed) and rho∞ success (ART's computation) are the empirical robustness of "
                 "Zantedeschi et al. An image it never fools within eps_max stays at the last eps of the grid and "
                 "counts in its accuracy, not in either mean; one already wrong when clean is left unchanged."]
                if any(r["attack_name"] == "fgsm_minimal" for r in rows) else []),
              "- fwd / bwd = images forwarded / back-propagated through the attacked model_fn (counted per "
              "draw under EOT; evaluation passes not included). `none` and `transfer` share one attack, as do "
              "`substitute` and `blackbox`, so each pair shows the same cost and overlapping wall time.",
              "- Attacks without a budget (CW-L2, DeepFool, trust region, JSMA) are one cell per threat model; read "
              "them with the mean norm of their own: L2 (or L-inf) for CW-L2, DeepFool and the trust region, L0 for "
              "JSMA, which changes few values by a lot towards a random other class (its bwd counts two passes "
              "per step: the target's Jacobian row and the other classes' sum)."]
    lines += metrics_notes(cfg, prepared.training)
    if ste:
        lines.append(f"- Under `full` / `eot`, stages {', '.join(ste)} ran with the straight-through estimator "
                     "(`ste=True`): their gradient is the identity, their forward value exact.")
    lines += ["", "## Files", "", *[f"- `{f}`" for f in files], ""]
    lines += [f"![{Path(f).stem}]({f})" for f in files if f.endswith(".png")] + [""]
    path.write_text("\n".join(lines))
