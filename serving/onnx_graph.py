"""One ONNX graph of a whole defended classifier, verified against torch before it is written.

The graph runs the model's :class:`~purify.pipeline.Pipeline` (TVM's primal-dual iteration
unrolled for its fixed iteration count, DCT quantization, the cleaning generator), the
classifier and the head, with a dynamic batch axis, and outputs class probabilities. Randomness
stays outside: each randomized stage's random inputs (``spec.random_inputs``, e.g. TVM's drop
mask) are graph inputs, drawn by the caller with :meth:`Pipeline.draw_inputs`, so the graph is
deterministic and can be compared with torch image by image.

Graph inputs (B is dynamic), in this order:

* ``images`` ``(B, C, H, W)`` float32 in [0, 1];
* per stage ``i`` and each name in its ``spec.graph_inputs``: ``stage{i}_{stage}_{name}``, e.g.
  ``stage0_tvm_mask`` ``(B, 1, H, W)`` (1 = dropped), ``stage0_tvm_weight`` ``(B,)``,
  ``stage1_dct_q`` ``(B,)`` (see :func:`graph_inputs`).

Verification: the same real images and drawn inputs go through torch (:meth:`DefendedClassifier.run`,
the serving path, e.g. the numba TV kernel on the CPU) and through ONNX Runtime, at two batch
sizes, and every image must agree within ``tol`` where the comparison is well defined. A stage
that rounds (``spec.rounds``: DCT quantization, the generator's quantization layer) maps values
within float noise of a rounding boundary to either side, and two correct kernels (ONNX
Runtime's and torch's, or one library on two CPUs) may round such a value differently, which
moves that image's probabilities by ~1e-3. So a rounding pipeline is checked in two passes:

1. *Rounding made negligible*: every rounding stage's step ``q`` (a graph input) is set to
   :data:`FINE_Q` = 1e-3. A value that then rounds differently moves a pixel by ~1e-6, so the
   comparison is continuous and well defined: every image must agree within ``tol``. This pass
   checks every operation of the graph (the TV loop, the DCT and its inverse, the generator, the
   classifier, the head) on real images.
2. *As deployed* (the configured ``q``): an image that differs by more than ``tol`` is accepted
   only when one of its coefficients lies within ``noise_margin`` of a rounding boundary
   (:func:`purify.dct.rounding_margin`), and the graph must hold ONNX ``Round`` nodes (round half
   to even, as ``torch.round``). The report counts such images.

A rounding stage without a per-sample ``q`` (``bit_depth``: its bit depth fixes the computation)
cannot be checked with its rounding made negligible, and as deployed nearly every image of a
photo has a pixel within ``noise_margin`` of one of its 2^bits levels' boundaries, which would
excuse any difference; :func:`export_onnx` refuses such a pipeline before tracing it (the torch
backend serves it). The median filter (``median_smooth``) selects values and exports as is.

Why ``noise_margin = 5e-4`` (on the [0, 1] scale of the coefficients): the float32 TV kernels
drift apart by at most ``iters · 4u`` = 4e-5 per pixel over 160 iterations (the bound
``tests/test_tv.py`` checks numba against the torch loop; measured: 1.1e-6 on 64 CIFAR-10 test
images). An 8×8 orthonormal DCT coefficient sums 64 pixels with weights of absolute sum at most
8, so it moves by at most 3.2e-4. Without TVM in front, the kernels differ by float rounding only
(~1e-6), but uint8 images put coefficients exactly on boundaries (a DC term is a sum of 64
integers / (8·255)), so flips are common there and all lie within the margin.

Example:
    >>> from purify import DefendedClassifier, Pipeline
    >>> clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    >>> model = DefendedClassifier(Pipeline.from_spec([("tvm", {"iters": 5})]), clf).eval()
    >>> report = export_onnx(model, "/tmp/doc.onnx", torch.rand(4, 3, 8, 8))  # doctest: +SKIP
    >>> report.max_abs_diff <= 1e-4  # doctest: +SKIP
    True
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from purify.errors import PurifyError
from purify.pipeline import DefendedClassifier, Pipeline, Stage

__all__ = ["ExportError", "ExportReport", "export_onnx", "graph_inputs", "per_sample_inputs", "traceable",
           "rounding_margins", "NOISE_MARGIN", "FINE_Q"]

#: Kernel noise (coefficient scale of [0, 1] images) below which two kernels may round differently (see above).
NOISE_MARGIN = 5e-4
#: The quantization step of the verification pass that makes rounding negligible (see above).
FINE_Q = 1e-3


class ExportError(PurifyError, RuntimeError):
    """The model cannot be traced, or the exported graph disagrees with torch."""


@dataclass(frozen=True)
class ExportReport:
    """What the verification measured.

    ``max_abs_diff`` is over the comparisons that are well defined (with rounding made negligible,
    and as deployed on images that did not flip); ``rounding_flips`` counts the images accepted
    because a rounded value sat within ``noise_margin`` of a boundary, and ``flip_max_abs_diff``
    is the largest difference among them.
    """

    path: Path
    max_abs_diff: float
    images: int
    batch_sizes: tuple[int, ...]
    providers: tuple[str, ...]
    size_bytes: int
    rounding_flips: int = 0
    flip_max_abs_diff: float = 0.0


def graph_inputs(pipeline: Pipeline | None) -> list[tuple[int, str, str]]:
    """``(stage index, parameter, ONNX input name)`` of every per-sample graph input, in graph order.


    Example:
        >>> graph_inputs(Pipeline.from_spec(["tvm", "dct"]))
        [(0, 'mask', 'stage0_tvm_mask'), (0, 'weight', 'stage0_tvm_weight'), (1, 'q', 'stage1_dct_q')]
    """
    if pipeline is None:
        return []
    return [(i, p, f"stage{i}_{s.name}_{p}") for i, s in enumerate(pipeline.stages) for p in s.spec.graph_inputs]


def per_sample_inputs(pipeline: Pipeline | None, x: Tensor, *, generator: torch.Generator | None = None,
                      overrides: Sequence[Mapping[str, Any]] | None = None) -> list[dict[str, Tensor]]:
    """Every graph input of ``pipeline`` for ``x``: random inputs drawn, other values per image.

    Values not in ``overrides`` take the stage's setting; numbers become ``(B,)`` float32 tensors.
    """
    if pipeline is None:
        return []
    drawn = pipeline.draw_inputs(x, generator=generator, overrides=overrides)
    b = x.shape[0]
    out: list[dict[str, Tensor]] = []
    for i, stage in enumerate(pipeline.stages):
        module, values = pipeline.purifiers[i], {}
        for name in stage.spec.graph_inputs:
            # Twins keep each parameter as an attribute of the same name (its effective value).
            v = drawn[i].get(name, getattr(module, name))
            t = torch.as_tensor(v, dtype=torch.float32, device=x.device)
            values[name] = t.expand(b).clone() if t.dim() == 0 else t.float()
        out.append(values)
    return out


def traceable(model: DefendedClassifier) -> DefendedClassifier:
    """A copy of ``model`` whose stages take their ``spec.trace_params`` (the torch TV loop, no early stop).

    Raises:
        ExportError: a stage sets one of those parameters to another value (the message names it).
    """
    if model.pipeline is None:
        return copy.deepcopy(model)
    stages = []
    for i, stage in enumerate(model.pipeline.stages):
        for key, value in stage.spec.trace_params.items():
            if key in stage.params and stage.params[key] != value:
                raise ExportError(f"export: stage {i} ({stage.name}) sets {key}={stage.params[key]!r}, which cannot be "
                                  f"traced into a static graph; export needs {key}={value!r} (or leave it unset)")
        stages.append(Stage(stage.spec, {**stage.params, **stage.spec.trace_params}))
    out = copy.deepcopy(model)
    pipeline = Pipeline(stages)
    # Keep the weights the model holds now (e.g. a generator loaded with another state), not a fresh load.
    pipeline.load_state_dict(model.pipeline.state_dict())
    out.pipeline = pipeline.to(next(iter(model.parameters()), torch.empty(0)).device)
    return out


class _Graph(nn.Module):
    """Positional-tensor wrapper for the exporter: ``(images, *per-sample inputs) -> probabilities``."""

    def __init__(self, model: DefendedClassifier) -> None:
        super().__init__()
        self.model = model
        self.layout = graph_inputs(model.pipeline)

    def forward(self, images: Tensor, *extra: Tensor) -> Tensor:
        overrides: list[dict[str, Tensor]] = [{} for _ in (self.model.pipeline.stages if self.model.pipeline else ())]
        for (i, name, _), value in zip(self.layout, extra):
            overrides[i][name] = value
        return torch.softmax(self.model.run(images, overrides=overrides or None), dim=1)


def _flat(inputs: list[dict[str, Tensor]], layout: list[tuple[int, str, str]]) -> list[Tensor]:
    return [inputs[i][name] for i, name, _ in layout]


def rounding_margins(pipeline: Pipeline | None, x: Tensor, inputs: list[dict[str, Tensor]]) -> Tensor:
    """Per image, the smallest rounding margin (:func:`purify.dct.rounding_margin`) over the rounding stages.

    ``inf`` where no stage rounds. Runs the stages in order with the given per-sample inputs.
    """
    margin = torch.full((x.shape[0],), float("inf"))
    if pipeline is None:
        return margin
    for stage, module, given in zip(pipeline.stages, pipeline.purifiers, inputs):
        if stage.spec.rounds:
            margin = torch.minimum(margin, module.rounding_margin(x, **given).float().cpu())
        x = module.run(x, **given)
    return margin


def _compare(model: DefendedClassifier, session: Any, names: list[str], layout: list[tuple[int, str, str]],
             x: Tensor, inputs: list[dict[str, Tensor]]) -> np.ndarray:
    """Per image, the largest |ONNX Runtime - torch| probability difference for the same inputs."""
    with torch.inference_mode():
        # The reference is the serving path (e.g. the numba TV kernel on the CPU), not the traced loop.
        ref = torch.softmax(model.run(x, overrides=inputs or None), dim=1).numpy()
    feeds = {n: t.numpy() for n, t in zip(names, (x, *_flat(inputs, layout)))}
    got = session.run(["probabilities"], feeds)[0]
    return np.abs(got - ref).max(axis=1)


def export_onnx(model: DefendedClassifier, path: str | os.PathLike, images: Tensor, *, tol: float = 1e-4,
                opset: int = 17, seed: int = 0, metadata: Mapping[str, str] | None = None,
                noise_margin: float = NOISE_MARGIN) -> ExportReport:
    """Export ``model`` (in eval mode, on the CPU) to ``path`` and verify it on ``images``; see the module docstring.

    Args:
        model: the defended classifier; its stages' ``trace_params`` are applied to a copy.
        path: the ``.onnx`` file; nothing is written there unless the verification passes.
        images: real images ``(N, C, H, W)`` in [0, 1] (N >= 2) to verify on.
        tol: largest accepted |probability difference| where the comparison is well defined.
        metadata: extra ``metadata_props`` (e.g. the serving config's stages and class names).
        noise_margin: see the module docstring.

    Raises:
        ExportError: the model cannot be traced, or the graph disagrees with torch.
    """
    import onnx
    import onnxruntime as ort

    if images.dim() != 4 or images.shape[0] < 2:
        raise ExportError(f"export: expected at least 2 verification images (N, C, H, W), got {tuple(images.shape)}")
    model = model.eval()
    rounding = [i for i, st in enumerate(model.pipeline.stages) if st.spec.rounds] if model.pipeline else []
    for i in rounding:
        stage = model.pipeline.stages[i]
        if "q" not in stage.spec.graph_inputs:
            # Before tracing: without a per-sample step the rounding cannot be made negligible, and the
            # as-deployed comparison alone would excuse nearly every difference as a rounding flip.
            raise ExportError(f"export: stage {i} ({stage.name}) rounds but takes no per-sample q, so the graph "
                              "cannot be verified against torch with rounding made negligible and is not "
                              "exported; serve this config with the torch backend (backend.type = \"torch\")")
    graph = _Graph(traceable(model)).eval()
    layout = graph.layout
    names = ["images"] + [n for _, _, n in layout]
    gen = torch.Generator().manual_seed(seed)
    example_inputs = per_sample_inputs(model.pipeline, images[:2], generator=gen)
    example = (images[:2], *_flat(example_inputs, layout))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="purify_export_") as tmp:
        raw = Path(tmp) / "graph.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            # Python-side values (shapes, the batch size) are constants in a trace; the exporter warns about them.
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, example, str(raw), input_names=names, output_names=["probabilities"],
                              dynamic_axes={n: {0: "batch"} for n in names + ["probabilities"]},
                              opset_version=opset, dynamo=False)
        proto = onnx.load(str(raw))
        for key, value in (metadata or {}).items():
            proto.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(raw))
        session = ort.InferenceSession(str(raw), providers=["CPUExecutionProvider"])
        if rounding and not any(node.op_type == "Round" for node in proto.graph.node):
            raise ExportError("export: the model rounds, but the graph holds no ONNX Round node; the graph was not "
                              f"written to {path}")
        worst, flips, flip_worst, sizes = 0.0, 0, 0.0, (len(images), 1)
        for b in sizes:
            x = images[:b]
            inputs = per_sample_inputs(model.pipeline, x, generator=gen)
            if rounding:
                fine = [dict(given) for given in inputs]
                for i in rounding:
                    fine[i]["q"] = torch.full_like(fine[i]["q"], FINE_Q)
                diff = _compare(model, session, names, layout, x, fine)
                if diff.max() > tol:
                    i = int(np.argmax(diff))
                    raise ExportError(f"export: with rounding made negligible (q = {FINE_Q:g}), ONNX and torch differ by "
                                      f"up to {diff[i]:.3g} (> tol {tol:g}) on image {i} of {b} real images; the "
                                      f"graph was not written to {path}")
                worst = max(worst, float(diff.max()))
            diff = _compare(model, session, names, layout, x, inputs)
            with torch.inference_mode():
                margins = rounding_margins(model.pipeline, x, inputs).numpy()
            near_boundary = margins < noise_margin
            bad = (diff > tol) & ~near_boundary
            if bad.any():
                i = int(np.argmax(np.where(bad, diff, -1.0)))
                raise ExportError(
                    f"export: ONNX and torch differ by up to {diff[bad].max():.3g} (> tol {tol:g}) on {int(bad.sum())} "
                    f"of {b} real images where the comparison is well defined (image {i}: "
                    + (f"smallest rounding margin {margins[i]:.3g} >= noise margin {noise_margin:g}"
                       if np.isfinite(margins[i]) else "no stage rounds")
                    + f"); the graph was not written to {path}")
            flipped = (diff > tol) & near_boundary
            flips += int(flipped.sum())
            flip_worst = max(flip_worst, float(diff[flipped].max()) if flipped.any() else 0.0)
            worst = max(worst, float(diff[~flipped].max()) if (~flipped).any() else 0.0)
        os.replace(raw, path)
    return ExportReport(path, worst, len(images), sizes, tuple(session.get_providers()), path.stat().st_size,
                        flips, flip_worst)
