"""Deep Defense (Yan, Guo & Zhang 2018): the paper's Table 1 and supplement Table 2 for our models, and honest columns.

    python -m benchmarks.deep_defense --data-dir ../shared/data --threads 1      # every model found
    python -m benchmarks.deep_defense --nets mlp --count 200                      # some networks
    python -m benchmarks.deep_defense --report-only                               # the page only

Models, per network (``mlp``, ``lenet``: MNIST; ``convnet``: CIFAR-10): the reference and its fine-tunes by
Parseval training, Adv. Train I (DeepFool examples), Adv. Train II (Goodfellow's FGS objective) and Deep
Defense, named as ``runs/issue17_mnist.sh`` / ``runs/issue17_cifar10.sh`` name them (``<net>``, ``<net>_parseval``, ``<net>_advtrain1``,
``<net>_advtrain2``, ``<net>_dd``), read from ``--weights-dir`` (default ``runs/dd17``) or, when shipped under
that name, from the registry. A model found in neither is a pending row.

Per model (one JSON in ``benchmarks/results/deep_defense/``; recomputed when its weights' sha256 changes, or with
``--force``), on the first ``--count`` test images:

* **Table 1**: clean accuracy; ρ₂ = mean ‖Δ‖₂/‖x‖₂ of DeepFool (L2, 50 iterations, overshoot 0.02, all classes,
  away from the model's own prediction as in the DeepFool paper) over the images it fooled; FGS accuracy
  at 0.2 / 0.5 / 1.0 ε_ref, where ε_ref is the smallest ε at which 50 % of the Deep Defense model's FGS
  images (true labels, all test images counted) are misclassified, found by bisection to 1e-4.
* **Table 2**: ℓ₂ under DeepFool (mean ‖Δ‖₂ over the same fooled images), ρ∞ under FGS (minimal FGS: the
  smallest ε on a grid that fools each correctly classified image, mean ‖Δ‖∞/‖x‖∞ over those it fooled), ℓ₂
  under C&W (library ``cw_l2``: 6 runs of 100 Adam steps at lr 0.1, binary search over c from 1; the paper
  used CleverHans' with unstated settings; mean ‖Δ‖₂ over the correctly classified images
  it fooled) and PGD accuracy at the paper's ε (0.1 MNIST: 40 steps of 0.01; 0.01 CIFAR-10: 20 steps of
  0.0025; one random start). ρ₂ and ρ∞ are :func:`purify.metrics.rho`.
* **The honest columns**, on the first ``--honest-count`` images: APGD-CE, APGD-T (DLR, targeted) and Square at
  L∞ 0.3 (MNIST) / 8/255 (CIFAR-10) with the leaderboard's budgets, AutoAttack's way (each attack on the
  images the earlier ones left), so the last is the worst case per image, with a 95 % Wilson interval; the
  leaderboard's shipped adversarially trained reference of the dataset is evaluated the same way beside them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .convergence import wilson
from .harness.report import repo_relative

__all__ = ["NETS", "METHODS", "eps_ref_bisect", "fgs_direction", "evaluate_model", "fgs_columns", "build_page",
           "main"]

OUT = Path(__file__).resolve().parent / "results" / "deep_defense"
REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "runs" / "dd17"
#: network key -> (artifact stem, dataset, the paper's name)
NETS = {"mlp": ("mlp_mnist", "mnist", "MLP"), "lenet": ("lenet_mnist", "mnist", "LeNet"),
        "convnet": ("convnet_cifar10", "cifar10", "ConvNet")}
#: (artifact suffix, method) in the paper's row order, Adv. Train II (its supplement only) before Deep Defense
METHODS = (("", "Reference"), ("_parseval", "Par. Train"), ("_advtrain1", "Adv. Train I"),
           ("_advtrain2", "Adv. Train II"), ("_dd", "Deep Defense"))
FRACTIONS = (0.2, 0.5, 1.0)
PGD = {"mnist": {"eps": 0.1, "step": 0.01, "iters": 40}, "cifar10": {"eps": 0.01, "step": 0.0025, "iters": 20}}
#: minimal FGS grid (eps_step, eps_max) for ρ∞
FGS_GRID = {"mnist": (0.002, 1.0), "cifar10": (0.0002, 0.1)}
HONEST_EPS = {"mnist": 0.3, "cifar10": 8 / 255}
#: C&W's starting c. With 100 Adam steps per run, lr 0.1 reaches every MNIST image (lr 0.01: half of them, at 40 %
#: larger norms); 300 steps find norms ~1 % smaller on our LeNet (measured on 100 test images).
CW_C0 = 1.0
#: the leaderboard's worst-case budgets (benchmarks/leaderboard.toml) and its robust references
WORST = {"iters": 50, "n_target_classes": 3, "queries": 300}
ROBUST_REFS = {"mnist": ("lenet5_mnist_at", "LeNet-5 PGD-AT ε 0.3"),
               "cifar10": ("resnet20_cifar10_at", "ResNet-20 FGSM-RS ε 8/255")}
#: The paper: Table 1 (acc %, ρ₂, FGS acc % at 0.2 / 0.5 / 1.0 ε_ref) and supplement Table 2 (ℓ₂ DF, ρ∞, ℓ₂ C&W, PGD %)
PAPER: dict[tuple[str, str], dict[str, Any]] = {
    ("mlp", ""): {"acc": 98.31, "rho2": 0.111, "fgs": (72.76, 29.08, 3.31), "t2": (0.81, 0.0540, 0.84, 1.19)},
    ("mlp", "_parseval"): {"acc": 98.32, "rho2": 0.111, "fgs": (77.44, 28.95, 2.96), "t2": (0.80, 0.0578, 0.83, 1.18)},
    ("mlp", "_advtrain1"): {"acc": 98.49, "rho2": 0.162, "fgs": (87.70, 59.69, 22.55), "t2": (1.17, 0.0946, 1.17, 4.11)},
    ("mlp", "_dd"): {"acc": 98.65, "rho2": 0.225, "fgs": (95.04, 88.93, 50.00), "t2": (1.64, 0.153, 1.58, 33.18)},
    ("lenet", ""): {"acc": 99.02, "rho2": 0.205, "fgs": (90.95, 53.88, 19.75), "t2": (1.48, 0.129, 1.40, 26.17)},
    ("lenet", "_parseval"): {"acc": 99.10, "rho2": 0.203, "fgs": (91.68, 66.48, 19.64), "t2": (1.50, 0.150, 1.58, 23.06)},
    ("lenet", "_advtrain1"): {"acc": 99.18, "rho2": 0.263, "fgs": (95.20, 74.82, 41.40), "t2": (1.90, 0.205, 1.71, 50.67)},
    ("lenet", "_dd"): {"acc": 99.34, "rho2": 0.284, "fgs": (96.51, 88.93, 50.00), "t2": (2.05, 0.236, 1.84, 64.54)},
    ("convnet", ""): {"acc": 79.74, "rho2": 0.0259, "fgs": (61.62, 37.84, 23.85), "t2": (0.18, 0.00527, 0.29, 21.34)},
    ("convnet", "_parseval"): {"acc": 80.48, "rho2": 0.0342, "fgs": (69.19, 50.43, 22.13),
                               "t2": (0.24, 0.00802, 0.33, 27.91)},
    ("convnet", "_advtrain1"): {"acc": 80.65, "rho2": 0.0305, "fgs": (65.16, 45.03, 35.53),
                                "t2": (0.21, 0.00637, 0.31, 27.08)},
    ("convnet", "_dd"): {"acc": 81.70, "rho2": 0.0532, "fgs": (72.15, 59.02, 50.00), "t2": (0.36, 0.0158, 0.47, 45.05)},
}


# ----------------------------------------------------------------------------- building blocks

def _batched(fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor, batch: int = 250) -> Tensor:
    return torch.cat([fn(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)]) if len(x) else x[:0]


def _correct(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        return _batched(lambda a, b: model(a).argmax(1) == b, x, y) if len(x) else y[:0].bool()


def _pct(mask: Tensor) -> float:
    return 100.0 * float(mask.float().mean()) if len(mask) else float("nan")


def eps_ref_bisect(error_at: Callable[[float], float], *, target: float = 0.5, hi: float = 1.0,
                   tol: float = 1e-4) -> float:
    """The smallest ε in [0, hi] with ``error_at(ε) >= target``, to ``tol``, by bisection (error_at non-decreasing).

    Returns 0 when ``error_at(0)`` already reaches the target, nan when ``error_at(hi)`` does not.

    Example:
        >>> round(eps_ref_bisect(lambda e: float(e >= 0.3), tol=1e-6), 5)
        0.3
    """
    if error_at(hi) < target:
        return float("nan")
    if error_at(0.0) >= target:
        return 0.0
    lo = 0.0
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if error_at(mid) >= target else (mid, hi)
    return hi


def fgs_direction(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor) -> Tensor:
    """``sign ∇ₓ CE(model(x), y)`` per image: FGS at ε is ``clip(x + ε·sign, 0, 1)``, one gradient for every ε."""
    def one(a: Tensor, b: Tensor) -> Tensor:
        with torch.enable_grad():
            a = a.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(model(a), b, reduction="sum"), a)
        return g.sign()
    return _batched(one, x, y)


def _fgs_accuracy(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, direction: Tensor, eps: float) -> float:
    return _pct(_correct(model, (x + eps * direction).clamp(0.0, 1.0), y))


# ----------------------------------------------------------------------------- one model

def evaluate_model(model: Callable[[Tensor], Tensor], dataset: str, x: Tensor, y: Tensor, *, honest_count: int,
                   cw_steps: int = 100, cw_search: int = 6, cw_lr: float = 0.1,
                   tables: bool = True) -> dict[str, Any]:
    """Table 1's and Table 2's columns of one model (FGS at ε_ref apart: :func:`fgs_columns`), and the honest ones.

    ``tables=False``: the clean accuracy and the honest columns only (the robust references).
    """
    from purify.attacks import cw_l2_details, deepfool, fgsm_minimal, pgd
    from purify.metrics import rho

    t0 = time.perf_counter()
    gen = lambda: torch.Generator().manual_seed(0)   # noqa: E731  every attack draws from its own seeded stream
    ok = _correct(model, x, y)
    res: dict[str, Any] = {"count": len(x), "clean": _pct(ok)}
    if tables:
        with torch.no_grad():
            pred = _batched(lambda a, b: model(a).argmax(1), x, y)
        adv = _batched(lambda a, b: deepfool(model, a, b, max_iter=50, num_classes=10), x, pred)
        fooled = ~_correct(model, adv, pred)
        res["deepfool"] = {"rho2": rho(x, adv, fooled=fooled), "l2": rho(x, adv, fooled=fooled, relative=False),
                           "fooled": _pct(fooled)}
        step, top = FGS_GRID[dataset]
        adv = _batched(lambda a, b: fgsm_minimal(model, a, b, eps_step=step, eps_max=top), x, y)
        fooled = ok & ~_correct(model, adv, y)
        res["fgs_minimal"] = {"rhoinf": rho(x, adv, norm="linf", fooled=fooled), "fooled": _pct(fooled[ok]),
                              "eps_step": step, "eps_max": top}
        cw = [cw_l2_details(model, x[i:i + 250], y[i:i + 250], c=CW_C0, steps=cw_steps, lr=cw_lr,
                            binary_search_steps=cw_search) for i in range(0, len(x), 250)]
        adv, success = torch.cat([r.x_adv for r in cw]), torch.cat([r.success for r in cw])
        res["cw"] = {"l2": rho(x, adv, fooled=ok & success, relative=False), "success": _pct((ok & success)[ok]),
                     "steps": cw_steps, "binary_search_steps": cw_search, "c0": CW_C0, "lr": cw_lr}
        p = PGD[dataset]
        adv = _batched(lambda a, b: pgd(model, a, b, eps=p["eps"], step=p["step"], iters=p["iters"],
                                        random_start=True, generator=gen()), x, y, batch=500)
        res["pgd"] = {"accuracy": _pct(_correct(model, adv, y)), **p}
    res["honest"] = honest_columns(model, dataset, x[:honest_count], y[:honest_count])
    res["seconds"] = time.perf_counter() - t0
    return res


def honest_columns(model: Callable[[Tensor], Tensor], dataset: str, x: Tensor, y: Tensor) -> dict[str, Any]:
    """Accuracy after APGD-CE, then APGD-T, then Square on the survivors (cumulative), and the worst case's interval."""
    from purify.attacks import apgd, square

    eps, gen = HONEST_EPS[dataset], lambda: torch.Generator().manual_seed(0)   # noqa: E731
    alive = _correct(model, x, y)
    cells: dict[str, Any] = {"eps": eps, "count": len(x), "clean": _pct(alive), **WORST}
    steps = (("apgd_ce", lambda a, b: apgd(model, a, b, eps=eps, loss="ce", iters=WORST["iters"], generator=gen())),
             ("apgd_t", lambda a, b: apgd(model, a, b, eps=eps, loss="dlr-targeted", iters=WORST["iters"],
                                          n_target_classes=WORST["n_target_classes"], generator=gen())),
             ("square", lambda a, b: square(model, a, b, eps=eps, queries=WORST["queries"], generator=gen())))
    for name, attack in steps:
        idx = alive.nonzero().squeeze(1)
        if len(idx):
            alive[idx] &= _correct(model, _batched(attack, x[idx], y[idx]), y[idx])
        cells[name] = _pct(alive)
    k = int(alive.sum())
    lo, hi = wilson(k, len(x))
    cells["worst"] = {"accuracy": _pct(alive), "ci": [100 * lo, 100 * hi]}
    return cells


def fgs_columns(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, eps_ref: float) -> dict[str, Any]:
    """FGS accuracy at 0.2 / 0.5 / 1.0 ε_ref (library :func:`~purify.attacks.fgsm`, true labels)."""
    from purify.attacks import fgsm

    acc = [_pct(_correct(model, _batched(lambda a, b: fgsm(model, a, b, eps=f * eps_ref), x, y), y))
           for f in FRACTIONS]
    return {"eps_ref": eps_ref, "fractions": list(FRACTIONS), "accuracy": acc}


def find_eps_ref(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, *, tol: float = 1e-4) -> float:
    """ε_ref of a Deep Defense model: the smallest ε whose FGS images are misclassified for 50 % of ``x``."""
    direction = fgs_direction(model, x, y)
    return eps_ref_bisect(lambda e: 1.0 - _fgs_accuracy(model, x, y, direction, e) / 100.0, tol=tol)


def _load(name: str, weights_dir: Path, data_dir: str | None) -> tuple[torch.nn.Module, dict[str, Any]] | None:
    """The model ``name`` from ``weights_dir``, else from the registry, else None; with where it came from."""
    from purify.errors import DataNotFoundError
    from purify.models import create_model, list_models
    from purify.models.trained import load_trained

    if (weights_dir / f"{name}.json").is_file():
        model = load_trained(name, weights_dir=weights_dir)
        src = repo_relative(str(weights_dir / name))
    elif name in list_models():
        try:
            model = create_model(name, pretrained=True, data_dir=data_dir)
        except DataNotFoundError:       # registered, its artifact not shipped yet (a run in progress)
            return None
        src = f"registry: {name}"
    else:
        return None
    raw = getattr(model.pretrained_cfg, "raw", {})
    return model.eval(), {"source": src, "sha256": model.pretrained_cfg.sha256, "training_command": raw.get("command")}


# ----------------------------------------------------------------------------- the command

def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _write(path: Path, res: dict[str, Any]) -> None:
    path.write_text(json.dumps(res, indent=1) + "\n")


def _stale(old: dict[str, Any] | None, info: dict[str, Any], count: int, honest: int, force: bool) -> bool:
    return (force or old is None or old["artifact"]["sha256"] != info["sha256"] or old["count"] != count
            or old["honest"]["count"] != honest)


def _run_net(net: str, args: argparse.Namespace, out: Path, command: str, log: Callable[[str], None]) -> None:
    """Evaluate every model of ``net`` found (skipping fresh results), then ε_ref and the FGS columns."""
    from purify.data import load_dataset

    stem, dataset, _ = NETS[net]
    found = {sfx: _load(stem + sfx, args.weights_dir, args.data_dir) for sfx, _ in METHODS}
    if not any(found.values()):
        log(f"{net}: no model found in {args.weights_dir} or the registry; pending")
        return
    x, y = load_dataset(dataset, "test", data_dir=args.data_dir).tensors(slice(0, args.count))
    honest = min(args.honest_count, len(x))
    results: dict[str, dict[str, Any]] = {}
    for sfx, method in METHODS:
        if found[sfx] is None:
            continue
        model, info = found[sfx]
        path = out / f"{stem}{sfx}.json"
        res = _read(path)
        if _stale(res, info, len(x), honest, args.force):
            res = evaluate_model(model, dataset, x, y, honest_count=honest, cw_steps=args.cw_steps,
                                 cw_search=args.cw_search, cw_lr=args.cw_lr)
            res.update(model=stem + sfx, net=net, method=method, dataset=dataset, artifact=info, command=command)
            _write(path, res)
            log(f"{stem + sfx}: done in {res['seconds']:.0f} s")
        results[sfx] = res
    if "_dd" in results:
        dd = results["_dd"]
        if "eps_ref" not in dd:
            dd["eps_ref"] = find_eps_ref(found["_dd"][0], x, y)
            _write(out / f"{stem}_dd.json", dd)
        for sfx, res in results.items():
            if res.get("fgs_ref", {}).get("eps_ref") != dd["eps_ref"] and not math.isnan(dd["eps_ref"]):
                res["fgs_ref"] = fgs_columns(found[sfx][0], x, y, dd["eps_ref"])
                _write(out / f"{stem}{sfx}.json", res)
    ref_name, _ = ROBUST_REFS[dataset]
    loaded = _load(ref_name, args.weights_dir, args.data_dir)
    path = out / f"{ref_name}.json"
    if loaded is not None and _stale(_read(path), loaded[1], len(x), honest, args.force):
        res = evaluate_model(loaded[0], dataset, x, y, honest_count=honest, tables=False)
        res.update(model=ref_name, net=net, method="robust reference", dataset=dataset, artifact=loaded[1],
                   command=command)
        _write(path, res)


def main(argv: list[str] | None = None) -> int:
    from .deep_defense_page import build_page

    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m benchmarks.deep_defense", description=__doc__.split("\n")[0])
    ap.add_argument("--nets", default=",".join(NETS), help=f"comma-separated (default: all: {', '.join(NETS)})")
    ap.add_argument("--count", type=int, default=1000, help="test images for Tables 1 and 2 (default 1000)")
    ap.add_argument("--honest-count", type=int, default=500, help="test images for the honest columns (default 500)")
    ap.add_argument("--cw-steps", type=int, default=100, help="C&W Adam steps per run (default 100)")
    ap.add_argument("--cw-search", type=int, default=6, help="C&W binary search runs over c (default 6)")
    ap.add_argument("--cw-lr", type=float, default=0.1, help="C&W Adam learning rate in tanh space (default 0.1)")
    ap.add_argument("--weights-dir", type=Path, default=WEIGHTS, help="artifacts <name>.json (default runs/dd17)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--force", action="store_true", help="recompute models that have fresh results")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    wanted = [n for n in args.nets.split(",") if n]
    unknown = [n for n in wanted if n not in NETS]
    if unknown:
        print(f"error: unknown network(s) {unknown}; known: {', '.join(NETS)}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.deep_defense " + " ".join(argv)
    if not args.report_only:
        for net in wanted:
            _run_net(net, args, args.out, command, print)
    results = {p.stem: json.loads(p.read_text()) for p in sorted(args.out.glob("*.json"))}
    page = args.out.parent / f"{args.out.name}.md"
    page.write_text(build_page(results, command=command, weights_dir=args.weights_dir))
    print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
