"""``Purify``: purification as a transform for torchvision-style data pipelines.

A dataset's transform chain passes a PIL image, or a ``(C, H, W)`` tensor after ``ToTensor``;
:class:`Purify` takes either (and ``(B, C, H, W)`` batches, numpy arrays) and returns the same
kind, mode, shape and dtype, so it drops into a ``Compose`` list where a lambda used to be::

    train_tf = Compose([RandomCrop(32, padding=4), Purify("tvm", weight=0.1, drop_prob=0.3), ToTensor()])

It is the module twin of :func:`purify.purify`: ``forward`` only calls it, on the input's device.

Randomness, and DataLoader workers. A dataset's ``__getitem__`` hands the transform the image,
never its index, so a transform cannot seed by index. Two choices, both safe in fork-started workers:

* ``seed=None`` (default): torch's global RNG. DataLoader seeds it differently in every worker
  (``torch.initial_seed()`` is ``base_seed + worker_id``), so workers never repeat each other's
  masks, and a run is reproducible under ``torch.manual_seed`` for a fixed ``num_workers``, but an
  image's mask depends on which worker drew it and when; every epoch draws new masks (augmentation).
* ``seed=int``: image i's randomness comes from ``seed`` and image i's content (see
  :func:`purify.purify`), so the same image (hence, with deterministic earlier transforms, the same
  index) gets the same purification whatever ``num_workers``, ``batch_size``, shuffling or epoch:
  reproducible evaluation. Mix the epoch into the seed (``tf.seed = base + epoch``) for new masks each
  epoch; workers that are not persistent pick the change up when they start.

There is no ``generator=``: a generator is copied into every fork-started worker, which would
then all draw the same masks.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor, nn

from purify.api import _as_pipeline, purify
from purify.errors import DTypeError
from purify.pipeline import Pipeline, StageLike

__all__ = ["Purify"]


class Purify(nn.Module):
    """Transform twin of :func:`purify.purify`: same kind of image out as in.

    Args:
        method: a stage name, a list of stages, a registered stage's module or a :class:`Pipeline`
            (built once here, so, e.g., the cleaning generator's weights load once).
        seed: None for torch's global RNG, or an int for per-image seeds from the image content
            (see the module docstring for what each gives in DataLoader workers).
        **params: the stage's parameters when ``method`` is a name, e.g. ``weight=0.1``.

    Shape:
        input: a PIL image (L, RGB, RGBA, 16-bit I;16), a ``(C, H, W)`` or ``(B, C, H, W)`` tensor
        (float in [0, 1] or uint8), or a numpy image; output: the same kind, mode, shape, dtype and
        device. Runs on the input's device (PIL images and arrays: the CPU); a stage with weights
        must be there too (move the transform with ``.to(device)``).
    Raises:
        ShapeError, RangeError, DTypeError, UnknownNameError, DeviceError
    Example:
        >>> from PIL import Image
        >>> tf = Purify("tvm", weight=0.1, drop_prob=0.3, seed=0)
        >>> img = Image.new("RGB", (32, 24), (200, 30, 90))
        >>> out = tf(img)
        >>> out.mode, out.size
        ('RGB', (32, 24))
        >>> tf(torch.rand(3, 24, 32)).shape
        torch.Size([3, 24, 32])
    """

    def __init__(self, method: StageLike | Iterable[StageLike] | Pipeline = "tvm", *, seed: int | None = None,
                 **params: Any) -> None:
        super().__init__()
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise DTypeError(f"Purify: expected seed to be an int or None, got {type(seed).__name__}")
        self.pipeline = _as_pipeline(method, params)
        self.seed = seed

    def forward(self, img: Any) -> Any:
        device = img.device if isinstance(img, Tensor) else torch.device("cpu")
        return purify(img, self.pipeline, device=device, seed=self.seed)

    def extra_repr(self) -> str:
        return f"seed={self.seed}"
