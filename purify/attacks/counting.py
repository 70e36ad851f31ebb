"""Count the images a model forwards and back-propagates, for the benchmark harness.

``CountedModel(model_fn)`` is a drop-in ``model_fn``: ``forwards`` sums the batch sizes of
every call, ``backwards`` the batch sizes of every call whose output later receives a
gradient (a hook on the output fires when one flows through it). Costs of attacks are
thus reported in image-passes, whatever the batch size.

Wrapping order with EOT: ``eot(CountedModel(inner), samples=n)`` counts every one of the n
draws. ``CountedModel(eot(...))`` counts them too: it passes ``expected_loss`` through and
counts each draw's logits as they reach the loss, and counts an EOT prediction (one call of
the wrapper) as ``samples`` passes per image.
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from purify.attacks.wrappers import EOT
from purify.errors import DTypeError

__all__ = ["CountedModel"]

ModelFn = Callable[[Tensor], Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


class CountedModel:
    """A ``model_fn`` wrapper that counts forwarded and back-propagated images.

    Attributes:
        forwards: images forwarded so far (sum of batch sizes).
        backwards: images whose output received a gradient so far (sum of batch sizes). A
            backward through the same output twice (``retain_graph``) counts twice.

    Shape:
        x: (B, C, H, W); output: whatever ``model_fn`` returns, (B, K) logits.
    Raises:
        DTypeError: ``model_fn`` is not callable.
    Example:
        >>> import torch
        >>> m = CountedModel(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)))
        >>> x = torch.rand(5, 3, 2, 2, requires_grad=True)
        >>> _ = torch.autograd.grad(m(x).sum(), x)
        >>> m.forwards, m.backwards
        (5, 5)
    """

    def __init__(self, model_fn: ModelFn) -> None:
        if not callable(model_fn):
            raise DTypeError(f"CountedModel: expected model_fn to be callable, got {type(model_fn).__name__}")
        self.model_fn = model_fn
        self.forwards = 0
        self.backwards = 0
        if callable(getattr(model_fn, "expected_loss", None)):
            self.expected_loss = self._expected_loss
        if callable(getattr(model_fn, "expected_loss_and_grad", None)):
            self.expected_loss_and_grad = self._expected_loss_and_grad

    def reset(self) -> None:
        """Set both counters back to zero."""
        self.forwards = 0
        self.backwards = 0

    def __call__(self, x: Tensor) -> Tensor:
        out = self.model_fn(x)
        self._count(out, self.model_fn.samples if isinstance(self.model_fn, EOT) else 1)
        return out

    def _count(self, out: Tensor, passes: int = 1) -> None:
        n = passes * (int(out.shape[0]) if isinstance(out, Tensor) and out.dim() > 0 else 1)
        self.forwards += n
        if isinstance(out, Tensor) and out.requires_grad:
            out.register_hook(lambda grad: self._count_backward(n))

    def _count_backward(self, n: int) -> None:
        self.backwards += n

    def _expected_loss(self, x: Tensor, y: Tensor, loss_fn: LossFn) -> Tensor:
        def counted_loss(logits: Tensor, labels: Tensor) -> Tensor:
            self._count(logits)
            return loss_fn(logits, labels)

        return self.model_fn.expected_loss(x, y, counted_loss)  # type: ignore[attr-defined]

    def _expected_loss_and_grad(self, x: Tensor, y: Tensor, loss_fn: LossFn) -> tuple[Tensor, Tensor | None]:
        def counted_loss(logits: Tensor, labels: Tensor) -> Tensor:
            self._count(logits)
            return loss_fn(logits, labels)

        return self.model_fn.expected_loss_and_grad(x, y, counted_loss)  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"CountedModel({self.model_fn!r}, forwards={self.forwards}, backwards={self.backwards})"
