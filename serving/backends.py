"""Execution backends: the defended model in torch, or its exported ONNX graph in ONNX Runtime.

Both take one batch as a float32 ``(B, C, H, W)`` array in [0, 1] and per-sample stage
parameters, and return class scores ``(B, K)`` (probabilities for the softmax head).

Per-sample parameters: ``stage_params[i]`` maps a parameter of stage ``i`` to a ``(B,)`` array,
one value per image, so requests with different settings share a batch. Randomness (the TVM
drop mask) comes from the backend's own generator; the ONNX graph takes the mask as an input,
so the graph itself is deterministic and can be verified against torch.

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
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from purify.errors import PurifyError
from purify.registry import get_purifier_spec
from serving.config import ServeConfig
from serving.errors import ConfigError

__all__ = ["TorchBackend", "OnnxBackend", "DefendedModel", "build_defended_model", "create_backend",
           "stage_input_names"]

log = logging.getLogger("serving")


def stage_input_names(stage_index: int, stage_name: str) -> dict[str, str]:
    """ONNX input names of a stage's per-sample inputs: ``{param: input name}``.

    Example:
        >>> stage_input_names(0, "tvm")
        {'mask': 'stage0_tvm_mask', 'weight': 'stage0_tvm_weight'}
    """
    # gcln takes none: its generator and q are baked into the graph (q is not a request parameter).
    params = {"tvm": ("mask", "weight"), "dct": ("q",), "gcln": ()}[stage_name]
    return {p: f"stage{stage_index}_{stage_name}_{p}" for p in params}


class _Head(nn.Module):
    """softmax over the classifier's logits, or a WNLL head over its features."""

    def __init__(self, classifier: nn.Module, wnll: nn.Module | None) -> None:
        super().__init__()
        self.classifier, self.wnll = classifier, wnll

    def forward(self, x: Tensor) -> Tensor:
        if self.wnll is None:
            return torch.softmax(self.classifier(x), dim=1)
        return self.wnll(self.classifier.features(x))


class DefendedModel(nn.Module):
    """purification stages -> classifier -> head, with every per-sample parameter passed per call.

    Shape:
        x: (B, C, H, W) in [0, 1]; stage_params[i][p]: (B,) tensors (``mask`` for TVM: (B, 1, H, W));
        output: class scores (B, K).
    """

    def __init__(self, cfg: ServeConfig, classifier: nn.Module, wnll: nn.Module | None) -> None:
        super().__init__()
        self.stages = [(s.name, get_purifier_spec(s.name), dict(s.params)) for s in cfg.stages]
        self.head = _Head(classifier, wnll)
        #: Layout the head's input is put in; :class:`TorchBackend` may switch it to channels_last.
        self.memory_format = torch.contiguous_format

    def forward(self, x: Tensor, stage_params: Sequence[Mapping[str, Tensor]],
                generator: torch.Generator | None = None) -> Tensor:
        for (name, spec, fixed), per_sample in zip(self.stages, stage_params):
            params = {**fixed, **per_sample}
            if spec.randomized and "mask" not in params:
                params["generator"] = generator
            x = spec.function(x, **params)
        return self.head(x.contiguous(memory_format=self.memory_format))


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


def build_defended_model(cfg: ServeConfig) -> tuple[DefendedModel, tuple[str, ...] | None]:
    """The torch model of a registry- or factory-classifier config, and its class names (if known).

    Raises:
        ConfigError: the classifier, its weights or the head cannot be loaded (the message names the field).
    """
    from purify.models import create_model

    if cfg.factory is not None:
        clf = _import_factory(cfg)
    else:
        try:
            clf = create_model(cfg.registry, pretrained=True, weights_path=cfg.weights, data_dir=cfg.data_dir)
        except (PurifyError, OSError) as err:
            raise ConfigError(f"{cfg.source}: classifier: cannot load {cfg.registry!r}: {err}") from err
    if cfg.head.type == "wnll" and not callable(getattr(clf, "features", None)):
        raise ConfigError(f"{cfg.source}: head.type: 'wnll' labels by the classifier's features, and this "
                          "classifier has no features(x) method; use type = 'softmax'")
    classes = getattr(getattr(clf, "pretrained_cfg", None), "classes", None)
    if classes is None and getattr(getattr(clf, "pretrained_cfg", None), "dataset", None) == "cifar10":
        from purify.data import CIFAR10_CLASSES
        classes = CIFAR10_CLASSES
    return DefendedModel(cfg, clf, _load_wnll(cfg)).eval(), classes


def _resolve_device(cfg: ServeConfig) -> torch.device:
    if cfg.backend.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{cfg.source}: backend.device: 'cuda' requested but CUDA is not available; use 'auto'")
    if cfg.backend.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.backend.device)


#: Largest difference in scores the channels_last head may show against the contiguous one.
CHANNELS_LAST_TOLERANCE = 1e-4


class TorchBackend:
    """Runs :class:`DefendedModel` under ``torch.inference_mode`` on CUDA when available, else CPU.

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
        head = self.model.head
        with torch.inference_mode():
            try:
                reference = head(probe)
            except Exception:  # noqa: BLE001 - fails in any layout: ServedModel's probe reports it
                return "contiguous"
            head.to(memory_format=torch.channels_last)
            try:
                diff = float((head(probe.contiguous(memory_format=torch.channels_last)) - reference).abs().max())
                problem = None if diff <= CHANNELS_LAST_TOLERANCE else (
                    f"its scores differ from the contiguous head's by {diff:.2e} (> {CHANNELS_LAST_TOLERANCE:g})")
            except Exception as err:  # noqa: BLE001 - whatever the user's module raises, fall back
                problem = f"the head fails on channels_last input: {type(err).__name__}: {err}"
        if problem is None:
            self.model.memory_format = torch.channels_last
            return "channels_last"
        head.to(memory_format=torch.contiguous_format)
        if wanted == "channels_last":
            raise ConfigError(f"{cfg.source}: backend.memory_format: 'channels_last' cannot be used: {problem}; "
                              "use 'auto' or 'contiguous'")
        log.warning("%s: serving the head contiguous (backend.memory_format = 'auto'): %s", cfg.name, problem)
        return "contiguous"

    def run(self, x: np.ndarray, stage_params: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
        xt = torch.from_numpy(x).to(self.device)
        params = [{k: torch.from_numpy(v).to(self.device) for k, v in p.items()} for p in stage_params]
        with torch.inference_mode():
            return self.model(xt, params, self.generator).float().cpu().numpy()


class OnnxBackend:
    """Runs a graph written by ``purify export`` in ONNX Runtime; reports the providers actually used.

    The CUDA provider is asked for when the installed onnxruntime offers it; ONNX Runtime falls
    back to the CPU silently when CUDA libraries are missing, so ``session.get_providers()`` (not
    the request) is what :attr:`info` and the start-up log report.
    """

    platform = "onnxruntime_onnx"

    def __init__(self, cfg: ServeConfig) -> None:
        import onnxruntime as ort

        if not cfg.onnx.is_file():
            raise ConfigError(f"{cfg.source}: classifier.onnx: no such file {cfg.onnx}; write it with `purify export`")
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
        self.rng = np.random.default_rng()
        self.stages = [(s.name, dict(s.params), get_purifier_spec(s.name).defaults()) for s in cfg.stages]
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
        b, c, h, w = x.shape
        feeds: dict[str, Any] = {"images": x}
        for i, ((name, fixed, defaults), per_sample) in enumerate(zip(self.stages, stage_params)):
            merged = {**defaults, **fixed}
            for param, input_name in stage_input_names(i, name).items():
                if param == "mask":
                    p = per_sample.get("drop_prob", np.full(b, merged["drop_prob"], np.float32))
                    shape = (b, 1, h, w) if merged.get("mask_mode", "pixel") == "pixel" else (b, c, h, w)
                    u = self.rng.random(shape, dtype=np.float32)
                    feeds[input_name] = (u < p.reshape(b, 1, 1, 1)).astype(np.float32)
                else:
                    feeds[input_name] = per_sample.get(param, np.full(b, merged[param], np.float32)).astype(np.float32)
        return feeds

    def run(self, x: np.ndarray, stage_params: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
        return self.session.run(["probabilities"], self._feeds(x, stage_params))[0]


def create_backend(cfg: ServeConfig) -> TorchBackend | OnnxBackend:
    """The backend named by ``backend.type``."""
    return OnnxBackend(cfg) if cfg.backend.type == "onnxruntime" else TorchBackend(cfg)
