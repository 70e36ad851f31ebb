"""The purifier registry: one explicit dict from a name to its spec.

Nothing registers itself at import time; adding a stage means adding a line to
``_REGISTRY`` below, which keeps the list of stages reviewable in one place. A spec is
everything the rest of the code base knows about a stage: the pipeline, the server, the ONNX
export and the harness read it and never keep tables of their own.

Every registered twin (``spec.module``) follows one protocol, so a :class:`~purify.pipeline.Pipeline`
can hold any of them:

* ``__init__(**params)``: exactly the function's keyword parameters;
* ``forward(x)``: calls the checked function (the public boundary);
* ``run(x, *, generator=None, **overrides)``: the unchecked core with the module's parameters
  merged with per-sample ``overrides`` (the names in ``spec.per_sample``), for callers that
  checked once already (pipelines, attack loops, the server);
* randomized stages: ``draw_inputs(x, *, generator=None, **overrides) -> {name: Tensor}`` turns
  the stage's randomness into explicit inputs (``spec.random_inputs``, e.g. TVM's drop mask), so
  that ``run(x, **drawn)`` is deterministic (what the server's ONNX graph takes as inputs);
* rounding stages (``spec.rounds``): ``rounding_margin(x, **overrides) -> (B,)``, the distance of
  each image's closest rounded value to a rounding boundary, in rounding steps, so that two
  kernels' results can be compared where the comparison is well defined.

Example:
    >>> sorted(list_purifiers())
    ['bit_depth', 'dct', 'gcln', 'median_smooth', 'tvm']
    >>> get_purifier_spec("tvm").randomized, get_purifier_spec("tvm").random_inputs
    (True, ('mask',))
    >>> sorted(get_purifier_spec("tvm").per_sample)
    ['drop_prob', 'mask', 'weight']
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

from torch import Tensor, nn

from purify._checks import per_sample as _per_sample
from purify.dct import DCTQuantize, dct_quantize
from purify.errors import UnknownNameError
from purify.gcln import GCLN, gcln_purify
from purify.squeeze import BitDepthReduce, MedianSmooth, bit_depth_reduce, median_smooth
from purify.tv import TVMinimize, check_mask, tv_minimize

__all__ = ["PurifierSpec", "ParamRange", "list_purifiers", "get_purifier_spec", "create_purifier",
           "check_stage_params"]


@dataclass(frozen=True)
class ParamRange:
    """The legal values of a per-sample numeric parameter: a float or a ``(B,)`` tensor in range.

    Calling it checks a value for a batch like ``x`` and returns it as a ``(B,)`` tensor.

    Example:
        >>> ParamRange(0.0, 1.0).contains(0.5, 1.0), ParamRange(0.0, low_inclusive=False).contains(0.0, 1.0)
        (True, False)
    """

    low: float
    high: float = math.inf
    low_inclusive: bool = True

    def contains(self, low: float, high: float) -> bool:
        """Whether every value of ``[low, high]`` is legal (used to check a server's request ranges)."""
        above = low >= self.low if self.low_inclusive else low > self.low
        return above and high <= self.high

    def __call__(self, fn: str, name: str, value: object, x: Tensor) -> Tensor:
        high = None if math.isinf(self.high) else self.high
        return _per_sample(fn, value, name=name, batch=x.shape[0], like=x, low=self.low,
                           low_inclusive=self.low_inclusive, high=high).reshape(-1)

    def describe(self) -> str:
        return f"{'[' if self.low_inclusive else '('}{self.low:g}, {self.high:g}]"


def _mask_check(fn: str, name: str, value: object, x: Tensor) -> Tensor:
    return check_mask(fn, value, x)


@dataclass(frozen=True)
class PurifierSpec:
    """What the pipeline, the server, the export and the harness need to know about a stage.

    Attributes:
        name: registry name.
        function: the functional form, ``function(x, /, **params) -> Tensor`` (checks its input).
        module: the ``nn.Module`` twin, constructed with the same keyword params (see the module
            docstring for the protocol it follows).
        differentiable: autograd gives the stage's true gradient (possibly expensive, e.g. an
            unrolled solver). When False, attacks need ``bpda()`` or a straight-through option.
        randomized: the output depends on a random draw (taken from ``generator``).
        description: one line for listings.
        per_sample: the parameters that may differ from image to image within one batch (a float
            or a ``(B,)`` tensor; a mask per image), each with the check of its legal values. Only
            these can be set per request by the server, and only these let requests with
            different settings share a batch.
        random_inputs: the explicit inputs the stage's randomness becomes (``draw_inputs``).
        graph_inputs: the per-sample inputs of the deterministic graph of the stage (what an ONNX
            export takes per image), a subset of ``per_sample``.
        trace_params: values the stage must be given to be traced into a static graph (the torch
            implementation, a fixed iteration count).
        rounds: the stage rounds (two kernels may legitimately land on either side of a
            rounding boundary); its twin has ``rounding_margin``.
    """

    name: str
    function: Callable[..., Tensor]
    module: Callable[..., nn.Module]
    differentiable: bool
    randomized: bool
    description: str
    per_sample: Mapping[str, Callable[[str, str, object, Tensor], Tensor]] = field(default_factory=dict)
    random_inputs: tuple[str, ...] = ()
    graph_inputs: tuple[str, ...] = ()
    trace_params: Mapping[str, Any] = field(default_factory=dict)
    rounds: bool = False
    params: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        sig = inspect.signature(self.function)
        names = tuple(n for n, p in sig.parameters.items() if p.kind == p.KEYWORD_ONLY)
        object.__setattr__(self, "params", names)
        object.__setattr__(self, "per_sample", MappingProxyType(dict(self.per_sample)))
        object.__setattr__(self, "trace_params", MappingProxyType(dict(self.trace_params)))

    def __reduce__(self):
        # A spec is the registry's entry, not a value: copies and pickles (worker processes) refer back to it.
        return get_purifier_spec, (self.name,)

    def __deepcopy__(self, memo: dict) -> "PurifierSpec":
        return self

    def defaults(self) -> dict[str, Any]:
        """The function's default keyword values."""
        sig = inspect.signature(self.function)
        return {n: sig.parameters[n].default for n in self.params}

    def per_sample_range(self, name: str) -> ParamRange | None:
        """The numeric range of a per-sample parameter, or None (not numeric, or not per-sample)."""
        check = self.per_sample.get(name)
        return check if isinstance(check, ParamRange) else None


_UNIT = ParamRange(0.0, 1.0)
_NON_NEGATIVE = ParamRange(0.0)
_POSITIVE = ParamRange(0.0, low_inclusive=False)

_REGISTRY: dict[str, PurifierSpec] = {
    "tvm": PurifierSpec(
        name="tvm", function=tv_minimize, module=TVMinimize, differentiable=True, randomized=True,
        description="masked total-variation minimization (Bernoulli pixel drop + isotropic TV inpainting)",
        per_sample={"weight": _NON_NEGATIVE, "drop_prob": _UNIT, "mask": _mask_check},
        random_inputs=("mask",), graph_inputs=("mask", "weight"),
        # The numba kernel is opaque to a tracer, and a per-plane early stop is data-dependent control flow.
        trace_params={"backend": "torch", "tol": None},
    ),
    "dct": PurifierSpec(
        name="dct", function=dct_quantize, module=DCTQuantize, differentiable=False, randomized=False,
        description="blockwise DCT quantization round(X/q)*q (straight-through gradient with ste=True)",
        per_sample={"q": _POSITIVE}, graph_inputs=("q",), rounds=True,
    ),
    "gcln": PurifierSpec(
        name="gcln", function=gcln_purify, module=GCLN, differentiable=False, randomized=False,
        description="generative cleaning network: trained CNN with DCT quantization inside "
                    "(straight-through gradient with ste=True)",
        per_sample={"q": _POSITIVE}, graph_inputs=("q",), rounds=True,
    ),
    # Feature squeezing (Xu et al. 2018). Nothing varies per sample: bits and size are integers that
    # fix the computation, so the server can set neither per request.
    "bit_depth": PurifierSpec(
        name="bit_depth", function=bit_depth_reduce, module=BitDepthReduce, differentiable=False,
        randomized=False, rounds=True,
        description="bit-depth reduction round(x*(2^bits-1))/(2^bits-1) (straight-through gradient with ste=True)",
    ),
    # A median selects an input pixel: autograd's gradient is the filter's exact one almost everywhere.
    "median_smooth": PurifierSpec(
        name="median_smooth", function=median_smooth, module=MedianSmooth, differentiable=True,
        randomized=False,
        description="per-channel size x size median filter, as scipy.ndimage.median_filter(mode='reflect')",
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


def check_stage_params(spec: PurifierSpec, params: Mapping[str, Any]) -> None:
    """Refuse parameter names the stage does not take, listing the ones it does."""
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        raise UnknownNameError(
            f"purifier {spec.name!r}: unknown parameter(s) {', '.join(map(repr, unknown))}; "
            f"it takes {', '.join(map(repr, spec.params))}"
        )
