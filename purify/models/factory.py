"""Model registry and factory (timm style): ``create_model(name, pretrained=True)``.

Each registered name has a :class:`ModelConfig` that travels with the model as
``model.pretrained_cfg``: architecture, input size, normalization, checkpoint file and its
sha256. The registry is a plain dict built once at import.

Your own classifiers join it with :func:`register_model` (a :class:`UserModel` record), so
``create_model``, the benchmark harness and ``purify-serve`` take them by name.

The ResNet-20/56 weights are the public CIFAR-10 checkpoints of Y. Idelbayev,
"Proper ResNet Implementation for CIFAR10/CIFAR100 in PyTorch"
(https://github.com/akamaster/pytorch_resnet_cifar10), BSD 2-Clause,
Copyright (c) 2018, Yerlan Idelbayev. The upstream README reports 8.27% / 6.61% test error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from purify._checks import check_choice
from purify.errors import DTypeError, ShapeError
from purify.models.loading import load_checkpoint, resolve_weights, upstream_file_name
from purify.models.normalize import Normalized
from purify.models.resnet_cifar import CifarResNet
from purify.models.small_cnn import PackagedConfig, load_packaged, packaged_config
from purify.models.trained import TrainedConfig, load_trained, trained_config

__all__ = ["ModelConfig", "UserModel", "create_model", "list_models", "get_model_config", "register_model",
           "unregister_model"]

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
# Classifiers made by python -m purify.training.adversarial (format "purify.trained_classifier"):
# LeNet-5 on MNIST (standard training; FGSM-RS and PGD-trained at eps 0.3), ResNet-20 FGSM-RS-trained
# on CIFAR-10 at eps 8/255 (the robust references); ResNet-56 fine-tuned end to end with the WNLL/TVM
# paper's alternating linear / WNLL recipe (its head: WNLLHead.load("resnet56_wnll_e2e_head")), and on
# each batch and its TVM-purified copy (the paper's "original + TVM data") or on TVM-purified images only
# ("TVM data"), and end to end with WNLL on those two data regimes (heads: "<name>_head"). The BReLU/GDA
# paper's MNIST and CIFAR-10 CNNs trained with Gaussian data augmentation (ReLU and bounded ReLU); the Deep
# Defense paper's MNIST MLP and LeNet and its CIFAR-10 ConvNet fine-tuned with its DeepFool-norm regularizer.
_TRAINED = ("cnn_cifar10_gda", "cnn_cifar10_gda_brelu", "cnn_mnist_gda", "cnn_mnist_gda_brelu", "convnet_cifar10_dd",
            "lenet5_mnist", "lenet5_mnist_at", "lenet5_mnist_fgsm_rs", "lenet_mnist_dd", "mlp_mnist_dd",
            "resnet20_cifar10_at", "resnet56_tvm_aug", "resnet56_tvm_data", "resnet56_wnll_e2e",
            "resnet56_wnll_e2e_tvm_aug", "resnet56_wnll_e2e_tvm_data")


@dataclass(frozen=True)
class UserModel:
    """A classifier added with :func:`register_model`; it travels as ``model.pretrained_cfg``.

    Attributes:
        name: registry name.
        factory: called with no arguments, returns the ``nn.Module`` with its weights loaded.
        classes: class names in logit order, or None.
        dataset: what it was trained on (free text), or None.
    """

    name: str
    factory: Callable[[], nn.Module]
    classes: tuple[str, ...] | None = None
    dataset: str | None = None

    def create(self, *, weights_path: str | os.PathLike | None = None,
               map_location: str | torch.device = "cpu") -> nn.Module:
        """``factory()`` in eval mode, checked to be an ``nn.Module``, with ``weights_path`` loaded strictly.

        Raises:
            DTypeError: the factory returned something else, or the file is not a state dict.
            ShapeError: the state dict does not fit the module.
        """
        fn = "create_model"
        model = self.factory()
        if not isinstance(model, nn.Module):
            raise DTypeError(f"{fn}: the factory of {self.name!r} returned {type(model).__name__}, "
                             "expected an nn.Module")
        if weights_path is not None:
            state = torch.load(weights_path, map_location=map_location, weights_only=True)
            if not isinstance(state, dict):
                raise DTypeError(f"{fn}: {weights_path} holds a {type(state).__name__}, expected a state dict "
                                 "(torch.save(model.state_dict(), path))")
            try:
                model.load_state_dict(state)
            except RuntimeError as err:
                raise ShapeError(f"{fn}: {weights_path} does not fit the model {self.name!r}: {err}") from None
        model.pretrained_cfg = self
        return model.eval()


_USER: dict[str, UserModel] = {}


def register_model(name: str, factory: Callable[[], nn.Module], *, classes: Sequence[str] | None = None,
                   dataset: str | None = None, overwrite: bool = False) -> UserModel:
    """Add your own classifier to the registry under ``name``.

    The module ``factory()`` returns must take images ``(B, C, H, W)`` in [0, 1] (put any
    normalization inside it, as :class:`~purify.models.Normalized` does) and return logits
    ``(B, K)``; a ``features(x) -> (B, D)`` method is needed only for the WNLL head.

    Args:
        name: letters, digits, ``-``, ``_`` or ``.``; a built-in name cannot be taken.
        factory: builds the module, weights included (``create_model(name, weights_path=...)``
            can also load a state dict into it).
        classes: class names in logit order (the server's top-k labels use them).
        dataset: what it was trained on, for the record.
        overwrite: replace an earlier :func:`register_model` of the same name.

    Raises:
        DTypeError: a bad name, factory or classes.
        ValueError: ``name`` is taken (a built-in, or registered before without ``overwrite``).

    Example:
        >>> from torch import nn
        >>> def tiny():
        ...     return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> _ = register_model("tiny", tiny, classes=["cat", "dog"])
        >>> create_model("tiny")(torch.rand(5, 3, 8, 8)).shape
        torch.Size([5, 2])
        >>> unregister_model("tiny")
    """
    fn = "register_model"
    if not isinstance(name, str) or not name or not all(ch.isalnum() or ch in "-_." for ch in name):
        raise DTypeError(f"{fn}: expected a name of letters, digits, '-', '_' or '.', got {name!r}")
    if not callable(factory):
        raise DTypeError(f"{fn}: expected factory to be a callable returning an nn.Module, got "
                         f"{type(factory).__name__}")
    if classes is not None:
        if isinstance(classes, str) or not all(isinstance(c, str) for c in classes):
            raise DTypeError(f"{fn}: expected classes to be a sequence of class-name strings, got {classes!r}")
        classes = tuple(classes)
    if name in _REGISTRY or name in _PACKAGED or name in _TRAINED:
        raise ValueError(f"{fn}: {name!r} is a built-in model; register yours under another name")
    if name in _USER and not overwrite:
        raise ValueError(f"{fn}: {name!r} is already registered; pass overwrite=True to replace it")
    record = _USER[name] = UserModel(name, factory, classes, dataset)
    return record


def unregister_model(name: str) -> None:
    """Remove a model added with :func:`register_model` (built-in names cannot be removed)."""
    check_choice("unregister_model", name, name="registered model name", choices=sorted(_USER))
    del _USER[name]


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted.

    Example:
        >>> list_models()
        ['cnn_cifar10_gda', 'cnn_cifar10_gda_brelu', 'cnn_mnist_gda', 'cnn_mnist_gda_brelu', 'convnet_cifar10_dd',
         'lenet5_mnist', 'lenet5_mnist_at', 'lenet5_mnist_fgsm_rs', 'lenet_mnist_dd', 'mlp_mnist_dd', 'resnet20',
         'resnet20_cifar10_at', 'resnet56', 'resnet56_tvm_aug', 'resnet56_tvm_data', 'resnet56_wnll_e2e',
         'resnet56_wnll_e2e_tvm_aug', 'resnet56_wnll_e2e_tvm_data', 'small_cnn_cifar10']
    """
    return sorted((*_REGISTRY, *_PACKAGED, *_TRAINED, *_USER))


def get_model_config(name: str) -> ModelConfig | PackagedConfig | TrainedConfig | UserModel:
    """The :class:`ModelConfig` registered under ``name`` (:class:`PackagedConfig` for shipped models,
    :class:`~purify.models.trained.TrainedConfig` for the robust references, :class:`UserModel` for
    :func:`register_model` ones).

    Raises:
        UnknownNameError: the message lists the registered names.

    Example:
        >>> get_model_config("resnet56").depth
        56
    """
    check_choice("get_model_config", name, name="model name", choices=list_models())
    if name in _USER:
        return _USER[name]
    if name in _TRAINED:
        return trained_config(name)
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
        pretrained: load the registered checkpoint (sha256 checked, ``weights_only`` loading). A
            :func:`register_model` factory brings its own weights; ``pretrained`` changes nothing there.
        weights_path: load this file instead of searching for it (implies ``pretrained``); its sha256
            must still match the registered one. For a :func:`register_model` model: a state dict
            (``torch.save(model.state_dict(), path)``) loaded strictly into what the factory built.
        data_dir: data directory holding ``weights/<name>_cifar10.th`` (see :func:`purify.data.resolve_data_dir`).
        download: fetch the upstream checkpoint into ``~/.cache/purify/weights`` when no local copy exists.
        map_location: ``torch.load``'s ``map_location``; the model itself is built on the CPU.

    Shape:
        x: (B, 3, 32, 32) floating in [0, 1] ((B, 1, 28, 28) for ``lenet5_mnist_at``); output: logits
        (B, 10); ``features``: (B, 84) for ``lenet5_mnist_at``, (B, 64) for the
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
    if name in _USER:
        return _USER[name].create(weights_path=weights_path, map_location=map_location)
    if name in _PACKAGED:
        if weights_path is not None:
            raise DTypeError(f"{fn}: {name!r} loads its weights from the package; weights_path is for the ResNets")
        return load_packaged(name, pretrained=pretrained)
    if name in _TRAINED:
        if weights_path is not None:
            raise DTypeError(f"{fn}: {name!r} loads its weights from the package; weights_path is for the ResNets")
        return load_trained(name, pretrained=pretrained)
    cfg = get_model_config(name)
    net = CifarResNet(cfg.depth, num_classes=cfg.num_classes)
    if pretrained or weights_path is not None:
        path = resolve_weights(cfg, weights_path=weights_path, data_dir=data_dir, download=download)
        load_checkpoint(net, path, sha256=cfg.sha256, map_location=map_location)
    model = Normalized(net, mean=cfg.mean, std=cfg.std)
    model.pretrained_cfg = cfg
    return model.eval()
