"""The ``worst`` threat model: per image, the worst over an AutoAttack-grade ensemble; and the sanity flags.

A config's ``[worst]`` table asks for the headline figure of a defense::

    [worst]
    norm = "linf"                 # or "l2"
    eps = ["8/255"]               # the budgets of the headline
    iters = 100                   # APGD iterations per restart (APGD-CE and APGD-DLR-targeted)
    restarts = 1
    n_target_classes = 9          # APGD-T: the target classes tried per image
    queries = 5000                # Square's queries per image
    eot_samples = 10              # gradient attacks on a randomized defense average this many draws
    threat_models = ["bpda+eot"]  # optional: the gradient attacks' threat models (default: from the defense)
    include = ["pgd"]             # optional: ids of this config's own [[attacks]] that join the ensemble
    through = ["head", "surrogate"]  # WNLL head only: the sides the gradient attacks differentiate
                                  # (default: defense.attack_through alone)
    sanity = true                 # add the sanity cells (large eps; twice the iterations / EOT samples)
    sanity_eps = "64/255"         # the large budget at which accuracy must reach ~0 (default 8 x eps, L2: 10 x)

It expands into ordinary attack entries (so cells, caching and resume work as for any other
entry): ``worst-apgd-ce``, ``worst-apgd-t`` (targeted DLR) and ``worst-square``, and with
``sanity`` ``sanity-large-eps`` (APGD-CE at ``sanity_eps``) and ``sanity-more`` (APGD-CE with
twice the iterations, and twice the EOT samples on a randomized defense). With a WNLL head and
``through = ["head", "surrogate"]`` the gradient and sanity cells run on both sides of the head
(through the WNLL solve, and through its linear surrogate, the paper's BPDA for the head); the
side that is not ``defense.attack_through`` adds a suffix to the ids (``worst-apgd-ce-surrogate``).
The gradient attacks'
threat models follow the defense (:func:`gradient_threat_models`): none without a defense;
``full`` through differentiable (or straight-through) deterministic stages, and ``bpda`` too where
a stage only has a straight-through gradient; ``bpda+eot`` for a randomized defense, AutoAttack's "rand" protocol (``eot``, EOT over exact
gradients, only when asked for: an unrolled solver's gradient per draw is slow on a CPU). Square needs no gradients: it
queries the defended model itself.

Every cell records which images it left correct (the ``adv_correct`` column, a hex bitmask in
image order), so :func:`worst_rows` takes, per image, the AND over the ensemble's cells at each
eps: an image counts as robust only if every attack under every threat model failed on it.
:func:`sanity_flags` then checks Carlini et al. (2019)'s list: accuracy falls to ~0 at a large
eps; more iterations or EOT samples do not lower it further; Square does not beat the gradient
attacks (else the defense masks gradients).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..convergence import wilson   # the project's 95 % Wilson interval
from .schema import (DEFAULT_EOT_SAMPLES, UNDEFENDED_EVAL, AttackEntry, Ctx, Eps)

__all__ = ["WorstConfig", "parse_worst", "worst_entries", "gradient_threat_models", "worst_rows", "sanity_flags",
           "wilson", "encode_bits", "decode_bits", "WORST_KEYS"]

WORST_KEYS = {"norm", "eps", "iters", "restarts", "n_target_classes", "queries", "eot_samples", "threat_models",
              "include", "sanity", "sanity_eps", "through"}
#: Components of the ensemble: (entry id, attack, fixed params).
COMPONENTS = (("worst-apgd-ce", "apgd", {"loss": "ce"}), ("worst-apgd-t", "apgd", {"loss": "dlr-targeted"}),
              ("worst-square", "square", {}))
#: Accuracy above which "accuracy reaches ~0 at a large eps" is flagged.
LARGE_EPS_MAX_ACCURACY = 0.02


@dataclass(frozen=True)
class WorstConfig:
    norm: str
    eps: tuple[Eps, ...]
    iters: int
    restarts: int
    n_target_classes: int
    queries: int
    eot_samples: int
    threat_models: tuple[str, ...]
    include: tuple[str, ...]
    sanity: bool
    sanity_eps: Eps
    through: tuple[str, ...] = ()        # WNLL head: the sides of the gradient cells; () = the defense's choice only
    default_through: str = "head"        # the defense's attack_through (its cells keep the plain ids)

    def side_suffix(self, side: str) -> str:
        """``""`` for the defense's own side, ``"-surrogate"`` / ``"-head"`` for the other."""
        return "" if side == self.default_through else f"-{side}"

    @property
    def sides(self) -> tuple[str, ...]:
        return self.through or (self.default_through,)


def gradient_threat_models(stages) -> tuple[str, ...]:
    """The threat models under which the ensemble's gradient attacks see a defense of ``stages``.

    Example:
        >>> gradient_threat_models(()), gradient_threat_models((("dct", {}),)), gradient_threat_models((("tvm", {}),))
        (('none',), ('bpda', 'full'), ('bpda+eot',))
    """
    from purify.registry import get_purifier_spec

    if not stages:
        return ("none",)
    specs = [get_purifier_spec(name) for name, _ in stages]
    exact = all(s.differentiable for s in specs)
    straight_through = all(s.differentiable or "ste" in s.params for s in specs)
    if any(s.randomized for s in specs):
        # Not "eot" by default: EOT over exact gradients differentiates an iterative stage (TVM's
        # unrolled solve) once per draw, ~14 s per draw of 100 images on one CPU thread and ~2.4 GB
        # (draws are differentiated one at a time). Ask for it with threat_models = ["bpda+eot", "eot"],
        # or add one such attack to the ensemble with include (the leaderboard's TVM rows do).
        return ("bpda+eot",)
    if exact:
        return ("full",)
    return ("bpda", "full") if straight_through else ("bpda",)


def _straight_through(stages) -> bool:
    from purify.registry import get_purifier_spec
    return all(get_purifier_spec(n).differentiable or "ste" in get_purifier_spec(n).params for n, _ in stages)


def parse_worst(ctx: Ctx, t: Any, stages, attacks: tuple[AttackEntry, ...], *, head: str = "softmax",
                attack_through: str = "head") -> WorstConfig | None:
    """Check a ``[worst]`` table (see the module docstring); None when the config has none."""
    if t is None:
        return None
    from .schema import ATTACK_THROUGH, THREAT_MODELS

    t = ctx.table(t, "worst")
    ctx.keys(t, WORST_KEYS, "worst", ("eps",))
    norm = ctx.string(t.get("norm", "linf"), "worst.norm", ("linf", "l2"))
    eps = tuple(ctx.number(e, "worst.eps") for e in ctx.as_list(t["eps"], "worst.eps"))
    if not eps:
        raise ctx.error("worst.eps", "expected at least one budget, e.g. eps = [\"8/255\"]")
    default = gradient_threat_models(stages)
    allowed = default + (("eot",) if default == ("bpda+eot",) and _straight_through(stages) else ())
    tms = tuple(ctx.string(x, "worst.threat_models", THREAT_MODELS)
                for x in ctx.as_list(t.get("threat_models", list(default)), "worst.threat_models"))
    wrong = [x for x in tms if x not in allowed]
    if wrong or not tms:
        raise ctx.error("worst.threat_models", f"this defense is attacked under {', '.join(allowed)}; got "
                        f"{', '.join(wrong) or 'none'}")
    ids = {a.id: a for a in attacks}
    include = tuple(ctx.string(x, "worst.include", tuple(ids)) for x in ctx.as_list(t.get("include", []), "worst.include"))
    for i in include:
        if ids[i].spec.kind != "bounded" or ids[i].norm != norm:
            raise ctx.error("worst.include", f"attack {i!r} is not a {norm} attack with a budget; only those join "
                            "the worst case")
    sanity = t.get("sanity", True)
    if not isinstance(sanity, bool):
        raise ctx.error("worst.sanity", f"expected true or false, got {sanity!r}")
    through: tuple[str, ...] = ()
    if "through" in t:
        if head != "wnll":
            raise ctx.error("worst.through", "only used with head = \"wnll\" (the sides of its head); remove it")
        through = tuple(ctx.string(x, "worst.through", ATTACK_THROUGH) for x in ctx.as_list(t["through"], "worst.through"))
        if not through or len(set(through)) != len(through):
            raise ctx.error("worst.through", f"expected distinct values of {', '.join(ATTACK_THROUGH)}, got {t['through']!r}")
    factor = 8 if norm == "linf" else 10
    default_large = Eps(eps[-1].value * factor, _times(eps[-1].label, factor))
    large = ctx.number(t["sanity_eps"], "worst.sanity_eps") if "sanity_eps" in t else default_large
    return WorstConfig(norm=norm, eps=eps, iters=ctx.integer(t.get("iters", 100), "worst.iters", low=1),
                       restarts=ctx.integer(t.get("restarts", 1), "worst.restarts", low=1),
                       n_target_classes=ctx.integer(t.get("n_target_classes", 9), "worst.n_target_classes", low=1),
                       queries=ctx.integer(t.get("queries", 5000), "worst.queries", low=1),
                       eot_samples=ctx.integer(t.get("eot_samples", DEFAULT_EOT_SAMPLES), "worst.eot_samples", low=1),
                       threat_models=tms, include=include, sanity=sanity, sanity_eps=large, through=through,
                       default_through=attack_through)


def _times(label: str, factor: int) -> str:
    """``"8/255"`` times 8 as ``"64/255"``; a decimal label as a number."""
    num, _, den = label.partition("/")
    try:
        return f"{int(num) * factor}/{int(den)}" if den else f"{float(num) * factor:g}"
    except ValueError:
        return f"{label}x{factor}"


def worst_entries(w: WorstConfig | None, stages) -> tuple[AttackEntry, ...]:
    """The attack entries a ``[worst]`` table expands into (ensemble, then sanity cells)."""
    if w is None:
        return ()
    square_tm = ("none",) if not stages else ("bpda",)     # Square only reads the defended model's outputs
    out = []
    for aid, name, fixed in COMPONENTS:
        params: dict[str, Any] = {"norm": w.norm, **fixed}
        if name == "apgd":
            params.update(iters=w.iters, restarts=w.restarts)
            if fixed["loss"] == "dlr-targeted":
                params["n_target_classes"] = w.n_target_classes
            for side in w.sides:            # gradient attacks: once per side of a WNLL head
                out.append(AttackEntry(id=aid + w.side_suffix(side), name=name, eps=w.eps, params=params,
                                       eot_samples=(w.eot_samples,), threat_models=w.threat_models,
                                       through=side if w.side_suffix(side) else None))
        else:
            params["queries"] = w.queries
            out.append(AttackEntry(id=aid, name=name, eps=w.eps, params=params, eot_samples=(w.eot_samples,),
                                   threat_models=square_tm))
    if w.sanity:
        ce = {"norm": w.norm, "loss": "ce", "restarts": 1}
        for side in w.sides:
            sfx, through = w.side_suffix(side), side if w.side_suffix(side) else None
            out.append(AttackEntry(id="sanity-large-eps" + sfx, name="apgd", eps=(w.sanity_eps,),
                                   params={**ce, "iters": w.iters}, threat_models=w.threat_models,
                                   eot_samples=(w.eot_samples,), through=through))
            out.append(AttackEntry(id="sanity-more" + sfx, name="apgd", eps=(w.eps[-1],),
                                   params={**ce, "iters": 2 * w.iters}, threat_models=w.threat_models,
                                   eot_samples=(2 * w.eot_samples,), through=through))
    return tuple(out)


# ---------------------------------------------------------------------------------------------- per image

def encode_bits(correct) -> str:
    """A bool sequence as hex, first image in the highest bit of the first digit; ``''`` for none.

    Example:
        >>> encode_bits([True, False, True, True, False]), decode_bits("b0", 5)
        ('b0', [True, False, True, True, False])
    """
    bits = "".join("1" if c else "0" for c in correct)
    if not bits:
        return ""
    bits += "0" * (-len(bits) % 4)
    return "".join(f"{int(bits[i:i + 4], 2):x}" for i in range(0, len(bits), 4))


def decode_bits(text: str, n: int) -> list[bool]:
    bits = "".join(f"{int(ch, 16):04b}" for ch in text)
    return [b == "1" for b in bits[:n]]


def _label(r: dict[str, Any]) -> str:
    extra = (f", iters {r['iters']}" if r["iters"] != "" else "") + (f", EOT {r['eot_samples']}" if r["eot_samples"] else "")
    return f"{r['attack']} ({r['threat_model']}{extra})"


def _same_eps(value: Any, eps: float) -> bool:
    # cells.csv keeps 6 significant digits: compare relatively.
    return value != "" and math.isclose(float(value), eps, rel_tol=1e-5, abs_tol=1e-12)


def _component_ids(w: WorstConfig) -> set[str]:
    return {aid + w.side_suffix(side) for aid, name, _ in COMPONENTS for side in (w.sides if name == "apgd" else
                                                                               (w.default_through,))}


def _components(cfg, rows: list[dict[str, Any]], eps: Eps) -> list[dict[str, Any]]:
    ids = _component_ids(cfg.worst) | set(cfg.worst.include)
    defended = bool(cfg.stages)
    return [r for r in rows if r["attack"] in ids and _same_eps(r["eps"], eps.value)
            and (r["threat_model"] not in UNDEFENDED_EVAL or not defended) and r["threat_model"] != "transfer"]


def worst_rows(cfg, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per ``[worst]`` eps: the per-image worst over the ensemble's cells, with its 95 % interval.

    ``decisive`` names, per component, how many images only it broke (none of the others did).
    """
    if cfg.worst is None:
        return []
    out = []
    for eps in cfg.worst.eps:
        comps = _components(cfg, rows, eps)
        if not comps:
            continue
        n = int(comps[0]["n_images"])
        bits = [decode_bits(r["adv_correct"], n) for r in comps]
        robust = [all(b[i] for b in bits) for i in range(n)]
        k = sum(robust)
        lo, hi = wilson(k, n)
        strongest = min(comps, key=lambda r: r["accuracy"])
        decisive = {}
        for j, r in enumerate(comps):
            only = sum(1 for i in range(n) if not bits[j][i] and all(bits[m][i] for m in range(len(comps)) if m != j))
            if only:
                decisive[_label(r)] = only
        out.append({"norm": cfg.worst.norm, "eps": eps.value, "eps_label": eps.label, "n_images": n,
                    "accuracy": k / n, "ci_low": lo, "ci_high": hi, "cells": len(comps),
                    "strongest": _label(strongest), "strongest_accuracy": strongest["accuracy"],
                    "decisive": decisive})
    return out


def sanity_flags(cfg, rows: list[dict[str, Any]], worst: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Carlini et al.'s checks with their evidence: ``{"check", "status" (ok / FLAG / not checked), "evidence"}``."""
    if cfg.worst is None:
        return []
    w = cfg.worst
    flags = []
    by_id: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_id.setdefault(r["attack"], []).append(r)
    # every side of a WNLL head has its own sanity cells: per image, the worst over them (as the ensemble's)
    large = [r for side in w.sides for r in by_id.get("sanity-large-eps" + w.side_suffix(side), [])]
    if large:
        n = int(large[0]["n_images"])
        bits = [decode_bits(r["adv_correct"], n) for r in large if r.get("adv_correct") not in (None, "")]
        acc = (sum(all(b[i] for b in bits) for i in range(n)) / n if len(bits) == len(large)
               else min(r["accuracy"] for r in large))
        cells = "; ".join(f"{_label(r)} {100 * r['accuracy']:.1f} %" for r in large)
        flags.append({"check": f"accuracy reaches ~0 at a large eps ({w.sanity_eps.label})",
                      "status": "ok" if acc <= LARGE_EPS_MAX_ACCURACY else "FLAG",
                      "evidence": f"APGD-CE at {w.sanity_eps.label}: {100 * acc:.1f} %"
                                  + (f" per image over {cells}" if len(large) > 1 else f" ({cells})") + " (limit "
                                  f"{100 * LARGE_EPS_MAX_ACCURACY:.0f} %); a defense that keeps images at such a "
                                  "budget is masking gradients or the attack is broken"})
    else:
        flags.append({"check": "accuracy reaches ~0 at a large eps", "status": "not checked",
                      "evidence": "sanity = false in [worst]"})
    pairs = [(r, b, side) for side in w.sides for r in by_id.get("sanity-more" + w.side_suffix(side), [])
             for b in by_id.get("worst-apgd-ce" + w.side_suffix(side), [])
             if _same_eps(b["eps"], w.eps[-1].value) and b["threat_model"] == r["threat_model"]]
    if pairs:
        lines, flagged = [], False
        for r, b, side in pairs:
            n = int(r["n_images"])
            lo, hi = wilson(round(b["accuracy"] * n), n)
            drop = b["accuracy"] - r["accuracy"]
            flagged |= r["accuracy"] < lo
            where = r["threat_model"] + (f" through the {side}" if w.side_suffix(side) else "")
            lines.append(f"{where}: {100 * b['accuracy']:.1f} % → {100 * r['accuracy']:.1f} % with "
                         f"iters {b['iters']}→{r['iters']}" + (f", EOT {b['eot_samples']}→{r['eot_samples']}"
                                                              if r["eot_samples"] else "")
                         + f" (drop {100 * drop:.1f} points; 95 % interval of the base [{100 * lo:.1f}, {100 * hi:.1f}])")
        flags.append({"check": "more iterations / EOT samples do not lower accuracy further",
                      "status": "FLAG" if flagged else "ok",
                      "evidence": "; ".join(lines) + ("; the attack has not converged: the worst case is an upper "
                                                      "bound" if flagged else "")})
    else:
        flags.append({"check": "more iterations / EOT samples do not lower accuracy further", "status": "not checked",
                      "evidence": "sanity = false in [worst]"})
    for wr in worst:
        comps = _components(cfg, rows, Eps(wr["eps"], wr["eps_label"]))
        sq = [r for r in comps if r["attack"] == "worst-square"]
        grad = [r for r in comps if r["attack"] != "worst-square"]
        if not sq or not grad:
            continue
        s, g = sq[0], min(grad, key=lambda r: r["accuracy"])
        n = int(s["n_images"])
        lo, _ = wilson(round(g["accuracy"] * n), n)
        masked = s["accuracy"] < lo
        flags.append({"check": f"Square does not beat the gradient attacks ({wr['eps_label']})",
                      "status": "FLAG" if masked else "ok",
                      "evidence": f"Square {100 * s['accuracy']:.1f} % vs best gradient attack {_label(g)} "
                                  f"{100 * g['accuracy']:.1f} %" + ("; a score-based attack doing better means the "
                                                                   "gradients are masked" if masked else "")})
    return flags
