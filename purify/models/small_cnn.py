"""A small CIFAR-10 CNN whose weights ship inside the package (``purify/weights``).

It is the classifier of ``purify-serve``'s built-in default: cheap enough that TVM, not the
network, dominates the cost of a request, and small enough (~95k parameters, under 400 kB) to
commit. The weights are made by ``python -m purify.training.classifier``; the artifact is a
``.safetensors`` file (tensors only, so loading runs no code) next to a ``.json`` config that
holds the architecture, the normalization, the training command, the test accuracy and the
sha256 of the weights, which :func:`load_packaged` checks before reading them. Resolution,
checksum and loading are :mod:`purify._artifacts`' (format ``"purify.small_cnn"``; the shipped
json predates the ``"format"`` field and is recognized by its ``arch.type``).

Example:
    >>> net = SmallCNN()
    >>> net(torch.rand(2, 3, 32, 32)).shape, net.features(torch.rand(2, 3, 32, 32)).shape
    (torch.Size([2, 10]), torch.Size([2, 128]))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch  # noqa: F401 - the doctests use it
from torch import Tensor, nn

from purify._artifacts import SHIPPED_DIR, load_artifact, read_config, resolve_artifact
from purify.errors import DTypeError, ShapeError
from purify.models.normalize import Normalized

__all__ = ["SmallCNN", "PackagedConfig", "WEIGHTS_DIR", "ARTIFACT_FORMAT", "load_packaged", "packaged_config"]

#: Folder of the shipped artifacts (``<name>.safetensors`` + ``<name>.json``): :data:`purify._artifacts.SHIPPED_DIR`.
WEIGHTS_DIR = SHIPPED_DIR
#: The artifacts' format (see :data:`purify._artifacts.LEGACY_FORMATS` for the shipped json without the field).
ARTIFACT_FORMAT = "purify.small_cnn"
_HINT = "make it with python -m purify.training.classifier"


def _json_path(fn: str, name: str, weights_dir: str | Path | None) -> Path:
    """``<weights_dir>/<name>.json`` (default folder: the shipped artifacts; a file in the working
    directory never shadows a built-in model)."""
    folder = SHIPPED_DIR if weights_dir is None else Path(weights_dir)
    return resolve_artifact(folder / name, format=ARTIFACT_FORMAT, what="packaged model", fn=fn, hint=_HINT)


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU-maxpool stages, global average pooling, one linear layer.

    Takes *normalized* images; :func:`load_packaged` wraps it in
    :class:`~purify.models.Normalized` so the served model takes [0, 1] images.

    Args:
        widths: output channels of the three stages.
        num_classes: size of the logit vector.

    Shape:
        x: (B, 3, H, W) with H, W divisible by 8; output: logits (B, num_classes);
        ``features``: (B, widths[-1]).
    Example:
        >>> SmallCNN(widths=(8, 16, 32))(torch.rand(3, 3, 32, 32)).shape
        torch.Size([3, 10])
    """

    def __init__(self, widths: Sequence[int] = (32, 64, 128), num_classes: int = 10) -> None:
        super().__init__()
        widths = tuple(widths)
        if len(widths) != 3 or not all(isinstance(w, int) and w > 0 for w in widths):
            raise DTypeError(f"SmallCNN: expected widths to be three positive ints, got {widths!r}")
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in widths:
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.linear = nn.Linear(c_in, num_classes)
        self.widths = widths
        self.num_classes = num_classes

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations: the globally pooled last stage."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.features(x))


@dataclass(frozen=True)
class PackagedConfig:
    """The json config of a shipped artifact (the fields :func:`load_packaged` relies on).

    Attributes:
        name: artifact name (file stem in ``purify/weights``).
        widths, num_classes: :class:`SmallCNN` arguments.
        input_size: (C, H, W) of the training images.
        mean, std: normalization applied inside the model.
        classes: class names by index.
        sha256: sha256 of the ``.safetensors`` file.
        test_accuracy: top-1 in percent on the CIFAR-10 test set, undefended.
        dataset: the dataset the weights were trained on.
        raw: the whole json (training command, epochs, defended accuracy, ...).

    ``name``, ``input_size``, ``dataset`` and ``top1`` mean what they mean on
    :class:`~purify.models.ModelConfig`, so code written for the ResNets' configs reads these too.
    """

    name: str
    widths: tuple[int, ...]
    num_classes: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    sha256: str
    test_accuracy: float
    dataset: str
    raw: dict[str, Any]

    @property
    def top1(self) -> float:
        """Test top-1 in percent (``test_accuracy``), under ModelConfig's name."""
        return self.test_accuracy


def packaged_config(name: str, *, weights_dir: str | Path | None = None) -> PackagedConfig:
    """Read ``<weights_dir>/<name>.json`` (default: the shipped artifact ``name`` in ``purify/weights``).

    Raises:
        DataNotFoundError (no such artifact), ArtifactError (not a small-CNN artifact),
        DTypeError (a field is missing or mistyped).
    Example:
        >>> packaged_config("small_cnn_cifar10").widths  # doctest: +SKIP
        (32, 64, 128)
    """
    fn = "packaged_config"
    path = _json_path(fn, name, weights_dir)
    raw = read_config(path, expected_format=ARTIFACT_FORMAT, fn=fn)
    return _parse_config(fn, name, path, raw)


def _parse_config(fn: str, name: str, path: Path, raw: dict[str, Any]) -> PackagedConfig:
    try:
        arch = raw["arch"]
        return PackagedConfig(
            name=name, widths=tuple(int(w) for w in arch["widths"]), num_classes=int(arch["num_classes"]),
            input_size=tuple(int(v) for v in raw["input_size"]),  # type: ignore[arg-type]
            mean=tuple(float(v) for v in raw["mean"]), std=tuple(float(v) for v in raw["std"]),
            classes=tuple(str(c) for c in raw["classes"]), sha256=str(raw["sha256"]),
            test_accuracy=float(raw["test_accuracy"]), dataset=str(raw["dataset"]), raw=raw,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise DTypeError(f"{fn}: {path} lacks or mistypes a field ({type(err).__name__}: {err}); "
                         "re-create it with python -m purify.training.classifier") from err


def load_packaged(name: str, *, pretrained: bool = True, weights_dir: str | Path | None = None) -> Normalized:
    """Build a shipped classifier taking [0, 1] images, in eval mode, its sha256 checked.

    Args:
        name: artifact name, e.g. ``"small_cnn_cifar10"``.
        pretrained: load the shipped weights (False: random initialization, same architecture).
        weights_dir: folder holding ``<name>.safetensors`` and ``<name>.json`` (default: the package's).

    Shape:
        x: (B, 3, 32, 32) in [0, 1]; output: logits (B, 10); ``features``: (B, 128).
    Raises:
        DataNotFoundError, ChecksumError (the weights do not match the config's sha256), ArtifactError,
        ShapeError.
    Example:
        >>> model = load_packaged("small_cnn_cifar10")  # doctest: +SKIP
        >>> model(torch.rand(2, 3, 32, 32)).shape  # doctest: +SKIP
        torch.Size([2, 10])
    """
    fn = "load_packaged"
    path = _json_path(fn, name, weights_dir)
    if pretrained:
        state, raw = load_artifact(path, expected_format=ARTIFACT_FORMAT, fn=fn)   # sha256 checked first
    else:
        state, raw = None, read_config(path, expected_format=ARTIFACT_FORMAT, fn=fn)
    cfg = _parse_config(fn, name, path, raw)
    net = SmallCNN(cfg.widths, cfg.num_classes)
    if state is not None:
        expected = net.state_dict()
        if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in expected):
            raise ShapeError(f"{fn}: {path} does not fit SmallCNN{cfg.widths}; is the json from another run?")
        net.load_state_dict(state, strict=True)
    model = Normalized(net, mean=cfg.mean, std=cfg.std)
    model.pretrained_cfg = cfg
    return model.eval()
