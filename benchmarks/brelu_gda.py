"""BReLU + GDA (Zantedeschi, Nicolae & Rawat 2017): the paper's MNIST and CIFAR-10 results, and the honest columns.

    python -m benchmarks.brelu_gda --data-dir ../shared/data --threads 1        # every MNIST part whose models exist
    python -m benchmarks.brelu_gda --dataset cifar10 --data-dir ../shared/data --threads 1   # the same, CIFAR-10
    python -m benchmarks.brelu_gda --models cnn_mnist,cnn_mnist_fs --count 200   # some models, fewer images
    python -m benchmarks.brelu_gda --report-only                                 # the page and figures only (both)

The models are the artifacts of ``runs/issue16_mnist.sh`` (``--weights-dir``, default ``runs/mnist16``)
and ``runs/issue16_cifar.sh`` (default ``runs/cifar16``): the paper's CNN and ResNet (MNIST: with ReLU
or bounded ReLU), and the CNN trained with each defense's recipe; feature squeezing is the ReLU CNN
behind 1-bit (MNIST) or 3-bit (CIFAR-10) depth reduction, the paper's FS. Each data set's models, ε grid
and budgets are one :class:`~benchmarks.brelu_gda_settings.DatasetSettings`. One JSON per model in
``benchmarks/results/brelu_gda/`` (CIFAR-10: its ``cifar10/`` subfolder) holds its parts; a part is
computed once (again with ``--force``, or when the model's weights, the image count or the settings
changed). A model not trained yet is a pending row on the page, which shows both data sets.

Parts (the first ``--count`` test images unless said otherwise):

* ``whitebox``: clean accuracy; FGSM and Rand+FGSM (α = 0.05; α = ε below it, pure noise, as the
  paper notes) accuracy over the ε grid (MNIST 0.01 .. 1, CIFAR-10 0.01 .. 0.3), through the model's own
  gradient (BPDA, identity backward, through the squeezer): Figure 3 (the four MNIST architectures) and
  the white-box panels of Figures 4 (MNIST) and 5 (CIFAR-10).
* ``minimal`` (Table 2, MNIST only): FGSM with minimal perturbation, ε on the grid 0.1, 0.2, 0.3: the defaults of
  the Adversarial Robustness Toolbox's FGSM (``eps=0.3, eps_step=0.1, minimal=True``), the toolbox the
  paper's authors wrote and used, and the only reading under which the paper's Table 2 accuracies
  (35-74 %) can be reached; accuracy on its output (the images no ε ≤ 0.3 fooled), robustness ρ over the fooled images,
  and their mean distance to the nearest of the 60,000 MNIST training images.
* ``sensitivity`` (Table 3; on CIFAR-10 too, without paper numbers): the mean L2 norm of the cross-entropy's
  input gradient.
* ``blackbox``: the same images crafted on the undefended ResNet + ReLU: the black-box panels of Figures
  4 and 5, and Tables 4 and 5 (FGSM ε 0.1; Rand+FGSM ε 0.3 on MNIST, 0.1 on CIFAR-10; DeepFool 100 iterations,
  JSMA θ 0.1 γ 1, C&W confidence 2.3; JSMA and C&W on the first ``--slow-count`` images). The slow
  adversarial images are cached in purify's cache folder (``brelu_gda/``), keyed by the source weights
  and the settings.
* ``honest`` (the first ``--honest-count`` images): FGSM, Rand+FGSM, PGD, APGD-CE, APGD-T and Square at
  L∞ 0.3 (MNIST; PGD 40 steps of 0.01) or 8/255 (CIFAR-10; PGD 20 steps of 2/255), AutoAttack's way (each
  attack on the images the earlier ones left), exact gradients (BPDA through the squeezer: identity
  backward, then APGD-CE through a smooth staircase as the backward); the last column is the worst case
  per image, with a 95 % Wilson interval.
* ``table1.json`` (MNIST): FGSM ε 0.1 crafted on each architecture, tested on each (Table 1).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .brelu_gda_settings import (CIFAR10, CW, DATASETS, DEEPFOOL, JSMA, MINIMAL, MNIST, SEED, WORST,
                                 DatasetSettings, Entry)
from .convergence import wilson

__all__ = ["Entry", "DatasetSettings", "MNIST", "CIFAR10", "DATASETS", "load_entry", "smooth_bpda_fn", "main"]

log = logging.getLogger("benchmarks.brelu_gda")
OUT = Path(__file__).resolve().parent / "results" / "brelu_gda"
ModelFn = Callable[[Tensor], Tensor]
BATCH = 100


def _settings(part: str, ds: DatasetSettings = MNIST) -> dict[str, Any]:
    """The settings a part's numbers depend on (stored with it: a change makes it stale)."""
    curves = {"eps_grid": list(ds.eps_grid), "alpha": ds.alpha, "seed": SEED}
    return {"whitebox": curves, "minimal": {"minimal": MINIMAL}, "sensitivity": {},
            "blackbox": {**curves, "table_eps": ds.table_eps, "deepfool": DEEPFOOL, "jsma": JSMA, "cw": CW},
            "honest": {"alpha": ds.honest_alpha, "pgd": ds.pgd, "worst": WORST, "seed": SEED,
                       "smooth_temperature": ds.smooth_temperature}, "table1": {"table_eps": ds.table_eps}}[part]


# ----------------------------------------------------------------------------- models and helpers

def load_entry(entry: Entry, weights_dir: str | Path) -> tuple[nn.Module, ModelFn, str] | None:
    """``(model, attack_fn, sha256)``: the model predictions come from, the function attacks differentiate
    (the model itself, or the CNN behind ``bpda`` of the squeezer), and the weights' sha256; None when
    the artifact is not there yet."""
    from purify.attacks import bpda
    from purify.errors import PurifyError
    from purify.models.trained import load_trained
    from purify.pipeline import DefendedClassifier
    from purify.squeeze import BitDepthReduce

    folder = Path(weights_dir)
    if not ((folder / f"{entry.artifact}.json").is_file() and (folder / f"{entry.artifact}.safetensors").is_file()):
        return None
    try:
        net = load_trained(entry.artifact, weights_dir=folder)
    except PurifyError as err:          # e.g. an artifact being written right now
        log.warning("%s: cannot load %s (%s); pending", entry.id, entry.artifact, err)
        return None
    sha = net.pretrained_cfg.sha256
    if entry.bits is None:
        return net, net, sha
    squeeze = BitDepthReduce(bits=entry.bits)
    defended = DefendedClassifier(squeeze, net).eval()
    through = bpda(squeeze)
    return defended, (lambda v: net(through(v))), sha


def smooth_bpda_fn(entry: Entry, model: nn.Module, *,
                   temperature: float = MNIST.smooth_temperature) -> ModelFn | None:
    """For a squeezed entry, the classifier behind BPDA whose backward is the smooth staircase
    (:func:`purify.squeeze.bit_depth_surrogate`): the stronger adaptive attack on few-bit rounding,
    where the identity backward points at pixels no step of ε can move to another level. None otherwise."""
    if entry.bits is None:
        return None
    from purify.attacks import bpda
    from purify.squeeze import BitDepthReduce, bit_depth_surrogate

    bits = entry.bits
    through = bpda(BitDepthReduce(bits=bits), backward=lambda v: bit_depth_surrogate(v, bits=bits,
                                                                                     temperature=temperature))
    return lambda v: model.classifier(through(v))


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(SEED)


def _correct(model: ModelFn, x: Tensor, y: Tensor) -> Tensor:
    """Per-image correctness (bool, (N,)), in batches, without gradients."""
    with torch.no_grad():
        return torch.cat([model(x[i:i + BATCH]).argmax(1) == y[i:i + BATCH] for i in range(0, len(x), BATCH)])


def _batched(attack: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor) -> Tensor:
    return torch.cat([attack(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, len(x), BATCH)]) if len(x) else x.clone()


def _pct(ok: Tensor) -> float:
    return 100 * float(ok.double().mean()) if len(ok) else float("nan")


def _curves(attack_fn: ModelFn, x: Tensor, y: Tensor, ds: DatasetSettings) -> dict[str, dict[str, Tensor]]:
    """FGSM and Rand+FGSM images at every ε of the grid (one seeded generator per ε for the random step)."""
    from purify.attacks import fgsm, rand_fgsm

    out: dict[str, dict[str, Tensor]] = {"fgsm": {}, "rand_fgsm": {}}
    for e in ds.eps_grid:
        out["fgsm"][f"{e:g}"] = _batched(lambda a, b: fgsm(attack_fn, a, b, eps=e), x, y)
        g = _gen()
        out["rand_fgsm"][f"{e:g}"] = _batched(lambda a, b: rand_fgsm(attack_fn, a, b, eps=e, alpha=min(ds.alpha, e),
                                                                      generator=g), x, y)
    return out


# ----------------------------------------------------------------------------- parts

def part_whitebox(model: ModelFn, attack_fn: ModelFn, x: Tensor, y: Tensor, *,
                  ds: DatasetSettings = MNIST) -> dict[str, Any]:
    """Clean accuracy and the white-box FGSM / Rand+FGSM curves over ``ds.eps_grid``, %."""
    curves = _curves(attack_fn, x, y, ds)
    return {"clean": _pct(_correct(model, x, y)),
            **{k: {e: _pct(_correct(model, a, y)) for e, a in c.items()} for k, c in curves.items()}}


def part_minimal(model: ModelFn, attack_fn: ModelFn, x: Tensor, y: Tensor, train: Tensor) -> dict[str, Any]:
    """Table 2: minimal FGSM's accuracy, ρ₂ / ρ∞ and training set distance over the images it fooled."""
    from purify.attacks import fgsm_minimal
    from purify.metrics import nearest_distance

    ok = _correct(model, x, y)
    adv = _batched(lambda a, b: fgsm_minimal(attack_fn, a, b, **MINIMAL), x, y)
    ok_adv = _correct(model, adv, y)
    fooled = ok & ~ok_adv
    d = (adv - x)[fooled].flatten(1).double()
    xf = x[fooled].flatten(1).double()
    res: dict[str, Any] = {"accuracy": _pct(ok_adv), "fooled": int(fooled.sum()), "correct": int(ok.sum())}
    if not bool(fooled.any()):
        return {**res, "rho2": float("nan"), "rhoinf": float("nan"), "train_dist": float("nan"),
                "clean_train_dist": float("nan")}
    res["rho2"] = float((d.norm(dim=1) / xf.norm(dim=1).clamp_min(1e-12)).mean())
    res["rhoinf"] = float((d.abs().amax(1) / xf.abs().amax(1).clamp_min(1e-12)).mean())
    res["train_dist"] = float(nearest_distance(adv[fooled], train)[0].double().mean())
    res["clean_train_dist"] = float(nearest_distance(x[fooled], train)[0].double().mean())
    return res


def part_sensitivity(attack_fn: ModelFn, x: Tensor, y: Tensor) -> dict[str, Any]:
    """Table 3: mean ‖∂CE/∂x‖₂ at the clean images (through BPDA for the squeezer)."""
    from purify.metrics import loss_sensitivity

    norms = torch.cat([loss_sensitivity(attack_fn, x[i:i + BATCH], y[i:i + BATCH], reduction="none")
                       for i in range(0, len(x), BATCH)])
    return {"sensitivity": float(norms.double().mean())}


def craft_source(source: ModelFn, sha: str, x: Tensor, y: Tensor, slow_count: int,
                 cache_dir: Path | None, *, ds: DatasetSettings = MNIST) -> dict[str, Any]:
    """The black-box images, crafted on the source: the curves, DeepFool, and JSMA / C&W on the first
    ``slow_count``. DeepFool, JSMA and C&W are read from / written to ``cache_dir`` when given."""
    from purify.attacks import cw_l2, deepfool, jsma

    adv: dict[str, Any] = _curves(source, x, y, ds)
    key = json.dumps({"sha": sha, "n": len(x), "slow": slow_count, "df": DEEPFOOL, "jsma": JSMA, "cw": CW,
                      "seed": SEED, "x": hashlib.sha256(x.numpy().tobytes()).hexdigest()}, sort_keys=True)
    path = None if cache_dir is None else cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.pt"
    if path is not None and path.is_file():
        adv.update(torch.load(path, weights_only=True))
        return adv
    xs, ys = x[:slow_count], y[:slow_count]
    t = time.perf_counter()
    slow = {"deepfool": _batched(lambda a, b: deepfool(source, a, b, **DEEPFOOL), x, y)}
    log.info("source: DeepFool %.0f s", time.perf_counter() - t)
    g = _gen()
    slow["jsma"] = _batched(lambda a, b: jsma(source, a, b, **JSMA, generator=g), xs, ys)
    log.info("source: JSMA %.0f s", time.perf_counter() - t)
    slow["cw"] = _batched(lambda a, b: cw_l2(source, a, b, **CW), xs, ys)
    log.info("source: C&W %.0f s", time.perf_counter() - t)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(slow, path)
    adv.update(slow)
    return adv


def part_blackbox(model: ModelFn, adv: dict[str, Any], y: Tensor, *, ds: DatasetSettings = MNIST) -> dict[str, Any]:
    """Accuracy on the source's images: the black-box curves (Figure 4 / 5) and the cells of ``ds.table``
    (Table 4 / 5), %."""
    res: dict[str, Any] = {k: {e: _pct(_correct(model, a, y)) for e, a in adv[k].items()} for k in ("fgsm", "rand_fgsm")}
    n = len(adv["jsma"])
    eps = ds.table_eps
    res[ds.table] = {"fgsm": res["fgsm"][f"{eps['fgsm']:g}"], "rand_fgsm": res["rand_fgsm"][f"{eps['rand_fgsm']:g}"],
                     "deepfool": _pct(_correct(model, adv["deepfool"], y)),
                     "jsma": _pct(_correct(model, adv["jsma"], y[:n])), "cw": _pct(_correct(model, adv["cw"], y[:n]))}
    res["slow_count"] = n
    return res


def part_honest(model: ModelFn, attack_fn: ModelFn, x: Tensor, y: Tensor,
                smooth_fn: ModelFn | None = None, *, ds: DatasetSettings = MNIST) -> dict[str, Any]:
    """The honest columns at L∞ ``ds.pgd['eps']``: the paper's FGSM and Rand+FGSM, then PGD, APGD-CE, APGD-T,
    APGD-CE through the smooth BPDA backward (``smooth_fn``, squeezed models only) and Square, each on the
    images the earlier ones left (cumulative); the worst case with its interval."""
    from purify.attacks import apgd, fgsm, pgd, rand_fgsm, square

    eps, pgd_cfg = ds.pgd["eps"], ds.pgd
    alive = _correct(model, x, y)
    cells: dict[str, Any] = {"clean": _pct(alive)}
    steps = (("fgsm", lambda a, b, g: fgsm(attack_fn, a, b, eps=eps)),
             ("rand_fgsm", lambda a, b, g: rand_fgsm(attack_fn, a, b, eps=eps, alpha=ds.honest_alpha, generator=g)),
             ("pgd", lambda a, b, g: pgd(attack_fn, a, b, eps=eps, step=pgd_cfg["step"], iters=pgd_cfg["iters"],
                                         random_start=True, generator=g)),
             ("apgd_ce", lambda a, b, g: apgd(attack_fn, a, b, eps=eps, loss="ce", iters=WORST["iters"], generator=g)),
             ("apgd_t", lambda a, b, g: apgd(attack_fn, a, b, eps=eps, loss="dlr-targeted", iters=WORST["iters"],
                                             n_target_classes=WORST["n_target_classes"], generator=g)),
             ("apgd_ce_smooth", None if smooth_fn is None else
              lambda a, b, g: apgd(smooth_fn, a, b, eps=eps, loss="ce", iters=WORST["iters"], generator=g)),
             ("square", lambda a, b, g: square(model, a, b, eps=eps, queries=WORST["queries"], generator=g)))
    for name, fn in steps:
        if fn is None:              # does not apply to this model
            continue
        t = time.perf_counter()
        idx = alive.nonzero().squeeze(1)
        if len(idx):
            g = _gen()
            adv = _batched(lambda a, b: fn(a, b, g), x[idx], y[idx])
            alive[idx] &= _correct(model, adv, y[idx])
        cells[name] = _pct(alive)
        cells[f"{name}_seconds"] = time.perf_counter() - t
    k, n = int(alive.sum()), len(x)
    lo, hi = wilson(k, n)
    cells["worst"] = {"accuracy": 100 * k / n if n else float("nan"), "robust": k, "count": n, "ci": [100 * lo, 100 * hi]}
    return cells


def part_table1(models: dict[str, ModelFn], x: Tensor, y: Tensor, *,
                ds: DatasetSettings = MNIST) -> dict[str, dict[str, float]]:
    """Table 1: rows crafted on (FGSM ε 0.1 through each architecture's gradient), columns tested on, %."""
    from purify.attacks import fgsm

    out: dict[str, dict[str, float]] = {}
    for src, fn in models.items():
        adv = _batched(lambda a, b: fgsm(fn, a, b, eps=ds.table_eps["fgsm"]), x, y)
        out[src] = {dst: _pct(_correct(m, adv, y)) for dst, m in models.items()}
    return out


# ----------------------------------------------------------------------------- driver

def _fresh(part: dict[str, Any] | None, stamp: dict[str, Any]) -> bool:
    return part is not None and all(part.get(k) == v for k, v in stamp.items())


def _run_part(store: dict[str, Any], name: str, stamp: dict[str, Any], force: bool, command: str,
              compute: Callable[[], Any]) -> bool:
    """Compute ``store['parts'][name]`` unless it is there with the same ``stamp``; True when it ran."""
    parts = store.setdefault("parts", {})
    if not force and _fresh(parts.get(name), stamp):
        return False
    t = time.perf_counter()
    result = compute()
    parts[name] = {**stamp, "result": result, "seconds": time.perf_counter() - t, "command": command}
    log.info("%s: %s done (%.0f s)", store["id"], name, parts[name]["seconds"])
    return True


def evaluate(args: argparse.Namespace, command: str) -> None:
    """Every requested part of ``args.dataset`` whose models exist, written to its results folder under
    ``args.out`` as soon as it is done."""
    from purify.data import load_dataset

    ds = DATASETS[args.dataset]
    out = ds.results_dir(args.out)
    out.mkdir(parents=True, exist_ok=True)
    test = load_dataset(ds.name, "test", data_dir=args.data_dir)
    x, y = test.tensors(slice(0, args.count))
    needed = dict.fromkeys([*args.models, *ds.archs, ds.source])
    loaded = {i: load_entry(ds.entries[i], args.weights_dir) for i in needed}
    pending = sorted(i for i in args.models if loaded[i] is None)
    if pending:
        log.info("pending (no artifact in %s yet): %s", args.weights_dir, ", ".join(pending))
    train: list[Tensor] = []
    source_adv: dict[str, Any] = {}

    def training_images() -> Tensor:
        if not train:
            full = load_dataset(ds.name, "train_full", data_dir=args.data_dir)
            train.append(torch.tensor(full.x).permute(0, 3, 1, 2))
        return train[0]

    for i in args.models:
        if loaded[i] is None:
            continue
        model, attack_fn, sha = loaded[i]
        entry = ds.entries[i]
        path = out / f"{i}.json"
        store = json.loads(path.read_text()) if path.is_file() else {}
        cfg = model.classifier.pretrained_cfg if entry.bits else model.pretrained_cfg
        store.update({"id": i, "artifact": entry.artifact, "bits": entry.bits, "sha256": sha,
                      "recipe": cfg.raw.get("recipe"), "arch": cfg.arch,
                      "artifact_test_clean": cfg.raw.get("test", {}).get("clean"),
                      "training": {k: cfg.raw.get("training", {}).get(k) for k in ("epochs", "lr")}})
        stamp = {"sha256": sha, "count": len(x)}

        def run(part: str, compute: Callable[[], Any], **extra: Any) -> None:
            if part not in ds.parts:
                return
            full_stamp = {**stamp, **extra, "settings": _settings(part, ds)}
            if _run_part(store, part, full_stamp, args.force, command, compute):
                path.write_text(json.dumps(store, indent=1) + "\n")

        if i in ds.archs or i in ds.defenses:       # the source alone (CIFAR-10) is a row of the models table only
            run("whitebox", lambda: part_whitebox(model, attack_fn, x, y, ds=ds))
        if i in ds.defenses:
            run("minimal", lambda: part_minimal(model, attack_fn, x, y, training_images()))
            run("sensitivity", lambda: part_sensitivity(attack_fn, x, y))
            if loaded[ds.source] is not None:
                src_model, src_sha, n_slow = loaded[ds.source][1], loaded[ds.source][2], min(args.slow_count, len(x))

                def blackbox() -> dict[str, Any]:
                    if not source_adv:
                        cache = None if args.no_cache else _cache_dir()
                        source_adv.update(craft_source(src_model, src_sha, x, y, n_slow, cache, ds=ds))
                    return part_blackbox(model, source_adv, y, ds=ds)

                run("blackbox", blackbox, source_sha256=src_sha, slow_count=n_slow)
            n = min(args.honest_count, len(x))
            smooth = smooth_bpda_fn(entry, model, temperature=ds.smooth_temperature)
            run("honest", lambda: part_honest(model, attack_fn, x[:n], y[:n], smooth, ds=ds), count=n)
        path.write_text(json.dumps(store, indent=1) + "\n")
    if ds.archs and all(loaded[a] is not None for a in ds.archs):
        path = out / "table1.json"
        store = json.loads(path.read_text()) if path.is_file() else {"id": "table1"}
        stamp = {"sha256": {a: loaded[a][2] for a in ds.archs}, "count": len(x), "settings": _settings("table1", ds)}
        if _run_part(store, "table1", stamp, args.force, command,
                     lambda: part_table1({a: loaded[a][0] for a in ds.archs}, x, y, ds=ds)):
            path.write_text(json.dumps(store, indent=1) + "\n")


def _cache_dir() -> Path:
    from purify._download import cache_root
    return cache_root() / "brelu_gda"


def main(argv: list[str] | None = None) -> int:
    from .brelu_gda_page import write_page

    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m benchmarks.brelu_gda", description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=tuple(DATASETS), default="mnist",
                    help="mnist (Figures 3-4, Tables 1-4) or cifar10 (Figure 5, Table 5); default mnist")
    ap.add_argument("--models", default=None, help="comma-separated (default: all of the data set's: "
                    + "; ".join(f"{d.name}: {', '.join(d.entries)}" for d in DATASETS.values()) + ")")
    ap.add_argument("--weights-dir", default=None, help="folder of the trained artifacts (default: "
                    + ", ".join(f"{d.weights_dir} for {d.name}" for d in DATASETS.values()) + ")")
    ap.add_argument("--count", type=int, default=1000, help="test images (default 1000)")
    ap.add_argument("--honest-count", type=int, default=500, help="test images of the honest columns (default 500)")
    ap.add_argument("--slow-count", type=int, default=500, help="test images of black-box JSMA and C&W (default 500)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default=str(OUT), help="the MNIST results' folder (CIFAR-10's: its cifar10/ subfolder); "
                    "the page is <out>.md")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--force", action="store_true", help="recompute parts that have results")
    ap.add_argument("--no-cache", action="store_true", help="craft the slow black-box images again")
    ap.add_argument("--report-only", action="store_true", help="rebuild the page and figures (both data sets) only")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = DATASETS[args.dataset]
    args.weights_dir = args.weights_dir or ds.weights_dir
    args.models = [m for m in (args.models or ",".join(ds.entries)).split(",") if m]
    unknown = [m for m in args.models if m not in ds.entries]
    if unknown:
        print(f"error: unknown {ds.name} model(s) {unknown}; known: {', '.join(ds.entries)}", file=sys.stderr)
        return 2
    command = "python -m benchmarks.brelu_gda " + " ".join(argv)
    if not args.report_only:
        evaluate(args, command)
    page = write_page(Path(args.out), command)
    print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
