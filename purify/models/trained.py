"""Classifiers trained by ``python -m purify.training.adversarial`` and shipped in ``purify/weights``.

An artifact of format ``"purify.trained_classifier"`` is ``<name>.safetensors`` (the network's
state dict) + ``<name>.json``: the architecture (``arch``: ``{"type": "CifarResNet", "depth": 20}``,
``{"type": "LeNet5"}``, one of the BReLU/GDA paper's networks, ``{"type": "PaperCNN",
"in_channels": 1, "image_size": [28, 28], "activation": "brelu", "t": 1.0}`` and ``"PaperResNet"``, or one of
the Deep Defense paper's, ``{"type": "PaperMLP" | "PaperLeNet" | "PaperConvNet", "in_channels": 1,
"image_size": [28, 28]}``),
the normalization, the classes, the recipe (e.g. FGSM-RS at eps 8/255), the learning curve, the
validation and test figures, the exact command and the sha256 of the weights, which
:func:`load_trained` checks before reading a tensor (:mod:`purify._artifacts`). :func:`build_network`
is the one place an architecture name becomes a module, for the trainer and the loader alike.

Example:
    >>> build_network({"type": "LeNet5"}).num_classes
    10
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from torch import nn

from purify._artifacts import SHIPPED_DIR, load_artifact, read_config, resolve_artifact
from purify._checks import check_choice
from purify.errors import DTypeError, ShapeError
from purify.models.lenet import LeNet5
from purify.models.normalize import Normalized
from purify.models.paper_nets import PaperCNN, PaperConvNet, PaperLeNet, PaperMLP, PaperResNet
from purify.models.resnet_cifar import CifarResNet

__all__ = ["ARTIFACT_FORMAT", "ARCHS", "TrainedConfig", "build_network", "trained_config", "load_trained"]

ARTIFACT_FORMAT = "purify.trained_classifier"
_HINT = "make it with python -m purify.training.adversarial (see the README's 'Robust reference models')"

#: ``arch["type"]`` -> builder of the bare network (normalized input) from the ``arch`` dict.
ARCHS: dict[str, Callable[[Mapping[str, Any]], nn.Module]] = {
    "CifarResNet": lambda a: CifarResNet(int(a["depth"]), num_classes=int(a.get("num_classes", 10))),
    "LeNet5": lambda a: LeNet5(num_classes=int(a.get("num_classes", 10)), in_channels=int(a.get("in_channels", 1))),
    # the BReLU/GDA paper's networks: the input size fixes their linear layer, so the record carries it
    "PaperCNN": lambda a: _paper_net(PaperCNN, a),
    "PaperResNet": lambda a: _paper_net(PaperResNet, a),
    # the Deep Defense paper's networks (ReLU only)
    "PaperMLP": lambda a: _dd_net(PaperMLP, a),
    "PaperLeNet": lambda a: _dd_net(PaperLeNet, a),
    "PaperConvNet": lambda a: _dd_net(PaperConvNet, a),
}


def _paper_net(cls: type[nn.Module], a: Mapping[str, Any]) -> nn.Module:
    return cls(in_channels=int(a["in_channels"]), image_size=tuple(int(s) for s in a["image_size"]),
               num_classes=int(a.get("num_classes", 10)), activation=str(a.get("activation", "relu")),
               t=float(a.get("t", 1.0)))


def _dd_net(cls: type[nn.Module], a: Mapping[str, Any]) -> nn.Module:
    return cls(in_channels=int(a["in_channels"]), image_size=tuple(int(s) for s in a["image_size"]),
               num_classes=int(a.get("num_classes", 10)))


def build_network(arch: Mapping[str, Any]) -> nn.Module:
    """The bare network an ``arch`` record describes (random weights).

    Raises:
        UnknownNameError (unknown ``type``; the message lists :data:`ARCHS`), DTypeError (a field missing).
    Example:
        >>> build_network({"type": "CifarResNet", "depth": 20}).depth
        20
    """
    fn = "build_network"
    if not isinstance(arch, Mapping):
        raise DTypeError(f"{fn}: expected arch to be a dict with a 'type', got {type(arch).__name__}")
    check_choice(fn, arch.get("type"), name="architecture", choices=tuple(ARCHS))
    try:
        return ARCHS[arch["type"]](arch)
    except (KeyError, TypeError, ValueError) as err:
        raise DTypeError(f"{fn}: arch {dict(arch)} lacks or mistypes a field ({type(err).__name__}: {err})") from err


@dataclass(frozen=True)
class TrainedConfig:
    """The json of a trained artifact, with the fields code written for the other configs reads.

    Attributes:
        name: artifact name (file stem in ``purify/weights``).
        arch: the :func:`build_network` record.
        input_size: (C, H, W) of the training images.
        mean, std: normalization applied inside the model.
        classes: class names by index.
        dataset: the dataset the weights were trained on.
        sha256: sha256 of the ``.safetensors`` file.
        test_accuracy: clean top-1 in percent on the test set the json names.
        raw: the whole json (recipe, eps, learning curve, robust accuracy, command, ...).
    """

    name: str
    arch: dict[str, Any]
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    dataset: str
    sha256: str
    test_accuracy: float
    raw: dict[str, Any]

    @property
    def top1(self) -> float:
        """Clean test top-1 in percent, under :class:`~purify.models.ModelConfig`'s name."""
        return self.test_accuracy


def _json_path(fn: str, name: str, weights_dir: str | Path | None) -> Path:
    folder = SHIPPED_DIR if weights_dir is None else Path(weights_dir)
    return resolve_artifact(folder / name, format=ARTIFACT_FORMAT, what="trained model", fn=fn, hint=_HINT)


def _parse(fn: str, name: str, path: Path, raw: dict[str, Any]) -> TrainedConfig:
    try:
        return TrainedConfig(
            name=name, arch=dict(raw["arch"]),
            input_size=tuple(int(v) for v in raw["input_size"]),  # type: ignore[arg-type]
            mean=tuple(float(v) for v in raw["mean"]), std=tuple(float(v) for v in raw["std"]),
            classes=tuple(str(c) for c in raw["classes"]), dataset=str(raw["dataset"]), sha256=str(raw["sha256"]),
            test_accuracy=float(raw["test"]["clean"]), raw=raw)
    except (KeyError, TypeError, ValueError) as err:
        raise DTypeError(f"{fn}: {path} lacks or mistypes a field ({type(err).__name__}: {err}); {_HINT}") from err


def trained_config(name: str, *, weights_dir: str | Path | None = None) -> TrainedConfig:
    """Read ``<weights_dir>/<name>.json`` (default: the shipped artifact); no tensor is read.

    Raises:
        DataNotFoundError, ArtifactError (another format), DTypeError (a field missing).
    Example:
        >>> trained_config("lenet5_mnist_at").dataset  # doctest: +SKIP
        'mnist'
    """
    fn = "trained_config"
    path = _json_path(fn, name, weights_dir)
    return _parse(fn, name, path, read_config(path, expected_format=ARTIFACT_FORMAT, fn=fn))


def load_trained(name: str, *, pretrained: bool = True, weights_dir: str | Path | None = None) -> Normalized:
    """A trained classifier taking images in [0, 1], in eval mode, its sha256 checked before loading.

    Args:
        name: artifact name, e.g. ``"lenet5_mnist_at"``.
        pretrained: load the weights (False: the same architecture, random weights).
        weights_dir: folder holding ``<name>.safetensors`` and ``<name>.json`` (default: the package's).

    Shape:
        x: (B, *input_size) in [0, 1]; output: logits (B, num_classes); ``features``: (B, D).
    Raises:
        DataNotFoundError, ChecksumError, ArtifactError, DTypeError, ShapeError.
    Example:
        >>> load_trained("lenet5_mnist_at")(torch.rand(2, 1, 28, 28)).shape  # doctest: +SKIP
        torch.Size([2, 10])
    """
    fn = "load_trained"
    path = _json_path(fn, name, weights_dir)
    if pretrained:
        state, raw = load_artifact(path, expected_format=ARTIFACT_FORMAT, fn=fn)     # sha256 checked first
    else:
        state, raw = None, read_config(path, expected_format=ARTIFACT_FORMAT, fn=fn)
    cfg = _parse(fn, name, path, raw)
    net = build_network(cfg.arch)
    if state is not None:
        expected = net.state_dict()
        if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in expected):
            raise ShapeError(f"{fn}: {path} does not fit {cfg.arch}; is the json from another run?")
        net.load_state_dict(state, strict=True)
    model = Normalized(net, mean=cfg.mean, std=cfg.std)
    model.pretrained_cfg = cfg
    return model.eval()
