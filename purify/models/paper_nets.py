"""The CNN and the ResNet of Zantedeschi, Nicolae & Rawat (2017), "Efficient Defenses Against Adversarial Attacks".

The paper (section 4.1) gives the layers only; the rest is cleverhans' basic CNN, whose layer
list it quotes:

* :class:`PaperCNN` — Conv2D(64, 8x8) – Conv2D(128, 6x6) – Conv2D(128, 5x5) – Softmax(10):
  stride 2 with TensorFlow's ``"same"`` padding, stride 2 ``"valid"``, stride 1 ``"valid"``, each
  followed by the activation, then flatten and a linear layer (the softmax is in the loss).
  28x28 -> 14 -> 5 -> 1 (128 features); 32x32 -> 16 -> 6 -> 2 (512 features).
* :class:`PaperResNet` — Conv2D(64, 8x8) – Conv2D(128, 6x6) – Conv2D(128, 1x1) – Conv2D(128, 1x1) –
  MaxPooling(3x3) – Softmax(10) "with an identity short-cut between layer 2 and 6". The identity
  map fits only around the two 1x1 convolutions (the pooling changes the size), so the output of
  the 6x6 layer is added to the second 1x1 convolution's and the activation follows the sum, as
  in a ResNet v1 block; the pooling is Keras' ``MaxPooling2D((3, 3))`` (stride 3, ``"valid"``).
  28x28 -> 14 -> 5 -> 5 -> 1 (128 features); 32x32 -> 16 -> 6 -> 6 -> 2 (512 features). The
  first two layers are the CNN's.

``activation`` is ``"relu"`` or ``"brelu"``, the bounded ReLU ``min(max(z, 0), t)`` of
:mod:`purify.activations` with the paper's ``t = 1`` by default, after every convolution. The
paper feeds pixels in [0, 1] (section 4.1) and sets ``t`` "with respect to the range of the
inputs", so these networks say ``pixel_input = True`` and the trainer wraps them in
:class:`~purify.models.Normalized` with mean 0 and std 1 (``python -m purify.training.adversarial``). No batch normalization (the paper has none),
PyTorch's default initialization.

Like the library's other networks they have ``features`` (the flattened input of the linear
layer), and :func:`purify.models.trained.build_network` builds them from an architecture record
(``{"type": "PaperCNN", "in_channels": 1, "image_size": [28, 28], "activation": "brelu", "t": 1.0}``).

Example:
    >>> net = PaperCNN(in_channels=1, image_size=28, activation="brelu")
    >>> net(torch.rand(2, 1, 28, 28)).shape, net.features(torch.rand(2, 1, 28, 28)).shape
    (torch.Size([2, 10]), torch.Size([2, 128]))
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from purify._checks import check_choice, check_float, check_int
from purify.activations import make_activation
from purify.errors import DTypeError, ShapeError

__all__ = ["PAPER_ACTIVATIONS", "PaperCNN", "PaperResNet"]

#: ``activation`` names of the paper's networks: ReLU, or the bounded ReLU ("BRELU").
PAPER_ACTIVATIONS = ("relu", "brelu")


def _image_size(fn: str, image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, bool):
        raise DTypeError(f"{fn}: expected image_size to be an int or (H, W), got {image_size!r}")
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) for s in size):
        raise DTypeError(f"{fn}: expected image_size to be an int or (H, W), got {image_size!r}")
    return size  # type: ignore[return-value]


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's ``"same"`` padding (before, after): output ``ceil(size / stride)``, the odd pixel after."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _valid(size: int, kernel: int, stride: int) -> int:
    return (size - kernel) // stride + 1


class _PaperStem(nn.Module):
    """The layers both networks share: Conv2D(64, 8x8, stride 2, same) and Conv2D(128, 6x6, stride 2, valid)."""

    #: The network takes pixels in [0, 1] as they are (the paper's input; the bounded ReLU's t is set for it):
    #: a trainer wraps it in Normalized with mean 0 and std 1, not with the dataset's statistics.
    pixel_input = True

    def __init__(self, fn: str, *, in_channels: int, image_size: int | Sequence[int], num_classes: int,
                 activation: str, t: float) -> None:
        super().__init__()
        check_int(fn, in_channels, name="in_channels", low=1)
        check_int(fn, num_classes, name="num_classes", low=1)
        check_choice(fn, activation, name="activation", choices=PAPER_ACTIVATIONS)
        check_float(fn, t, name="t", low=0.0, low_inclusive=False)
        h, w = _image_size(fn, image_size)
        self.in_channels, self.image_size, self.num_classes = in_channels, (h, w), num_classes
        self.activation, self.t = activation, float(t)
        # "same" padding is asymmetric for odd sizes (the extra pixel goes after, as in TensorFlow),
        # which nn.Conv2d's symmetric padding cannot express: F.pad with these amounts does.
        (top, bottom), (left, right) = _same_pad(h, 8, 2), _same_pad(w, 8, 2)
        self.pad1 = (left, right, top, bottom)
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=8, stride=2)
        self.conv2 = nn.Conv2d(64, 128, kernel_size=6, stride=2)
        self.act1, self.act2 = self._act(), self._act()
        self.stem_size = (_valid(-(-h // 2), 6, 2), _valid(-(-w // 2), 6, 2))

    def _act(self) -> nn.Module:
        """A fresh activation module per layer (so each can be hooked); ``nn.ReLU`` so ``retrofit`` finds it."""
        return nn.ReLU() if self.activation == "relu" else make_activation("bounded_relu", t=self.t)

    def stem(self, x: Tensor) -> Tensor:
        return self.act2(self.conv2(self.act1(self.conv1(F.pad(x, self.pad1)))))

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.features(x))

    def extra_repr(self) -> str:
        t = f", t={self.t:g}" if self.activation == "brelu" else ""
        return (f"in_channels={self.in_channels}, image_size={self.image_size}, num_classes={self.num_classes}, "
                f"activation={self.activation!r}{t}")


class PaperCNN(_PaperStem):
    """The paper's CNN (cleverhans' basic CNN): three convolutions, each with ``activation``, then a linear layer.

    Args:
        in_channels: 1 (MNIST) or 3 (CIFAR-10).
        image_size: H = W, or (H, W), of the inputs; at least 27 (the 5x5 layer needs a 5x5 input).
        num_classes: size of the logit vector.
        activation: ``"relu"`` or ``"brelu"``.
        t: the bounded ReLU's ceiling (the paper's 1; unused by ``"relu"``).

    Shape:
        x: (B, in_channels, *image_size); ``forward``: logits (B, num_classes); ``features``: (B, feature_dim),
        ``feature_dim`` 128 at 28x28 and 512 at 32x32.
    Raises:
        ShapeError (image_size too small), RangeError, DTypeError, UnknownNameError.
    Example:
        >>> PaperCNN(in_channels=3, image_size=32)(torch.zeros(3, 3, 32, 32)).shape
        torch.Size([3, 10])
    """

    def __init__(self, *, in_channels: int = 1, image_size: int | Sequence[int] = 28, num_classes: int = 10,
                 activation: str = "relu", t: float = 1.0) -> None:
        super().__init__("PaperCNN", in_channels=in_channels, image_size=image_size, num_classes=num_classes,
                         activation=activation, t=t)
        h, w = (_valid(s, 5, 1) for s in self.stem_size)
        if h < 1 or w < 1:
            raise ShapeError(f"PaperCNN: image_size {self.image_size} leaves {self.stem_size} pixels for the 5x5 "
                             "layer; expected at least 27x27 inputs (MNIST 28x28, CIFAR-10 32x32)")
        self.conv3 = nn.Conv2d(128, 128, kernel_size=5)
        self.act3 = self._act()
        self.feature_dim = 128 * h * w
        self.linear = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """The flattened output of the third convolution's activation, shape (B, feature_dim)."""
        return torch.flatten(self.act3(self.conv3(self.stem(x))), 1)


class PaperResNet(_PaperStem):
    """The paper's ResNet: the CNN's first two layers, two 1x1 convolutions around an identity shortcut, 3x3 max pooling.

    ``h = act(conv4(act(conv3(s))) + s)`` with ``s`` the 6x6 layer's output, then
    ``MaxPool2d(3)`` (stride 3), flatten and a linear layer.

    Args:
        in_channels, image_size, num_classes, activation, t: as :class:`PaperCNN`; image_size at least 19.

    Shape:
        x: (B, in_channels, *image_size); ``forward``: logits (B, num_classes); ``features``: (B, feature_dim),
        ``feature_dim`` 128 at 28x28 and 512 at 32x32.
    Raises:
        ShapeError (image_size too small), RangeError, DTypeError, UnknownNameError.
    Example:
        >>> PaperResNet(in_channels=1, image_size=28, activation="brelu").features(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 128])
    """

    def __init__(self, *, in_channels: int = 1, image_size: int | Sequence[int] = 28, num_classes: int = 10,
                 activation: str = "relu", t: float = 1.0) -> None:
        super().__init__("PaperResNet", in_channels=in_channels, image_size=image_size, num_classes=num_classes,
                         activation=activation, t=t)
        h, w = (_valid(s, 3, 3) for s in self.stem_size)
        if h < 1 or w < 1:
            raise ShapeError(f"PaperResNet: image_size {self.image_size} leaves {self.stem_size} pixels for the "
                             "3x3 pooling; expected at least 19x19 inputs (MNIST 28x28, CIFAR-10 32x32)")
        self.conv3 = nn.Conv2d(128, 128, kernel_size=1)
        self.conv4 = nn.Conv2d(128, 128, kernel_size=1)
        self.act3, self.act4 = self._act(), self._act()
        self.pool = nn.MaxPool2d(3)                 # Keras' MaxPooling2D((3, 3)): stride = pool size
        self.feature_dim = 128 * h * w
        self.linear = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """The flattened max-pooled output of the residual block, shape (B, feature_dim)."""
        s = self.stem(x)
        h = self.act4(self.conv4(self.act3(self.conv3(s))) + s)     # identity shortcut, activation after the sum
        return torch.flatten(self.pool(h), 1)
