"""The page of :mod:`benchmarks.brelu_gda`: the paper's numbers beside ours, the figures, the pending rows.

``benchmarks/results/brelu_gda.md`` and ``benchmarks/results/brelu_gda/figure{3,4}.png`` are made from
the JSONs in ``benchmarks/results/brelu_gda/`` alone, so ``--report-only`` rebuilds them anywhere.
The paper's numbers are transcribed from Zantedeschi, Nicolae & Rawat (2017), Tables 1-5; its
Figures 3-5 are plots without printed values, so only their points that a table repeats (ε = 0.1
for FGSM) are shown beside our curves.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

from .brelu_gda import ARCHS, CW, DEEPFOOL, DEFENSES, ENTRIES, EPS_GRID, JSMA, MINIMAL, PGD, TABLE_EPS, WORST
from .harness.report import machine

__all__ = ["PAPER_TABLE1", "PAPER_TABLE2", "PAPER_TABLE3", "PAPER_TABLE4", "PAPER_TABLE5", "build_page", "write_page"]

#: Table 1 (MNIST, FGSM ε 0.1): rows crafted on, columns tested on, in ARCHS order. The printed header
#: reads "Tested on / Crafted on"; the columns are the targets (the text: "the CNN retains an accuracy
#: higher than 90 % in all black-box attacks", true of its columns only, and Table 4's 94.46 is row ResNet, column CNN).
PAPER_TABLE1 = {"cnn_mnist": (73.88, 90.16, 89.49, 88.26), "cnn_mnist_brelu": (94.00, 87.74, 90.73, 90.02),
                "resnet_mnist": (94.46, 93.65, 61.88, 75.94), "resnet_mnist_brelu": (94.21, 93.91, 78.70, 58.51)}
#: Table 2: accuracy %, robustness, training set distance.
PAPER_TABLE2 = {"cnn_mnist": (52.07, 0.202, 3.90), "cnn_mnist_fs": (35.61, 0.143, 3.01), "cnn_mnist_ls": (37.06, 0.152, 3.18),
                "cnn_mnist_fgsm_at": (56.44, 0.226, 4.33), "cnn_mnist_vat": (73.32, 0.308, 6.64),
                "cnn_mnist_gda": (73.96, 0.440, 10.36), "cnn_mnist_gda_brelu": (69.56, 0.471, 9.31)}
#: Table 3: local loss sensitivity.
PAPER_TABLE3 = {"cnn_mnist": 0.0609, "cnn_mnist_fs": 0.1215, "cnn_mnist_ls": 0.2289, "cnn_mnist_fgsm_at": 0.0748,
                "cnn_mnist_vat": 0.0741, "cnn_mnist_gda": 0.0244, "cnn_mnist_gda_brelu": 0.0753}
#: Tables 4 (MNIST) and 5 (CIFAR-10): black-box accuracy %, FGSM, Rand+FGSM, DeepFool, JSMA, C&W.
PAPER_TABLE4 = {"cnn_mnist": (94.46, 40.70, 92.95, 97.95, 93.10), "cnn_mnist_fs": (96.31, 91.09, 96.68, 97.48, 96.75),
                "cnn_mnist_ls": (86.79, 20.28, 84.58, 95.86, 84.81), "cnn_mnist_fgsm_at": (91.86, 49.77, 85.91, 98.62, 97.71),
                "cnn_mnist_vat": (97.53, 74.35, 96.03, 98.26, 96.11), "cnn_mnist_gda": (98.47, 80.25, 97.84, 98.96, 97.87),
                "cnn_mnist_gda_brelu": (98.08, 75.50, 98.00, 98.88, 98.03)}
PAPER_TABLE5 = {"CNN": (51.55, 57.22, 77.76, 76.85, 77.79), "Feature squeezing": (52.98, 61.83, 73.82, 73.28, 73.75),
                "Label smoothing": (49.90, 56.68, 75.80, 74.78, 75.66),
                "FGSM adversarial training": (51.94, 63.25, 71.17, 70.48, 71.02), "VAT": (44.16, 56.47, 68.94, 68.21, 68.47),
                "GDA + ReLU": (59.96, 71.93, 76.80, 76.45, 76.61), "GDA + BReLU": (55.65, 69.43, 74.97, 74.73, 74.78)}
ATTACKS4 = ("fgsm", "rand_fgsm", "deepfool", "jsma", "cw")
HONEST = ("clean", "fgsm", "rand_fgsm", "pgd", "apgd_ce", "apgd_t", "apgd_ce_smooth", "square")
#: CIFAR-10 models (Figure 5, Table 5): the training command pattern, one per defense.
CIFAR_RECIPES = {"CNN": "--recipe standard", "Feature squeezing": "(the CNN, behind 3-bit depth reduction)",
                 "Label smoothing": "--recipe label_smoothing", "FGSM adversarial training": "--recipe fgsm_at",
                 "VAT": "--recipe vat", "GDA + ReLU": "--recipe gda", "GDA + BReLU": "--activation brelu --recipe gda"}
CURVES = (("fgsm", "whitebox", "FGSM, white-box"), ("rand_fgsm", "whitebox", "Rand+FGSM (α 0.05), white-box"),
          ("fgsm", "blackbox", "FGSM, black-box (crafted on ResNet + ReLU)"),
          ("rand_fgsm", "blackbox", "Rand+FGSM (α 0.05), black-box (crafted on ResNet + ReLU)"))


def _f(v: float | None, nd: int = 2) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def _part(results: dict[str, Any], i: str, part: str) -> dict[str, Any] | None:
    p = results.get(i, {}).get("parts", {}).get(part)
    return None if p is None else p["result"]


def _pending(i: str) -> str:
    return f"pending: `{ENTRIES[i].artifact}` not trained yet (runs/issue16_mnist.sh)"


def load_results(out: Path) -> dict[str, Any]:
    """The JSONs of ``out`` by id (the models', and ``table1``)."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}


# ----------------------------------------------------------------------------- sections

def _header(results: dict[str, Any], command: str) -> list[str]:
    counts = sorted({p["count"] for r in results.values() for n, p in r.get("parts", {}).items() if n != "honest"})
    honest = sorted({r["parts"]["honest"]["count"] for r in results.values() if "honest" in r.get("parts", {})})
    slow = sorted({r["parts"]["blackbox"]["slow_count"] for r in results.values() if "blackbox" in r.get("parts", {})})
    lines = ["# Bounded ReLU and Gaussian data augmentation: the paper's MNIST tables, and the honest columns", "",
             "Zantedeschi, Nicolae & Rawat (2017), \"Efficient defenses against adversarial attacks\". Paper numbers "
             "in parentheses or in their own column; ours from the models of `runs/issue16_mnist.sh`.", "",
             f"- Page: `{command}` (each part's own command and time: the end of this page)",
             f"- Machine: {machine()}", f"- Date: {dt.date.today().isoformat()}",
             f"- Images: the first {', '.join(map(str, counts)) or '–'} MNIST test images; the honest columns on the first "
             f"{', '.join(map(str, honest)) or '–'}; black-box JSMA and C&W on the first {', '.join(map(str, slow)) or '–'}.",
             "- Models: the paper's CNN and ResNet (`purify.models.paper_nets`), ReLU or bounded ReLU (t = 1), trained "
             "by `python -m purify.training.adversarial` with a 6-epoch budget (GDA: 3 epochs over ten noisy copies, "
             "σ 0.3); feature squeezing = the ReLU CNN behind 1-bit depth reduction (the paper's FS on MNIST), attacked "
             "through BPDA (identity backward, ART's convention for the squeezer).",
             f"- Attacks: FGSM / Rand+FGSM over ε ∈ {{{', '.join(f'{e:g}' for e in EPS_GRID)}}}, Rand+FGSM's random "
             "step α = min(0.05, ε) (pure noise for ε ≤ 0.05, as the paper notes). Table 4: FGSM ε "
             f"{TABLE_EPS['fgsm']:g}; Rand+FGSM ε {TABLE_EPS['rand_fgsm']:g} (the paper does not state it; Tramèr et "
             f"al.'s MNIST setting); DeepFool {DEEPFOOL['max_iter']} iterations; JSMA θ {JSMA['theta']:g}, γ "
             f"{JSMA['gamma']:g}, a random target ≠ the label; C&W L2 confidence {CW['kappa']:g}, {CW['binary_search_steps']} "
             f"binary-search runs × {CW['steps']} Adam steps (lr {CW['lr']:g}, c from {CW['c']:g}) — the authors' code "
             "runs 9 × 10,000, out of reach on 2 CPU cores.", ""]
    lines += ["## Models", "", "| id | artifact | recipe | activation | clean % (its own 2,000-image test) | sha256 |",
              "|---|---|---|---|---:|---|"]
    for i in ENTRIES:
        r = results.get(i)
        if r is None:
            lines.append(f"| {i} | {ENTRIES[i].artifact} | {_pending(i)} | | | |")
            continue
        sq = f" + {r['bits']}-bit squeezing" if r.get("bits") else ""
        recipe = (r.get("recipe") or {}).get("name", "?")
        lines.append(f"| {i} | {r['artifact']}{sq} | {recipe} | {r.get('arch', {}).get('activation', '?')} | "
                     f"{_f(r.get('artifact_test_clean'))} | {r['sha256'][:12]} |")
    return lines + [""]


def _table1(results: dict[str, Any]) -> list[str]:
    lines = ["## Table 1: FGSM (ε 0.1) transfer between architectures", "",
             "Rows: crafted on; columns: tested on (the diagonal is white-box). Accuracy %, ours (paper).", "",
             "| crafted on \\ tested on | " + " | ".join(ARCHS.values()) + " |", "|---|" + "---:|" * len(ARCHS)]
    t1 = _part(results, "table1", "table1")
    for k, (src, label) in enumerate(ARCHS.items()):
        cells = []
        for j, dst in enumerate(ARCHS):
            ours = f"**{t1[src][dst]:.2f}**" if t1 is not None else "pending"
            cells.append(f"{ours} ({PAPER_TABLE1[src][j]:.2f})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if t1 is None:
        missing = [a for a in ARCHS if a not in results]
        lines += ["", f"Pending until every architecture is trained (missing: {', '.join(missing) or 'none'})."]
    return lines + [""]


def _curve_table(results: dict[str, Any], ids: dict[str, str], kind: str, part: str, anchors: dict[str, float],
                 anchor_eps: float | None) -> list[str]:
    head = "| model | clean | " + " | ".join(f"{e:g}" for e in EPS_GRID) + " | paper |"
    lines = [head, "|---|" + "---:|" * (len(EPS_GRID) + 2)]
    for i, label in ids.items():
        p = _part(results, i, part)
        wb = _part(results, i, "whitebox")
        paper = f"{anchors[i]:.2f} at ε {anchor_eps:g}" if i in anchors and anchor_eps is not None else "–"
        if p is None:
            lines.append(f"| {label} | {_pending(i) if i not in results else 'pending'} |" + " |" * len(EPS_GRID) + f" {paper} |")
            continue
        clean = _f(wb["clean"], 1) if wb else "–"
        lines.append(f"| {label} | {clean} | " + " | ".join(_f(p[kind][f'{e:g}'], 1) for e in EPS_GRID) + f" | {paper} |")
    return lines + [""]


def _figures_text(results: dict[str, Any]) -> list[str]:
    diag = {a: PAPER_TABLE1[a][k] for k, a in enumerate(ARCHS)}
    lines = ["## Figure 3: white-box FGSM accuracy vs ε, the four architectures", "",
             "![Figure 3](brelu_gda/figure3.png)", "", "Accuracy %; the paper's only printed points are Table 1's diagonal (ε 0.1).", ""]
    lines += _curve_table(results, ARCHS, "fgsm", "whitebox", diag, 0.1)
    lines += ["## Figure 4: the defenses under FGSM and Rand+FGSM, white-box and black-box (MNIST)", "",
              "![Figure 4](brelu_gda/figure4.png)", "",
              "White-box: through each model's own gradient (BPDA through the squeezer). Black-box: the images crafted "
              "on ResNet + ReLU (no defense), evaluated on each defense. The paper's printed points: Table 4 (FGSM ε 0.1; "
              f"Rand+FGSM at ε {TABLE_EPS['rand_fgsm']:g}, our reading of its unstated ε).", ""]
    t4 = {a: {i: PAPER_TABLE4[i][k] for i in DEFENSES} for k, a in enumerate(ATTACKS4)}
    for kind, part, title in CURVES:
        anchors, eps = (t4[kind], TABLE_EPS[kind]) if part == "blackbox" else ({}, None)
        lines += [f"### {title}", ""] + _curve_table(results, DEFENSES, kind, part, anchors, eps)
    lines += ["## Figure 5 and Table 5: CIFAR-10 (pending)", "",
              "The paper's CIFAR-10 models are not trained yet, so every row is pending. Training command pattern "
              "(the paper's CNN on CIFAR-10: GDA σ 0.05, FGSM-AT ε 0.05, FS = 3-bit depth reduction):", "",
              "    python -m purify.training.adversarial --data-dir ../shared/data --dataset cifar10 --model cnn_cifar10 "
              "<recipe> --out runs/cifar16/<name> --threads 1 --resume", "",
              "| defense | recipe flags | Table 5, paper: FGSM | Rand+FGSM | DeepFool | JSMA | C&W | ours |",
              "|---|---|---:|---:|---:|---:|---:|---|"]
    for label, vals in PAPER_TABLE5.items():
        lines.append(f"| {label} | {CIFAR_RECIPES[label]} | " + " | ".join(f"{v:.2f}" for v in vals) + " | pending |")
    return lines + ["", "(The black-box source is `--model resnet_cifar10 --recipe standard`.)", ""]


def _tables234(results: dict[str, Any]) -> list[str]:
    lines = ["## Table 2: white-box FGSM with minimal perturbation", "",
             f"FGSM at ε = {MINIMAL['eps_step']:g}, {2 * MINIMAL['eps_step']:g}, … up to {MINIMAL['eps_max']:g} (the "
             "defaults of the Adversarial Robustness Toolbox's minimal FGSM, the authors' toolbox; a grid up to ε = 1 "
             "fools every image of our CNN, so the paper's 35-74 % cannot come from one), per image the first ε that "
             "changes the prediction. **Accuracy** (our reading): the accuracy on the attack's output, i.e. the share "
             f"of images that no ε ≤ {MINIMAL['eps_max']:g} fooled. **ρ₂** = mean ‖Δ‖₂/‖x‖₂ over the fooled images (the paper's Eq. 2); "
             "ρ∞ = the same in L∞ (ART's reading: about the mean ε that fooled). **Train dist** = mean L2 distance of "
             "the fooled images' adversarial examples to the nearest of the 60,000 training images (pixels in [0, 1]); "
             "clean = the same images before the attack.", "",
             "| defense | accuracy % (paper) | ρ₂ (paper) | ρ∞ | train dist (paper) | clean train dist | fooled / correct |",
             "|---|---|---|---:|---|---:|---:|"]
    for i, label in DEFENSES.items():
        p, (pa, pr, pd) = _part(results, i, "minimal"), PAPER_TABLE2[i]
        if p is None:
            lines.append(f"| {label} | pending ({pa:.2f}) | ({pr:.3f}) | | ({pd:.2f}) | | |")
            continue
        lines.append(f"| {label} | **{p['accuracy']:.2f}** ({pa:.2f}) | **{_f(p['rho2'], 3)}** ({pr:.3f}) | "
                     f"{_f(p['rhoinf'], 3)} | **{_f(p['train_dist'])}** ({pd:.2f}) | {_f(p['clean_train_dist'])} | "
                     f"{p['fooled']} / {p['correct']} |")
    lines += ["", "## Table 3: local loss sensitivity", "",
              "Mean ‖∂CE(x, y)/∂x‖₂ over the clean test images (pixels in [0, 1]; for feature squeezing the classifier's "
              "gradient at the squeezed image, passed back through BPDA).", "",
              "| defense | ours | paper |", "|---|---:|---:|"]
    for i, label in DEFENSES.items():
        p = _part(results, i, "sensitivity")
        ours = "pending" if p is None else f"**{p['sensitivity']:.4f}**"
        lines.append(f"| {label} | {ours} | {PAPER_TABLE3[i]:.4f} |")
    lines += ["", "## Table 4: black-box accuracy (crafted on ResNet + ReLU), MNIST", "",
              "Accuracy %, ours (paper).", "",
              "| defense | FGSM | Rand+FGSM | DeepFool | JSMA | C&W |", "|---|---|---|---|---|---|"]
    for i, label in DEFENSES.items():
        p = _part(results, i, "blackbox")
        cells = [("pending" if p is None else f"**{p['table4'][a]:.2f}**") + f" ({PAPER_TABLE4[i][k]:.2f})"
                 for k, a in enumerate(ATTACKS4)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines + [""]


def _honest(results: dict[str, Any]) -> list[str]:
    lines = ["## The honest columns: attacks that know the defense (L∞ 0.3)", "",
             "The paper's white-box FGSM and Rand+FGSM (α 0.05) at ε 0.3, then PGD "
             f"({PGD['iters']} steps of {PGD['step']:g}, random start), APGD-CE and APGD-T ({WORST['iters']} iterations, "
             f"{WORST['n_target_classes']} target classes) and Square ({WORST['queries']} queries, no gradients), "
             "AutoAttack's way: each attack on the images all earlier ones left, so each column is cumulative and the "
             "last is the worst case per image, with its 95 % Wilson interval. Exact gradients (the bounded ReLU's "
             "own); for feature squeezing BPDA through the 1-bit squeezer, with the identity as its backward, then "
             "APGD-CE once more with a smooth staircase as the backward (`purify.squeeze.bit_depth_surrogate`, "
             "temperature 0.1: its gradient sits on the pixels a step of ε can move across the threshold; "
             "\"smooth\" column, – where it does not apply), and Square on the true pipeline.", "",
             "| defense | n | clean | FGSM | + Rand+FGSM | + PGD | + APGD-CE | + APGD-T | + APGD-CE smooth | + Square "
             "| **worst** [95 %] |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for i, label in DEFENSES.items():
        h = _part(results, i, "honest")
        if h is None:
            lines.append(f"| {label} | {_pending(i) if i not in results else 'pending'} |" + " |" * 9)
            continue
        w = h["worst"]
        lines.append(f"| {label} | {w['count']} | " + " | ".join(f"{h[k]:.1f}" if k in h else "–" for k in HONEST)
                     + f" | **{w['accuracy']:.1f}** [{w['ci'][0]:.1f}, {w['ci'][1]:.1f}] |")
    return lines + [""]


def _reading(results: dict[str, Any]) -> list[str]:
    """Facts computed from the numbers, for the lead's reading; no interpretation."""
    facts = []
    base = _part(results, "cnn_mnist", "honest")
    for i, label in DEFENSES.items():
        h, wb, bb = (_part(results, i, p) for p in ("honest", "whitebox", "blackbox"))
        if h is None or wb is None:
            continue
        w = h["worst"]
        text = (f"- {label}: clean {wb['clean']:.1f} %; white-box FGSM ε 0.3 (the paper's protocol) "
                f"{_f(wb['fgsm'].get('0.3'), 1)} % ({h['fgsm']:.1f} % on the honest columns' images); worst case at "
                f"L∞ 0.3 {w['accuracy']:.1f} % "
                f"[{w['ci'][0]:.1f}, {w['ci'][1]:.1f}] ({w['robust']}/{w['count']})")
        if bb is not None:
            text += f"; black-box FGSM ε 0.1 {bb['table4']['fgsm']:.1f} % (paper {PAPER_TABLE4[i][0]:.2f})"
        if base is not None and i != "cnn_mnist":
            b = base["worst"]
            overlap = w["ci"][0] <= b["ci"][1] and b["ci"][0] <= w["ci"][1]
            text += (f"; worst case {w['accuracy'] - b['accuracy']:+.1f} points against the CNN "
                     f"(intervals {'overlap' if overlap else 'disjoint'})")
        facts.append(text + ".")
    for table, part, key, paper, nd in (("Table 2 ρ₂", "minimal", "rho2", {i: v[1] for i, v in PAPER_TABLE2.items()}, 3),
                                        ("Table 3", "sensitivity", "sensitivity", PAPER_TABLE3, 4)):
        ours = {i: _part(results, i, part)[key] for i in DEFENSES if _part(results, i, part) is not None}
        if len(ours) > 1:
            rank = lambda d: ", ".join(DEFENSES[i] for i in sorted(d, key=d.get, reverse=True))  # noqa: E731
            facts.append(f"- {table}, largest first: ours {rank(ours)}; paper (same models) "
                         f"{rank({i: paper[i] for i in ours})}.")
    diffs = [abs(_part(results, i, "blackbox")["table4"][a] - PAPER_TABLE4[i][k]) for i in DEFENSES
             if _part(results, i, "blackbox") is not None for k, a in enumerate(ATTACKS4)]
    if diffs:
        facts.append(f"- Table 4: mean |ours − paper| over {len(diffs)} cells {sum(diffs) / len(diffs):.1f} points, "
                     f"largest {max(diffs):.1f}.")
    return ["## Reading", "", "What GDA and bounded ReLU buy, computed from the tables above: against the paper's own "
            "one-step attacks each defense is compared with the undefended CNN; against the honest columns (an "
            "attacker who knows the model) the worst case per image is what a deployment keeps.", "",
            *(facts or ["- (no results yet)"]), ""]


def _commands(results: dict[str, Any]) -> list[str]:
    lines = ["## Commands and times", "", "| model | part | images | seconds | command |", "|---|---|---:|---:|---:|"]
    commands: list[str] = []
    for i, r in results.items():
        for name, p in r.get("parts", {}).items():
            if p["command"] not in commands:
                commands.append(p["command"])
            lines.append(f"| {i} | {name} | {p['count']} | {p['seconds']:.0f} | {commands.index(p['command']) + 1} |")
    return lines + ["", *(f"{k}. `{c}`" for k, c in enumerate(commands, 1)), ""]


def build_page(results: dict[str, Any], command: str) -> str:
    """``benchmarks/results/brelu_gda.md`` from the parsed JSONs (:func:`load_results`)."""
    lines = (_header(results, command) + _table1(results) + _figures_text(results) + _tables234(results)
             + _honest(results) + _reading(results) + _commands(results))
    return "\n".join(lines)


def _plot_curves(ax: Any, results: dict[str, Any], ids: dict[str, str], kind: str, part: str,
                 anchors: dict[str, float], anchor_eps: float | None, title: str) -> None:
    for k, (i, label) in enumerate(ids.items()):
        p, wb = _part(results, i, part), _part(results, i, "whitebox")
        color = f"C{k}"
        if i in anchors and anchor_eps is not None:
            ax.plot([anchor_eps], [anchors[i]], "x", ms=8, color=color)
        if p is None or wb is None:
            continue
        ax.plot([0.0, *EPS_GRID], [wb["clean"], *(p[kind][f"{e:g}"] for e in EPS_GRID)], "o-", ms=3, color=color, label=label)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("ε")
    ax.set_ylabel("accuracy %")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)


def plot_figures(results: dict[str, Any], folder: Path) -> list[Path]:
    """``figure3.png`` (the architectures) and ``figure4.png`` (the defenses, 2 x 2 panels); × = the paper's table values."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    _plot_curves(ax, results, ARCHS, "fgsm", "whitebox", {a: PAPER_TABLE1[a][k] for k, a in enumerate(ARCHS)}, 0.1,
                 "Figure 3: white-box FGSM, MNIST (× paper, Table 1)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "figure3.png", dpi=110)
    plt.close(fig)
    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    t4 = {a: {i: PAPER_TABLE4[i][k] for i in DEFENSES} for k, a in enumerate(ATTACKS4)}
    for ax, (kind, part, title) in zip(axes.flat, CURVES):
        anchors, eps = (t4[kind], TABLE_EPS[kind]) if part == "blackbox" else ({}, None)
        _plot_curves(ax, results, DEFENSES, kind, part, anchors, eps, title.replace("crafted on", "from"))
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("Figure 4: defenses on MNIST (× the paper's Table 4)")
    fig.tight_layout()
    fig.savefig(folder / "figure4.png", dpi=110)
    plt.close(fig)
    return [folder / "figure3.png", folder / "figure4.png"]


def write_page(out: Path, command: str) -> Path:
    """Write ``<out>.md`` (``benchmarks/results/brelu_gda.md`` for the default ``out``) and the figures in ``out``."""
    results = load_results(out) if out.is_dir() else {}
    plot_figures(results, out)
    page = out.parent / f"{out.name}.md"
    page.write_text(build_page(results, command))
    return page
