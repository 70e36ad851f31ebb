"""JumpReLU retrofit (Erichson et al.): choose κ on validation data, reproduce the paper's tables, add the honest columns.

    python -m benchmarks.jumprelu --data-dir ../shared/data --threads 1                 # every model
    python -m benchmarks.jumprelu --models lenet5_mnist,lenet5_mnist_at --count 1000    # some models
    python -m benchmarks.jumprelu --report-only                                         # the page only

Per model (one JSON in ``benchmarks/results/jumprelu/``; a finished model is not recomputed):

1. **κ sweep** on the ``val`` split (never trained on; for the public ResNet checkpoints, which
   were trained on it, on test images 5,000+ instead): clean accuracy and DeepFool's mean relative
   L2 perturbation ρ₂ (white-box, the paper's Figure 4) over a grid of κ; the rule picks the
   largest κ whose clean accuracy is within ``--max-clean-drop`` points of the ReLU network's.
   The randomized variant draws κ in [0.6 b, b] (the paper's a = 0.6 b); b is the largest of
   κ* × {1, 1.15, 1.3, 1.5} whose clean accuracy stays within 0.5 points of the deterministic one.
2. **Table 1 (gray-box)**: PGD, DeepFool L∞ / L2 and the trust-region attack made on the ReLU
   network, evaluated on the JumpReLU network.
3. **Table 2 (white-box)**: PGD through JumpReLU's own gradient; DeepFool and TR accuracy with
   their mean relative perturbation in parentheses (the paper's plug-in estimator).
4. **Table 4**: the randomized JumpReLU, white-box as the paper attacks it (one draw per gradient).
5. **The honest columns**: PGD and APGD-CE / APGD-DLR-targeted with BPDA (ReLU's gradient in the
   backward pass, JumpReLU's values forward), EOT over κ for the randomized variant, then Square
   (no gradients); AutoAttack's order, each attack on the images the earlier ones left, so the
   last column is the worst case per image (an image counts as robust only if every bounded attack
   failed on it), with a 95 % interval.
6. **Cost**: latency of the retrofitted network against the original at batch 1 and 256.

PGD follows Madry et al. as the paper does: MNIST ε 0.3, step 0.01, 40 steps; CIFAR-10 ε 8/255,
step 2/255, 7 steps (the paper's "ε = 0.01" reads as that step). DeepFool: 50 iterations,
overshoot 0.02; TR: L2, 1,000 steps as in the paper, the attack's other defaults. Randomized models are evaluated with one draw per image.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from .convergence import wilson
from .harness.report import machine

__all__ = ["MODELS", "sweep_kappa", "pick_kappa", "evaluate_model", "build_page", "main"]

OUT = Path(__file__).resolve().parent / "results" / "jumprelu"
PAGE = Path(__file__).resolve().parent / "results" / "jumprelu.md"
#: model -> (dataset, "base" / "robust", its ReLU source for the gray-box table)
MODELS: dict[str, tuple[str, str]] = {
    "lenet5_mnist": ("mnist", "base"), "lenet5_mnist_at": ("mnist", "robust"),
    "resnet20": ("cifar10", "base"), "resnet20_cifar10_at": ("cifar10", "robust"),
    "resnet56": ("cifar10", "base"), "small_cnn_cifar10": ("cifar10", "base"),
}
KAPPAS = {"mnist": (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0),
          "cifar10": (0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)}
#: Models whose training saw the ``val`` split (the public ResNet checkpoints were trained on all
#: 50,000 CIFAR-10 training images: 100 % clean accuracy there, so κ would be chosen blind). Their κ
#: is chosen on the second half of the test set instead, and the tables use the first half.
SAW_VAL = {"resnet20", "resnet56"}
SELECTION_OFFSET = 5000
#: The paper runs TR for 1,000 steps; MNIST needs them (its steps are bounded by the trust radius).
TR_ITERS = 1000
PGD = {"mnist": {"eps": 0.3, "step": 0.01, "iters": 40}, "cifar10": {"eps": 8 / 255, "step": 2 / 255, "iters": 7}}
#: The honest columns' budgets: the leaderboard's (APGD 50 iterations, 3 target classes, Square 300 queries, EOT 10).
WORST = {"iters": 50, "n_target_classes": 3, "queries": 300, "eot": 10}
#: The paper's numbers (Tables 1, 2, 4) for the page, by dataset and base / robust: LeNetLike (MNIST)
#: and WideResNet (CIFAR-10, the residual network nearest ours).
PAPER = {
    ("mnist", "base"): {"kappa": 1.0, "relu_clean": 99.55, "clean": 99.53, "gray": (91.65, 81.39, 58.93, 58.90),
                        "white_pgd": 83.21, "rho": (34.1, 44.9, 25.0), "relu_rho": (17.9, 21.8, 18.9)},
    ("mnist", "robust"): {"kappa": 1.0, "relu_clean": 99.50, "clean": 99.47, "gray": (97.07, 70.84, 45.17, 53.24),
                          "white_pgd": 94.36, "rho": (46.6, 53.3, 32.8), "relu_rho": (28.4, 31.4, 24.7)},
    ("cifar10", "base"): {"kappa": 0.07, "relu_clean": 94.31, "clean": 92.58, "gray": (0.39, 37.33, 40.21, 45.90),
                          "white_pgd": 0.95, "rho": (14.3, 18.5, 1.9), "relu_rho": (1.4, 1.8, 1.3)},
    ("cifar10", "robust"): {"kappa": 0.07, "relu_clean": 93.72, "clean": 93.01, "gray": (70.25, 28.62, 26.11, 35.33),
                            "white_pgd": 67.89, "rho": (44.4, 43.8, 6.1), "relu_rho": (6.4, 7.5, 4.8)},
}


# ----------------------------------------------------------------------------- building blocks

def _accuracy(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, batch: int = 250) -> Tensor:
    """Per-image correctness (bool, (N,)) in batches, without gradients."""
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch]).argmax(1) == y[i:i + batch] for i in range(0, len(x), batch)])


def _batched(attack: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor, batch: int = 100) -> Tensor:
    return torch.cat([attack(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)])


def _rel(x: Tensor, x_adv: Tensor, norm: str, fooled: Tensor) -> float:
    """Mean relative perturbation ‖x_adv − x‖_p / ‖x‖_p over the fooled images (the paper's ρ̃), in %."""
    if not bool(fooled.any()):
        return float("nan")
    ord_ = 2 if norm == "l2" else float("inf")
    d = torch.linalg.vector_norm((x_adv - x)[fooled].flatten(1).double(), ord=ord_, dim=1)
    r = torch.linalg.vector_norm(x[fooled].flatten(1).double(), ord=ord_, dim=1).clamp_min(1e-12)
    return 100 * float((d / r).mean())


def _minimal_attacks(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """DeepFool L∞, DeepFool L2 and the trust-region attack (L2) on ``model``: adversarial images."""
    from purify.attacks import deepfool
    from purify.attacks.trust_region import trust_region

    return {"df_linf": _batched(lambda a, b: deepfool(model, a, b, norm="linf"), x, y),
            "df_l2": _batched(lambda a, b: deepfool(model, a, b, norm="l2"), x, y),
            "tr": _batched(lambda a, b: trust_region(model, a, b, norm="l2", max_iter=TR_ITERS), x, y)}


def sweep_kappa(model: torch.nn.Module, dataset: str, x: Tensor, y: Tensor, n_rho: int) -> list[dict[str, float]]:
    """Clean accuracy (on all of ``x``) and DeepFool's white-box ρ₂ (on the first ``n_rho``) per κ of the grid."""
    from purify.activations import retrofit
    from purify.attacks import deepfool, rho2

    rows = []
    for kappa in KAPPAS[dataset]:
        net = retrofit(model, "jumprelu", kappa=kappa).eval()
        ok = _accuracy(net, x, y)
        xs, ys = x[:n_rho], y[:n_rho]
        adv = _batched(lambda a, b: deepfool(net, a, b, norm="l2"), xs, ys)
        fooled = ~_accuracy(net, adv, ys) & ok[:n_rho]
        rows.append({"kappa": kappa, "clean": 100 * float(ok.float().mean()),
                     "rho2": 100 * rho2(xs[fooled], adv[fooled]) if bool(fooled.any()) else float("nan"),
                     "fooled": 100 * float(fooled.float().sum() / ok[:n_rho].float().sum().clamp_min(1))})
    return rows


def pick_kappa(rows: list[dict[str, float]], max_drop: float) -> float:
    """The largest κ whose clean accuracy is within ``max_drop`` points of κ = 0's.

    Example:
        >>> pick_kappa([{"kappa": 0.0, "clean": 99.0}, {"kappa": 0.5, "clean": 98.5},
        ...             {"kappa": 1.0, "clean": 96.0}], max_drop=1.0)
        0.5
    """
    base = next(r["clean"] for r in rows if r["kappa"] == 0.0)
    return max(r["kappa"] for r in rows if r["clean"] >= base - max_drop)


def _randomized_bound(model: torch.nn.Module, kappa: float, clean_d: float, x: Tensor, y: Tensor) -> dict[str, float]:
    """b for κ ~ U[0.6 b, b]: the largest of κ* × {1, 1.15, 1.3, 1.5} within 0.5 points of the deterministic clean accuracy."""
    from purify.activations import retrofit

    best = {"high": kappa, "clean": float("nan")}
    for f in (1.0, 1.15, 1.3, 1.5):
        b = kappa * f
        net = retrofit(model, "random_jumprelu", low=0.6 * b, high=b, generator=torch.Generator().manual_seed(0))
        clean = 100 * float(_accuracy(net.eval(), x, y).float().mean())
        if f == 1.0 or clean >= clean_d - 0.5:
            best = {"high": b, "clean": clean}
    return best


# ----------------------------------------------------------------------------- one model

def evaluate_model(name: str, *, data_dir: str | None, count: int, n_val: int, n_rho: int, max_drop: float,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Everything the page shows for one model: the sweep, κ*, the four tables' cells, the cost."""
    from purify.activations import retrofit
    from purify.attacks import apgd, eot, pgd, square
    from purify.data import load_dataset
    from purify.models import create_model

    dataset, kind = MODELS[name]
    t0 = time.perf_counter()
    relu = create_model(name, pretrained=True, data_dir=data_dir).eval()
    if name in SAW_VAL:
        if count > SELECTION_OFFSET:
            raise ValueError(f"{name}: at most {SELECTION_OFFSET} test images: the rest choose kappa")
        selection = f"test images {SELECTION_OFFSET}–{SELECTION_OFFSET + n_val - 1} (its training saw `val`)"
        xv, yv = load_dataset(dataset, "test", data_dir=data_dir).tensors(slice(SELECTION_OFFSET, SELECTION_OFFSET + n_val))
    else:
        selection = f"the first {n_val} images of `val` (never trained on)"
        xv, yv = load_dataset(dataset, "val", data_dir=data_dir).tensors(slice(0, n_val))
    sweep = sweep_kappa(relu, dataset, xv, yv, n_rho)
    kappa = pick_kappa(sweep, max_drop)
    clean_d = next(r["clean"] for r in sweep if r["kappa"] == kappa)
    rand = _randomized_bound(relu, kappa, clean_d, xv, yv)
    log(f"{name}: kappa* = {kappa} (val clean {clean_d:.2f}%), randomized in [{0.6 * rand['high']:.3f}, "
        f"{rand['high']:.3f}] ({time.perf_counter() - t0:.0f} s)")

    x, y = load_dataset(dataset, "test", data_dir=data_dir).tensors(slice(0, count))
    jump = retrofit(relu, "jumprelu", kappa=kappa).eval()
    rjump = retrofit(relu, "random_jumprelu", low=0.6 * rand["high"], high=rand["high"],
                     generator=torch.Generator().manual_seed(1)).eval()
    p = PGD[dataset]
    g = lambda: torch.Generator().manual_seed(0)   # noqa: E731  every attack draws from its own seeded stream
    res: dict[str, Any] = {"model": name, "dataset": dataset, "kind": kind, "count": count, "kappa": kappa,
                           "selection": selection,
                           "random_kappa": [0.6 * rand["high"], rand["high"]], "sweep": sweep,
                           "val_clean_random": rand["clean"], "max_clean_drop": max_drop}
    ok = {"relu": _accuracy(relu, x, y), "jump": _accuracy(jump, x, y), "rjump": _accuracy(rjump, x, y)}
    res["clean"] = {k: 100 * float(v.float().mean()) for k, v in ok.items()}

    def pgd_on(model: Callable[[Tensor], Tensor]) -> Tensor:
        return _batched(lambda a, b: pgd(model, a, b, eps=p["eps"], step=p["step"], iters=p["iters"],
                                         random_start=True, generator=g()), x, y)

    # Table 1: gray-box. Adversarial images from the ReLU network, on ReLU and on JumpReLU.
    src = {"pgd": pgd_on(relu), **_minimal_attacks(relu, x, y)}
    res["gray"] = {k: {"relu": 100 * float(_accuracy(relu, a, y).float().mean()),
                       "jump": 100 * float(_accuracy(jump, a, y).float().mean())} for k, a in src.items()}
    log(f"{name}: gray-box done ({time.perf_counter() - t0:.0f} s)")

    # Tables 2 and 4: white-box, as the paper attacks: each network's own gradient (one draw per call).
    white: dict[str, Any] = {}
    worst_ok: dict[str, Tensor] = {}
    for tag, net in (("relu", relu), ("jump", jump), ("rjump", rjump)):
        adv_pgd = pgd_on(net)
        pgd_ok = _accuracy(net, adv_pgd, y)
        cells = {"pgd": 100 * float(pgd_ok.float().mean())}
        minimal = {k: src[k] for k in ("df_linf", "df_l2", "tr")} if tag == "relu" else _minimal_attacks(net, x, y)
        for k, a in minimal.items():
            fooled = ~_accuracy(net, a, y) & ok[tag]
            norm = "linf" if k == "df_linf" else "l2"
            cells[k] = {"accuracy": 100 * float(_accuracy(net, a, y).float().mean()), "rho": _rel(x, a, norm, fooled)}
        white[tag] = cells
        worst_ok[tag] = pgd_ok & ok[tag]
    res["white"] = white
    log(f"{name}: white-box done ({time.perf_counter() - t0:.0f} s)")

    # The honest columns, AutoAttack's way: each attack runs on the images every earlier one left
    # standing, so a cell is the accuracy after it and the last is the worst case per image. BPDA
    # (ReLU's backward) for JumpReLU, EOT over the random kappa, Square last (no gradients).
    honest: dict[str, Any] = {}
    for tag, net in (("relu", relu), ("jump", jump), ("rjump", rjump)):
        attack_fn: Callable[[Tensor], Tensor] = eot(net, samples=WORST["eot"]) if tag == "rjump" else net
        alive = worst_ok[tag].clone()
        cells: dict[str, Any] = {"pgd_own": 100 * float(alive.float().mean())}
        steps = (("pgd_bpda", lambda a, b: pgd(attack_fn, a, b, eps=p["eps"], step=p["step"], iters=p["iters"],
                                                random_start=True, generator=g())),
                 ("apgd_ce", lambda a, b: apgd(attack_fn, a, b, eps=p["eps"], loss="ce", iters=WORST["iters"],
                                               generator=g())),
                 ("apgd_t", lambda a, b: apgd(attack_fn, a, b, eps=p["eps"], loss="dlr-targeted", iters=WORST["iters"],
                                              n_target_classes=WORST["n_target_classes"], generator=g())),
                 ("square", lambda a, b: square(net, a, b, eps=p["eps"], queries=WORST["queries"], generator=g())))
        for cell, fn in steps:
            idx = alive.nonzero().squeeze(1)
            if len(idx):
                with net.relu_backward() if tag != "relu" else contextlib.nullcontext():
                    adv = _batched(fn, x[idx], y[idx])
                alive[idx] &= _accuracy(net, adv, y[idx])
            cells[cell] = 100 * float(alive.float().mean())
        k = int(alive.sum())
        lo, hi = wilson(k, count)
        cells["worst"] = {"accuracy": 100 * k / count, "ci": [100 * lo, 100 * hi]}
        honest[tag] = cells
    res["honest"] = honest
    log(f"{name}: honest columns done ({time.perf_counter() - t0:.0f} s)")
    res["cost_ms"] = _latency(relu, jump, x)
    res["seconds"] = time.perf_counter() - t0
    return res


def _latency(relu: torch.nn.Module, jump: torch.nn.Module, x: Tensor, repeats: int = 5) -> dict[str, dict[str, float]]:
    """Median ms per batch of the original and the retrofitted network at batch 1 and 256 (inputs repeated)."""
    out: dict[str, dict[str, float]] = {}
    for b in (1, 256):
        xb = x[:1].expand(b, *x.shape[1:]).contiguous()
        out[str(b)] = {}
        for tag, net in (("relu", relu), ("jump", jump)):
            times = []
            with torch.no_grad():
                for _ in range(repeats + 1):
                    t = time.perf_counter()
                    net(xb)
                    times.append(time.perf_counter() - t)
            out[str(b)][tag] = 1000 * sorted(times[1:])[repeats // 2]
    return out


# ----------------------------------------------------------------------------- the page

def _f(v: float | None, nd: int = 2) -> str:
    return "–" if v is None or v != v else f"{v:.{nd}f}"


def build_page(results: list[dict[str, Any]], command: str) -> str:
    """``benchmarks/results/jumprelu.md`` from the per-model JSONs."""
    lines = ["# JumpReLU retrofit: κ on validation data, the paper's tables, and the honest columns", "",
             f"- Page: `{command}` (each model's own command: the end of this page)", f"- Machine: {machine()}", f"- Date: {dt.date.today().isoformat()}",
             "- Models: ours (LeNet-5 for the paper's LeNetLike; ResNet-20 / ResNet-56 / the small CNN for its "
             "WideResNet / MobileNetV2 / AlexLike). Robust = adversarially trained: ours PGD-AT (MNIST) and "
             "FGSM-RS (CIFAR-10); the paper's FGSM with mixed clean/adversarial batches. The paper column quotes "
             "its LeNetLike (MNIST) and its WideResNet (CIFAR-10, every CIFAR row), base or robust.",
             "- PGD as Madry et al.: MNIST ε 0.3, step 0.01, 40 steps; CIFAR-10 ε 8/255, step 2/255, 7 steps. "
             "DeepFool 50 iterations (overshoot 0.02); TR (trust region, L2) 1,000 steps. Relative "
             "perturbations (in parentheses) are the paper's plug-in estimator over the fooled images, in %.",
             f"- Honest columns: APGD {WORST['iters']} iterations, APGD-T over {WORST['n_target_classes']} target "
             f"classes, Square {WORST['queries']} queries on the survivors, EOT {WORST['eot']} draws on the "
             "randomized variant; BPDA = JumpReLU forward, ReLU's gradient backward. Worst = per image over every "
             "bounded attack of the row (PGD with the network's own gradient and the honest cells; DeepFool and TR "
             "are unbounded), 95 % Wilson interval.", ""]
    lines += ["## κ chosen on validation data", "",
              "The rule: the largest κ whose clean accuracy on held-out selection images stays within the "
              "clean-drop budget of the ReLU network's. ρ₂: DeepFool L2's mean relative perturbation (white-box) "
              "on the first selection images, %. The tables use test images the selection did not see.", "",
              "| model | selected on | κ grid: clean % / ρ₂ % | budget (points) | κ* | randomized κ range |",
              "|---|---|---|---:|---:|---|"]
    for r in results:
        grid = "; ".join(f"{s['kappa']:g}: {s['clean']:.1f} / {_f(s['rho2'], 1)}" for s in r["sweep"])
        lines.append(f"| {r['model']} | {r['selection']} | {grid} | {r['max_clean_drop']:g} | **{r['kappa']:g}** | "
                     f"[{r['random_kappa'][0]:.3g}, {r['random_kappa'][1]:.3g}] |")
    lines += ["", "## Table 1: gray-box (examples made on the ReLU network)", "",
              "| model | κ | clean ReLU / JumpReLU | PGD | DF∞ | DF2 | TR | paper (JumpReLU: clean, PGD, DF∞, DF2, TR) |",
              "|---|---:|---|---|---|---|---|---|"]
    for r in results:
        g, c = r["gray"], r["clean"]
        paper = PAPER.get((r["dataset"], r["kind"]))
        ptxt = (f"{paper['clean']}, " + ", ".join(f"{v}" for v in paper["gray"])) if paper else "–"
        lines.append(f"| {r['model']} | {r['kappa']:g} | {c['relu']:.2f} / {c['jump']:.2f} | "
                     + " | ".join(f"{g[k]['relu']:.1f} → **{g[k]['jump']:.1f}**" for k in ("pgd", "df_linf", "df_l2", "tr"))
                     + f" | {ptxt} |")
    lines += ["", "Cells: accuracy on the ReLU network → on the JumpReLU network, %.", "",
              "## Table 2 and Table 4: white-box, as the paper attacks (each network's own gradient)", "",
              "| model | network | clean | PGD | DF∞ (ρ∞) | DF2 (ρ₂) | TR (ρ₂) | paper (PGD; ρ DF∞, DF2, TR) |",
              "|---|---|---:|---:|---|---|---|---|"]
    names = {"relu": "ReLU", "jump": "JumpReLU (D)", "rjump": "JumpReLU (R)"}
    for r in results:
        paper = PAPER.get((r["dataset"], r["kind"]))
        for tag in ("relu", "jump", "rjump"):
            w = r["white"][tag]
            if paper and tag != "rjump":
                rho = paper["relu_rho"] if tag == "relu" else paper["rho"]
                ptxt = (f"{paper['white_pgd'] if tag == 'jump' else '–'}; " + ", ".join(f"{v}" for v in rho))
            else:
                ptxt = "–"
            lines.append(f"| {r['model']} | {names[tag]} | {r['clean'][tag]:.2f} | {w['pgd']:.2f} | "
                         + " | ".join(f"{w[k]['accuracy']:.1f} ({_f(w[k]['rho'], 1)})" for k in ("df_linf", "df_l2", "tr"))
                         + f" | {ptxt} |")
    lines += ["", "## The honest columns: attacks that know the defense", "",
              "Accuracy after each attack, AutoAttack's way: every attack runs on the images all earlier ones left "
              "standing, so each column is cumulative and the last is the worst case per image.", "",
              "| model | network | PGD (own gradient) | + PGD BPDA | + APGD-CE BPDA | + APGD-T BPDA | + Square | "
              "**worst** [95 %] |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in results:
        for tag in ("relu", "jump", "rjump"):
            h = r["honest"][tag]
            eot_note = f" + EOT {WORST['eot']}" if tag == "rjump" else ""
            lines.append(f"| {r['model']} | {names[tag]}{eot_note} | {h['pgd_own']:.1f} | {h['pgd_bpda']:.1f} | "
                         f"{h['apgd_ce']:.1f} | {h['apgd_t']:.1f} | {h['square']:.1f} | "
                         f"**{h['worst']['accuracy']:.1f}** [{h['worst']['ci'][0]:.1f}, {h['worst']['ci'][1]:.1f}] |")
    lines += ["", "(For the ReLU network BPDA is its own gradient.)", "", "## Cost", "",
              "| model | batch 1: ReLU / JumpReLU ms | batch 256: ReLU / JumpReLU ms |", "|---|---|---|"]
    for r in results:
        c = r["cost_ms"]
        lines.append(f"| {r['model']} | {c['1']['relu']:.2f} / {c['1']['jump']:.2f} | "
                     f"{c['256']['relu']:.1f} / {c['256']['jump']:.1f} |")
    lines += ["", "## Reading", "", *_reading(results), "", "## Commands", "",
              "Each model's results (`benchmarks/results/jumprelu/<model>.json`) were made by:", ""]
    lines += [f"- {r['model']}: `{r.get('command', '?')}` ({r['seconds'] / 60:.0f} min, {r['count']} test images)"
              for r in results]
    return "\n".join(lines) + "\n"


def _reading(results: list[dict[str, Any]]) -> list[str]:
    """What holds, from the numbers: the paper's protocol against the worst case."""
    out = []
    for r in results:
        h, w = r["honest"], r["white"]
        gain_paper = w["jump"]["pgd"] - w["relu"]["pgd"]
        gain_worst = h["jump"]["worst"]["accuracy"] - h["relu"]["worst"]["accuracy"]
        out.append(f"- {r['model']} (κ {r['kappa']:g}, clean {r['clean']['relu']:.1f} → {r['clean']['jump']:.1f} %): "
                   f"white-box PGD as the paper attacks {w['relu']['pgd']:.1f} → {w['jump']['pgd']:.1f} % "
                   f"({gain_paper:+.1f} points); the worst case {h['relu']['worst']['accuracy']:.1f} → "
                   f"{h['jump']['worst']['accuracy']:.1f} % ({gain_worst:+.1f} points), randomized "
                   f"{h['rjump']['worst']['accuracy']:.1f} %.")
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m benchmarks.jumprelu", description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated (default: all: {', '.join(MODELS)})")
    ap.add_argument("--count", type=int, default=500, help="test images per model (default 500)")
    ap.add_argument("--val-count", type=int, default=1000, help="validation images for the clean accuracy of the sweep")
    ap.add_argument("--rho-count", type=int, default=200, help="validation images for the sweep's DeepFool rho2")
    ap.add_argument("--max-clean-drop", type=float, default=1.5, help="points of clean accuracy kappa may cost")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--force", action="store_true", help="recompute models that have results")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    wanted = [m for m in args.models.split(",") if m]
    unknown = [m for m in wanted if m not in MODELS]
    if unknown:
        print(f"error: unknown model(s) {unknown}; known: {', '.join(MODELS)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for name in wanted:
            path = out / f"{name}.json"
            if path.is_file() and not args.force:
                print(f"{name}: results exist ({path}); --force recomputes")
                continue
            res = evaluate_model(name, data_dir=args.data_dir, count=args.count, n_val=args.val_count,
                                 n_rho=args.rho_count, max_drop=args.max_clean_drop)
            res["command"] = "python -m benchmarks.jumprelu " + " ".join(argv)
            path.write_text(json.dumps(res, indent=1) + "\n")
    results = [json.loads((out / f"{m}.json").read_text()) for m in MODELS if (out / f"{m}.json").is_file()]
    page = Path(args.out).parent / "jumprelu.md" if args.out != str(OUT) else PAGE
    page.write_text(build_page(results, "python -m benchmarks.jumprelu " + " ".join(argv)))
    print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
