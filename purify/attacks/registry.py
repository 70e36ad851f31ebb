"""The attack registry: one explicit dict from a name to its :class:`AttackSpec`.

Everything that names attacks reads this dict: :func:`purify.attacks.list_attacks`, the benchmark
harness's config checks (which keys an ``[[attacks]]`` entry may set, their types and bounds, which
may be swept, whether ``eps`` is needed) and its runner (:meth:`AttackSpec.run`). Nothing registers
itself at import time; adding an attack to the library means one file with its function and one
line in ``_REGISTRY`` below (plus a line in :data:`PARAMS` for a keyword no attack used before).

Your own attack joins with :func:`register_attack` (an :class:`AttackSpec`; settings that
:data:`PARAMS` does not describe are described in its ``settings``), so the harness takes it by
name; a benchmark config can also name it as ``"module:attribute"`` (an ``AttackSpec`` in your
module), which the harness imports and registers (see :mod:`benchmarks.harness.inputs`).

Two kinds of attack:

* ``"bounded"``: takes ``eps`` and returns ``x_adv`` with ``‖x_adv - x‖ <= eps`` in its norm
  (fgsm, rand_fgsm, bim, pgd, apgd, square); reported at each eps;
* ``"minimal"``: no budget; searches for a small perturbation that changes the label (fgsm_minimal,
  cw_l2, deepfool, trust_region, jsma); reported with the mean norm of what it found.

Norms: ``"linf"`` and ``"l2"`` measure how far pixels move; ``"l0"`` counts how many of the C·H·W
values change (JSMA, whose own ``gamma`` caps that count as a fraction).

Example:
    >>> list_attacks()
    ['fgsm', 'rand_fgsm', 'bim', 'pgd', 'apgd', 'square', 'fgsm_minimal', 'cw_l2', 'deepfool', 'trust_region', 'jsma']
    >>> spec = get_attack_spec("pgd")
    >>> spec.kind, spec.norms, spec.required, spec.randomized
    ('bounded', ('linf', 'l2'), ('step', 'iters'), True)
    >>> import torch
    >>> clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 10))
    >>> x, y = torch.rand(2, 3, 4, 4), torch.tensor([0, 1])
    >>> adv = spec.run(clf, x, y, eps=8 / 255, step_ratio=0.25, iters=5)
    >>> bool((adv - x).abs().max() <= 8 / 255 + 1e-6)
    True
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
from torch import Tensor

from purify.attacks.apgd import APGD_LOSSES, apgd
from purify.attacks.cw import cw_l2
from purify.attacks.deepfool import deepfool
from purify.attacks.fgsm_minimal import fgsm_minimal
from purify.attacks.gradient import bim, fgsm, pgd
from purify.attacks.jsma import jsma
from purify.attacks.rand_fgsm import rand_fgsm
from purify.attacks.square import square
from purify.attacks.trust_region import trust_region
from purify.errors import DTypeError, RangeError, UnknownNameError

__all__ = ["BOUNDED", "MINIMAL", "KINDS", "NORMS", "Param", "PARAMS", "AttackSpec", "list_attacks",
           "get_attack_spec", "register_attack", "unregister_attack"]

BOUNDED = "bounded"
MINIMAL = "minimal"
KINDS = (BOUNDED, MINIMAL)
NORMS = ("linf", "l2", "l0")
#: Keywords attack functions take that are not their settings: the budget, the randomness, and per-image
#: targets (a tensor, which a config cannot give; through :meth:`AttackSpec.run` JSMA draws its own).
_NOT_SETTINGS = ("eps", "generator", "target")
#: Suffix of a setting given as a fraction of eps (``step_ratio = 0.25``: step = 0.25 * eps).
RATIO = "_ratio"


@dataclass(frozen=True)
class Param:
    """One keyword setting of the attack functions: its type and the values the function accepts.

    Attributes:
        kind: ``"int"``, ``"float"`` (a number; configs may write ``"1/255"``), ``"bool"`` or
            ``"choice"``.
        low: smallest value the function accepts (int / float); ``low_open``: ``low`` itself excluded.
        choices: the values of a ``"choice"`` (``norm`` takes its spec's :attr:`AttackSpec.norms`).
        sweep: a benchmark config may give a list, one cell per value.
        help: one line for listings and error messages.
    """

    kind: str
    help: str
    low: float | None = None
    low_open: bool = False
    choices: tuple[str, ...] = ()
    sweep: bool = False


#: Every setting any registered attack takes, by keyword; shared by attacks that use the same name.
PARAMS: dict[str, Param] = {
    "iters": Param("int", "number of gradient steps", low=0, sweep=True),
    "step": Param("float", "step size (absolute; or step_ratio = step / eps)", low=0.0),
    "norm": Param("choice", "the norm of the threat: linf or l2", choices=("linf", "l2")),
    "random_start": Param("bool", "start from a uniform draw in the eps ball"),
    "targeted": Param("bool", "move towards class y instead of away from it"),
    "loss": Param("choice", "ce (cross-entropy) or margin (max other logit - true logit)", choices=("ce", "margin")),
    "c": Param("float", "weight of the misclassification term", low=0.0),
    "kappa": Param("float", "confidence margin of success", low=0.0),
    "steps": Param("int", "optimizer steps per run", low=0),
    "lr": Param("float", "Adam learning rate", low=0.0, low_open=True),
    "binary_search_steps": Param("int", "runs of the binary search over c", low=0),
    "overshoot": Param("float", "factor 1 + overshoot on the step (DeepFool: the accumulated one; TR: each)", low=0.0),
    "max_iter": Param("int", "maximum number of steps (DeepFool, trust region: linearizations; JSMA: pixel "
                      "pairs)", low=0),
    "num_classes": Param("int", "classes considered (the label's and the next by clean logit)", low=2),
    "restarts": Param("int", "runs from fresh random starts (per target class when targeted)", low=1),
    "rho": Param("float", "APGD halves its step when at most this fraction of steps raised the loss", low=0.0),
    "n_target_classes": Param("int", "target classes of APGD-T, the highest-scoring wrong ones", low=1),
    "queries": Param("int", "model calls per image (score-based attacks)", low=0, sweep=True),
    "p_init": Param("float", "initial fraction of pixels in a Square update", low=0.0, low_open=True),
    "radius": Param("float", "initial trust radius: the bound on each step, in the attack's norm", low=0.0,
                    low_open=True),
    "adaptive": Param("bool", "adapt the trust radius to how well the linear model predicted each step"),
    "worst_case": Param("bool", "target the farthest candidate class instead of the nearest"),
    "eta_low": Param("float", "shrink the trust radius when the actual / predicted gain is below this", low=0.0),
    "eta_high": Param("float", "grow the trust radius when the actual / predicted gain is above this", low=0.0),
    "sigma": Param("float", "factor by which the trust radius grows or shrinks", low=1.0),
    "radius_min": Param("float", "smallest adapted trust radius", low=0.0),
    "radius_max": Param("float", "largest adapted trust radius", low=0.0, low_open=True),
    "alpha": Param("float", "size of Rand+FGSM's random sign step (absolute; or alpha_ratio = alpha / eps); "
                   "default eps / 2", low=0.0),
    "theta": Param("float", "JSMA's change of each chosen feature per step, nonzero: +1 sets it to 1, -1 to 0"),
    "gamma": Param("float", "JSMA's L0 budget: the largest fraction of the C*H*W values it may change, at most 1",
                   low=0.0, low_open=True),
    "eps_step": Param("float", "minimal FGSM: the step of its eps grid (eps_step, 2 eps_step, ...)", low=0.0,
                      low_open=True),
    "eps_max": Param("float", "minimal FGSM: the largest eps tried (at least eps_step)", low=0.0, low_open=True),
}


@dataclass(frozen=True)
class AttackSpec:
    """What a caller (the benchmark harness) needs to know about an attack.

    Attributes:
        name: registry name.
        function: ``function(model_fn, x, y, *, [eps,] **settings) -> x_adv``.
        kind: ``"bounded"`` (takes ``eps``; ``‖x_adv - x‖ <= eps`` in its norm) or ``"minimal"``
            (no budget: a small perturbation that changes the label).
        norms: the norms it runs in, the default first; with more than one, the function takes
            ``norm`` and defaults to the first.
        gradients: differentiates ``model_fn`` (False: a query-based attack such as Square,
            which can show gradient masking).
        description: one line for listings.
        eps_relative: settings that may be given as a fraction of eps, as ``<name>_ratio``.
        choices: ``(setting, values)`` pairs where this attack's choices differ from :data:`PARAMS`
            (APGD's losses); :meth:`param` merges them.
        settings: ``(setting, Param)`` pairs describing settings :data:`PARAMS` does not know (a
            registered attack's own keywords); they take precedence over :data:`PARAMS`.
        params: (derived) the function's keyword settings, in signature order (not ``eps``,
            ``generator`` and ``target``); each is described in :data:`PARAMS` or ``settings``.
        required: (derived) settings without a default.
        randomized: (derived) the function takes a ``generator`` (e.g. PGD's random start).
    """

    name: str
    function: Callable[..., Tensor]
    kind: str
    norms: tuple[str, ...]
    gradients: bool
    description: str
    eps_relative: tuple[str, ...] = ()
    choices: tuple[tuple[str, tuple[str, ...]], ...] = ()
    settings: tuple[tuple[str, Param], ...] = ()
    params: tuple[str, ...] = field(init=False)
    required: tuple[str, ...] = field(init=False)
    randomized: bool = field(init=False)

    def __post_init__(self) -> None:
        sig = inspect.signature(self.function).parameters
        kw = [n for n, p in sig.items() if p.kind == p.KEYWORD_ONLY]
        params = tuple(n for n in kw if n not in _NOT_SETTINGS)
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "required", tuple(n for n in params if sig[n].default is inspect.Parameter.empty))
        object.__setattr__(self, "randomized", "generator" in kw)
        # Checked once here, so every caller (the harness's config checks, sweeps) can describe every setting.
        own = dict(self.settings)
        unknown = [n for n in params if n not in own and n not in PARAMS]
        if unknown:
            raise DTypeError(f"AttackSpec {self.name!r}: setting(s) {', '.join(map(repr, unknown))} of "
                             f"{getattr(self.function, '__name__', self.function)!r} are not described; pass "
                             f"settings=(({unknown[0]!r}, Param('float', 'what it does', low=0.0)),)")
        if self.kind not in KINDS or not self.norms or any(n not in NORMS for n in self.norms):
            raise DTypeError(f"AttackSpec {self.name!r}: expected kind in {KINDS} and norms from {NORMS}, got "
                             f"{self.kind!r} and {self.norms!r}")

    def param(self, name: str) -> Param:
        """How this attack takes setting ``name``: its own ``settings``, else :data:`PARAMS` with its choices.

        Example:
            >>> get_attack_spec("apgd").param("loss").choices, get_attack_spec("pgd").param("norm").choices
            (('ce', 'dlr', 'dlr-targeted'), ('linf', 'l2'))
        """
        described = dict(self.settings).get(name) or PARAMS[name]
        own = dict(self.choices, norm=self.norms).get(name)
        return replace(described, choices=own) if own is not None and described.kind == "choice" else described

    @property
    def uses_eps(self) -> bool:
        """The attack takes a budget ``eps`` (``kind == "bounded"``)."""
        return self.kind == BOUNDED

    @property
    def targeted(self) -> bool:
        """The attack has a targeted mode (``targeted=True``: ``y`` holds the target classes)."""
        return "targeted" in self.params

    @property
    def sweep(self) -> tuple[str, ...]:
        """Settings a benchmark config may give as a list (one cell per value)."""
        return tuple(n for n in self.params if self.param(n).sweep)

    @property
    def accepted(self) -> tuple[str, ...]:
        """Every keyword :meth:`run` accepts besides ``eps`` and ``generator``: settings and ``<name>_ratio``."""
        return self.params + tuple(n + RATIO for n in self.eps_relative)

    def defaults(self) -> dict[str, Any]:
        """The function's default settings (required ones are left out)."""
        sig = inspect.signature(self.function).parameters
        return {n: sig[n].default for n in self.params if n not in self.required}

    def norm(self, params: dict[str, Any] | None = None) -> str:
        """The norm of a call with these settings.

        Example:
            >>> get_attack_spec("pgd").norm({"norm": "l2"}), get_attack_spec("deepfool").norm()
            ('l2', 'l2')
        """
        return (params or {}).get("norm", self.norms[0])

    def resolve(self, params: dict[str, Any], eps: float | Tensor | None = None) -> dict[str, Any]:
        """The function's keyword settings: ``<name>_ratio`` turned into ``<name> = ratio * eps``.

        Raises:
            UnknownNameError: a keyword the attack does not take; the message lists those it does.
            RangeError: a ratio without eps, or both ``<name>`` and ``<name>_ratio``.
        Example:
            >>> get_attack_spec("pgd").resolve({"step_ratio": 0.25, "iters": 10}, eps=0.04)
            {'iters': 10, 'step': 0.01}
        """
        unknown = sorted(set(params) - set(self.accepted))
        if unknown:
            raise UnknownNameError(f"attack {self.name!r}: unknown parameter(s) {', '.join(map(repr, unknown))}; "
                                   f"it takes {', '.join(map(repr, self.accepted)) or 'none'}")
        out = dict(params)
        for name in self.eps_relative:
            if name + RATIO not in out:
                continue
            if name in out:
                raise RangeError(f"attack {self.name!r}: got both {name} and {name}{RATIO}; give one")
            if eps is None:
                raise RangeError(f"attack {self.name!r}: {name}{RATIO} needs eps ({name} = ratio * eps)")
            out[name] = out.pop(name + RATIO) * eps
        return out

    def run(self, model_fn: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, /, *,
            eps: float | Tensor | None = None, generator: torch.Generator | None = None, **params: Any) -> Tensor:
        """Call the attack uniformly: ``eps`` for bounded attacks, ``generator`` where it draws.

        ``generator`` is passed to randomized attacks and ignored by the others, so a caller can
        always give one; ``<name>_ratio`` settings are resolved against ``eps`` (:meth:`resolve`).
        The attack function checks the values.

        Shape:
            x: (B, C, H, W), floating, values in [0, 1]; y: (B,) int64; output: like x.
        Raises:
            RangeError: eps missing for a bounded attack, or given to a minimal one.
            UnknownNameError: a setting the attack does not take.
            and whatever the attack function raises for bad values.
        Example:
            >>> import torch
            >>> clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 10))
            >>> x, y = torch.rand(2, 3, 4, 4), torch.tensor([0, 1])
            >>> get_attack_spec("deepfool").run(clf, x, y, max_iter=5).shape
            torch.Size([2, 3, 4, 4])
        """
        if self.uses_eps and eps is None:
            raise RangeError(f"attack {self.name!r}: expected eps (a bounded attack), got None")
        if not self.uses_eps and eps is not None:
            raise RangeError(f"attack {self.name!r}: got eps={eps!r}, but it has no budget "
                             "(a minimal-perturbation attack); leave eps out")
        kwargs = self.resolve(params, eps)
        if self.uses_eps:
            kwargs["eps"] = eps
        if self.randomized:
            kwargs["generator"] = generator
        return self.function(model_fn, x, y, **kwargs)


_REGISTRY: dict[str, AttackSpec] = {
    "fgsm": AttackSpec("fgsm", fgsm, BOUNDED, ("linf",), True,
                       "fast gradient sign method: one signed-gradient step of size eps"),
    "rand_fgsm": AttackSpec("rand_fgsm", rand_fgsm, BOUNDED, ("linf",), True,
                            "Rand+FGSM (Tramer et al.): a random sign step of alpha, then FGSM with eps - alpha",
                            eps_relative=("alpha",)),
    "bim": AttackSpec("bim", bim, BOUNDED, ("linf",), True,
                      "basic iterative method / I-FGSM: iters signed steps of eps / iters"),
    "pgd": AttackSpec("pgd", pgd, BOUNDED, ("linf", "l2"), True,
                      "projected gradient descent (Madry et al.), optional random start", eps_relative=("step",)),
    "apgd": AttackSpec("apgd", apgd, BOUNDED, ("linf", "l2"), True,
                       "auto-PGD (Croce & Hein): momentum, budget-aware step halving, restarts; ce, dlr or targeted dlr",
                       choices=(("loss", APGD_LOSSES),)),
    "square": AttackSpec("square", square, BOUNDED, ("linf", "l2"), False,
                         "Square attack (Andriushchenko et al.): score-based random search, no gradients"),
    "fgsm_minimal": AttackSpec("fgsm_minimal", fgsm_minimal, MINIMAL, ("linf",), True,
                               "minimal FGSM (ART's minimal=True): per image, the smallest eps on a grid of eps_step "
                               "up to eps_max at which the FGSM step changes the label"),
    "cw_l2": AttackSpec("cw_l2", cw_l2, MINIMAL, ("l2",), True,
                        "Carlini-Wagner L2: Adam in tanh space on L2 + c * hinge, optional binary search over c"),
    "deepfool": AttackSpec("deepfool", deepfool, MINIMAL, ("l2", "linf"), True,
                           "DeepFool: iterated linearization to the nearest decision boundary"),
    "trust_region": AttackSpec("trust_region", trust_region, MINIMAL, ("l2", "linf"), True,
                               "trust-region attack (Yao et al.): DeepFool steps bounded by an adaptive radius"),
    "jsma": AttackSpec("jsma", jsma, MINIMAL, ("l0",), True,
                       "JSMA (Papernot et al.): saliency-map pixel pairs towards a random other class, L0 <= gamma"),
}


#: Attacks added with :func:`register_attack`, after the library's own in :func:`list_attacks`.
_USER: dict[str, AttackSpec] = {}


def register_attack(spec: AttackSpec, *, overwrite: bool = False) -> AttackSpec:
    """Add your own attack under ``spec.name``, so the harness (and :func:`get_attack_spec`) take it by name.

    The function must follow the attacks' protocol: ``function(model_fn, x, y, *, [eps,] **settings,
    [generator]) -> x_adv`` with ``x`` ``(B, C, H, W)`` in [0, 1] and ``x_adv`` like it, inside the
    ``eps`` ball of its norm for a ``"bounded"`` attack. ``gradients=False`` declares a score-based
    attack (it never differentiates ``model_fn``, so it can attack a model without gradients, such as
    an ONNX graph). Registering the same spec object again is a no-op, so a config that names it can
    be parsed any number of times.

    Raises:
        DTypeError: ``spec`` is not an :class:`AttackSpec`, or its name is not letters, digits, ``_``,
            ``-`` or ``.``.
        ValueError: the name is a built-in attack's, or was registered with another spec and
            ``overwrite`` is False.
    Example:
        >>> import torch
        >>> def noise(model_fn, x, y, *, eps, generator=None):
        ...     d = torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1
        ...     return (x + eps * d).clamp(0, 1)
        >>> spec = register_attack(AttackSpec("noise", noise, BOUNDED, ("linf",), False, "uniform noise"))
        >>> "noise" in list_attacks(), get_attack_spec("noise").randomized
        (True, True)
        >>> unregister_attack("noise")
    """
    fn = "register_attack"
    if not isinstance(spec, AttackSpec):
        raise DTypeError(f"{fn}: expected an AttackSpec, got {type(spec).__name__}; wrap your function as "
                         "AttackSpec(name, function, 'bounded', ('linf',), gradients, description)")
    name = spec.name
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "_-." for c in name):
        raise DTypeError(f"{fn}: expected a name of letters, digits, '_', '-' or '.', got {name!r}")
    if name in _REGISTRY:
        raise ValueError(f"{fn}: {name!r} is a built-in attack; register yours under another name")
    if name in _USER and _USER[name] is not spec and not overwrite:
        raise ValueError(f"{fn}: {name!r} is already registered with another spec; pass overwrite=True to "
                         "replace it")
    _USER[name] = spec
    return spec


def unregister_attack(name: str) -> None:
    """Remove an attack added with :func:`register_attack` (built-in names cannot be removed)."""
    if name not in _USER:
        raise UnknownNameError(f"unregister_attack: unknown registered attack {name!r}; registered: "
                               f"{', '.join(map(repr, _USER)) or 'none'}")
    del _USER[name]


def list_attacks() -> list[str]:
    """Names of the registered attacks: the library's, bounded ones first, in order of strength of the usual
    setting, then those added with :func:`register_attack`.

    Example:
        >>> list_attacks()
        ['fgsm', 'rand_fgsm', 'bim', 'pgd', 'apgd', 'square', 'fgsm_minimal', 'cw_l2', 'deepfool', 'trust_region', 'jsma']
    """
    return [*_REGISTRY, *_USER]


def get_attack_spec(name: str) -> AttackSpec:
    """The spec registered under ``name``; unknown names list the known ones.

    Example:
        >>> get_attack_spec("cw_l2").kind
        'minimal'
        >>> get_attack_spec("cw")
        Traceback (most recent call last):
        ...
        purify.errors.UnknownNameError: unknown attack 'cw'; known attacks: 'fgsm', 'rand_fgsm', 'bim', 'pgd', 'apgd', 'square', 'fgsm_minimal', 'cw_l2', 'deepfool', 'trust_region', 'jsma'
    """
    known = {**_REGISTRY, **_USER}
    if not isinstance(name, str) or name not in known:
        raise UnknownNameError(f"unknown attack {name!r}; known attacks: {', '.join(map(repr, known))}")
    return known[name]
