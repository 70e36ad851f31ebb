"""Threat models: which ``model_fn`` an attack differentiates, and which model is then evaluated.

=========== =============================================== ==========================
threat      the attack's model_fn                           evaluated on
=========== =============================================== ==========================
none        classifier(x)                                   classifier (no defense)
transfer    classifier(x)  (same adversarial examples)      classifier(pipeline(x))
bpda        classifier(bpda(pipeline)(x))                   classifier(pipeline(x))
full        classifier(pipeline(x)), autograd through all   classifier(pipeline(x))
eot         eot(full model_fn, samples=n)                   classifier(pipeline(x))
bpda+eot    eot(bpda model_fn, samples=n)                   classifier(pipeline(x))
substitute  substitute(x)                                   classifier (no defense)
blackbox    substitute(x)  (same adversarial examples)      classifier(pipeline(x))
=========== =============================================== ==========================

``substitute`` is the config's ``[substitute]`` model, a separately trained network on the same
data (black-box transfer, the GCLN paper's Table 3); it is a plain softmax classifier even when
the target has a WNLL head. The runner passes it as ``classifier`` for those two threat models.

Randomized stages draw from a ``torch.Generator`` that the caller seeds; every call of an
attack's model_fn draws afresh from it (so EOT averages over fresh draws). Under ``full`` and
``eot``, stages with a straight-through option (DCT quantization) run with ``ste=True``; the
TV solver switches to its differentiable torch backend by itself when its input needs a gradient.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from .schema import SUBSTITUTE_SOURCE, UNDEFENDED_SOURCE
from purify.attacks import CountedModel, bpda, eot
from purify.attacks.registry import get_attack_spec
from purify.pipeline import Pipeline
from purify.registry import get_purifier_spec

__all__ = ["full_pipeline", "ste_stages", "attack_model_fn", "run_attack"]

ModelFn = Callable[[Tensor], Tensor]


def ste_stages(stages) -> list[str]:
    """Stages that run with ``ste=True`` under the ``full`` / ``eot`` threat models."""
    return [name for name, params in stages
            if not get_purifier_spec(name).differentiable and "ste" in get_purifier_spec(name).params
            and not params.get("ste", False)]


def full_pipeline(stages) -> Pipeline:
    """The pipeline attacked under ``full`` / ``eot``: straight-through where a stage offers it."""
    spec = []
    for name, params in stages:
        p = dict(params)
        if name in ste_stages([(name, params)]):
            p["ste"] = True
        spec.append((name, p))
    return Pipeline.from_spec(spec)


def attack_model_fn(threat: str, classifier: nn.Module, pipeline: Pipeline, full: Pipeline,
                    generator: torch.Generator | None, eot_samples: int | None) -> tuple[Any, CountedModel]:
    """The model_fn an attack sees under ``threat``, and the counter inside it.

    ``classifier`` is the model the attacker differentiates: the target's (or its head's surrogate),
    or the substitute under ``substitute`` / ``blackbox``. The counter wraps the innermost per-draw
    model, so under EOT it counts every draw.
    """
    if threat in UNDEFENDED_SOURCE + SUBSTITUTE_SOURCE:
        counted = CountedModel(classifier)
        return counted, counted
    # The attacks keep x in [0, 1] and the harness checked the images once: inside the attack loop the
    # pipeline runs its unchecked cores (Pipeline.run), never a range check per iteration.
    if threat in ("bpda", "bpda+eot"):
        purified = bpda(lambda x: pipeline.run(x, generator=generator))
    else:
        purified = lambda x: full.run(x, generator=generator)  # noqa: E731
    counted = CountedModel(lambda x: classifier(purified(x)))
    if threat in ("eot", "bpda+eot"):
        return eot(counted, samples=eot_samples), counted
    return counted, counted


def run_attack(name: str, model_fn: Any, x: Tensor, y: Tensor, *, eps: float | None, params: dict[str, Any],
               generator: torch.Generator | None) -> Tensor:
    """Call attack ``name`` of the registry with the cell's resolved parameters (``step_ratio`` already
    turned into ``step``); ``generator`` reaches the attacks that draw (PGD's random start)."""
    return get_attack_spec(name).run(model_fn, x, y, eps=eps, generator=generator, **params)
