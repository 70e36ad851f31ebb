"""Model registry and factory (timm style): ``create_model(name, pretrained=True)``.

Each registered name has a :class:`ModelConfig` that travels with the model as
``model.pretrained_cfg``: architecture, input size, normalization, checkpoint file and its
sha256. The registry is a plain dict built once at import.

The ResNet-20/56 weights are the public CIFAR-10 checkpoints of Y. Idelbayev,
"Proper ResNet Implementation for CIFAR10/CIFAR100 in PyTorch"
(https://github.com/akamaster/pytorch_resnet_cifar10), BSD 2-Clause,
Copyright (c) 2018, Yerlan Idelbayev. The upstream README reports 8.27% / 6.61% test error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from purify._checks import check_choice
from purify.errors import DTypeError
from purify.models.loading import load_checkpoint, resolve_weights, upstream_file_name
from purify.models.normalize import Normalized
from purify.models.resnet_cifar import CifarResNet
from purify.models.small_cnn import PackagedConfig, load_packaged, packaged_config

__all__ = ["ModelConfig", "create_model", "list_models", "get_model_config"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_UPSTREAM = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"
_LICENSE = "BSD-2-Clause, Copyright (c) 2018, Yerlan Idelbayev (akamaster/pytorch_resnet_cifar10)"


@dataclass(frozen=True)
class ModelConfig:
    """What a registered model needs: architecture, preprocessing and its pretrained artifact.

    Attributes:
        name: registry name.
        depth, num_classes: :class:`~purify.models.CifarResNet` arguments.
        input_size: (C, H, W) of the training images.
        mean, std: normalization applied inside the model (ImageNet statistics for these checkpoints,
            as in their upstream training).
        dataset: the dataset the weights were trained on.
        weights_file: checkpoint path relative to the data directory.
        url: upstream download URL.
        sha256: checkpoint sha256 (its first 8 hex digits are in the upstream file name).
        top1: upstream-reported CIFAR-10 test top-1 accuracy in percent.
        license: licence of the weights.
    """

    name: str
    depth: int
    num_classes: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dataset: str
    weights_file: str
    url: str
    sha256: str
    top1: float
    license: str

    @property
    def upstream_file(self) -> str:
        """File name of the upstream checkpoint, used in the download cache."""
        return upstream_file_name(self.url)


def _resnet(depth: int, sha256: str, top1: float) -> ModelConfig:
    return ModelConfig(
        name=f"resnet{depth}", depth=depth, num_classes=10, input_size=(3, 32, 32),
        mean=IMAGENET_MEAN, std=IMAGENET_STD, dataset="cifar10",
        weights_file=f"weights/resnet{depth}_cifar10.th", url=f"{_UPSTREAM}resnet{depth}-{sha256[:8]}.th",
        sha256=sha256, top1=top1, license=_LICENSE,
    )


_REGISTRY: dict[str, ModelConfig] = {
    cfg.name: cfg for cfg in (
        _resnet(20, "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8", 91.73),
        _resnet(56, "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367", 93.39),
    )
}


# Models whose weights ship inside the package (purify/weights, made by purify.training): the
# safetensors file is sha256-checked against its json config on load.
_PACKAGED = ("small_cnn_cifar10",)


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted.

    Example:
        >>> list_models()
        ['resnet20', 'resnet56', 'small_cnn_cifar10']
    """
    return sorted((*_REGISTRY, *_PACKAGED))


def get_model_config(name: str) -> ModelConfig | PackagedConfig:
    """The :class:`ModelConfig` registered under ``name`` (a :class:`PackagedConfig` for shipped models).

    Raises:
        UnknownNameError: the message lists the registered names.

    Example:
        >>> get_model_config("resnet56").depth
        56
    """
    check_choice("get_model_config", name, name="model name", choices=list_models())
    return packaged_config(name) if name in _PACKAGED else _REGISTRY[name]


def create_model(name: str, *, pretrained: bool = False, weights_path: str | os.PathLike | None = None,
                 data_dir: str | os.PathLike | None = None, download: bool = False,
                 map_location: str | torch.device = "cpu") -> nn.Module:
    """Build a registered classifier that takes images in [0, 1], in eval mode.

    The result is a :class:`~purify.models.Normalized` wrapper around the network (so ``mean``/``std``
    are applied inside) with ``forward`` (logits) and ``features`` (penultimate activations), and
    the config as ``model.pretrained_cfg``.

    Args:
        name: one of :func:`list_models`.
        pretrained: load the registered checkpoint (sha256 checked, ``weights_only`` loading).
        weights_path: load this file instead of searching for it (implies ``pretrained``); its sha256
            must still match the registered one.
        data_dir: data directory holding ``weights/<name>_cifar10.th`` (see :func:`purify.data.resolve_data_dir`).
        download: fetch the upstream checkpoint into ``~/.cache/purify/weights`` when no local copy exists.
        map_location: ``torch.load``'s ``map_location``; the model itself is built on the CPU.

    Shape:
        x: (B, 3, 32, 32) floating in [0, 1]; output: logits (B, 10); ``features``: (B, 64) for the
        ResNets, (B, 128) for ``small_cnn_cifar10``.

    Raises:
        UnknownNameError, DataNotFoundError (no weights found), ChecksumError (sha256 mismatch),
        DTypeError / ShapeError (the checkpoint is not a fitting state dict).

    Example:
        >>> model = create_model("resnet20")
        >>> model(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 10])
        >>> model = create_model("resnet56", pretrained=True, data_dir="../shared/data")  # doctest: +SKIP
    """
    fn = "create_model"
    check_choice(fn, name, name="model name", choices=list_models())
    for arg, value in (("pretrained", pretrained), ("download", download)):
        if not isinstance(value, bool):
            raise DTypeError(f"{fn}: expected {arg} to be a bool, got {type(value).__name__}")
    if name in _PACKAGED:
        if weights_path is not None:
            raise DTypeError(f"{fn}: {name!r} loads its weights from the package; weights_path is for the ResNets")
        return load_packaged(name, pretrained=pretrained)
    cfg = get_model_config(name)
    net = CifarResNet(cfg.depth, num_classes=cfg.num_classes)
    if pretrained or weights_path is not None:
        path = resolve_weights(cfg, weights_path=weights_path, data_dir=data_dir, download=download)
        load_checkpoint(net, path, sha256=cfg.sha256, map_location=map_location)
    model = Normalized(net, mean=cfg.mean, std=cfg.std)
    model.pretrained_cfg = cfg
    return model.eval()
