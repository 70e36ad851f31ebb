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

The Deep Defense paper's MNIST and CIFAR-10 networks (Yan, Guo & Zhang 2018, supplement Table 4),
layer for layer, ReLU only, no dropout or batch normalization:

* :class:`PaperMLP` — FC-500, ReLU, FC-150, ReLU, FC-10 (469,160 parameters on MNIST).
* :class:`PaperLeNet` — Caffe's / MatConvNet's LeNet: Conv-5-20, MaxPool-2, Conv-5-50, MaxPool-2,
  FC-500, ReLU, FC-10; no activation after the convolutions (as in the table and the authors' code);
  ``"valid"`` convolutions, 28x28 -> 24 -> 12 -> 8 -> 4 (800 features into FC-500; 431,080 parameters).
  Not :class:`~purify.models.lenet.LeNet5` (6 / 16 channels, three FC layers, ReLU everywhere).
* :class:`PaperConvNet` — CIFAR-10: Conv-5-32, MaxPool-2, ReLU, Conv-5-32, ReLU, AvgPool-2,
  Conv-5-64, ReLU, AvgPool-2, Conv-4-64, ReLU, Conv-1-10. The table gives no padding; the 5x5
  convolutions are padded by 2 ("same", as in the authors' code and Caffe's cifar10_quick), the 4x4 and
  1x1 ones not, so 32x32 -> 32 -> 16 -> 16 -> 8 -> 8 -> 4 -> 1x1 and Conv-1-10 reads a 64-vector
  (145,578 parameters). Pooling is 2x2 with stride 2, max pooling before the first ReLU as listed.

They too take pixels in [0, 1] as they are (``pixel_input = True``; the authors subtract the
training mean image, a shift the first layer's bias can absorb) and have ``features`` (the input of
the last layer, 150, 500 and 64 values).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from purify._checks import check_choice, check_float, check_int
from purify.activations import make_activation
from purify.errors import DTypeError, ShapeError

__all__ = ["PAPER_ACTIVATIONS", "PaperCNN", "PaperResNet", "PaperMLP", "PaperLeNet", "PaperConvNet"]

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


# ----------------------------------------------------------------------------- Deep Defense (Yan et al. 2018)

class _DeepDefenseNet(nn.Module):
    """What the three Deep Defense networks share: argument checks and ``pixel_input``.

    Layer names follow the authors' code (``fc1``..., ``conv1``...), so their state dicts map one to one; each ReLU
    is its own ``nn.ReLU`` module (``act1``...), so hooks and :func:`purify.activations.retrofit` find them.
    """

    pixel_input = True      # [0, 1] pixels as they are: the trainer wraps them with mean 0 and std 1

    def __init__(self, fn: str, *, in_channels: int, image_size: int | Sequence[int], num_classes: int) -> None:
        super().__init__()
        check_int(fn, in_channels, name="in_channels", low=1)
        check_int(fn, num_classes, name="num_classes", low=1)
        self.in_channels, self.image_size, self.num_classes = in_channels, _image_size(fn, image_size), num_classes

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, image_size={self.image_size}, num_classes={self.num_classes}"


class PaperMLP(_DeepDefenseNet):
    """Deep Defense's MNIST MLP: FC-500, ReLU, FC-150, ReLU, FC-``num_classes`` on the flattened image.

    Args:
        in_channels, image_size: of the inputs (MNIST: 1, 28); they fix FC-500's input size.
        num_classes: size of the logit vector.

    Shape:
        x: (B, in_channels, *image_size); ``forward``: logits (B, num_classes); ``features``: (B, 150).
    Raises:
        RangeError, DTypeError.
    Example:
        >>> PaperMLP()(torch.zeros(3, 1, 28, 28)).shape
        torch.Size([3, 10])
    """

    feature_dim = 150

    def __init__(self, *, in_channels: int = 1, image_size: int | Sequence[int] = 28, num_classes: int = 10) -> None:
        super().__init__("PaperMLP", in_channels=in_channels, image_size=image_size, num_classes=num_classes)
        h, w = self.image_size
        self.fc1 = nn.Linear(in_channels * h * w, 500)
        self.fc2 = nn.Linear(500, 150)
        self.fc3 = nn.Linear(150, num_classes)
        self.act1, self.act2 = nn.ReLU(), nn.ReLU()

    def features(self, x: Tensor) -> Tensor:
        """The second ReLU's output, shape (B, 150)."""
        return self.act2(self.fc2(self.act1(self.fc1(torch.flatten(x, 1)))))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc3(self.features(x))


class PaperLeNet(_DeepDefenseNet):
    """Deep Defense's LeNet (Caffe's): Conv-5-20, MaxPool-2, Conv-5-50, MaxPool-2, FC-500, ReLU, FC-``num_classes``.

    No activation between the convolutions and the pooling (the table's and the authors' network).

    Args:
        in_channels, image_size: of the inputs (MNIST: 1, 28); at least 16x16, and they fix FC-500's input size.
        num_classes: size of the logit vector.

    Shape:
        x: (B, in_channels, *image_size); ``forward``: logits (B, num_classes); ``features``: (B, 500).
    Raises:
        ShapeError (image_size too small), RangeError, DTypeError.
    Example:
        >>> PaperLeNet()(torch.zeros(3, 1, 28, 28)).shape
        torch.Size([3, 10])
    """

    feature_dim = 500

    def __init__(self, *, in_channels: int = 1, image_size: int | Sequence[int] = 28, num_classes: int = 10) -> None:
        super().__init__("PaperLeNet", in_channels=in_channels, image_size=image_size, num_classes=num_classes)
        h, w = (_valid(_valid(s, 5, 1) // 2, 5, 1) // 2 for s in self.image_size)
        if h < 1 or w < 1:
            raise ShapeError(f"PaperLeNet: image_size {self.image_size} leaves no pixel after the second pooling; "
                             "expected at least 16x16 inputs (MNIST 28x28)")
        self.conv1 = nn.Conv2d(in_channels, 20, kernel_size=5)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.fc1 = nn.Linear(50 * h * w, 500)
        self.fc2 = nn.Linear(500, num_classes)
        self.act1 = nn.ReLU()

    def features(self, x: Tensor) -> Tensor:
        """FC-500's ReLU output, shape (B, 500)."""
        out = F.max_pool2d(self.conv2(F.max_pool2d(self.conv1(x), 2)), 2)
        return self.act1(self.fc1(torch.flatten(out, 1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.features(x))


class PaperConvNet(_DeepDefenseNet):
    """Deep Defense's CIFAR-10 ConvNet: three 5x5 convolutions (padding 2) with pooling, Conv-4-64, Conv-1-10.

    ``conv1 → maxpool 2 → relu → conv2 → relu → avgpool 2 → conv3 → relu → avgpool 2 → conv4 (4x4) → relu
    → conv5 (1x1)``. Conv-4-64 must see a 4x4 map, so ``H // 8 == W // 8 == 4`` (sizes 32 to 39;
    the pooling drops an odd row or column).

    Args:
        in_channels: 3 (CIFAR-10). image_size: H = W or (H, W), each in 32..39.
        num_classes: channels of Conv-1 (the logits).

    Shape:
        x: (B, in_channels, *image_size); ``forward``: logits (B, num_classes); ``features``: (B, 64).
    Raises:
        ShapeError (image_size not in 32..39), RangeError, DTypeError.
    Example:
        >>> PaperConvNet()(torch.zeros(3, 3, 32, 32)).shape
        torch.Size([3, 10])
    """

    feature_dim = 64

    def __init__(self, *, in_channels: int = 3, image_size: int | Sequence[int] = 32, num_classes: int = 10) -> None:
        super().__init__("PaperConvNet", in_channels=in_channels, image_size=image_size, num_classes=num_classes)
        if any(s // 8 != 4 for s in self.image_size):
            raise ShapeError(f"PaperConvNet: image_size {self.image_size} gives a "
                             f"{tuple(s // 8 for s in self.image_size)} map before Conv-4-64; expected H and W in "
                             "32..39 (CIFAR-10 32x32), so that it reads 4x4 and Conv-1-10 a 1x1 map")
        self.conv1 = nn.Conv2d(in_channels, 32, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(32, 32, kernel_size=5, padding=2)
        self.conv3 = nn.Conv2d(32, 64, kernel_size=5, padding=2)
        self.conv4 = nn.Conv2d(64, 64, kernel_size=4)
        self.conv5 = nn.Conv2d(64, num_classes, kernel_size=1)
        self.act1, self.act2, self.act3, self.act4 = nn.ReLU(), nn.ReLU(), nn.ReLU(), nn.ReLU()

    def features(self, x: Tensor) -> Tensor:
        """Conv-4-64's ReLU output (a 1x1 map), flattened: (B, 64)."""
        out = self.act1(F.max_pool2d(self.conv1(x), 2))
        out = F.avg_pool2d(self.act2(self.conv2(out)), 2)
        out = F.avg_pool2d(self.act3(self.conv3(out)), 2)
        return torch.flatten(self.act4(self.conv4(out)), 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.conv5(self.features(x)[:, :, None, None]), 1)
