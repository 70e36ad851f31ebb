"""A pipeline of named purification stages, and a classifier defended by one.

The pipeline is the one implementation of stage dispatch: ``purify()``, the server (torch and
ONNX backends), the ONNX export and the benchmark harness all run a :class:`Pipeline`. It holds
each stage's module twin (so ``.to()``, ``.parameters()`` and ``state_dict`` see, e.g., the
cleaning generator's weights), takes per-sample ``overrides`` (one mapping per stage, values a
float or a ``(B,)`` tensor, names from the stage's ``spec.per_sample``), and turns the
randomness of randomized stages into explicit inputs with :meth:`Pipeline.draw_inputs`.

Checks run once: :meth:`Pipeline.forward` checks the batch, the generator and the overrides,
then calls :meth:`Pipeline.run`, which calls each stage's unchecked core. Code that checked its
input already (an attack loop, the server) calls ``run`` directly.

:func:`as_pipeline` is the one place that turns what users write into a pipeline: a stage name,
``(name, params)``, a registered stage's module (``TVMinimize(weight=0.1)``,
``create_purifier("dct")``, kept as it is, weights and all), a list of those, or a ``Pipeline``.

Example:
    >>> pipe = Pipeline.from_spec(["tvm", ("dct", {"q": 10})])
    >>> pipe.names, pipe.randomized, pipe.differentiable
    (['tvm', 'dct'], True, False)
    >>> x = torch.rand(2, 3, 32, 32)
    >>> pipe(x, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([2, 3, 32, 32])
    >>> z = pipe(x, overrides=[{"weight": torch.tensor([0.05, 0.1])}, {"q": 8.0}])   # per-sample settings
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence, Union

import torch
from torch import Tensor, nn

from purify._checks import check_generator, check_image_batch
from purify.errors import DTypeError, PurifyError, ShapeError, UnknownNameError
from purify.registry import PurifierSpec, check_stage_params, get_purifier_spec, list_purifiers

__all__ = ["Stage", "Pipeline", "DefendedClassifier", "StageSpec", "StageLike", "Overrides", "as_pipeline"]

# A stage as users write it: "tvm", or ("dct", {"q": 10}).
StageSpec = Union[str, tuple[str, Mapping[str, Any]]]
# ... or as a registered stage's module twin, e.g. TVMinimize(weight=0.1) or create_purifier("dct").
StageLike = Union[StageSpec, nn.Module]
# Per-sample settings: one mapping per stage, {parameter: float or (B,) tensor}.
Overrides = Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class Stage:
    """One registered stage with its fixed keyword parameters (the description; the pipeline builds its module)."""

    spec: PurifierSpec
    params: Mapping[str, Any]

    @property
    def name(self) -> str:
        return self.spec.name


class Pipeline(nn.Module):
    """Stages applied in order; randomized stages draw from the generator given at call time.

    Shape:
        input: (B, C, H, W) in [0, 1]; output: same shape, dtype and device.
        overrides: one mapping per stage, values a float or a (B,) tensor (a TVM mask: (B, 1, H, W)).
    """

    def __init__(self, stages: Sequence[Stage], *, modules: Sequence[nn.Module] | None = None) -> None:
        super().__init__()
        if not stages:
            raise PurifyError("Pipeline: expected at least one stage, got none; e.g. Pipeline.from_spec(['tvm'])")
        self.stages = tuple(stages)
        if modules is None:
            modules = [s.spec.module(**s.params) for s in self.stages]
        elif len(modules) != len(self.stages):
            raise ShapeError(f"Pipeline: expected one module per stage ({len(self.stages)}), got {len(modules)}")
        self.purifiers = nn.ModuleList(modules)

    @classmethod
    def from_spec(cls, spec: StageSpec | Iterable[StageSpec]) -> "Pipeline":
        """Build from ``"tvm"``, ``("dct", {"q": 10})`` or a list of those."""
        items = [spec] if isinstance(spec, (str, tuple)) else list(spec)
        stages = []
        for item in items:
            if isinstance(item, str):
                name, params = item, {}
            elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Mapping):
                name, params = item[0], dict(item[1])
            else:
                raise DTypeError(
                    f"Pipeline.from_spec: expected each stage as a name or (name, params dict), got {item!r}; "
                    "e.g. ['tvm', ('dct', {'q': 10})]"
                )
            stage_spec = get_purifier_spec(name)
            check_stage_params(stage_spec, params)
            if "generator" in params:
                raise DTypeError(f"Pipeline.from_spec: pass generator when calling the pipeline, not in {name!r}'s params")
            stages.append(Stage(stage_spec, params))
        return cls(stages)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    @property
    def differentiable(self) -> bool:
        """True when autograd gives the true gradient of every stage."""
        return all(s.spec.differentiable or s.params.get("ste", False) for s in self.stages)

    @property
    def randomized(self) -> bool:
        return any(s.spec.randomized for s in self.stages)

    def stage_defaults(self, index: int) -> dict[str, Any]:
        """Stage ``index``'s parameters: its function's defaults updated with the pipeline's settings."""
        stage = self.stages[index]
        return {**stage.spec.defaults(), **stage.params}

    # ------------------------------------------------------------------------------------------ running

    def forward(self, x: Tensor, generator: torch.Generator | None = None, *,
                overrides: Overrides | None = None) -> Tensor:
        """Check ``x``, ``generator`` and ``overrides`` once, then :meth:`run`."""
        check_image_batch("Pipeline", x)
        check_generator("Pipeline", generator, x.device)
        return self.run(x, generator=generator, overrides=self.check_overrides(x, overrides))

    def run(self, x: Tensor, *, generator: torch.Generator | None = None,
            overrides: Overrides | None = None) -> Tensor:
        """The stages' unchecked cores in order: for callers that checked ``x`` (and the overrides) already."""
        for i, module in enumerate(self.purifiers):
            x = module.run(x, generator=generator, **(overrides[i] if overrides else {}))
        return x

    def draw_inputs(self, x: Tensor, *, generator: torch.Generator | None = None,
                    overrides: Overrides | None = None) -> list[dict[str, Any]]:
        """``overrides`` completed with every randomized stage's explicit random inputs (e.g. TVM's mask).

        ``run(x, overrides=draw_inputs(x, generator=g))`` equals ``run(x, generator=g)`` for the same
        state of ``g``, stage by stage; with the drawn inputs fixed, the pipeline is deterministic.
        Inputs are drawn for the image size of ``x`` (stages keep it).
        """
        out = []
        for i, (stage, module) in enumerate(zip(self.stages, self.purifiers)):
            given = dict(overrides[i]) if overrides else {}
            if stage.spec.random_inputs:
                given.update(module.draw_inputs(x, generator=generator, **given))
            out.append(given)
        return out

    def check_overrides(self, x: Tensor, overrides: Overrides | None) -> list[dict[str, Any]] | None:
        """Check per-sample overrides against each stage's ``spec.per_sample``; returns them as tensors."""
        if overrides is None:
            return None
        if isinstance(overrides, Mapping) or len(overrides) != len(self.stages):
            raise ShapeError(f"Pipeline: expected overrides as a list of {len(self.stages)} mappings (one per stage: "
                             f"{', '.join(self.names)}), got {type(overrides).__name__} of length "
                             f"{len(overrides) if hasattr(overrides, '__len__') else '?'}")
        checked = []
        for stage, given in zip(self.stages, overrides):
            if not isinstance(given, Mapping):
                raise DTypeError(f"Pipeline: expected a mapping of overrides for stage {stage.name!r}, "
                                 f"got {type(given).__name__}")
            allowed = stage.spec.per_sample
            unknown = sorted(set(given) - set(allowed))
            if unknown:
                raise UnknownNameError(f"Pipeline: stage {stage.name!r} cannot vary {', '.join(map(repr, unknown))} "
                                       f"per sample; it can vary {', '.join(map(repr, allowed)) or 'nothing'}")
            checked.append({k: allowed[k]("Pipeline", f"overrides[{stage.name!r}][{k!r}]", v, x)
                            for k, v in given.items()})
        return checked

    def extra_repr(self) -> str:
        return ", ".join(f"{s.name}({', '.join(f'{k}={v!r}' for k, v in s.params.items())})" for s in self.stages)


def as_pipeline(stages: StageLike | Iterable[StageLike] | Pipeline, *, fn: str = "as_pipeline") -> Pipeline:
    """A :class:`Pipeline` from a stage name, ``(name, params)``, a registered stage's module, a list of
    those (pipelines in the list are spliced in), or a ``Pipeline`` (returned as it is).

    Modules are used as they are (their parameters, weights and device), not rebuilt; only the
    twins of registered stages are accepted, because a pipeline calls their ``run`` protocol
    (:mod:`purify.registry`).

    Raises:
        DTypeError (not a stage), UnknownNameError (unknown name or parameter), PurifyError (no stage)
    Example:
        >>> from purify.tv import TVMinimize
        >>> as_pipeline(["tvm", TVMinimize(weight=0.1), ("dct", {"q": 8})]).names
        ['tvm', 'tvm', 'dct']
    """
    if isinstance(stages, Pipeline):
        return stages
    items = [stages] if isinstance(stages, (str, tuple, nn.Module)) else None
    if items is None:
        try:
            items = list(stages)  # type: ignore[arg-type]
        except TypeError:
            raise DTypeError(f"{fn}: expected a stage name, a (name, params) pair, a purifier module, a list of "
                             f"those or a Pipeline, got {type(stages).__name__}; "
                             "e.g. ['tvm', ('dct', {'q': 10})]") from None
    if not items:
        raise PurifyError(f"{fn}: expected at least one stage, got none; e.g. ['tvm']")
    found: list[Stage] = []
    modules: list[nn.Module] = []
    for item in items:
        if isinstance(item, Pipeline):
            found += item.stages
            modules += list(item.purifiers)
        elif isinstance(item, nn.Module):
            found.append(_stage_of(item, fn))
            modules.append(item)
        else:
            stage = Pipeline.from_spec([item]).stages[0]  # checks names and parameters; refuses other types
            found.append(stage)
            modules.append(stage.spec.module(**stage.params))
    return Pipeline(found, modules=modules)


def _stage_of(module: nn.Module, fn: str) -> Stage:
    """The registered stage a module twin belongs to, with its parameters that differ from the defaults."""
    for name in list_purifiers():
        spec = get_purifier_spec(name)
        if type(module) is spec.module:
            defaults = spec.defaults()
            params = {p: getattr(module, p) for p in spec.params
                      if p != "generator" and hasattr(module, p) and getattr(module, p) is not None
                      and _differs(getattr(module, p), defaults[p])}
            return Stage(spec, params)
    twins = ", ".join(getattr(get_purifier_spec(n).module, "__name__", n) for n in list_purifiers())
    raise DTypeError(f"{fn}: {type(module).__name__} is not a registered purification stage (those are {twins}); "
                     "for your own module, put it in front of the classifier yourself, e.g. "
                     "DefendedClassifier(None, nn.Sequential(my_stage, classifier))")


def _differs(value: Any, default: Any) -> bool:
    if isinstance(value, Tensor) or isinstance(default, Tensor):
        return value is not default
    try:
        return bool(value != default)
    except Exception:  # an exotic value that cannot be compared: keep it in the description
        return True


class DefendedClassifier(nn.Module):
    """``classifier(pipeline(x))``: a classifier with purification in front, and optionally a WNLL head.

    ``classifier`` takes [0, 1] images and returns logits (normalization belongs to it: wrap a
    model trained on normalized inputs in :class:`purify.models.Normalized`), or is a registered
    model's name (``"resnet56"``: :func:`purify.models.create_model` with its pretrained weights).
    ``retrofit`` (e.g. ``{"activation": "jumprelu", "kappa": 0.1}``) replaces the classifier's ReLUs
    by :func:`purify.activations.retrofit` (a copy; the module passed in is left as it is).
    ``pipeline`` is anything :func:`as_pipeline` takes: a stage name (``"tvm"``), ``(name, params)``,
    a registered stage's module (``TVMinimize(weight=0.1)``, ``create_purifier("dct")``), a list of
    those, or a :class:`Pipeline`; ``None`` purifies nothing (an undefended model, e.g. to compare heads).
    With ``head`` (a :class:`~purify.wnll.WNLLHead`), the classifier's softmax is replaced: its
    ``features(x)`` (B, D) go to the head, and the output is the log of the interpolated scores,
    which behaves like logits (argmax, softmax and cross-entropy give the head's label, scores
    and loss). In the head's ``"transductive"`` mode a prediction depends on the other images of
    the batch; the default ``"inductive"`` mode is batch-consistent.

    ``forward`` checks its input once; :meth:`run` is the unchecked path for callers that did
    (attack loops, the server).

    Shape:
        input: (B, C, H, W) in [0, 1]; output: (B, num_classes) logits (log-scores with a head).
    Example:
        >>> clf = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
        >>> DefendedClassifier(Pipeline.from_spec("dct"), clf)(torch.rand(2, 3, 8, 8)).shape
        torch.Size([2, 10])
        >>> DefendedClassifier(["tvm", ("dct", {"q": 10})], clf).pipeline.names
        ['tvm', 'dct']
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10), nn.ReLU())
        >>> DefendedClassifier("dct", net, retrofit={"activation": "jumprelu", "kappa": 0.1}).classifier.activation
        JumpReLU(kappa=0.1)
    """

    def __init__(self, pipeline: StageLike | Iterable[StageLike] | Pipeline | None, classifier: nn.Module | str,
                 head: nn.Module | None = None, *, retrofit: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        fn = "DefendedClassifier"
        if isinstance(classifier, str):
            from purify.models import create_model
            classifier = create_model(classifier, pretrained=True)
        if not isinstance(classifier, nn.Module):
            raise DTypeError(f"{fn}: expected classifier to be an nn.Module or a registered model name, "
                             f"got {type(classifier).__name__}")
        if retrofit is not None:
            from purify.activations import retrofit as retrofit_
            if not isinstance(retrofit, Mapping) or "activation" not in retrofit:
                raise DTypeError(f"{fn}: expected retrofit to be a mapping with an 'activation' and its parameters, "
                                 f"e.g. {{'activation': 'jumprelu', 'kappa': 0.1}}; got {retrofit!r}")
            classifier = retrofit_(classifier, **dict(retrofit))
        if pipeline is not None and not isinstance(pipeline, (str, tuple, list, nn.Module)):
            raise DTypeError(f"{fn}: expected pipeline to be a stage name, a (name, params) pair, a purifier module, "
                             f"a list of those, a Pipeline or None, got {type(pipeline).__name__}; e.g. 'tvm'")
        pipeline = None if pipeline is None else as_pipeline(pipeline, fn=fn)
        if head is not None and not callable(getattr(classifier, "features", None)):
            raise DTypeError(f"DefendedClassifier: a head needs the classifier's features, but "
                             f"{type(classifier).__name__} has no features(x) method; purify's models "
                             "(create_model) have one")
        self.pipeline = pipeline
        self.classifier = classifier
        self.head = head

    def forward(self, x: Tensor, generator: torch.Generator | None = None, *,
                overrides: Overrides | None = None) -> Tensor:
        if self.pipeline is None:
            if overrides:
                raise DTypeError("DefendedClassifier: overrides need a pipeline; this classifier has none")
            check_image_batch("DefendedClassifier", x)
            return self.run(x)
        check_image_batch("DefendedClassifier", x)
        check_generator("DefendedClassifier", generator, x.device)
        return self.run(x, generator=generator, overrides=self.pipeline.check_overrides(x, overrides))

    def run(self, x: Tensor, *, generator: torch.Generator | None = None,
            overrides: Overrides | None = None) -> Tensor:
        """Unchecked: purify with :meth:`Pipeline.run`, classify, and apply the head."""
        if self.pipeline is not None:
            x = self.pipeline.run(x, generator=generator, overrides=overrides)
        if self.head is None:
            return self.classifier(x)
        return self.head.log_scores(self.classifier.features(x))
