"""Execution backends: the defended model in torch, or its exported ONNX graph in ONNX Runtime.

Both take one batch as a float32 ``(B, C, H, W)`` array in [0, 1] and per-sample stage
parameters, and return class scores ``(B, K)`` (probabilities for the softmax head).

Per-sample parameters: ``stage_params[i]`` maps a parameter of stage ``i`` to a ``(B,)`` array,
one value per image, so requests with different settings share a batch. Both backends run the
library's :class:`~purify.pipeline.Pipeline`: the torch backend through
:class:`~purify.pipeline.DefendedClassifier`, the ONNX backend through the graph ``purify-export``
wrote from one, with the pipeline's :meth:`~purify.pipeline.Pipeline.draw_inputs` drawing the
random inputs (the TVM drop mask) from the backend's own generator, so the graph itself is
deterministic and can be verified against torch.

Example:
    >>> from serving.config import load_config, DEFAULT_CONFIG
    >>> backend = TorchBackend(load_config(DEFAULT_CONFIG))  # doctest: +SKIP
    >>> backend.run(np.random.rand(2, 3, 32, 32).astype("f4"), [{}]).shape  # doctest: +SKIP
    (2, 10)
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from purify.errors import PurifyError
from .onnx_graph import graph_inputs, per_sample_inputs
from purify.pipeline import DefendedClassifier, Pipeline
from .config import ServeConfig
from .errors import ConfigError

__all__ = ["TorchBackend", "OnnxBackend", "build_defended_model", "build_pipeline", "class_scores",
           "create_backend"]

log = logging.getLogger("serving")


def build_pipeline(cfg: ServeConfig) -> Pipeline | None:
    """The config's stages as the library's Pipeline (None without stages)."""
    return Pipeline.from_spec([(st.name, dict(st.params)) for st in cfg.stages]) if cfg.stages else None


class _ChannelsLast(nn.Module):
    """Runs a classifier on channels_last (NHWC-strided) input; ``features`` too (see :class:`TorchBackend`)."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(x.contiguous(memory_format=torch.channels_last))

    def features(self, x: Tensor) -> Tensor:
        return self.classifier.features(x.contiguous(memory_format=torch.channels_last))


def class_scores(model: DefendedClassifier, x: Tensor, *, generator: torch.Generator | None = None,
                 overrides: Sequence[Mapping[str, Tensor]] | None = None) -> Tensor:
    """Class probabilities ``(B, K)``: the softmax of the logits, or the WNLL head's interpolated scores.

    Unchecked (:meth:`DefendedClassifier.run`): the server checked the request already. With a
    head, the model returns log-scores whose softmax is the scores themselves (they sum to 1).
    """
    return torch.softmax(model.run(x, generator=generator, overrides=overrides), dim=1)


def _load_wnll(cfg: ServeConfig) -> nn.Module | None:
    if cfg.head.type != "wnll":
        return None
    try:
        from purify.wnll import WNLLHead
    except ImportError as err:
        raise ConfigError(f"{cfg.source}: head.type: 'wnll' needs purify.wnll.WNLLHead, which cannot be "
                          f"imported ({err}); use type = 'softmax'") from err
    try:
        # Inductive mode: each image is labelled against the templates alone, so a request's answer
        # never depends on the other requests that share its batch.
        return WNLLHead.load(cfg.head.templates, mode="inductive").eval()
    except (PurifyError, OSError, ValueError, KeyError) as err:
        raise ConfigError(f"{cfg.source}: head.templates: cannot load {cfg.head.templates}: {err}") from err


def _import_factory(cfg: ServeConfig) -> nn.Module:
    """Import ``classifier.factory`` ("module:function"; the config's folder is searched first) and call it."""
    module_name, attr = cfg.factory.split(":")
    folder = str(Path(cfg.source).resolve().parent) if Path(cfg.source).is_file() else None
    added = folder is not None and folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except Exception as err:  # noqa: BLE001 - any failure of the user's import is a config error
        raise ConfigError(f"{cfg.source}: classifier.factory: cannot import {cfg.factory!r}: "
                          f"{type(err).__name__}: {err}") from err
    finally:
        if added:
            sys.path.remove(folder)
    if not callable(factory):
        raise ConfigError(f"{cfg.source}: classifier.factory: {cfg.factory!r} is a {type(factory).__name__}, "
                          "expected a function returning an nn.Module")
    from purify.models import UserModel

    try:
        return UserModel(cfg.factory, factory).create(weights_path=cfg.weights)
    except (PurifyError, OSError) as err:
        raise ConfigError(f"{cfg.source}: classifier.factory: {err}") from err
    except Exception as err:  # noqa: BLE001 - the user's factory may raise anything
        raise ConfigError(f"{cfg.source}: classifier.factory: {cfg.factory!r} failed: "
                          f"{type(err).__name__}: {err}") from err


def build_defended_model(cfg: ServeConfig) -> tuple[DefendedClassifier, tuple[str, ...] | None]:
    """The torch model of a registry- or factory-classifier config, and its class names (if known).

    Raises:
        ConfigError: the classifier, its weights or the head cannot be loaded (the message names the field).
    """
    from purify.models import create_model
    from .integrity import verify_artifact

    verify_artifact(cfg, "weights")  # classifier.weights_sha256, before any loader reads the file
    if cfg.factory is not None:
        clf = _import_factory(cfg)
    else:
        try:
            clf = create_model(cfg.registry, pretrained=True, weights_path=cfg.weights, data_dir=cfg.data_dir)
        except (PurifyError, OSError) as err:
            raise ConfigError(f"{cfg.source}: classifier: cannot load {cfg.registry!r}: {err}") from err
    if cfg.retrofit is not None:
        from purify.activations import retrofit
        try:
            clf = retrofit(clf, **cfg.retrofit)
        except PurifyError as err:
            raise ConfigError(f"{cfg.source}: classifier.retrofit: {err}") from err
    if cfg.head.type == "wnll" and not callable(getattr(clf, "features", None)):
        raise ConfigError(f"{cfg.source}: head.type: 'wnll' labels by the classifier's features, and this "
                          "classifier has no features(x) method; use type = 'softmax'")
    classes = getattr(getattr(clf, "pretrained_cfg", None), "classes", None)
    if classes is None and getattr(getattr(clf, "pretrained_cfg", None), "dataset", None) == "cifar10":
        from purify.data import CIFAR10_CLASSES
        classes = CIFAR10_CLASSES
    return DefendedClassifier(build_pipeline(cfg), clf, _load_wnll(cfg)).eval(), classes


def _resolve_device(cfg: ServeConfig) -> torch.device:
    if cfg.backend.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{cfg.source}: backend.device: 'cuda' requested but CUDA is not available; use 'auto'")
    if cfg.backend.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.backend.device)


#: Largest difference in scores the channels_last head may show against the contiguous one.
CHANNELS_LAST_TOLERANCE = 1e-4


class TorchBackend:
    """Runs the config's :class:`~purify.pipeline.DefendedClassifier` under ``torch.inference_mode`` on CUDA when available, else CPU.

    ``backend.memory_format``: the head (classifier and WNLL / softmax) runs on channels_last
    (NHWC-strided) tensors when that works, because convolution and pooling kernels can be faster
    in that layout on the CPU: 1.65x for the shipped small CNN at batch 1 and 2.4x at batch 32; for
    ResNet-20, 0.84x and 1.2x, within noise (one thread; ``python -m benchmarks.serving_profile``,
    in ``benchmarks/results/serving_profile.md``; set ``contiguous`` where it does not pay).
    ``auto`` checks the head on a probe batch at start-up and keeps the contiguous layout, with a
    warning, if the classifier fails on channels_last input (a ``.view`` after a conv) or its
    scores differ by more than :data:`CHANNELS_LAST_TOLERANCE`; ``channels_last`` makes either a
    config error; ``contiguous`` never converts. The layout in use is in :attr:`info`.
    """

    platform = "pytorch_libtorch"

    def __init__(self, cfg: ServeConfig) -> None:
        self.device = _resolve_device(cfg)
        if cfg.backend.threads:
            torch.set_num_threads(cfg.backend.threads)
        model, self.classes = build_defended_model(cfg)
        self.model = model.to(self.device)
        self.generator = torch.Generator(device=self.device)
        self.generator.seed()
        layout = self._choose_memory_format(cfg)
        self.info = {"backend": "torch", "device": str(self.device), "torch": torch.__version__,
                     "threads": torch.get_num_threads(), "memory_format": layout}

    def _choose_memory_format(self, cfg: ServeConfig) -> str:
        """Switch the head to channels_last when ``backend.memory_format`` allows and the probe agrees."""
        wanted = cfg.backend.memory_format
        if wanted == "contiguous":
            return "contiguous"
        c, h, w = cfg.input.chw
        probe = torch.rand(4, c, h, w, generator=torch.Generator().manual_seed(0)).to(self.device)
        plain = self.model.classifier
        # The head alone (classifier, then softmax or WNLL), without the stages: what the layout changes.
        head = DefendedClassifier(None, plain, self.model.head)
        with torch.inference_mode():
            try:
                reference = head.run(probe)
            except Exception:  # noqa: BLE001 - fails in any layout: ServedModel's probe reports it
                return "contiguous"
            wrapped = _ChannelsLast(plain)
            try:
                diff = float((DefendedClassifier(None, wrapped, self.model.head).run(probe).softmax(1)
                              - reference.softmax(1)).abs().max())
                problem = None if diff <= CHANNELS_LAST_TOLERANCE else (
                    f"its scores differ from the contiguous head's by {diff:.2e} (> {CHANNELS_LAST_TOLERANCE:g})")
            except Exception as err:  # noqa: BLE001 - whatever the user's module raises, fall back
                problem = f"the head fails on channels_last input: {type(err).__name__}: {err}"
        if problem is None:
            self.model.classifier = wrapped
            return "channels_last"
        plain.to(memory_format=torch.contiguous_format)
        if wanted == "channels_last":
            raise ConfigError(f"{cfg.source}: backend.memory_format: 'channels_last' cannot be used: {problem}; "
                              "use 'auto' or 'contiguous'")
        log.warning("%s: serving the head contiguous (backend.memory_format = 'auto'): %s", cfg.name, problem)
        return "contiguous"

    def run(self, x: np.ndarray, stage_params: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
        xt = torch.from_numpy(x).to(self.device)
        params = [{k: torch.from_numpy(v).to(self.device) for k, v in p.items()} for p in stage_params]
        with torch.inference_mode():
            return class_scores(self.model, xt, generator=self.generator,
                                overrides=params if self.model.pipeline is not None else None).float().cpu().numpy()


class OnnxBackend:
    """Runs a graph written by ``purify-export`` in ONNX Runtime; reports the providers actually used.

    The CUDA provider is asked for when the installed onnxruntime offers it; ONNX Runtime falls
    back to the CPU silently when CUDA libraries are missing, so ``session.get_providers()`` (not
    the request) is what :attr:`info` and the start-up log report.
    """

    platform = "onnxruntime_onnx"

    def __init__(self, cfg: ServeConfig) -> None:
        import onnxruntime as ort

        if not cfg.onnx.is_file():
            raise ConfigError(f"{cfg.source}: classifier.onnx: no such file {cfg.onnx}; write it with `purify-export`")
        from .integrity import verify_artifact

        verify_artifact(cfg, "onnx")  # classifier.onnx_sha256, before onnxruntime parses the graph
        opts = ort.SessionOptions()
        if cfg.backend.threads:
            opts.intra_op_num_threads = cfg.backend.threads
            opts.inter_op_num_threads = 1
        available = ort.get_available_providers()
        wanted = ["CPUExecutionProvider"]
        if cfg.backend.device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
            wanted.insert(0, "CUDAExecutionProvider")
        elif cfg.backend.device == "cuda":
            raise ConfigError(f"{cfg.source}: backend.device: 'cuda' but this onnxruntime offers {available}; "
                              "install onnxruntime-gpu (instead of onnxruntime, never both)")
        try:
            self.session = ort.InferenceSession(str(cfg.onnx), sess_options=opts, providers=wanted)
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise ConfigError(f"{cfg.source}: classifier.onnx: {cfg.onnx} cannot be loaded: {err}") from err
        self.providers = self.session.get_providers()
        meta = self.session.get_modelmeta().custom_metadata_map
        self._check_stages(cfg, meta)
        self.classes = tuple(json.loads(meta["purify_classes"])) if meta.get("purify_classes") else None
        self.inputs = {i.name for i in self.session.get_inputs()}
        # The same Pipeline as the torch path: it draws the random inputs (TVM's mask) the graph takes.
        self.pipeline = build_pipeline(cfg)
        self.layout = graph_inputs(self.pipeline)
        self.generator = torch.Generator()
        self.generator.seed()
        self.info = {"backend": "onnxruntime", "providers": self.providers, "requested_providers": wanted,
                     "onnxruntime": ort.__version__}
        log.info("%s: onnxruntime providers in use: %s (requested %s)", cfg.name, self.providers, wanted)

    @staticmethod
    def _check_stages(cfg: ServeConfig, meta: Mapping[str, str]) -> None:
        baked = json.loads(meta.get("purify_stages", "null"))
        ours = [{"name": s.name, "params": dict(s.params)} for s in cfg.stages]
        if baked != ours:
            raise ConfigError(f"{cfg.source}: stages: the ONNX graph was exported with stages {baked}, "
                              f"the config says {ours}; export again with this config")

    def _feeds(self, x: np.ndarray, stage_params: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        xt = torch.from_numpy(x)
        overrides = [{k: torch.from_numpy(v) for k, v in p.items()} for p in stage_params] if self.pipeline else None
        inputs = per_sample_inputs(self.pipeline, xt, generator=self.generator, overrides=overrides)
        return {"images": x, **{name: inputs[i][param].numpy() for i, param, name in self.layout}}

    def run(self, x: np.ndarray, stage_params: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
        return self.session.run(["probabilities"], self._feeds(x, stage_params))[0]


def create_backend(cfg: ServeConfig) -> TorchBackend | OnnxBackend:
    """The backend named by ``backend.type``."""
    return OnnxBackend(cfg) if cfg.backend.type == "onnxruntime" else TorchBackend(cfg)
