"""Benchmark run configs: TOML files parsed and checked completely before any work starts.

A config names the images, the classifier, the defense pipeline, and a list of attack entries;
each entry expands to cells (attack x eps x threat model x swept iterations / EOT samples). Every
mistake raises :class:`ConfigError` naming the file and the key, with a hint. The layout::

    extends = "gcln_table"               # optional: a bundled config's name or a path relative to this file;
                                         # its tables merge under this file's, arrays are replaced whole
    name = "my_run"                      # optional, default: the file name (never inherited)
    description = "one line for `python -m benchmarks list`"
    batch_size = 250
    device = "auto"                      # "auto" = cuda when available, else cpu
    seed = 0                             # attack and defense randomness

    [data]
    dataset = "cifar10"                  # or your images: path = "my_images" (an .npz or a class-per-subfolder
    split = "test"                       # folder, any size; resize = [224, 224]; see harness.inputs)
    count = 1000                         # or: indices = [0, 1, 2]; with path, neither = every image
    seed = 0                             # which `count` images (sorted random sample)

    [model]
    name = "resnet56"                    # or your classifier: factory = "mynets:build" (+ weights, weights_sha256)
    pretrained = true                    # or onnx = "mynet.onnx"; mean / std when it expects normalized input

    [substitute]                         # optional: the model the substitute / blackbox threat models attack
    name = "resnet20"                    # a model of purify.models for the same dataset as [model]
    pretrained = true

    [defense]
    head = "softmax"                     # or "wnll", with:
    head_params = { artifact = "resnet56_wnll", mode = "inductive" }   # a shipped name or a path; k, k_sigma
    attack_through = "head"              # wnll: "head" (through the WNLL solve) or "surrogate" (linear branch)
    stages = [{ name = "tvm", params = { weight = 0.1, drop_prob = 0.3 } }]

    [[attacks]]
    name = "pgd"                         # a name of purify.attacks.list_attacks(): fgsm, rand_fgsm, bim, pgd, apgd,
                                         # square, fgsm_minimal, cw_l2, deepfool, trust_region, jsma, or yours:
                                         # "myattacks:my_attack" (an AttackSpec)
    id = "pgd"                           # optional, default: name; must be unique
    eps = ["8/255", 0.02]                # numbers or "p/q" strings on the [0, 1] image scale (L-inf eps > 1
                                         # is refused); none for the minimal attacks (fgsm_minimal, cw_l2, ...)
    threat_models = ["bpda", "eot"]      # none, transfer, bpda, eot, bpda+eot, full, substitute, blackbox
    eot_samples = [1, 10]                # for eot / bpda+eot cells (default 10)
    params = { step_ratio = 0.25, iters = [10, 50] }   # the attack's settings (purify.attacks.registry)
    through = "surrogate"                # optional, WNLL head only: this entry differentiates the other side
                                         # than defense.attack_through (a worst ensemble can hold both)

    [examples]                           # optional: the cell shown in examples.png
    attack = "pgd"; eps = "8/255"; threat_model = "bpda"; n = 6

    [paper]                              # optional: the paper's numbers, shown next to ours:
                                         # source, note, clean (undefended), clean_defended, [[paper.results]]

    [metrics]                            # optional: numbers beyond accuracy (Zantedeschi et al. 2017; harness.metrics)
    training_set_distance = true         # per cell train_dist: the fooled images' mean distance to their nearest
    training_split = "train"             # training image, from this split (your images: training_path = "t.npz")
    loss_sensitivity = true              # per config: mean ||dCE/dx||_2 over the images (undefended; BPDA)

    [quick]                              # optional: overrides applied by --quick

``--set KEY=VALUE`` (``load_config(..., overrides=[...])``) changes the document before any of this
is checked; see :mod:`benchmarks.harness.overrides`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .overrides import (BUNDLED_DIR, apply_overrides, apply_quick, check_quick, read_document,
                                         resolve_extends)
from .schema import (ATTACK_THROUGH, DEFAULT_EOT_SAMPLES, EOT_THREAT_MODELS, HARNESS_FIXED,
                                       HEAD_PARAM_KEYS, HEADS, SUBSTITUTE_SOURCE, THREAT_MODELS, UNDEFENDED_EVAL,
                                       UNDEFENDED_SOURCE, AttackEntry, ConfigError, Ctx, Eps, RunConfig, config_params)
from purify.attacks.registry import RATIO, AttackSpec, Param, get_attack_spec
from .inputs import (attack_keys, check_eps_scale, check_onnx_attacks, parse_data, parse_model,
                                      parse_registered, resolve_attack)
from .metrics import parse_metrics
from .worst import parse_worst, worst_entries
from purify.errors import PurifyError

__all__ = ["ConfigError", "THREAT_MODELS", "UNDEFENDED_SOURCE", "SUBSTITUTE_SOURCE",
           "UNDEFENDED_EVAL", "EOT_THREAT_MODELS", "AttackEntry", "RunConfig", "Eps", "load_config", "parse_config"]

_TOP_KEYS = {"name", "description", "batch_size", "device", "seed", "data", "model", "substitute", "defense",
             "attacks", "examples", "paper", "quick", "worst", "metrics"}
# defense: unless every threat model is "none" / "substitute"; substitute: when one is "substitute" / "blackbox"
_REQUIRED_TOP = ("description", "data", "model")   # and [[attacks]] or [worst]
_DEFENSE_KEYS = {"stages", "head", "head_params", "attack_through"}
_STAGE_KEYS = {"name", "params"}
_ATTACK_KEYS = {"name", "id", "eps", "threat_models", "eot_samples", "params", "through"}
_EXAMPLE_KEYS = {"attack", "eps", "threat_model", "n"}
_PAPER_KEYS = {"source", "clean", "clean_defended", "note", "results"}
_PAPER_RESULT_KEYS = {"attack", "threat_model", "label", "eps", "accuracy", "note"}
_NORM_TEXT = {"linf": "L-inf", "l2": "L2", "l0": "L0"}


def _find(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise ConfigError(f"{p}: no such config file; `python -m benchmarks list` shows the bundled ones")
        return p
    bundled = BUNDLED_DIR / f"{name_or_path}.toml"
    if not bundled.is_file():
        names = ", ".join(sorted(q.stem for q in bundled.parent.glob("*.toml")))
        raise ConfigError(f"{name_or_path}: no bundled config of that name and no such file; bundled: {names}")
    return bundled


def load_config(name_or_path: str | Path, *, quick: bool = False, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a bundled config by name (``"quick_demo"``) or a TOML file by path, and check it.

    The document's ``extends`` chain is merged first
    (:func:`~benchmarks.harness.overrides.resolve_extends`); ``overrides`` are ``--set`` options,
    ``"KEY=VALUE"`` strings applied to the merged document next
    (:func:`~benchmarks.harness.overrides.apply_overrides`); ``quick`` applies ``[quick]`` after them.
    """
    path = _find(name_or_path)
    raw = resolve_extends(read_document(path), path)
    return parse_config(apply_overrides(raw, overrides, path), path, quick=quick)


def parse_config(raw: dict[str, Any], path: Path, *, quick: bool = False) -> RunConfig:
    """Check a config read from ``path`` (used for messages and ``extends``) and apply ``[quick]`` when asked."""
    raw = resolve_extends(raw, path)
    ctx = Ctx(Path(path))
    ctx.keys(raw, _TOP_KEYS, "", _REQUIRED_TOP)
    quick_tab = ctx.table(raw["quick"], "quick") if "quick" in raw else None
    if quick_tab is not None:
        check_quick(ctx, quick_tab, raw)
    cfg = dict(raw)
    if quick:
        if quick_tab is None:
            raise ctx.error("quick", "--quick needs a [quick] table of overrides (e.g. data = { count = 32 })")
        cfg = apply_quick(cfg, quick_tab)
    name = ctx.string(cfg.get("name", Path(path).stem), "name")
    description = ctx.string(cfg["description"], "description")
    batch_size = ctx.integer(cfg.get("batch_size", 100), "batch_size", low=1)
    device = ctx.string(cfg.get("device", "auto"), "device")
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ctx.error("device", f"expected 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    seed = ctx.integer(cfg.get("seed", 0), "seed")
    data = parse_data(ctx, ctx.table(cfg["data"], "data"))
    model = parse_model(ctx, ctx.table(cfg["model"], "model"))
    substitute = parse_registered(ctx, ctx.table(cfg["substitute"], "substitute"), "substitute") \
        if "substitute" in cfg else None
    stages, head, head_params, attack_through = (_parse_defense(ctx, ctx.table(cfg["defense"], "defense"))
                                                 if "defense" in cfg else ((), "softmax", {}, "head"))
    raw_attacks = cfg.get("attacks", [])
    if not isinstance(raw_attacks, list) or (not raw_attacks and "worst" not in cfg):
        raise ctx.error("attacks", "expected a non-empty array of tables ([[attacks]] entries), or a [worst] table")
    attacks = tuple(_parse_attack(ctx, a, i, stages, head) for i, a in enumerate(raw_attacks))
    worst = parse_worst(ctx, cfg.get("worst"), stages, attacks, head=head, attack_through=attack_through)
    keys = attack_keys(attacks + worst_entries(worst, stages), len(attacks))
    attacks += worst_entries(worst, stages)
    # L-inf budgets here; L2 budgets against the image size here for built-in data, in prepare() for yours.
    from purify.data import DATASETS
    numel = math.prod(DATASETS[data["dataset"]].image_shape) if "dataset" in data else None
    check_eps_scale(ctx.error, attacks, keys, numel)
    check_onnx_attacks(ctx, model, head, attacks, keys)
    if not stages:
        defended = sorted({t for a in attacks for t in a.threat_models} - set(UNDEFENDED_EVAL))
        if defended:
            raise ctx.error("defense", f"missing required table: threat model {defended[0]!r} evaluates a defense; "
                            "add [defense] with stages = [{ name = \"tvm\" }] or use only threat models "
                            f"{' / '.join(map(repr, UNDEFENDED_EVAL))}")
    if substitute is None:
        for i, a in enumerate(attacks):
            used = [t for t in a.threat_models if t in SUBSTITUTE_SOURCE]
            if used:
                raise ctx.error("substitute", f"missing required table: attacks[{i}] has threat model {used[0]!r}, "
                                "which attacks a substitute model; add [substitute] with name = \"resnet20\" (a "
                                "model of purify.models trained on the same dataset as [model])")
    ids = [a.id for a in attacks]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ctx.error("attacks", f"two entries share the id {dup[0]!r}; give each an id = \"...\"")
    examples = _parse_examples(ctx, cfg.get("examples"), attacks)
    paper = _parse_paper(ctx, cfg.get("paper"))
    metrics = parse_metrics(ctx, cfg.get("metrics"), data, model)
    return RunConfig(name=name, path=Path(path), description=description, batch_size=batch_size, device=device,
                     seed=seed, data=data, model=model, stages=stages, head=head, attacks=attacks,
                     examples=examples, paper=paper, is_quick=quick, raw=raw, head_params=head_params,
                     attack_through=attack_through, substitute=substitute, worst=worst, metrics=metrics)


def _parse_head(ctx: Ctx, t: dict[str, Any], head: str) -> tuple[dict[str, Any], str]:
    """``head_params`` and ``attack_through``: only with the WNLL head; the artifact is loaded in prepare()."""
    if head != "wnll":
        for key in ("head_params", "attack_through"):
            if key in t:
                raise ctx.error(f"defense.{key}", "only used with head = \"wnll\"; remove it or set the head")
        return {}, "head"
    params = dict(ctx.table(t.get("head_params", {}), "defense.head_params"))
    unknown = sorted(set(params) - set(HEAD_PARAM_KEYS))
    if unknown:
        raise ctx.error(f"defense.head_params.{unknown[0]}", f"unknown key; expected one of {list(HEAD_PARAM_KEYS)}")
    out = {"artifact": ctx.string(params.get("artifact", "resnet56_wnll"), "defense.head_params.artifact"),
           "mode": ctx.string(params.get("mode", "inductive"), "defense.head_params.mode", ("inductive", "transductive"))}
    for key in ("k", "k_sigma"):
        if key in params:
            out[key] = ctx.integer(params[key], f"defense.head_params.{key}", low=1)
    through = ctx.string(t.get("attack_through", "head"), "defense.attack_through", ATTACK_THROUGH)
    return out, through


def _parse_defense(ctx: Ctx, t: dict[str, Any]) -> tuple[tuple[tuple[str, dict[str, Any]], ...], str,
                                                          dict[str, Any], str]:
    ctx.keys(t, _DEFENSE_KEYS, "defense", ("stages",))
    from purify.pipeline import Pipeline
    from purify.registry import list_purifiers
    head = ctx.string(t.get("head", "softmax"), "defense.head", HEADS)
    head_params, attack_through = _parse_head(ctx, t, head)
    if not isinstance(t["stages"], list) or (not t["stages"] and head == "softmax"):
        raise ctx.error("defense.stages", "expected a non-empty array of stages, e.g. [{ name = \"tvm\" }] "
                        "(empty only with a head other than softmax: the head alone is then the defense)")
    stages = []
    for i, s in enumerate(t["stages"]):
        key = f"defense.stages[{i}]"
        if isinstance(s, str):
            s = {"name": s}
        s = ctx.table(s, key)
        ctx.keys(s, _STAGE_KEYS, key, ("name",))
        name = ctx.string(s["name"], f"{key}.name", tuple(list_purifiers()))
        params = dict(ctx.table(s.get("params", {}), f"{key}.params"))
        if "generator" in params:
            raise ctx.error(f"{key}.params.generator", "randomness comes from the harness's seeded generator")
        try:
            Pipeline.from_spec([(name, params)])
        except PurifyError as e:
            raise ctx.error(f"{key}.params", str(e)) from None
        stages.append((name, params))
    return tuple(stages), head, head_params, attack_through


def _parse_attack(ctx: Ctx, a: Any, i: int, stages, head: str = "softmax") -> AttackEntry:
    key = f"attacks[{i}]"
    a = ctx.table(a, key)
    ctx.keys(a, _ATTACK_KEYS, key, ("name", "threat_models"))
    name = resolve_attack(ctx, a["name"], f"{key}.name")      # a registered name, or "module:attribute"
    spec = get_attack_spec(name)
    aid = ctx.string(a.get("id", name), f"{key}.id")
    if not aid or not all(c.isalnum() or c in "_-." for c in aid):
        raise ctx.error(f"{key}.id", f"use letters, digits, '_', '-' or '.', got {aid!r}")
    eps_raw = ctx.as_list(a.get("eps", []), f"{key}.eps")
    eps = tuple(ctx.number(e, f"{key}.eps") for e in eps_raw)
    if spec.uses_eps and not eps:
        raise ctx.error(f"{key}.eps", f"{name} needs at least one budget, e.g. eps = [0.02, \"8/255\"]")
    if not spec.uses_eps and eps:
        raise ctx.error(f"{key}.eps", f"{name} has no budget; remove eps (it is reported by its mean "
                        f"{_NORM_TEXT[spec.norm()]} norm)")
    tms = ctx.as_list(a["threat_models"], f"{key}.threat_models")
    if not tms:
        raise ctx.error(f"{key}.threat_models", f"expected at least one of {', '.join(THREAT_MODELS)}")
    tms = tuple(ctx.string(t, f"{key}.threat_models", THREAT_MODELS) for t in tms)
    if len(set(tms)) != len(tms):
        raise ctx.error(f"{key}.threat_models", "lists a threat model twice")
    eot = tuple(ctx.integer(n, f"{key}.eot_samples", low=1)
                for n in ctx.as_list(a.get("eot_samples", DEFAULT_EOT_SAMPLES), f"{key}.eot_samples"))
    params = _parse_attack_params(ctx, spec, dict(ctx.table(a.get("params", {}), f"{key}.params")), f"{key}.params")
    through = None
    if "through" in a:       # one entry through the other side of a WNLL head than the defense's attack_through
        if head != "wnll":
            raise ctx.error(f"{key}.through", "only used with head = \"wnll\"; remove it or set the head")
        through = ctx.string(a["through"], f"{key}.through", ATTACK_THROUGH)
        if any(t in SUBSTITUTE_SOURCE for t in tms):
            raise ctx.error(f"{key}.through", "substitute / blackbox attacks differentiate the substitute model, "
                            "not the head")
    entry = AttackEntry(id=aid, name=name, eps=eps, threat_models=tms, eot_samples=eot, params=params,
                        through=through)
    if "full" in tms or "eot" in tms:
        _check_full_differentiable(ctx, stages, f"{key}.threat_models")
    return entry


def _parse_attack_params(ctx: Ctx, spec: AttackSpec, params: dict[str, Any], pkey: str) -> dict[str, Any]:
    """An entry's ``params``, checked against the attack's registry entry (names, types, bounds, sweeps)."""
    name = spec.name
    allowed = config_params(spec)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        fixed = [k for k in HARNESS_FIXED if k in spec.params]
        raise ctx.error(f"{pkey}.{unknown[0]}", f"unknown parameter of {name}; it takes "
                        f"{', '.join(sorted(allowed)) or 'none'}"
                        + (f" ({', '.join(fixed)}: set by the harness, which attacks the true label)" if fixed else ""))
    for r in spec.required:
        if r not in params and r not in spec.eps_relative:
            raise ctx.error(f"{pkey}.{r}", f"missing required parameter of {name}")
    for r in spec.eps_relative:
        given = (r in params) + (r + RATIO in params)
        if given > 1 or (given == 0 and r in spec.required):
            raise ctx.error(f"{pkey}.{r}", f"{name} needs {'exactly' if r in spec.required else 'at most'} one of "
                            f"{r} (absolute) or {r}{RATIO} ({r} = ratio * eps)")
    sweep = spec.sweep
    for k, v in params.items():
        if isinstance(v, list) and k not in sweep:
            raise ctx.error(f"{pkey}.{k}", f"only {', '.join(sweep) or 'no parameter'} may be a list for {name}")
        if isinstance(v, list) and not v:
            raise ctx.error(f"{pkey}.{k}", "empty list")
    out = {}
    for k, v in params.items():
        ratio = k.endswith(RATIO) and k[:-len(RATIO)] in spec.eps_relative
        p = Param("float", "", low=0.0) if ratio else spec.param(k)
        vals = [_param_value(ctx, spec, k, p, x, f"{pkey}.{k}") for x in ctx.as_list(v, f"{pkey}.{k}")]
        out[k] = vals if isinstance(v, list) else vals[0]
    return out


def _param_value(ctx: Ctx, spec: AttackSpec, k: str, p: Param, v: Any, key: str) -> Any:
    """One value of a setting, as the registry's :class:`~purify.attacks.registry.Param` describes it."""
    if p.kind == "int":
        return ctx.integer(v, key, low=int(p.low or 0))
    if p.kind == "float":
        x = ctx.number(v, key).value
        if p.low is not None and (x < p.low or (p.low_open and x == p.low)):
            raise ctx.error(key, f"expected a value {'>' if p.low_open else '>='} {p.low:g}, got {v!r}")
        return x
    if p.kind == "bool":
        if not isinstance(v, bool):
            raise ctx.error(key, f"expected true or false, got {v!r}")
        return v
    return ctx.string(v, key, p.choices)


def _check_full_differentiable(ctx: Ctx, stages, key: str) -> None:
    from purify.registry import get_purifier_spec
    for name, _ in stages:
        spec = get_purifier_spec(name)
        if not spec.differentiable and "ste" not in spec.params:
            raise ctx.error(key, f"threat models 'full' / 'eot' need gradients through every stage, and stage "
                            f"{name!r} has none (no ste option); use 'bpda' / 'bpda+eot' instead")


def _parse_examples(ctx: Ctx, t: Any, attacks: tuple[AttackEntry, ...]) -> dict[str, Any] | None:
    if t is None:
        return None
    t = ctx.table(t, "examples")
    ctx.keys(t, _EXAMPLE_KEYS, "examples", ("attack",))
    by_id = {a.id: a for a in attacks}
    aid = ctx.string(t["attack"], "examples.attack", tuple(by_id))
    entry = by_id[aid]
    out: dict[str, Any] = {"attack": aid, "n": ctx.integer(t.get("n", 6), "examples.n", low=1)}
    if "eps" in t:
        e = ctx.number(t["eps"], "examples.eps")
        if all(abs(e.value - x.value) > 1e-12 for x in entry.eps):
            raise ctx.error("examples.eps", f"{e.label} is not one of attack {aid!r}'s eps "
                            f"({', '.join(x.label for x in entry.eps) or 'none'})")
        out["eps"] = e.value
    tm = ctx.string(t.get("threat_model", entry.threat_models[0]), "examples.threat_model", entry.threat_models)
    out["threat_model"] = tm
    return out


def _parse_paper(ctx: Ctx, t: Any) -> dict[str, Any] | None:
    if t is None:
        return None
    t = ctx.table(t, "paper")
    ctx.keys(t, _PAPER_KEYS, "paper", ("source",))
    out: dict[str, Any] = {"source": ctx.string(t["source"], "paper.source"), "note": t.get("note", ""),
                           "clean": t.get("clean"), "clean_defended": t.get("clean_defended"), "results": []}
    for k in ("clean", "clean_defended"):       # the paper's clean accuracy without / with its defense
        if out[k] is not None:
            out[k] = ctx.number(out[k], f"paper.{k}").value
    for i, r in enumerate(t.get("results", [])):
        key = f"paper.results[{i}]"
        r = ctx.table(r, key)
        ctx.keys(r, _PAPER_RESULT_KEYS, key, ("attack", "threat_model", "accuracy"))
        eps = [ctx.number(e, f"{key}.eps").value for e in ctx.as_list(r.get("eps", []), f"{key}.eps")]
        acc = [ctx.number(v, f"{key}.accuracy").value for v in ctx.as_list(r["accuracy"], f"{key}.accuracy")]
        if eps and len(acc) != len(eps):
            raise ctx.error(f"{key}.accuracy", f"expected one accuracy per eps ({len(eps)}), got {len(acc)}")
        if not eps and len(acc) != 1:
            raise ctx.error(f"{key}.eps", "several accuracies need their eps values")
        out["results"].append({"attack": ctx.string(r["attack"], f"{key}.attack"),
                               "threat_model": ctx.string(r["threat_model"], f"{key}.threat_model", THREAT_MODELS),
                               "label": str(r.get("label", "")), "eps": eps, "accuracy": acc,
                               "note": str(r.get("note", ""))})
    return out
