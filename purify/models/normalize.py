"""Per-channel mean/std normalization inside the classifier, so every model takes images in [0, 1].

Normalization belongs to the classifier wrapper, never to a purifier: a purification pipeline
and an attack both work in pixel space and hand [0, 1] tensors to the wrapped model.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from purify._checks import check_image_batch
from purify.errors import DTypeError, RangeError, ShapeError

__all__ = ["Normalized"]


def _as_stats(fn: str, value: object, name: str) -> tuple[float, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
        raise DTypeError(f"{fn}: expected {name} to be a non-empty sequence of floats, got {value!r}")
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError) as e:
        raise DTypeError(f"{fn}: expected {name} to be a sequence of floats, got {value!r}") from e
    return out


class Normalized(nn.Module):
    """Wrap ``model`` so that it takes images in [0, 1]: ``model((x - mean) / std)``.

    ``features`` is forwarded the same way when the wrapped model has one. ``mean`` and
    ``std`` are non-persistent buffers: they follow ``.to(device)`` but stay out of the state
    dict, which is therefore the inner model's with a ``model.`` prefix.

    Args:
        model: the classifier, expecting normalized input.
        mean, std: per-channel statistics (one value per input channel; std > 0).

    Shape:
        x: (B, C, H, W) floating, values in [0, 1] (not checked per call, to keep attack loops
        cheap); output: whatever ``model`` returns.

    Example:
        >>> net = Normalized(nn.Conv2d(3, 1, 1), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
        >>> net(torch.rand(2, 3, 8, 8)).shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        fn = "Normalized"
        if not isinstance(model, nn.Module):
            raise DTypeError(f"{fn}: expected model to be a torch.nn.Module, got {type(model).__name__}")
        m, s = _as_stats(fn, mean, "mean"), _as_stats(fn, std, "std")
        if len(m) != len(s):
            raise ShapeError(f"{fn}: expected mean and std of the same length, got {len(m)} and {len(s)}")
        if min(s) <= 0:
            raise RangeError(f"{fn}: expected every std > 0, got {s}")
        self.model = model
        self.register_buffer("mean", torch.tensor(m).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(s).view(1, -1, 1, 1), persistent=False)

    def normalize(self, x: Tensor) -> Tensor:
        """``(x - mean) / std`` after checking the layout (rank, dtype, channel count)."""
        check_image_batch(f"{type(self.model).__name__}", x, check_range=False)
        if x.shape[1] != self.mean.shape[1]:
            raise ShapeError(
                f"{type(self.model).__name__}: expected x with {self.mean.shape[1]} channels, got shape "
                f"{tuple(x.shape)}; convert grayscale with x.expand(-1, 3, -1, -1)"
            )
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.normalize(x))

    def features(self, x: Tensor) -> Tensor:
        """The wrapped model's ``features`` of the normalized input."""
        inner = getattr(self.model, "features", None)
        if not callable(inner):
            raise DTypeError(f"Normalized.features: {type(self.model).__name__} has no features() method")
        return inner(self.normalize(x))

    def extra_repr(self) -> str:
        fmt = lambda t: "(" + ", ".join(f"{v:.4g}" for v in t.flatten().tolist()) + ")"  # noqa: E731
        return f"mean={fmt(self.mean)}, std={fmt(self.std)}"
