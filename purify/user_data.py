"""Your own images as a data set: an ``.npz`` of arrays, or a folder with one subfolder per class.

Two layouts, at any image size:

* **an .npz file** (``np.savez(path, x=..., y=..., classes=...)``; read with ``allow_pickle=False``):

  - ``x``: ``uint8`` ``(N, H, W, C)`` or ``(N, H, W)`` with values 0..255 (channels last, as image
    files hold them), or floating ``(N, C, H, W)`` with values in [0, 1] (channels first, as torch
    holds them); float images are kept as they are, never rounded to 8 bits;
  - ``y``: integer ``(N,)`` class indices >= 0;
  - ``classes`` (optional): ``(K,)`` strings, the class names by index (default ``"0"``, ``"1"``, ...).

* **a folder** laid out like torchvision's ``ImageFolder``: ``root/<class name>/<image file>``. The
  classes are the subfolder names in sorted order (label = position in that order); the images are
  the files with an image extension (:data:`IMAGE_EXTENSIONS`, any case) in sorted order within a
  class. Files are decoded only when asked for (:meth:`ImageFolder.tensors`), converted to ``mode``
  (``"RGB"`` or ``"L"``) and, with ``resize = (H, W)``, resized (bilinear, antialiased); a batch
  holds one size, so a folder of mixed sizes needs ``resize``.

Example:
    >>> ds = load_user_dataset("my_images/", resize=(224, 224))  # doctest: +SKIP
    >>> ds.classes, len(ds)  # doctest: +SKIP
    (('cat', 'dog'), 4)
    >>> x, y = ds.tensors([0, 3])  # doctest: +SKIP
    >>> x.shape, y.tolist()  # doctest: +SKIP
    (torch.Size([2, 3, 224, 224]), [0, 1])
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from purify._checks import check_choice
from purify.data import Dataset, _check_indices
from purify.errors import DataNotFoundError, DTypeError, RangeError, ShapeError

__all__ = ["IMAGE_EXTENSIONS", "MODES", "ImageFolder", "load_user_dataset"]

#: File extensions read as images in a class folder (torchvision's list).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: PIL modes images are converted to: 3 channels or 1.
MODES = ("RGB", "L")
# Channel counts that mark an axis as the channel axis when deciding whether x looks transposed.
_CHANNELS = (1, 2, 3, 4)


@dataclass(frozen=True, eq=False)
class ImageFolder:
    """A class-per-subfolder image folder, decoded lazily; the same interface as :class:`~purify.data.Dataset`.

    Attributes:
        name: the folder's name; ``split`` is ``"all"``.
        files: image paths, class by class in sorted order; ``y``: ``(N,)`` int64 labels.
        classes: the subfolder names, sorted.
        resize: ``(H, W)`` every image is resized to, or None (then all must share one size).
        mode: ``"RGB"`` (3 channels) or ``"L"`` (1 channel).
    """

    name: str
    split: str
    files: tuple[Path, ...]
    y: np.ndarray
    classes: tuple[str, ...]
    resize: tuple[int, int] | None = None
    mode: str = "RGB"

    def __len__(self) -> int:
        return len(self.files)

    def tensors(self, indices: slice | Sequence[int] | np.ndarray | torch.Tensor | None = None, *,
                device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode the images of ``indices`` (all when None) to a float tensor in [0, 1], with their labels.

        Shape:
            output: ``x`` ``(n, C, H, W)`` float32 (``C`` = 3 for ``"RGB"``, 1 for ``"L"``), ``y`` ``(n,)`` int64.
        Raises:
            DTypeError: a file is not a readable image; ShapeError: images of different sizes without ``resize``.
        """
        fn = "ImageFolder.tensors"
        idx = np.arange(len(self)) if indices is None else _check_indices(indices, len(self))
        if isinstance(idx, slice):
            idx = np.arange(len(self))[idx]
        arrays = [self._read(fn, self.files[i]) for i in idx]
        for i, a in zip(idx[1:], arrays[1:]):
            if a.shape != arrays[0].shape:
                (h0, w0), (h, w) = arrays[0].shape[:2], a.shape[:2]
                raise ShapeError(f"{fn}: images of different sizes cannot share a batch: {self.files[idx[0]]} "
                                 f"is {h0}x{w0} (HxW), {self.files[i]} is {h}x{w}; pass resize=(H, W)")
        channels = 3 if self.mode == "RGB" else 1
        x = np.stack(arrays) if arrays else np.zeros((0, *(self.resize or (0, 0)), channels), np.uint8)
        return Dataset(self.name, self.split, x, self.y[idx], self.classes).tensors(device=device)

    def _read(self, fn: str, path: Path) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                im = im.convert(self.mode)
                if self.resize is not None and im.size != (self.resize[1], self.resize[0]):
                    im = im.resize((self.resize[1], self.resize[0]), Image.BILINEAR)   # PIL takes (W, H)
                a = np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as e:
            raise DTypeError(f"{fn}: cannot read {path} as an image ({type(e).__name__}: {e}); remove it or "
                             f"convert it to one of {', '.join(IMAGE_EXTENSIONS)}") from None
        return a[..., None] if a.ndim == 2 else a


def load_user_dataset(path: str | os.PathLike, *, resize: Sequence[int] | None = None,
                      mode: str = "RGB") -> Dataset | ImageFolder:
    """Load your own images: an ``.npz`` file (read now) or a class-per-subfolder folder (read lazily).

    See the module docstring for the layouts.

    Args:
        path: the ``.npz`` file or the folder.
        resize: ``(H, W)`` for the images of a folder (an ``.npz`` is used as stored).
        mode: ``"RGB"`` or ``"L"``, what a folder's images are converted to.

    Shape:
        ``tensors()`` returns ``x`` ``(N, C, H, W)`` float32 in [0, 1] and ``y`` ``(N,)`` int64.
    Raises:
        DataNotFoundError: no such file or folder, or a folder without class subfolders or images.
        DTypeError, ShapeError, RangeError: arrays of the wrong dtype, layout or value range (the
            message says how to convert them).
    Example:
        >>> import tempfile, numpy as np
        >>> f = tempfile.NamedTemporaryFile(suffix=".npz", delete=False).name
        >>> np.savez(f, x=np.zeros((2, 5, 7, 3), np.uint8), y=np.array([0, 1]), classes=np.array(["a", "b"]))
        >>> ds = load_user_dataset(f)
        >>> ds.tensors()[0].shape, ds.classes
        (torch.Size([2, 3, 5, 7]), ('a', 'b'))
    """
    fn = "load_user_dataset"
    if not isinstance(path, (str, os.PathLike)):
        raise DTypeError(f"{fn}: expected path to be a str or Path, got {type(path).__name__}")
    p = Path(path).expanduser()
    check_choice(fn, mode, name="mode", choices=MODES)
    size = _check_resize(fn, resize)
    if p.is_dir():
        return _folder(fn, p, size, mode)
    if not p.is_file():
        raise DataNotFoundError(f"{fn}: {p} does not exist; expected an .npz file or a folder with one "
                                "subfolder per class")
    if p.suffix.lower() != ".npz":
        raise DTypeError(f"{fn}: expected an .npz file or a folder, got {p.name}; save arrays with "
                         "np.savez(path, x=x, y=y)")
    if size is not None or mode != "RGB":
        raise DTypeError(f"{fn}: resize and mode apply to an image folder; an .npz is used as stored "
                         "(resize its arrays before saving)")
    return _npz(fn, p)


def _check_resize(fn: str, resize: object) -> tuple[int, int] | None:
    if resize is None:
        return None
    ok = (isinstance(resize, Sequence) and not isinstance(resize, str) and len(resize) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in resize))
    if not ok:
        raise DTypeError(f"{fn}: expected resize to be (H, W), two ints >= 1, got {resize!r}")
    return int(resize[0]), int(resize[1])


def _folder(fn: str, root: Path, size: tuple[int, int] | None, mode: str) -> ImageFolder:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataNotFoundError(f"{fn}: {root} has no class subfolders; expected {root}/<class name>/<image "
                                "files>, one subfolder per class")
    files, labels = [], []
    for label, name in enumerate(classes):
        found = sorted(f for f in (root / name).iterdir()
                       if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS)
        if not found:
            raise DataNotFoundError(f"{fn}: class folder {root / name} has no images (extensions "
                                    f"{', '.join(IMAGE_EXTENSIONS)}); remove it or add images")
        files += found
        labels += [label] * len(found)
    y = np.asarray(labels, dtype=np.int64)
    y.flags.writeable = False
    return ImageFolder(root.name, "all", tuple(files), y, tuple(classes), size, mode)


def _npz(fn: str, path: Path) -> Dataset:
    with np.load(path, allow_pickle=False) as f:
        if "x" not in f.files or "y" not in f.files:
            raise DTypeError(f"{fn}: expected arrays 'x' and 'y' in {path}, got {sorted(f.files)}; save with "
                             "np.savez(path, x=images, y=labels)")
        x, y = f["x"], f["y"]
        classes = f["classes"] if "classes" in f.files else None
    x = _images(fn, path, x)
    if y.dtype.kind not in "iu" or y.shape != (x.shape[0],):
        raise DTypeError(f"{fn}: expected integer labels 'y' of shape ({x.shape[0]},) in {path}, got {y.dtype} "
                         f"{y.shape}")
    if len(y) == 0:
        raise ShapeError(f"{fn}: {path} holds no images")
    if int(y.min()) < 0:
        raise RangeError(f"{fn}: expected labels >= 0 in {path}, got {int(y.min())}")
    n_classes = int(y.max()) + 1
    if classes is None:
        names = tuple(str(i) for i in range(n_classes))
    elif classes.dtype.kind not in "US" or classes.ndim != 1 or len(classes) < n_classes:
        raise DTypeError(f"{fn}: expected 'classes' in {path} to be a 1-D array of at least {n_classes} strings "
                         f"(one per label), got {classes.dtype} {classes.shape}")
    else:
        names = tuple(str(c) for c in classes.astype(str))
    x.flags.writeable = False
    y = y.astype(np.int64)
    y.flags.writeable = False
    return Dataset(path.stem, "all", x, y, names)


def _images(fn: str, path: Path, x: np.ndarray) -> np.ndarray:
    """``x`` as stored by :class:`Dataset`: uint8 or float32, ``(N, H, W, C)``."""
    if x.dtype == np.uint8:
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4:
            raise ShapeError(f"{fn}: expected uint8 'x' of shape (N, H, W, C) or (N, H, W) in {path}, got {x.shape}")
        if x.shape[-1] not in _CHANNELS and x.shape[1] in _CHANNELS:
            raise ShapeError(f"{fn}: uint8 'x' in {path} has shape {x.shape}, which looks channels-first; uint8 "
                             "images are read as (N, H, W, C): save x.transpose(0, 2, 3, 1)")
        return x
    if x.dtype.kind != "f":
        raise DTypeError(f"{fn}: expected 'x' in {path} to be uint8 (0..255) or floating ([0, 1]), got {x.dtype}")
    if x.ndim != 4:
        raise ShapeError(f"{fn}: expected floating 'x' of shape (N, C, H, W) in {path}, got {x.shape}")
    if x.shape[1] not in _CHANNELS and x.shape[-1] in _CHANNELS:
        raise ShapeError(f"{fn}: floating 'x' in {path} has shape {x.shape}, which looks channels-last; floating "
                         "images are read as (N, C, H, W): save x.transpose(0, 3, 1, 2)")
    if x.size and not np.isfinite(x).all():
        raise RangeError(f"{fn}: 'x' in {path} holds NaN or Inf values")
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if lo < 0 or hi > 1:
        hint = "; they look like 0..255 values: divide by 255, or save uint8" if hi > 1 and lo >= 0 else ""
        raise RangeError(f"{fn}: expected floating 'x' in {path} with values in [0, 1], got [{lo:.4g}, {hi:.4g}]"
                         + hint)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1), dtype=np.float32)
