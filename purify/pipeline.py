"""A pipeline of named purification stages, and a classifier defended by one.

Example:
    >>> pipe = Pipeline.from_spec(["tvm", ("dct", {"q": 10})])
    >>> pipe.names, pipe.randomized, pipe.differentiable
    (['tvm', 'dct'], True, False)
    >>> pipe(torch.rand(2, 3, 32, 32), generator=torch.Generator().manual_seed(0)).shape
    torch.Size([2, 3, 32, 32])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence, Union

import torch
from torch import Tensor, nn

from purify._checks import check_generator, check_image_batch
from purify.errors import DTypeError, PurifyError
from purify.registry import PurifierSpec, check_stage_params, get_purifier_spec

__all__ = ["Stage", "Pipeline", "DefendedClassifier", "StageSpec"]

# A stage as users write it: "tvm", or ("dct", {"q": 10}).
StageSpec = Union[str, tuple[str, Mapping[str, Any]]]


@dataclass(frozen=True)
class Stage:
    """One registered stage with its fixed keyword parameters."""

    spec: PurifierSpec
    params: Mapping[str, Any]

    @property
    def name(self) -> str:
        return self.spec.name

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        params = dict(self.params)
        if self.spec.randomized and generator is not None:
            params["generator"] = generator
        return self.spec.function(x, **params)


class Pipeline(nn.Module):
    """Stages applied in order; randomized stages draw from the generator given at call time.

    Shape:
        input: (B, C, H, W) in [0, 1]; output: same shape, dtype and device.
    """

    def __init__(self, stages: Sequence[Stage]) -> None:
        super().__init__()
        if not stages:
            raise PurifyError("Pipeline: expected at least one stage, got none; e.g. Pipeline.from_spec(['tvm'])")
        self.stages = tuple(stages)

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

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        check_image_batch("Pipeline", x)
        check_generator("Pipeline", generator, x.device)
        for stage in self.stages:
            x = stage(x, generator)
        return x

    def extra_repr(self) -> str:
        return ", ".join(f"{s.name}({', '.join(f'{k}={v!r}' for k, v in s.params.items())})" for s in self.stages)


class DefendedClassifier(nn.Module):
    """``classifier(pipeline(x))``: a classifier with purification in front, and optionally a WNLL head.

    ``classifier`` takes [0, 1] images and returns logits (normalization belongs to it).
    ``pipeline=None`` purifies nothing (an undefended model, e.g. to compare heads).
    With ``head`` (a :class:`~purify.wnll.WNLLHead`), the classifier's softmax is replaced: its
    ``features(x)`` (B, D) go to the head, and the output is the log of the interpolated scores,
    which behaves like logits (argmax, softmax and cross-entropy give the head's label, scores
    and loss). In the head's ``"transductive"`` mode a prediction depends on the other images of
    the batch; the default ``"inductive"`` mode is batch-consistent.

    Shape:
        input: (B, C, H, W) in [0, 1]; output: (B, num_classes) logits (log-scores with a head).
    Example:
        >>> clf = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
        >>> DefendedClassifier(Pipeline.from_spec("dct"), clf)(torch.rand(2, 3, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, pipeline: Pipeline | None, classifier: nn.Module, head: nn.Module | None = None) -> None:
        super().__init__()
        if pipeline is not None and not isinstance(pipeline, Pipeline):
            raise DTypeError(f"DefendedClassifier: expected pipeline to be a Pipeline or None, got "
                             f"{type(pipeline).__name__}; build one with Pipeline.from_spec(['tvm'])")
        if head is not None and not callable(getattr(classifier, "features", None)):
            raise DTypeError(f"DefendedClassifier: a head needs the classifier's features, but "
                             f"{type(classifier).__name__} has no features(x) method; purify's models "
                             "(create_model) have one")
        self.pipeline = pipeline
        self.classifier = classifier
        self.head = head

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if self.pipeline is not None:
            x = self.pipeline(x, generator=generator)
        if self.head is None:
            return self.classifier(x)
        return self.head.log_scores(self.classifier.features(x))
