"""LeNet-5 for MNIST (LeCun et al. 1998), in its common modern form: ReLU and max pooling.

Two 5x5 convolutions (6 and 16 channels; the first padded by 2 so a 28x28 digit plays the role of
the paper's 32x32 input), each followed by ReLU and 2x2 max pooling, then fully connected layers
400 -> 120 -> 84 -> 10. The paper's scaled tanh, trainable subsampling, sparse C3 connection
table and RBF output layer are replaced by what every current re-implementation uses (ReLU,
max pooling, dense C3, a linear output), so its ~61.7k parameters train with plain SGD.

Like :class:`~purify.models.CifarResNet` and :class:`~purify.models.SmallCNN`, the network takes
*normalized* images and has a ``features`` method (the 84 penultimate activations, the input of
the WNLL head); :func:`lenet5_mnist` wraps it in :class:`~purify.models.Normalized` with the MNIST
statistics, so callers pass images in [0, 1].

Example:
    >>> net = LeNet5()
    >>> net(torch.rand(2, 1, 28, 28)).shape, net.features(torch.rand(2, 1, 28, 28)).shape
    (torch.Size([2, 10]), torch.Size([2, 84]))
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from purify._checks import check_int
from purify.models.normalize import Normalized

__all__ = ["LeNet5", "MNIST_MEAN", "MNIST_STD", "lenet5_mnist"]

#: Pixel statistics of the MNIST training set (the usual published values).
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)


class LeNet5(nn.Module):
    """conv(6, 5x5, pad 2)-ReLU-maxpool, conv(16, 5x5)-ReLU-maxpool, FC 120-ReLU, FC 84-ReLU, FC num_classes.

    Args:
        num_classes: size of the logit vector.
        in_channels: 1 for MNIST.

    Shape:
        x: (B, in_channels, 28, 28), normalized; ``forward``: logits (B, num_classes);
        ``features``: (B, 84).
    Example:
        >>> LeNet5()(torch.zeros(3, 1, 28, 28)).shape
        torch.Size([3, 10])
    """

    feature_dim = 84

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        check_int("LeNet5", num_classes, name="num_classes", low=1)
        check_int("LeNet5", in_channels, name="in_channels", low=1)
        self.conv1 = nn.Conv2d(in_channels, 6, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.linear = nn.Linear(84, num_classes)
        self.pool = nn.MaxPool2d(2)
        self.num_classes = num_classes
        self.in_channels = in_channels

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations (after the second fully connected layer's ReLU), shape (B, 84)."""
        out = self.pool(torch.relu(self.conv1(x)))
        out = self.pool(torch.relu(self.conv2(out)))
        out = torch.relu(self.fc1(torch.flatten(out, 1)))
        return torch.relu(self.fc2(out))

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.features(x))

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, in_channels={self.in_channels}"


def lenet5_mnist(num_classes: int = 10) -> Normalized:
    """A fresh :class:`LeNet5` that takes MNIST images in [0, 1] (normalization inside).

    Shape:
        x: (B, 1, 28, 28) in [0, 1]; output: logits (B, num_classes); ``features``: (B, 84).
    Example:
        >>> lenet5_mnist()(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    return Normalized(LeNet5(num_classes), mean=MNIST_MEAN, std=MNIST_STD)
