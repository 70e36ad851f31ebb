"""The page of :mod:`benchmarks.brelu_gda`: the paper's numbers beside ours, the figures, the pending rows.

``benchmarks/results/brelu_gda.md`` and ``benchmarks/results/brelu_gda/figure{3,4,5}.png`` are made from
the JSONs in ``benchmarks/results/brelu_gda/`` (MNIST) and its ``cifar10/`` subfolder alone, so
``--report-only`` rebuilds them anywhere. The MNIST half comes first, then the CIFAR-10 section.
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

from .brelu_gda_settings import CIFAR10, CW, DEEPFOOL, JSMA, MINIMAL, MNIST, WORST, DatasetSettings
from .harness.report import machine

__all__ = ["PAPER_TABLE1", "PAPER_TABLE2", "PAPER_TABLE3", "PAPER_TABLE4", "PAPER_TABLE5", "build_page", "write_page"]

ARCHS, DEFENSES = MNIST.archs, MNIST.defenses

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
PAPER_TABLE5 = {"cnn_cifar10": (51.55, 57.22, 77.76, 76.85, 77.79), "cnn_cifar10_fs": (52.98, 61.83, 73.82, 73.28, 73.75),
                "cnn_cifar10_ls": (49.90, 56.68, 75.80, 74.78, 75.66),
                "cnn_cifar10_fgsm_at": (51.94, 63.25, 71.17, 70.48, 71.02),
                "cnn_cifar10_vat": (44.16, 56.47, 68.94, 68.21, 68.47),
                "cnn_cifar10_gda": (59.96, 71.93, 76.80, 76.45, 76.61),
                "cnn_cifar10_gda_brelu": (55.65, 69.43, 74.97, 74.73, 74.78)}
#: Each data set's black-box table (the part's key is ``ds.table``).
PAPER_BLACKBOX = {"mnist": PAPER_TABLE4, "cifar10": PAPER_TABLE5}
ATTACKS4 = ("fgsm", "rand_fgsm", "deepfool", "jsma", "cw")
HONEST = ("clean", "fgsm", "rand_fgsm", "pgd", "apgd_ce", "apgd_t", "apgd_ce_smooth", "square")
CURVES = (("fgsm", "whitebox", "FGSM, white-box"), ("rand_fgsm", "whitebox", "Rand+FGSM (α 0.05), white-box"),
          ("fgsm", "blackbox", "FGSM, black-box (crafted on ResNet + ReLU)"),
          ("rand_fgsm", "blackbox", "Rand+FGSM (α 0.05), black-box (crafted on ResNet + ReLU)"))


def _f(v: float | None, nd: int = 2) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def _budget(v: float, ds: DatasetSettings) -> str:
    """An L∞ budget of the honest columns as the page writes it (CIFAR-10: in steps of 1/255)."""
    return f"{v * 255:g}/255" if ds.per255 else f"{v:g}"


def _bits(ds: DatasetSettings) -> int:
    return next(e.bits for e in ds.entries.values() if e.bits)


def _part(results: dict[str, Any], i: str, part: str) -> dict[str, Any] | None:
    p = results.get(i, {}).get("parts", {}).get(part)
    return None if p is None else p["result"]


def _pending(i: str, ds: DatasetSettings = MNIST) -> str:
    return f"pending: `{ds.entries[i].artifact}` not trained yet ({ds.script})"


def load_results(out: Path) -> dict[str, Any]:
    """The JSONs of ``out`` by id (the models', and ``table1``)."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}


# ----------------------------------------------------------------------------- sections

def _images(results: dict[str, Any], ds: DatasetSettings) -> str:
    counts = sorted({p["count"] for r in results.values() for n, p in r.get("parts", {}).items() if n != "honest"})
    honest = sorted({r["parts"]["honest"]["count"] for r in results.values() if "honest" in r.get("parts", {})})
    slow = sorted({r["parts"]["blackbox"]["slow_count"] for r in results.values() if "blackbox" in r.get("parts", {})})
    return (f"- Images: the first {', '.join(map(str, counts)) or '–'} {ds.label} test images; the honest columns "
            f"on the first {', '.join(map(str, honest)) or '–'}; black-box JSMA and C&W on the first "
            f"{', '.join(map(str, slow)) or '–'}.")


def _models(results: dict[str, Any], ds: DatasetSettings, heading: str) -> list[str]:
    lines = [heading, "", "| id | artifact | recipe | activation | epochs (peak lr) | clean % (its own 2,000-image "
             "test) | sha256 |", "|---|---|---|---|---:|---:|---|"]
    for i, e in ds.entries.items():
        r = results.get(i)
        if r is None:
            lines.append(f"| {i} | {e.artifact} | {_pending(i, ds)} | | | | |")
            continue
        sq = f" + {r['bits']}-bit squeezing" if r.get("bits") else ""
        recipe = r.get("recipe") or {}
        copies = f", {recipe['copies']} noisy copies" if "copies" in recipe else ""
        train = r.get("training") or {}         # absent from results stored before it was recorded
        epochs = f"{train['epochs']} ({train['lr']:g})" if train.get("epochs") else "–"
        lines.append(f"| {i} | {r['artifact']}{sq} | {recipe.get('name', '?')}{copies} | "
                     f"{r.get('arch', {}).get('activation', '?')} | {epochs} | {_f(r.get('artifact_test_clean'))} | "
                     f"{r['sha256'][:12]} |")
    return lines + [""]


def _attacks_shared() -> str:
    return (f"DeepFool {DEEPFOOL['max_iter']} iterations; JSMA θ {JSMA['theta']:g}, γ {JSMA['gamma']:g}, a random "
            f"target ≠ the label; C&W L2 confidence {CW['kappa']:g}, {CW['binary_search_steps']} binary-search runs × "
            f"{CW['steps']} Adam steps (lr {CW['lr']:g}, c from {CW['c']:g}) — the authors' code runs 9 × 10,000, "
            "out of reach on 2 CPU cores.")


def _header(results: dict[str, Any], command: str) -> list[str]:
    ds = MNIST
    lines = ["# Bounded ReLU and Gaussian data augmentation: the paper's MNIST and CIFAR-10 tables, and the honest "
             "columns", "",
             "Zantedeschi, Nicolae & Rawat (2017), \"Efficient defenses against adversarial attacks\". Paper numbers "
             f"in parentheses or in their own column; ours from the models of `{ds.script}` (CIFAR-10: "
             f"`{CIFAR10.script}`, its own section below).", "",
             f"- Page: `{command}` (each part's own command and time: the end of this page)",
             f"- Machine: {machine()}", f"- Date: {dt.date.today().isoformat()}", _images(results, ds),
             "- Models: the paper's CNN and ResNet (`purify.models.paper_nets`), ReLU or bounded ReLU (t = 1), trained "
             "by `python -m purify.training.adversarial` with a 6-epoch budget (GDA: 3 epochs over ten noisy copies, "
             f"σ 0.3); feature squeezing = the ReLU CNN behind {_bits(ds)}-bit depth reduction (the paper's FS on "
             "MNIST), attacked through BPDA (identity backward, ART's convention for the squeezer).",
             f"- Attacks: FGSM / Rand+FGSM over ε ∈ {{{', '.join(f'{e:g}' for e in ds.eps_grid)}}}, Rand+FGSM's random "
             f"step α = min({ds.alpha:g}, ε) (pure noise for ε ≤ {ds.alpha:g}, as the paper notes). Table 4: FGSM ε "
             f"{ds.table_eps['fgsm']:g}; Rand+FGSM ε {ds.table_eps['rand_fgsm']:g} (the paper does not state it; "
             f"Tramèr et al.'s MNIST setting); {_attacks_shared()}", ""]
    return lines + _models(results, ds, "## Models")


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
                 anchor_eps: float | None, ds: DatasetSettings = MNIST) -> list[str]:
    grid = ds.eps_grid
    head = "| model | clean | " + " | ".join(f"{e:g}" for e in grid) + " | paper |"
    lines = [head, "|---|" + "---:|" * (len(grid) + 2)]
    for i, label in ids.items():
        p = _part(results, i, part)
        wb = _part(results, i, "whitebox")
        paper = f"{anchors[i]:.2f} at ε {anchor_eps:g}" if i in anchors and anchor_eps is not None else "–"
        if p is None:
            lines.append(f"| {label} | {_pending(i, ds) if i not in results else 'pending'} |" + " |" * len(grid)
                         + f" {paper} |")
            continue
        clean = _f(wb["clean"], 1) if wb else "–"
        lines.append(f"| {label} | {clean} | " + " | ".join(_f(p[kind][f'{e:g}'], 1) for e in grid) + f" | {paper} |")
    return lines + [""]


def _anchors(ds: DatasetSettings, kind: str, part: str) -> tuple[dict[str, float], float | None]:
    """The paper's printed points of a defenses panel: its black-box table's cells (white-box: none)."""
    if part != "blackbox":
        return {}, None
    k = ATTACKS4.index(kind)
    return {i: v[k] for i, v in PAPER_BLACKBOX[ds.name].items()}, ds.table_eps[kind]


def _defense_curves(results: dict[str, Any], ds: DatasetSettings, level: str) -> list[str]:
    lines: list[str] = []
    for kind, part, title in CURVES:
        anchors, eps = _anchors(ds, kind, part)
        lines += [f"{level} {title}", ""] + _curve_table(results, ds.defenses, kind, part, anchors, eps, ds)
    return lines


def _figures_text(results: dict[str, Any]) -> list[str]:
    diag = {a: PAPER_TABLE1[a][k] for k, a in enumerate(ARCHS)}
    lines = ["## Figure 3: white-box FGSM accuracy vs ε, the four architectures", "",
             "![Figure 3](brelu_gda/figure3.png)", "", "Accuracy %; the paper's only printed points are Table 1's diagonal (ε 0.1).", ""]
    lines += _curve_table(results, ARCHS, "fgsm", "whitebox", diag, 0.1)
    lines += ["## Figure 4: the defenses under FGSM and Rand+FGSM, white-box and black-box (MNIST)", "",
              "![Figure 4](brelu_gda/figure4.png)", "",
              "White-box: through each model's own gradient (BPDA through the squeezer). Black-box: the images crafted "
              "on ResNet + ReLU (no defense), evaluated on each defense. The paper's printed points: Table 4 (FGSM ε 0.1; "
              f"Rand+FGSM at ε {MNIST.table_eps['rand_fgsm']:g}, our reading of its unstated ε).", ""]
    return lines + _defense_curves(results, MNIST, "###")


def _sensitivity(results: dict[str, Any], ds: DatasetSettings, paper: dict[str, float] | None) -> list[str]:
    lines = ["| defense | ours | paper |" if paper else "| defense | ours |", "|---|---:|---:|" if paper else "|---|---:|"]
    for i, label in ds.defenses.items():
        p = _part(results, i, "sensitivity")
        ours = "pending" if p is None else f"**{p['sensitivity']:.4f}**"
        lines.append(f"| {label} | {ours} | {paper[i]:.4f} |" if paper else f"| {label} | {ours} |")
    return lines + [""]


def _blackbox(results: dict[str, Any], ds: DatasetSettings) -> list[str]:
    lines = ["Accuracy %, ours (paper).", "", "| defense | FGSM | Rand+FGSM | DeepFool | JSMA | C&W |",
             "|---|---|---|---|---|---|"]
    for i, label in ds.defenses.items():
        p = _part(results, i, "blackbox")
        cells = [("pending" if p is None else f"**{p[ds.table][a]:.2f}**") + f" ({PAPER_BLACKBOX[ds.name][i][k]:.2f})"
                 for k, a in enumerate(ATTACKS4)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines + [""]


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
              "gradient at the squeezed image, passed back through BPDA).", ""]
    lines += _sensitivity(results, MNIST, PAPER_TABLE3)
    return lines + ["## Table 4: black-box accuracy (crafted on ResNet + ReLU), MNIST", ""] + _blackbox(results, MNIST)


def _honest(results: dict[str, Any], ds: DatasetSettings = MNIST, heading: str = "##") -> list[str]:
    eps, pgd = _budget(ds.pgd["eps"], ds), ds.pgd
    title = "The honest columns: attacks that know the defense" if ds is MNIST else "The honest columns"
    lines = [f"{heading} {title} (L∞ {eps})", "",
             f"The paper's white-box FGSM and Rand+FGSM (α {_budget(ds.honest_alpha, ds)}) at ε {eps}, then PGD "
             f"({pgd['iters']} steps of {_budget(pgd['step'], ds)}, random start), APGD-CE and APGD-T "
             f"({WORST['iters']} iterations, {WORST['n_target_classes']} target classes) and Square ({WORST['queries']} queries, no "
             "gradients), AutoAttack's way: each attack on the images all earlier ones left, so each column is "
             "cumulative and the last is the worst case per image, with its 95 % Wilson interval. Exact gradients (the "
             f"bounded ReLU's own); for feature squeezing BPDA through the {_bits(ds)}-bit squeezer, with the identity "
             "as its backward, then APGD-CE once more with a smooth staircase as the backward "
             f"(`purify.squeeze.bit_depth_surrogate`, temperature {ds.smooth_temperature:g}: its gradient sits on the "
             "pixels a step of ε can move across the threshold; \"smooth\" column, – where it does not apply), and "
             "Square on the true pipeline.", "",
             "| defense | n | clean | FGSM | + Rand+FGSM | + PGD | + APGD-CE | + APGD-T | + APGD-CE smooth | + Square "
             "| **worst** [95 %] |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for i, label in ds.defenses.items():
        h = _part(results, i, "honest")
        if h is None:
            lines.append(f"| {label} | {_pending(i, ds) if i not in results else 'pending'} |" + " |" * 9)
            continue
        w = h["worst"]
        lines.append(f"| {label} | {w['count']} | " + " | ".join(f"{h[k]:.1f}" if k in h else "–" for k in HONEST)
                     + f" | **{w['accuracy']:.1f}** [{w['ci'][0]:.1f}, {w['ci'][1]:.1f}] |")
    return lines + [""]


def _reading(results: dict[str, Any], ds: DatasetSettings = MNIST, heading: str = "## Reading") -> list[str]:
    """Facts computed from the numbers, for the lead's reading; no interpretation."""
    facts = []
    paper_bb, table = PAPER_BLACKBOX[ds.name], f"Table {ds.table.removeprefix('table')}"
    eps = _budget(ds.pgd["eps"], ds)
    wb_eps = ds.pgd["eps"] if ds.pgd["eps"] in ds.eps_grid else ds.table_eps["fgsm"]    # a point of the curves
    base = _part(results, next(iter(ds.defenses)), "honest")
    for i, label in ds.defenses.items():
        h, wb, bb = (_part(results, i, p) for p in ("honest", "whitebox", "blackbox"))
        if h is None or wb is None:
            continue
        w = h["worst"]
        text = (f"- {label}: clean {wb['clean']:.1f} %; white-box FGSM ε {wb_eps:g} (the paper's protocol) "
                f"{_f(wb['fgsm'].get(f'{wb_eps:g}'), 1)} % "
                + (f"({h['fgsm']:.1f} % on the honest columns' images)" if wb_eps == ds.pgd["eps"] else
                   f"(FGSM at ε {eps}: {h['fgsm']:.1f} % on the honest columns' images)")
                + f"; worst case at L∞ {eps} {w['accuracy']:.1f} % [{w['ci'][0]:.1f}, {w['ci'][1]:.1f}] "
                f"({w['robust']}/{w['count']})")
        if bb is not None:
            text += (f"; black-box FGSM ε {ds.table_eps['fgsm']:g} {bb[ds.table]['fgsm']:.1f} % "
                     f"(paper {paper_bb[i][0]:.2f})")
        if base is not None and i != next(iter(ds.defenses)):
            b = base["worst"]
            overlap = w["ci"][0] <= b["ci"][1] and b["ci"][0] <= w["ci"][1]
            text += (f"; worst case {w['accuracy'] - b['accuracy']:+.1f} points against the CNN "
                     f"(intervals {'overlap' if overlap else 'disjoint'})")
        facts.append(text + ".")
    ranked = ((("Table 2 ρ₂", "minimal", "rho2", {i: v[1] for i, v in PAPER_TABLE2.items()}),
               ("Table 3", "sensitivity", "sensitivity", PAPER_TABLE3)) if ds is MNIST else ())
    for name, part, key, paper in ranked:
        ours = {i: _part(results, i, part)[key] for i in ds.defenses if _part(results, i, part) is not None}
        if len(ours) > 1:
            rank = lambda d: ", ".join(ds.defenses[i] for i in sorted(d, key=d.get, reverse=True))  # noqa: E731
            facts.append(f"- {name}, largest first: ours {rank(ours)}; paper (same models) "
                         f"{rank({i: paper[i] for i in ours})}.")
    diffs = [abs(_part(results, i, "blackbox")[ds.table][a] - paper_bb[i][k]) for i in ds.defenses
             if _part(results, i, "blackbox") is not None for k, a in enumerate(ATTACKS4)]
    if diffs:
        facts.append(f"- {table}: mean |ours − paper| over {len(diffs)} cells {sum(diffs) / len(diffs):.1f} points, "
                     f"largest {max(diffs):.1f}.")
    return [heading, "", "What GDA and bounded ReLU buy, computed from the tables above: against the paper's own "
            "one-step attacks each defense is compared with the undefended CNN; against the honest columns (an "
            "attacker who knows the model) the worst case per image is what a deployment keeps.", "",
            *(facts or ["- (no results yet)"]), ""]


def _cifar(results: dict[str, Any]) -> list[str]:
    """The CIFAR-10 section: Figure 5, Table 5, the loss sensitivity, the honest columns, the reading."""
    ds = CIFAR10
    eps_t = ds.table_eps
    lines = ["## CIFAR-10: Figure 5, Table 5 and the honest columns", "",
             f"Ours from the models of `{ds.script}` (its header gives the budget cuts: the paper states no epoch "
             "count; GDA (σ 0.05) over 2 noisy copies per image instead of ten; each model's epochs in the table "
             "below), results in `brelu_gda/cifar10/`. Tables 1-3 are MNIST-only in the paper.", "",
             _images(results, ds),
             "- Models: the paper's CNN (`purify.models.paper_nets`, 3 × 32 × 32 inputs) with each defense, and its "
             "ResNet + ReLU, the black-box source; feature squeezing = the ReLU CNN behind "
             f"{_bits(ds)}-bit depth reduction (the paper's FS on CIFAR-10), attacked through BPDA.",
             f"- Attacks: FGSM / Rand+FGSM over ε ∈ {{{', '.join(f'{e:g}' for e in ds.eps_grid)}}} (the paper shows "
             f"0 ≤ ε ≤ 0.3 on CIFAR-10), α = min({ds.alpha:g}, ε) (pure noise for ε ≤ {ds.alpha:g}, as Figure 5's "
             f"caption notes). Table 5: FGSM ε {eps_t['fgsm']:g} (the paper's); Rand+FGSM ε {eps_t['rand_fgsm']:g}, "
             f"α {ds.alpha:g}: the paper does not state it, and MNIST's 0.3 does not fit — its CIFAR-10 Rand+FGSM "
             "accuracies are above its FGSM ones in every row (57.22 against 51.55 for the CNN), as a Rand+FGSM of "
             f"the same ε gives (its gradient step is ε − α = {eps_t['rand_fgsm'] - ds.alpha:g}, half FGSM's); "
             f"{_attacks_shared()}", ""]
    lines += _models(results, ds, "### Models")
    lines += [f"### Figure {ds.figure}: the defenses under FGSM and Rand+FGSM, white-box and black-box (CIFAR-10)", "",
              f"![Figure {ds.figure}](brelu_gda/figure{ds.figure}.png)", "",
              "As Figure 4: white-box through each model's own gradient, black-box from the images crafted on ResNet + "
              f"ReLU. The paper's printed points: Table 5 (FGSM and Rand+FGSM at ε {eps_t['fgsm']:g}).", ""]
    lines += _defense_curves(results, ds, "####")
    lines += ["### Table 5: black-box accuracy (crafted on ResNet + ReLU), CIFAR-10", ""] + _blackbox(results, ds)
    lines += ["### Local loss sensitivity", "",
              "Table 3's measure on CIFAR-10 (the paper gives it for MNIST only): mean ‖∂CE(x, y)/∂x‖₂ over the "
              "clean test images.", ""] + _sensitivity(results, ds, None)
    return lines + _honest(results, ds, "###") + _reading(results, ds, "### Reading (CIFAR-10)")


def _commands(results: dict[str, Any]) -> list[str]:
    lines = ["## Commands and times", "",
             "Run: `python -m benchmarks.brelu_gda --data-dir ../shared/data --threads 1` (MNIST), the same with "
             "`--dataset cifar10` (CIFAR-10); `python -m benchmarks.brelu_gda --report-only` rebuilds this page and "
             "its figures from the stored JSONs of both.", "",
             "| model | part | images | seconds | command |", "|---|---|---:|---:|---:|"]
    commands: list[str] = []
    for i, r in results.items():
        for name, p in r.get("parts", {}).items():
            if p["command"] not in commands:
                commands.append(p["command"])
            lines.append(f"| {i} | {name} | {p['count']} | {p['seconds']:.0f} | {commands.index(p['command']) + 1} |")
    return lines + ["", *(f"{k}. `{c}`" for k, c in enumerate(commands, 1)), ""]


def build_page(results: dict[str, Any], command: str, cifar: dict[str, Any] | None = None) -> str:
    """``benchmarks/results/brelu_gda.md`` from the parsed JSONs (:func:`load_results`): MNIST's ``results``
    and CIFAR-10's ``cifar`` (None: none yet)."""
    cifar = cifar or {}
    lines = (_header(results, command) + _table1(results) + _figures_text(results) + _tables234(results)
             + _honest(results) + _reading(results) + _cifar(cifar) + _commands({**results, **cifar}))
    return "\n".join(lines)


def write_page(out: Path, command: str) -> Path:
    """Write ``<out>.md`` (``benchmarks/results/brelu_gda.md`` for the default ``out``) and the figures in ``out``,
    from the MNIST JSONs in ``out`` and the CIFAR-10 ones in its subfolder."""
    from .brelu_gda_figures import plot_figures     # here: the figures module reads this one's tables

    results = load_results(out) if out.is_dir() else {}
    folder = CIFAR10.results_dir(out)
    cifar = load_results(folder) if folder.is_dir() else {}
    plot_figures(results, out, cifar)
    page = out.parent / f"{out.name}.md"
    page.write_text(build_page(results, command, cifar))
    return page
