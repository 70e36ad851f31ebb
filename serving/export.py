"""``purify export``: one ONNX graph of a whole defended model, verified against torch before success.

The graph holds every stage of the config (TVM's primal-dual iteration unrolled for its fixed
iteration count, DCT quantization), the classifier and the head, with a dynamic batch axis.
Randomness stays outside: TVM's drop mask is an input, drawn by the serving backend, so the
graph is deterministic and can be compared with torch exactly.

Graph inputs (B is dynamic):

* ``images`` ``(B, C, H, W)`` float32 in [0, 1];
* per TVM stage ``i``: ``stage{i}_tvm_mask`` ``(B, 1, H, W)`` (1 = dropped) and ``stage{i}_tvm_weight`` ``(B,)``;
* per DCT stage ``i``: ``stage{i}_dct_q`` ``(B,)``.

Output: ``probabilities`` ``(B, K)``. The graph's metadata records the stages and class names,
and the ONNX backend refuses a config whose stages differ.

Verification: real images (CIFAR-10 test images from the data directory) go through torch
(the serving path) and through ONNX Runtime with the same masks, at two batch sizes; the export
succeeds only when the largest absolute difference is <= ``tol`` (default 1e-4).

Limitation: DCT quantization rounds. Behind an iterative stage (TVM -> DCT), float differences
of ~1e-7 between ONNX Runtime's and torch's kernels can move a coefficient across a rounding
boundary, which changes that image's probabilities by ~1e-3; such a pipeline can fail the 1e-4
check although both graphs compute the same function. The error says so; ``--tol`` relaxes it.

Example:
    >>> from serving.config import load_config, DEFAULT_CONFIG
    >>> report = export_onnx(load_config(DEFAULT_CONFIG), "/tmp/m.onnx", data_dir="../shared/data")  # doctest: +SKIP
    >>> report.max_abs_diff <= 1e-4  # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from purify.errors import PurifyError
from purify.registry import get_purifier_spec
from serving.backends import DefendedModel, build_defended_model, stage_input_names
from serving.config import ServeConfig
from serving.errors import ConfigError

__all__ = ["ExportError", "ExportReport", "export_onnx"]


class ExportError(PurifyError, RuntimeError):
    """The exported graph disagrees with torch (or could not be written)."""


@dataclass(frozen=True)
class ExportReport:
    path: Path
    max_abs_diff: float
    images: int
    batch_sizes: tuple[int, ...]
    providers: tuple[str, ...]
    size_bytes: int


class _Graph(nn.Module):
    """Positional-tensor wrapper of :class:`DefendedModel` for the exporter."""

    def __init__(self, model: DefendedModel, layout: list[tuple[int, str, list[str]]]) -> None:
        super().__init__()
        self.model, self.layout = model, layout

    def forward(self, images: Tensor, *extra: Tensor) -> Tensor:
        it = iter(extra)
        params = []
        for _, name, names in self.layout:
            p = {param: next(it) for param in names}
            if name == "tvm":
                p["backend"] = "torch"  # the numba kernel is opaque to the exporter; the torch loop unrolls
            params.append(p)
        return self.model(images, params)


def _layout(cfg: ServeConfig) -> list[tuple[int, str, list[str]]]:
    out = []
    for i, stage in enumerate(cfg.stages):
        if stage.name == "tvm" and stage.params.get("tol") is not None:
            raise ConfigError(f"{cfg.source}: stages[{i}].params.tol: a graph cannot stop early per plane; "
                              "export with tol unset (fixed iterations)")
        out.append((i, stage.name, list(stage_input_names(i, stage.name))))
    return out


def _stage_inputs(cfg: ServeConfig, x: Tensor, gen: torch.Generator) -> list[Tensor]:
    """Masks drawn like the serving backend does, and the config's per-sample values, for ``x``."""
    b, c, h, w = x.shape
    tensors = []
    for i, stage in enumerate(cfg.stages):
        merged = {**get_purifier_spec(stage.name).defaults(), **stage.params}
        for param in stage_input_names(i, stage.name):
            if param == "mask":
                shape = (b, 1, h, w) if merged.get("mask_mode", "pixel") == "pixel" else (b, c, h, w)
                tensors.append((torch.rand(shape, generator=gen) < merged["drop_prob"]).float())
            else:
                tensors.append(torch.full((b,), float(merged[param])))
    return tensors


def _real_images(cfg: ServeConfig, data_dir: str | os.PathLike | None, n: int) -> Tensor:
    from purify.data import load_dataset

    if cfg.input.chw != (3, 32, 32):
        raise ConfigError(f"{cfg.source}: input.shape: verification uses CIFAR-10 images (3, 32, 32), "
                          f"the model takes {cfg.input.chw}")
    x, _ = load_dataset("cifar10", "test", data_dir=data_dir).tensors(slice(0, n))
    return x


def export_onnx(cfg: ServeConfig, path: str | os.PathLike, *, data_dir: str | os.PathLike | None = None,
                n_images: int = 64, tol: float = 1e-4, opset: int = 17, seed: int = 0) -> ExportReport:
    """Export ``cfg``'s defended model to ``path`` and verify it; see the module docstring.

    Raises:
        ConfigError (the config cannot be exported), DataNotFoundError (no real images to verify on),
        ExportError (the max abs difference exceeds ``tol``; nothing is left at ``path``).
    """
    import onnx
    import onnxruntime as ort

    if cfg.onnx is not None:
        raise ConfigError(f"{cfg.source}: classifier: export needs a registry or factory classifier (it is already ONNX)")
    layout = _layout(cfg)
    model, classes = build_defended_model(cfg)
    graph = _Graph(model, layout).eval()
    images = _real_images(cfg, data_dir, n_images)
    gen = torch.Generator().manual_seed(seed)
    example = (images[:2], *_stage_inputs(cfg, images[:2], gen))
    names = ["images"] + [n for i, s, _ in layout for n in stage_input_names(i, s).values()]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="purify_export_") as tmp:
        raw = Path(tmp) / "graph.onnx"
        with torch.inference_mode():
            # Load what stages read lazily (the gcln generator's weights) before tracing; loaded
            # inside the trace, the file reading itself would be recorded and the tracer fails.
            graph(*example)
        with warnings.catch_warnings(), torch.no_grad():
            # The boundary checks (finite, in range) run once on the example batch while tracing;
            # the exporter warns that their Python results are constants. They are, by design.
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, example, str(raw), input_names=names, output_names=["probabilities"],
                              dynamic_axes={n: {0: "batch"} for n in names + ["probabilities"]},
                              opset_version=opset, dynamo=False)
        proto = onnx.load(str(raw))
        meta = {"purify_stages": json.dumps([{"name": s.name, "params": dict(s.params)} for s in cfg.stages]),
                "purify_classes": json.dumps(list(classes) if classes else []),
                "purify_classifier": cfg.registry or cfg.factory, "purify_head": cfg.head.type}
        for key, value in meta.items():
            proto.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(raw))
        session = ort.InferenceSession(str(raw), providers=["CPUExecutionProvider"])
        worst, sizes = 0.0, (len(images), 1)
        for b in sizes:
            x = images[:b]
            extra = _stage_inputs(cfg, x, gen)
            with torch.inference_mode():
                # The reference is the serving path itself (numba TV kernel on the CPU), not the traced loop.
                ref = model(x, [dict(zip(n, extra[k:k + len(n)])) for k, n in _offsets(layout)]).numpy()
            feeds = {n: t.numpy() for n, t in zip(names, (x, *extra))}
            got = session.run(["probabilities"], feeds)[0]
            worst = max(worst, float(np.abs(got - ref).max()))
        if not worst <= tol:
            rounding = any(s.name in ("dct", "gcln") for s in cfg.stages)
            hint = ("; the dct / gcln stages round, so ~1e-7 kernel differences can flip a quantization step "
                    "(see serving.export's docstring; --tol relaxes the check)") if rounding else ""
            raise ExportError(f"export: ONNX and torch differ by up to {worst:.3g} (> tol {tol:g}) on "
                              f"{len(images)} real images; the graph was not written to {path}{hint}")
        os.replace(raw, path)
    return ExportReport(path, worst, len(images), sizes, tuple(session.get_providers()), path.stat().st_size)


def _offsets(layout: list[tuple[int, str, list[str]]]) -> list[tuple[int, list[str]]]:
    """Start index of each stage's tensors in the flat extra-input list, with their parameter names."""
    out, k = [], 0
    for _, _, names in layout:
        out.append((k, names))
        k += len(names)
    return out
