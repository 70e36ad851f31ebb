"""``benchmarks/results/deep_defense.md`` from the per-model JSONs of :mod:`benchmarks.deep_defense`.

Every model of the paper's tables gets a row: ours beside the paper's numbers, or "pending" when its
results do not exist yet (the model was not found in the weights directory or the registry).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from .deep_defense import CW_C0, FGS_GRID, HONEST_EPS, METHODS, NETS, PAPER, PGD, REPO, ROBUST_REFS, WORST
from .harness.report import machine, repo_relative

__all__ = ["build_page"]


def _f(v: float | None, fmt: str = ".2f") -> str:
    return "–" if v is None or v != v else format(v, fmt)


def _paper_t1(net: str, sfx: str) -> str:
    p = PAPER.get((net, sfx))
    return "–" if p is None else f"{p['acc']:.2f} / {p['rho2']:.3g} / " + " / ".join(f"{v:.2f}" for v in p["fgs"])


def _paper_t2(net: str, sfx: str) -> str:
    p = PAPER.get((net, sfx))
    return "–" if p is None else "{:.2f} / {:.3g} / {:.2f} / {:.2f}".format(*p["t2"])


def _cw_text(results: dict[str, dict[str, Any]]) -> str:
    runs = sorted({(r["cw"]["binary_search_steps"], r["cw"]["steps"], r["cw"].get("lr")) for r in results.values()
                   if "cw" in r})
    return "; ".join(f"{b} runs of {s} Adam steps at lr {lr}" for b, s, lr in runs) or "–"


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it (the page names no one's home directory)."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _pending(dataset: str, weights_dir: Path) -> str:
    how = f"runs/issue17_{dataset}.sh makes it"
    return f"pending: not in `{_shown(weights_dir)}` nor the registry ({how})"


def _rows(results: dict[str, dict[str, Any]], weights_dir: Path, cells, width: int) -> list[str]:
    """One line per (network, method): ``cells(result)`` -> its cells, or a pending line spanning ``width`` cells."""
    lines = []
    for net, (stem, dataset, label) in NETS.items():
        for sfx, method in METHODS:
            name = stem + sfx
            r = results.get(name)
            body = cells(net, sfx, r) if r is not None else [_pending(dataset, weights_dir)] + ["–"] * (width - 1)
            lines.append(f"| {label} | {method} | `{name}` | " + " | ".join(body) + " |")
    return lines


def _t1(net: str, sfx: str, r: dict[str, Any]) -> list[str]:
    fgs = r.get("fgs_ref")
    accs = [_f(a) for a in fgs["accuracy"]] if fgs else ["pending (no ε_ref)"] * 3
    return [_f(r["clean"]), _f(r["deepfool"]["rho2"], ".3g"), *accs, _paper_t1(net, sfx)]


def _t2(net: str, sfx: str, r: dict[str, Any]) -> list[str]:
    return [_f(r["deepfool"]["l2"]), _f(r["fgs_minimal"]["rhoinf"], ".3g"), _f(r["cw"]["l2"]),
            _f(r["pgd"]["accuracy"]), _paper_t2(net, sfx)]


def _honest(net: str, sfx: str, r: dict[str, Any]) -> list[str]:
    h = r["honest"]
    w = h["worst"]
    return [_f(h["clean"], ".1f"), _f(h["apgd_ce"], ".1f"), _f(h["apgd_t"], ".1f"), _f(h["square"], ".1f"),
            f"**{_f(w['accuracy'], '.1f')}** [{_f(w['ci'][0], '.1f')}, {_f(w['ci'][1], '.1f')}]"]


def build_page(results: dict[str, dict[str, Any]], *, command: str, weights_dir: Path) -> str:
    """The page: protocol, Table 1, Table 2, the honest columns, a reading and the commands."""
    counts = sorted({r["count"] for r in results.values() if "deepfool" in r})
    honest = sorted({r["honest"]["count"] for r in results.values()})
    lines = ["# Deep Defense (Yan et al. 2018): the paper's Table 1 and supplement Table 2, and the honest columns", "",
             f"- Page: `{command}` (each model's own command: the end of this page)", f"- Machine: {machine()}",
             f"- Date: {dt.date.today().isoformat()}",
             f"- Models: the paper's MLP / LeNet (MNIST) and ConvNet (CIFAR-10), `purify.models.paper_nets`; the "
             f"reference trained by project code, then fine-tuned by each method (`runs/issue17_mnist.sh`, `runs/issue17_cifar10.sh`), read "
             f"from `{_shown(weights_dir)}` or the registry. Adv. Train II is in the paper's supplement only (its Fig. 6).",
             f"- Images: the first {', '.join(map(str, counts)) or '–'} test images for Tables 1 and 2 (the paper: all "
             f"10,000); the honest columns on the first {', '.join(map(str, honest)) or '–'}.",
             "- ρ₂: DeepFool L2 (50 iterations, overshoot 0.02, every class, away from the model's prediction), mean "
             "‖Δ‖₂/‖x‖₂ over the images it fooled. ε_ref: the smallest ε at which the Deep Defense model misclassifies "
             "50 % of its FGS images (bisection, to 1e-4); every method of a network is attacked at 0.2 / 0.5 / 1.0 "
             "of it, FGS on the true label.",
             f"- Table 2: ℓ₂ DeepFool = mean ‖Δ‖₂ over the same images; ρ∞ = minimal FGS (grid "
             f"{FGS_GRID['mnist'][0]} MNIST, {FGS_GRID['cifar10'][0]} CIFAR-10), mean ‖Δ‖∞/‖x‖∞ over the correctly "
             f"classified images it fooled; ℓ₂ C&W = library `cw_l2` ({_cw_text(results)}, binary search over c from "
             f"{CW_C0:g}; the paper used CleverHans' with unstated settings), mean ‖Δ‖₂ over the correctly classified "
             "images it fooled; PGD at "
             f"ε {PGD['mnist']['eps']} MNIST ({PGD['mnist']['iters']} steps of {PGD['mnist']['step']}) and "
             f"{PGD['cifar10']['eps']} CIFAR-10 ({PGD['cifar10']['iters']} steps of {PGD['cifar10']['step']}), one "
             "random start.", ""]
    lines += ["## Table 1", "", "| network | method | model | acc % | ρ₂ | FGS @0.2 ε_ref | @0.5 ε_ref | @1.0 ε_ref | "
              "paper: acc / ρ₂ / FGS 0.2, 0.5, 1.0 |", "|---|---|---|---:|---:|---:|---:|---:|---|"]
    lines += _rows(results, weights_dir, _t1, 6)
    lines += ["", "ε_ref (ours): " + "; ".join(
        f"{label} {_f(results[stem + '_dd'].get('eps_ref'), '.4f')}" if stem + "_dd" in results else f"{label} pending"
        for stem, _, label in NETS.values()) + ".", ""]
    lines += ["## Table 2 (supplement)", "", "| network | method | model | ℓ₂ DeepFool | ρ∞ FGS | ℓ₂ C&W | PGD acc % | "
              "paper: ℓ₂ DF / ρ∞ / ℓ₂ C&W / PGD |", "|---|---|---|---:|---:|---:|---:|---|"]
    lines += _rows(results, weights_dir, _t2, 5)
    lines += ["", "## The honest columns: a strong attacker", "",
              f"L∞ ε {HONEST_EPS['mnist']} (MNIST) and 8/255 (CIFAR-10), the leaderboard's budgets: APGD-CE and "
              f"APGD-T (DLR, {WORST['n_target_classes']} target classes) {WORST['iters']} iterations, Square "
              f"{WORST['queries']} queries. Each attack runs on the images every earlier one left standing, so the "
              "columns are cumulative and the last is the worst case per image, with its 95 % Wilson interval. The "
              "last rows are the leaderboard's adversarially trained references, attacked the same way.", "",
              "| network | method | model | clean % | APGD-CE | + APGD-T | + Square | **worst** [95 %] |",
              "|---|---|---|---:|---:|---:|---:|---|"]
    lines += _rows(results, weights_dir, _honest, 5)
    for dataset, (name, label) in ROBUST_REFS.items():
        r = results.get(name)
        body = _honest("", "", r) if r else ["pending: evaluated with its dataset's networks"] + ["–"] * 4
        lines.append(f"| {dataset} reference | {label} | `{name}` | " + " | ".join(body) + " |")
    lines += ["", "## Reading", "", *_reading(results), "", "## Commands", ""]
    for name, r in sorted(results.items()):
        a = r["artifact"]
        lines.append(f"- `{name}` ({repo_relative(a['source'])}, sha256 {a['sha256'][:12]}): `{r['command']}` "
                     f"({r['seconds'] / 60:.1f} min); trained by `{a.get('training_command') or '?'}`")
    return "\n".join(lines) + "\n"


def _reading(results: dict[str, dict[str, Any]]) -> list[str]:
    """What the numbers say, per network with results: Deep Defense against its reference, then against the worst case."""
    out = []
    for net, (stem, dataset, label) in NETS.items():
        ref, dd = results.get(stem), results.get(stem + "_dd")
        if ref is None or dd is None:
            out.append(f"- {label}: pending (needs `{stem}` and `{stem}_dd`).")
            continue
        ours = dd["deepfool"]["rho2"] / ref["deepfool"]["rho2"]
        paper = PAPER[(net, "_dd")]["rho2"] / PAPER[(net, "")]["rho2"]
        robust = results.get(ROBUST_REFS[dataset][0])
        versus = (f"; the adversarially trained `{ROBUST_REFS[dataset][0]}` keeps "
                  f"{robust['honest']['worst']['accuracy']:.1f} %" if robust else "")
        # ℓ₂ / ρ₂ ≈ the images' typical ‖x‖₂: the paper's shows what its inputs were scaled to
        norm_paper = PAPER[(net, "")]["t2"][0] / PAPER[(net, "")]["rho2"]
        norm_ours = ref["deepfool"]["l2"] / ref["deepfool"]["rho2"]
        out.append(f"- {label}: Deep Defense multiplies its reference's ρ₂ by {ours:.2f} (paper {paper:.2f}), clean "
                   f"{ref['clean']:.2f} → {dd['clean']:.2f} % (paper {PAPER[(net, '')]['acc']:.2f} → "
                   f"{PAPER[(net, '_dd')]['acc']:.2f}); under the worst case at L∞ {HONEST_EPS[dataset]:.3g} it keeps "
                   f"{dd['honest']['worst']['accuracy']:.1f} % (reference {ref['honest']['worst']['accuracy']:.1f} %)"
                   f"{versus}. ρ₂ compares with the paper's as a ratio only: its ℓ₂ / ρ₂ puts its images at "
                   f"‖x‖₂ ≈ {norm_paper:.1f}, ours (pixels in [0, 1]) at ≈ {norm_ours:.1f}.")
    return out
