"""Loading what a run evaluates, checked against each other before any attack: the images and the classifiers.

:func:`load_images` reads a built-in split from the data directory or your ``[data] path``
(:mod:`purify.user_data`); :func:`load_classifier` builds ``[model]`` / ``[substitute]``: a
registered name, your factory (imported and its weights loaded by the server's own code,
:func:`serving.backends._import_factory`, pins checked by :func:`serving.integrity.verify_artifact`)
or your ONNX graph (:class:`~benchmarks.harness.onnx_model.OnnxClassifier`), wrapped in
:class:`~purify.models.Normalized` with ``mean`` / ``std``; :func:`check_fit` runs one image
through it. Errors are :class:`~benchmarks.harness.schema.ConfigError` naming the file and the key.
See :mod:`benchmarks.harness.inputs` for the keys.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from .schema import ConfigError, RunConfig
from purify.errors import PurifyError
from .. import _serving   # the server's modules, under their name beside this package

__all__ = ["check_registered_fit", "load_images", "select", "load_classifier", "check_fit", "images_sha256",
           "describe_model", "describe_data"]


def _error(cfg: RunConfig, key: str, msg: str) -> ConfigError:
    return ConfigError(f"{cfg.path}: {key}: {msg}")


def check_registered_fit(cfg: RunConfig) -> None:
    """A built-in model against a built-in data set, checked before the data directory is looked at."""
    if "dataset" not in cfg.data:
        return
    from purify.data import DATASETS
    from purify.models import get_model_config

    h, w, c = DATASETS[cfg.data["dataset"]].image_shape
    for section, spec in (("model", cfg.model), ("substitute", cfg.substitute)):
        if spec is None or "name" not in spec:
            continue
        mcfg = get_model_config(spec["name"])
        if not hasattr(mcfg, "input_size"):      # a register_model() classifier: the probe checks it
            continue
        if mcfg.input_size != (c, h, w) or mcfg.dataset != cfg.data["dataset"]:
            raise _error(cfg, f"{section}.name", f"{mcfg.name} takes {mcfg.dataset} images of shape "
                         f"{mcfg.input_size} but data.dataset = {cfg.data['dataset']!r} has images of shape "
                         f"{(c, h, w)}; pick a model trained on {cfg.data['dataset']} or change data.dataset")


def load_images(cfg: RunConfig, data_dir: str | Path | None):
    """``(data set, data directory)``: a built-in split from the data directory, or the config's ``path``."""
    from purify.data import load_dataset, resolve_data_dir
    from purify.user_data import load_user_dataset

    folder = resolve_data_dir(data_dir)
    if "path" in cfg.data:
        path, d = Path(cfg.data["path"]), cfg.data
        if path.is_file() and (d["resize"] is not None or d["mode"] != "RGB"):
            raise _error(cfg, "data.resize" if d["resize"] is not None else "data.mode",
                         "only used with a folder of images; an .npz is used as stored")
        try:
            return load_user_dataset(path, resize=d["resize"], mode=d["mode"]), folder
        except PurifyError as e:
            raise _error(cfg, "data.path", str(e)) from None
    if not folder.is_dir():
        raise _error(cfg, "data", f"data directory {folder} does not exist; pass --data-dir DIR or set "
                     "PURIFY_DATA_DIR to the folder holding cifar10_test.npz and weights/")
    try:
        return load_dataset(cfg.data["dataset"], cfg.data["split"], data_dir=folder), folder
    except PurifyError as e:
        raise _error(cfg, "data.dataset", str(e)) from None


def select(cfg: RunConfig, ds) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """The chosen indices (sorted) and their images ``(n, C, H, W)`` in [0, 1] and labels."""
    what = f"{cfg.data['dataset']} {cfg.data['split']}" if "dataset" in cfg.data else cfg.data["path"]
    if "indices" in cfg.data:
        indices = np.asarray(cfg.data["indices"], dtype=np.int64)
        if indices.max() >= len(ds):
            raise _error(cfg, "data.indices", f"index {int(indices.max())} out of range for the {len(ds)} images "
                         f"of {what}")
    elif "count" in cfg.data:
        if cfg.data["count"] > len(ds):
            raise _error(cfg, "data.count", f"{cfg.data['count']} images asked for, {what} has {len(ds)}")
        rng = np.random.default_rng(cfg.data["seed"])
        indices = np.sort(rng.permutation(len(ds))[:cfg.data["count"]])
    else:
        indices = np.arange(len(ds), dtype=np.int64)
    try:
        x, y = ds.tensors(indices)
    except PurifyError as e:
        hint = "; set data.resize = [H, W]" if "resize" in str(e) else ""
        raise _error(cfg, "data.path", f"{e}{hint}") from None
    return indices, x, y


def _retrainable(model: nn.Module) -> bool:
    """Whether a registered model's weights ship in the package (``purify/weights``, made by
    ``purify.training``): a re-trained artifact may replace them under the same name. The upstream
    checkpoints' sha256 are pinned in the registry's code, so their name identifies their weights."""
    from purify.models.factory import PackagedConfig
    from purify.models.trained import TrainedConfig

    return isinstance(getattr(model, "pretrained_cfg", None), (PackagedConfig, TrainedConfig))


def load_classifier(cfg: RunConfig, section: str, folder: Path, dev: torch.device) -> tuple[nn.Module, dict]:
    """The model of ``[model]`` / ``[substitute]`` on ``dev`` in eval mode, and what identifies it in cell keys.

    A registered model is identified by its config dict, plus, when its weights ship in the package
    (the trained classifiers; a re-trained artifact may replace them under the same name), their
    sha256; a factory or ONNX model is identified by the sha256 of its files. So changed weights are
    never mistaken for the ones cached cells were made with.
    """
    from purify._download import sha256_file
    from purify.models import Normalized

    spec = cfg.model if section == "model" else cfg.substitute
    ns = SimpleNamespace(source=str(cfg.path), factory=spec.get("factory"),
                         weights=Path(spec["weights"]) if "weights" in spec else None,
                         weights_sha256=spec.get("weights_sha256"), onnx=Path(spec["onnx"]) if "onnx" in spec else None,
                         onnx_sha256=spec.get("onnx_sha256"))
    identity = {k: v for k, v in spec.items() if k not in ("weights", "onnx", "weights_sha256", "onnx_sha256")}
    try:
        model = _build(cfg, section, spec, ns, folder)
        for key in ("weights", "onnx"):
            if key in spec:
                identity[f"{key}_sha256"] = sha256_file(spec[key])
        if "name" in spec and "weights" not in spec and spec.get("pretrained") and _retrainable(model):
            identity["weights_sha256"] = model.pretrained_cfg.sha256
        if "factory" in spec:
            module = sys.modules.get(spec["factory"].split(":")[0])
            source = getattr(module, "__file__", None)
            identity["source_sha256"] = sha256_file(source) if source and Path(source).is_file() else None
    except PurifyError as e:
        msg, theirs = str(e), f"{cfg.path}: classifier."
        if msg.startswith(theirs):     # serving's ConfigError names the server's field: name ours
            raise ConfigError(f"{cfg.path}: {section}.{msg[len(theirs):]}") from None
        raise _error(cfg, f"{section}.pretrained" if "name" in spec else section, msg) from None
    if "mean" in spec:
        model = Normalized(model, spec["mean"], spec["std"])
    if "retrofit" in spec:        # in the identity too: a retrofitted model's cells are its own
        from purify.activations import retrofit
        model = retrofit(model, **spec["retrofit"])
    return model.to(dev).eval().requires_grad_(False), identity


def _build(cfg: RunConfig, section: str, spec: dict[str, Any], ns: SimpleNamespace, folder: Path) -> nn.Module:
    from purify.models import create_model
    _import_factory = _serving.module("backends")._import_factory
    verify_artifact = _serving.module("integrity").verify_artifact

    if "onnx" in spec:
        from .onnx_model import OnnxClassifier
        verify_artifact(ns, "onnx")
        return OnnxClassifier(spec["onnx"])
    verify_artifact(ns, "weights")
    if "factory" in spec:
        return _import_factory(ns)
    return create_model(spec["name"], pretrained=spec["pretrained"], weights_path=spec.get("weights"), data_dir=folder)


def check_fit(cfg: RunConfig, section: str, model: nn.Module, ds, x: torch.Tensor, y: torch.Tensor,
              dev: torch.device) -> None:
    """The model takes the data's images and scores as many classes as the labels need (one probe image)."""
    from purify.user_data import ImageFolder

    spec = cfg.model if section == "model" else cfg.substitute
    shape = tuple(x.shape[1:])
    mcfg = None
    if "name" in spec:
        from purify.models import get_model_config
        mcfg = get_model_config(spec["name"])
    if getattr(mcfg, "input_size", shape) != shape:
        hint = "set data.resize = [H, W]" if isinstance(ds, ImageFolder) else "use images of that size"
        raise _error(cfg, f"{section}.name", f"{spec['name']} takes images of shape {mcfg.input_size}, the data's "
                     f"are {shape}; {hint} or use a model made for this size")
    try:
        with torch.no_grad():
            out = model(x[:1].to(dev))
    except Exception as e:  # noqa: BLE001 - a user's model may raise anything; fail before any attack
        raise _error(cfg, section, f"the model fails on one image of the data, shape {(1, *shape)} in [0, 1]: "
                     f"{type(e).__name__}: {e}") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1:
        raise _error(cfg, section, f"expected scores of shape (1, K) for one image, got "
                     f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    k = int(out.shape[1])
    if isinstance(ds, ImageFolder) and k != len(ds.classes):
        raise _error(cfg, section, f"the model scores {k} classes, data.path has {len(ds.classes)} class folders "
                     "(labelled 0.. in sorted order); for a subset of a larger label set, save an .npz with your "
                     "labels (purify.user_data)")
    if int(y.max()) >= k:
        raise _error(cfg, section, f"the model scores {k} classes, the data has labels up to {int(y.max())}")


def images_sha256(x: torch.Tensor) -> str:
    """What a user's images are in cell keys: the bytes of the tensor evaluated."""
    return hashlib.sha256(x.numpy().tobytes()).hexdigest()


# ------------------------------------------------------------------------------------------------ text

def describe_model(spec: dict[str, Any]) -> str:
    """``resnet56 (pretrained=True)``, ``factory mynets:build, weights mynet.pt`` or ``ONNX mynet.onnx``."""
    if "factory" in spec:
        text = f"factory {spec['factory']}" + (f", weights {Path(spec['weights']).name}" if "weights" in spec else "")
    elif "onnx" in spec:
        text = f"ONNX {Path(spec['onnx']).name}"
    else:
        text = f"{spec['name']} (pretrained={spec['pretrained']})"
    text += f", normalized with mean {spec['mean']} / std {spec['std']}" if "mean" in spec else ""
    if "retrofit" in spec:
        r = spec["retrofit"]
        text += f", ReLUs retrofitted as {r['activation']}(" + ", ".join(
            f"{k}={v}" for k, v in r.items() if k != "activation") + ")"
    return text


def describe_data(data: dict[str, Any], shape: tuple[int, ...]) -> str:
    """``cifar10 test`` or ``my_images/ (3x224x224 images)``."""
    if "dataset" in data:
        return f"{data['dataset']} {data['split']}"
    resize = f", resized to {data['resize'][0]}x{data['resize'][1]}" if data.get("resize") else ""
    return f"{Path(data['path']).name} ({'x'.join(map(str, shape))} images{resize})"
