"""Tiny fixed-weight models for the attack tests: a linear classifier and a small conv net."""

from __future__ import annotations

import pytest
import torch
from torch import nn

SHAPE = (3, 5, 6)  # C, H, W: odd, non-square


def make_linear(k: int = 10, *, shape=SHAPE, scale: float = 0.3, seed: int = 0,
                dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """``nn.Sequential(Flatten, Linear(C*H*W, k))`` with weights drawn from a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    d = shape[0] * shape[1] * shape[2]
    lin = nn.Linear(d, k)
    with torch.no_grad():
        w = torch.randn(k, d, generator=g)
        lin.weight.copy_(scale * (w - w.mean(1, keepdim=True)))  # zero-mean rows: varied labels near x = 0.5
        lin.bias.copy_(0.1 * torch.randn(k, generator=g))
    return nn.Sequential(nn.Flatten(), lin).to(dtype).eval()


def make_convnet(k: int = 10, *, shape=SHAPE, seed: int = 1, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """Conv(3->4) + tanh + Linear: small, smooth, fixed weights."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    net = nn.Sequential(nn.Conv2d(c, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * h * w, k))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() > 1 else 0.1))
    return net.to(dtype).eval()


def images(n: int, *, lo: float = 0.0, hi: float = 1.0, seed: int = 0, shape=SHAPE,
           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (lo + (hi - lo) * torch.rand((n, *shape), generator=g, dtype=torch.float64)).to(dtype)


@pytest.fixture
def linear() -> nn.Sequential:
    return make_linear()


@pytest.fixture
def convnet() -> nn.Sequential:
    return make_convnet()
