"""The purifier registry: one explicit dict from a name to its spec.

Nothing registers itself at import time; adding a stage means adding a line to
``_REGISTRY`` below, which keeps the list of stages reviewable in one place.

Example:
    >>> sorted(list_purifiers())
    ['dct', 'gcln', 'tvm']
    >>> get_purifier_spec("tvm").randomized
    True
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import Tensor, nn

from purify.dct import DCTQuantize, dct_quantize
from purify.errors import UnknownNameError
from purify.gcln import GCLN, gcln_purify
from purify.tv import TVMinimize, tv_minimize

__all__ = ["PurifierSpec", "list_purifiers", "get_purifier_spec", "create_purifier"]


@dataclass(frozen=True)
class PurifierSpec:
    """What a pipeline needs to know about a stage.

    Attributes:
        name: registry name.
        function: the functional form, ``function(x, /, **params) -> Tensor``.
        module: the ``nn.Module`` twin, constructed with the same keyword params.
        differentiable: autograd gives the stage's true gradient (possibly expensive, e.g. an
            unrolled solver). When False, attacks need ``bpda()`` or a straight-through option.
        randomized: the output depends on a random draw (taken from ``generator``).
        description: one line for listings.
    """

    name: str
    function: Callable[..., Tensor]
    module: Callable[..., nn.Module]
    differentiable: bool
    randomized: bool
    description: str
    params: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        sig = inspect.signature(self.function)
        names = tuple(n for n, p in sig.parameters.items() if p.kind == p.KEYWORD_ONLY)
        object.__setattr__(self, "params", names)

    def defaults(self) -> dict[str, Any]:
        """The function's default keyword values."""
        sig = inspect.signature(self.function)
        return {n: sig.parameters[n].default for n in self.params}


_REGISTRY: dict[str, PurifierSpec] = {
    "tvm": PurifierSpec(
        name="tvm", function=tv_minimize, module=TVMinimize, differentiable=True, randomized=True,
        description="masked total-variation minimization (Bernoulli pixel drop + isotropic TV inpainting)",
    ),
    "dct": PurifierSpec(
        name="dct", function=dct_quantize, module=DCTQuantize, differentiable=False, randomized=False,
        description="blockwise DCT quantization round(X/q)*q (straight-through gradient with ste=True)",
    ),
    "gcln": PurifierSpec(
        name="gcln", function=gcln_purify, module=GCLN, differentiable=False, randomized=False,
        description="generative cleaning network: trained CNN with DCT quantization inside "
                    "(straight-through gradient with ste=True)",
    ),
}


def list_purifiers() -> list[str]:
    """Names of the registered purification stages."""
    return list(_REGISTRY)


def get_purifier_spec(name: str) -> PurifierSpec:
    """The spec registered under ``name``; unknown names list the known ones."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise UnknownNameError(f"unknown purifier {name!r}; known purifiers: {', '.join(map(repr, _REGISTRY))}")
    return _REGISTRY[name]


def create_purifier(name: str, **params: Any) -> nn.Module:
    """Construct the module twin of a registered stage.

    Example:
        >>> create_purifier("dct", q=8.0)
        DCTQuantize(q=8.0, block_size=8, ste=False)
    """
    spec = get_purifier_spec(name)
    check_stage_params(spec, params)
    return spec.module(**params)


def check_stage_params(spec: PurifierSpec, params: dict[str, Any]) -> None:
    """Refuse parameter names the stage does not take, listing the ones it does."""
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        raise UnknownNameError(
            f"purifier {spec.name!r}: unknown parameter(s) {', '.join(map(repr, unknown))}; "
            f"it takes {', '.join(map(repr, spec.params))}"
        )
