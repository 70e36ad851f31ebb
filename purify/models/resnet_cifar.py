"""CIFAR ResNets (He et al. 2016, section 4.2) in the layout of the public pretrained checkpoints.

``depth = 6n + 2``: a 3x3 stem with 16 channels, three stages of ``n`` basic blocks with 16, 32
and 64 channels (the first block of stages 2 and 3 has stride 2), global average pooling and a
linear classifier. Shortcuts are "option A": identity, or, when a block halves the resolution
and doubles the width, ``x[:, :, ::2, ::2]`` zero-padded by ``planes // 4`` channels on each
side, so the shortcut has no parameters. Parameter and buffer names match the state dict of
the ResNet-20/56 checkpoints of ``akamaster/pytorch_resnet_cifar10`` (after dropping their
``module.`` prefix); see the data provenance notes.

The network expects normalized inputs; :class:`purify.models.Normalized` wraps it so that
callers pass images in [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from purify._checks import check_int
from purify.errors import RangeError

__all__ = ["BasicBlock", "CifarResNet"]


class _ShortcutA(nn.Module):
    """Parameter-free down-sampling shortcut: keep every second pixel, zero-pad the channels on both sides."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a post-activation residual connection (ResNet v1).

    Shape:
        x: (B, in_planes, H, W); output: (B, planes, H / stride, W / stride).

    Example:
        >>> BasicBlock(16, 32, stride=2)(torch.zeros(1, 16, 8, 8)).shape
        torch.Size([1, 32, 4, 4])
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            if stride != 2 or planes != 2 * in_planes:
                raise RangeError(
                    f"BasicBlock: option-A shortcut needs stride 2 and planes = 2 * in_planes, got stride {stride}, "
                    f"in_planes {in_planes}, planes {planes}"
                )
            self.shortcut: nn.Module = _ShortcutA(planes)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs, expecting already-normalized images.

    Args:
        depth: 6n + 2 with n >= 1 (20 and 56 have pretrained weights).
        num_classes: size of the linear head.

    Shape:
        x: (B, 3, H, W), normalized; ``forward`` returns logits (B, num_classes), ``features`` the
        pooled penultimate activations (B, 64).

    Example:
        >>> net = CifarResNet(20).eval()
        >>> net(torch.zeros(2, 3, 32, 32)).shape, net.features(torch.zeros(2, 3, 32, 32)).shape
        (torch.Size([2, 10]), torch.Size([2, 64]))
    """

    feature_dim = 64

    def __init__(self, depth: int, num_classes: int = 10) -> None:
        super().__init__()
        fn = "CifarResNet"
        check_int(fn, depth, name="depth", low=8)
        check_int(fn, num_classes, name="num_classes", low=1)
        if (depth - 2) % 6 != 0:
            raise RangeError(f"{fn}: expected depth = 6n + 2 (8, 14, 20, 32, 44, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        self.depth = depth
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, n, stride=1)
        self.layer2 = self._stage(16, 32, n, stride=2)
        self.layer3 = self._stage(32, 64, n, stride=2)
        self.linear = nn.Linear(64, num_classes)
        self._init_weights()

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, *, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations after global average pooling, shape (B, 64)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.features(x))

    def extra_repr(self) -> str:
        return f"depth={self.depth}, num_classes={self.num_classes}"
