"""The types of a benchmark config and the checked-value helpers its parser uses.

:class:`ConfigError` (a ``PurifyError`` and a ``ValueError``) names the file and the key;
which attacks exist and what each takes comes from :mod:`purify.attacks.registry`
(:func:`config_params`: what a config may set); :class:`RunConfig` is the parsed, checked config
(see :mod:`benchmarks.harness.config` for the file layout).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from purify.attacks.registry import AttackSpec, get_attack_spec
from purify.errors import PurifyError

__all__ = ["ConfigError", "HARNESS_FIXED", "config_params", "THREAT_MODELS", "UNDEFENDED_SOURCE", "SUBSTITUTE_SOURCE",
           "UNDEFENDED_EVAL", "EOT_THREAT_MODELS", "HEADS", "ATTACK_THROUGH", "HEAD_PARAM_KEYS", "DEFAULT_EOT_SAMPLES",
           "Eps", "AttackEntry", "RunConfig", "Ctx"]

THREAT_MODELS = ("none", "transfer", "bpda", "eot", "bpda+eot", "full", "substitute", "blackbox")
#: Threat models whose adversarial examples are made on the undefended classifier (shared per attack x eps).
UNDEFENDED_SOURCE = ("none", "transfer")
#: Threat models whose adversarial examples are made on the ``[substitute]`` model (shared per attack x eps).
SUBSTITUTE_SOURCE = ("substitute", "blackbox")
#: Threat models evaluated on the undefended target classifier (they never see the defense).
UNDEFENDED_EVAL = ("none", "substitute")
EOT_THREAT_MODELS = ("eot", "bpda+eot")
HEADS = ("softmax", "wnll")
# What the attacker differentiates when the head is WNLL: the head itself, or the linear branch trained
# beside it (the paper's white-box attack).
ATTACK_THROUGH = ("head", "surrogate")
HEAD_PARAM_KEYS = ("artifact", "mode", "k", "k_sigma")
DEFAULT_EOT_SAMPLES = 10


class ConfigError(PurifyError, ValueError):
    """A benchmark config is invalid; the message names the file, the key and what to change."""


#: Settings of the attack functions the harness fixes itself: it always attacks the true label.
HARNESS_FIXED = ("targeted",)


def config_params(spec: AttackSpec) -> tuple[str, ...]:
    """The keys an ``[[attacks]]`` entry's ``params`` may set for the attack of ``spec``.

    Example:
        >>> config_params(get_attack_spec("pgd"))
        ('step', 'iters', 'norm', 'random_start', 'loss', 'step_ratio')
    """
    return tuple(k for k in spec.accepted if k not in HARNESS_FIXED)


@dataclass(frozen=True)
class Eps:
    """An attack budget as written in the config (``0.02`` or ``"8/255"``) and its value."""

    value: float
    label: str


@dataclass(frozen=True)
class AttackEntry:
    id: str
    name: str
    eps: tuple[Eps, ...]
    threat_models: tuple[str, ...]
    eot_samples: tuple[int, ...]
    params: dict[str, Any]           # may hold lists for swept keys
    through: str | None = None       # WNLL head only: "head" or "surrogate" for this entry (None: the defense's)

    @property
    def spec(self) -> AttackSpec:
        return get_attack_spec(self.name)

    @property
    def norm(self) -> str:
        return self.spec.norm(self.params)


@dataclass(frozen=True)
class RunConfig:
    """A parsed, checked config (``quick`` overrides already applied when ``is_quick``)."""

    name: str
    path: Path
    description: str
    batch_size: int
    device: str
    seed: int
    data: dict[str, Any]
    model: dict[str, Any]
    stages: tuple[tuple[str, dict[str, Any]], ...]
    head: str
    attacks: tuple[AttackEntry, ...]
    examples: dict[str, Any] | None
    paper: dict[str, Any] | None
    is_quick: bool = False
    head_params: dict[str, Any] = field(default_factory=dict)     # WNLL: artifact, mode, k, k_sigma
    attack_through: str = "head"
    substitute: dict[str, Any] | None = None                       # [substitute]: name, pretrained
    worst: Any = None                                              # [worst]: a harness.worst.WorstConfig
    metrics: Any = None                                            # [metrics]: a harness.metrics.MetricsConfig
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


class Ctx:
    """Error helper bound to one file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, key: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key}: {msg}")

    def table(self, value: Any, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(key, f"expected a table, got {type(value).__name__} {value!r}")
        return value

    def keys(self, table: dict[str, Any], allowed: set[str], key: str, required: tuple[str, ...] = ()) -> None:
        unknown = sorted(set(table) - allowed)
        if unknown:
            where = f"{key}." if key else ""
            raise self.error(f"{where}{unknown[0]}", f"unknown key; {key or 'the top level'} takes "
                             f"{', '.join(sorted(allowed))}")
        for r in required:
            if r not in table:
                where = f"{key}." if key else ""
                raise self.error(f"{where}{r}", "missing required key")

    def integer(self, value: Any, key: str, low: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {value!r}")
        if value < low:
            raise self.error(key, f"expected an integer >= {low}, got {value}")
        return value

    def string(self, value: Any, key: str, choices: tuple[str, ...] | None = None) -> str:
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {value!r}")
        if choices is not None and value not in choices:
            raise self.error(key, f"unknown value {value!r}; expected one of {', '.join(map(repr, choices))}")
        return value

    def number(self, value: Any, key: str) -> Eps:
        """A non-negative finite number, or a ``"p/q"`` string such as ``"8/255"``."""
        if isinstance(value, str):
            try:
                frac = Fraction(value.replace(" ", ""))
            except (ValueError, ZeroDivisionError):
                raise self.error(key, f"expected a number or a fraction like \"8/255\", got {value!r}") from None
            v, label = float(frac), value.replace(" ", "")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            v, label = float(value), f"{value:g}"
        else:
            raise self.error(key, f"expected a number or a fraction like \"8/255\", got {value!r}")
        if not (v == v and abs(v) != float("inf")) or v < 0:
            raise self.error(key, f"expected a finite value >= 0, got {value!r}; budgets cannot be negative")
        return Eps(v, label)

    def as_list(self, value: Any, key: str) -> list[Any]:
        return list(value) if isinstance(value, list) else [value]
