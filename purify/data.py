"""Datasets read from a data directory of ``.npz`` files, or downloaded when the user has a network.

A data directory holds ``cifar10_{train,test}.npz`` and ``mnist_{train,test}.npz``, each with
two arrays: ``x`` (``uint8``, HWC; MNIST without the channel axis) and ``y`` (``uint8`` class
indices), in the canonical order of the official distributions. It is found by
:func:`resolve_data_dir`: an explicit argument, else ``$PURIFY_DATA_DIR``, else
``~/.cache/purify/data`` (where :func:`download_dataset` writes by default).

Splits: ``"train"`` is the training set without its last 5,000 images, ``"val"`` those last
5,000 (the project's validation split for tuning hyper-parameters; never tune on ``"test"``),
``"train_full"`` all training images and ``"test"`` the official test set.

Your own images (an ``.npz`` of arrays, or a folder with one subfolder per class) load with
:func:`purify.user_data.load_user_dataset` into the same :class:`Dataset` interface.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from purify._archives import CIFAR10_ARCHIVE, read_cifar10_archive, read_idx_gz
from purify._checks import check_choice
from purify._download import cache_root, download_file, sha256_bytes
from purify.errors import ChecksumError, DataNotFoundError, DTypeError, RangeError, ShapeError

__all__ = ["DATA_DIR_ENV", "DATASETS", "SPLITS", "VAL_SIZE", "CIFAR10_CLASSES", "Dataset",
           "resolve_data_dir", "load_dataset", "download_dataset"]

logger = logging.getLogger(__name__)

#: Environment variable naming the data directory.
DATA_DIR_ENV = "PURIFY_DATA_DIR"
#: Size of the validation split cut from the end of the training set.
VAL_SIZE = 5000
SPLITS = ("train", "val", "train_full", "test")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

Arrays = dict[str, tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class _Spec:
    classes: tuple[str, ...]
    image_shape: tuple[int, int, int]                 # (H, W, C) as exposed by Dataset.x
    base_url: str
    files: tuple[str, ...]                            # official files fetched from base_url
    reader: Callable[[Path], Arrays]                  # folder holding `files` -> {"train", "test"} arrays
    sha256: dict[str, tuple[str, str]]                # split file -> sha256 of x.tobytes(), y.tobytes()


def _read_cifar10(folder: Path) -> Arrays:
    return read_cifar10_archive(folder / CIFAR10_ARCHIVE)


def _read_mnist(folder: Path) -> Arrays:
    def pair(prefix: str) -> tuple[np.ndarray, np.ndarray]:
        x = read_idx_gz(folder / f"{prefix}-images-idx3-ubyte.gz", images=True)
        y = read_idx_gz(folder / f"{prefix}-labels-idx1-ubyte.gz", images=False)
        return x, y
    return {"train": pair("train"), "test": pair("t10k")}


_MNIST_FILES = tuple(f"{p}-{k}-idx{d}-ubyte.gz" for p in ("train", "t10k") for k, d in (("images", 3), ("labels", 1)))

#: Registered datasets; the sha256 table is the one in the shared data's PROVENANCE.md.
DATASETS: dict[str, _Spec] = {
    "cifar10": _Spec(
        classes=CIFAR10_CLASSES, image_shape=(32, 32, 3), base_url="https://www.cs.toronto.edu/~kriz/",
        files=(CIFAR10_ARCHIVE,), reader=_read_cifar10,
        sha256={
            "train": ("47af8b02cfcfb6cdf3dbbd1969ad7f1b70f4413f6f80f437b020ee4e5bc8304a",
                      "2b7cd2f24487317614016b72ffd53071c3062f592f0eb300c18a770d41ae1253"),
            "test": ("f9b1e2130bab680db56eb06d886f7f1ad0f1183907ceff4659d1735c890f5b04",
                     "cec8a24a1e92aa2ecaa0bbd3dbfa86bf6cd8759fbd209a832824c8cf0afca9d5"),
        },
    ),
    "mnist": _Spec(
        classes=tuple(str(d) for d in range(10)), image_shape=(28, 28, 1),
        base_url="https://ossci-datasets.s3.amazonaws.com/mnist/", files=_MNIST_FILES, reader=_read_mnist,
        sha256={
            "train": ("741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
                      "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13"),
            "test": ("6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
                     "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5"),
        },
    ),
}


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Return the data directory: ``data_dir`` if given, else ``$PURIFY_DATA_DIR``, else ``~/.cache/purify/data``.

    The folder is not required to exist (``~/.cache/purify`` moves with ``$PURIFY_CACHE_DIR``).

    Example:
        >>> resolve_data_dir("/tmp/somewhere")
        PosixPath('/tmp/somewhere')
    """
    if data_dir is not None:
        if not isinstance(data_dir, (str, os.PathLike)):
            raise DTypeError(f"resolve_data_dir: expected data_dir to be a str or Path, got {type(data_dir).__name__}")
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return cache_root() / "data"


@dataclass(frozen=True, eq=False)
class Dataset:
    """An image classification split held as numpy arrays (read-only).

    Attributes:
        name: ``"cifar10"`` or ``"mnist"`` (a user's data set: its file or folder name).
        split: ``"train"``, ``"val"``, ``"train_full"`` or ``"test"`` (a user's data set: ``"all"``).
        x: ``uint8`` array ``(N, H, W, C)`` of 0..255 values; MNIST is ``(N, 28, 28, 1)``. A user's
            float images are kept as ``float32`` ``(N, H, W, C)`` with values in [0, 1] (no rounding).
        y: ``int64`` array ``(N,)`` of class indices.
        classes: class names by index.

    Example:
        >>> ds = Dataset("toy", "test", np.zeros((2, 4, 4, 3), np.uint8), np.array([0, 1]), ("a", "b"))
        >>> x, y = ds.tensors()
        >>> tuple(x.shape), x.dtype, y.tolist()
        ((2, 3, 4, 4), torch.float32, [0, 1])
    """

    name: str
    split: str
    x: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def tensors(self, indices: slice | Sequence[int] | np.ndarray | torch.Tensor | None = None, *,
                device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images as a float tensor in [0, 1] and labels as int64, optionally for a subset.

        Args:
            indices: ``None`` (all), a slice, or a 1-D sequence / array / tensor of integer indices
                in ``[-N, N)``.
            device: where to put the tensors (default CPU).

        Shape:
            output: ``x`` ``(n, C, H, W)`` float32 with values ``uint8 / 255`` (float ``x``: as stored);
            ``y`` ``(n,)`` int64.

        Raises:
            DTypeError, ShapeError, RangeError: for bad ``indices``.

        Example:
            >>> ds = Dataset("toy", "test", np.full((3, 2, 2, 1), 255, np.uint8), np.arange(3), ("a", "b", "c"))
            >>> x, y = ds.tensors([2, 0])
            >>> x.max().item(), y.tolist()
            (1.0, [2, 0])
        """
        xs, ys = self.x, self.y
        if indices is not None:
            idx = _check_indices(indices, len(self))
            xs, ys = xs[idx], ys[idx]
        x = torch.from_numpy(np.array(xs, dtype=np.float32))
        if xs.dtype == np.uint8:           # float images are already in [0, 1]
            x.div_(255.0)
        x = x.permute(0, 3, 1, 2).contiguous()
        y = torch.from_numpy(np.array(ys, dtype=np.int64))
        if device is not None:
            x, y = x.to(device), y.to(device)
        return x, y


def _check_indices(indices: object, n: int) -> slice | np.ndarray:
    fn = "Dataset.tensors"
    if isinstance(indices, slice):
        return indices
    if isinstance(indices, torch.Tensor):
        indices = indices.detach().cpu().numpy()
    if isinstance(indices, (bool, int, np.integer)):
        raise DTypeError(f"{fn}: expected indices to be a slice or a 1-D sequence of ints, got a scalar "
                         f"{indices!r}; wrap it in a list, e.g. [{indices!r}]")
    try:
        idx = np.asarray(indices)
    except (TypeError, ValueError) as e:
        raise DTypeError(f"{fn}: expected indices to be a slice or a 1-D sequence of ints, got "
                         f"{type(indices).__name__}") from e
    if idx.size == 0:
        return np.zeros(0, dtype=np.int64)
    if idx.dtype == np.bool_ or not np.issubdtype(idx.dtype, np.integer):
        raise DTypeError(f"{fn}: expected integer indices, got dtype {idx.dtype}; "
                         "convert boolean masks with np.flatnonzero(mask)")
    if idx.ndim != 1:
        raise ShapeError(f"{fn}: expected 1-D indices, got shape {idx.shape}; flatten them first")
    lo, hi = int(idx.min()), int(idx.max())
    if lo < -n or hi >= n:
        raise RangeError(f"{fn}: expected indices in [{-n}, {n}) for a split of {n} images, got values in [{lo}, {hi}]")
    return idx.astype(np.int64, copy=False)


def _npz_path(folder: Path, name: str, split_file: str) -> Path:
    return folder / f"{name}_{split_file}.npz"


def _not_found(fn: str, path: Path, name: str) -> DataNotFoundError:
    return DataNotFoundError(
        f"{fn}: {path.name} not found in {path.parent} (looked for {path}); pass data_dir=... "
        f"(--data-dir on the command line) or set {DATA_DIR_ENV} to a folder holding {name}_train.npz and "
        f"{name}_test.npz, or call load_dataset({name!r}, download=True) / download_dataset({name!r}) to fetch it"
    )


def _read_npz(fn: str, path: Path, spec: _Spec) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        if "x" not in f.files or "y" not in f.files:
            raise DTypeError(f"{fn}: expected arrays 'x' and 'y' in {path}, got {sorted(f.files)}")
        x, y = f["x"], f["y"]
    if x.dtype != np.uint8 or y.dtype.kind not in "iu":
        raise DTypeError(f"{fn}: expected uint8 'x' and integer 'y' in {path}, got {x.dtype} and {y.dtype}")
    if x.ndim == 3 and spec.image_shape[2] == 1:
        x = x[..., None]
    if x.shape[1:] != spec.image_shape or y.shape != (x.shape[0],):
        raise ShapeError(f"{fn}: expected x of shape (N, {', '.join(map(str, spec.image_shape))}) and y of "
                         f"shape (N,) in {path}, got {x.shape} and {y.shape}; is this the right file?")
    return x, y.astype(np.int64)


def load_dataset(name: str, split: str = "test", *, data_dir: str | os.PathLike | None = None,
                 download: bool = False) -> Dataset:
    """Load a split of CIFAR-10 or MNIST from the data directory.

    Args:
        name: ``"cifar10"`` or ``"mnist"``.
        split: ``"train"`` (training set minus its last 5,000 images), ``"val"`` (those 5,000),
            ``"train_full"`` or ``"test"``.
        data_dir: folder with the ``.npz`` files; see :func:`resolve_data_dir`.
        download: fetch the dataset with :func:`download_dataset` when its file is missing.

    Shape:
        ``x``: ``(N, H, W, C)`` uint8 (CIFAR-10 ``(N, 32, 32, 3)``, MNIST ``(N, 28, 28, 1)``); ``y``: ``(N,)`` int64.

    Raises:
        UnknownNameError: unknown ``name`` or ``split`` (the message lists the valid ones).
        DataNotFoundError: the file is missing and ``download`` is False.

    Example:
        >>> ds = load_dataset("cifar10", "val")  # doctest: +SKIP
        >>> len(ds), ds.x.shape, ds.classes[3]  # doctest: +SKIP
        (5000, (5000, 32, 32, 3), 'cat')
    """
    fn = "load_dataset"
    check_choice(fn, name, name="dataset name", choices=tuple(DATASETS))
    check_choice(fn, split, name="split", choices=SPLITS)
    if not isinstance(download, bool):
        raise DTypeError(f"{fn}: expected download to be a bool, got {type(download).__name__}")
    spec = DATASETS[name]
    folder = resolve_data_dir(data_dir)
    split_file = "test" if split == "test" else "train"
    path = _npz_path(folder, name, split_file)
    if not path.is_file():
        if not download:
            raise _not_found(fn, path, name)
        download_dataset(name, folder)
    x, y = _read_npz(fn, path, spec)
    if split in ("train", "val") and x.shape[0] <= VAL_SIZE:
        raise ShapeError(f"{fn}: {path} has {x.shape[0]} training images, too few to cut a {VAL_SIZE}-image "
                         "validation split; use split='train_full'")
    if split == "train":
        x, y = x[:-VAL_SIZE], y[:-VAL_SIZE]
    elif split == "val":
        x, y = x[-VAL_SIZE:], y[-VAL_SIZE:]
    x.flags.writeable = False
    y.flags.writeable = False
    return Dataset(name=name, split=split, x=x, y=y, classes=spec.classes)


def _check_hashes(name: str, spec: _Spec, arrays: Arrays) -> None:
    for split_file, (x_sha, y_sha) in spec.sha256.items():
        x, y = arrays[split_file]
        for arr_name, arr, expected in (("x", x, x_sha), ("y", y, y_sha)):
            got = sha256_bytes(np.ascontiguousarray(arr).tobytes())
            if got != expected:
                raise ChecksumError(
                    f"download_dataset: sha256 of {name} {split_file} array {arr_name!r} "
                    f"(shape {arr.shape}, {arr.dtype}) does not match: expected {expected}, got {got}; the "
                    "download is corrupt or not the official release; nothing was written"
                )


def download_dataset(name: str, data_dir: str | os.PathLike | None = None, *, base_url: str | None = None,
                     progress: bool = True) -> dict[str, Path]:
    """Fetch the official CIFAR-10 / MNIST files and convert them to ``<data_dir>/<name>_{train,test}.npz``.

    The raw files go to a temporary folder inside ``data_dir`` and are removed afterwards. The
    decoded ``x`` and ``y`` arrays of both splits are checked against the sha256 table of the
    project's data provenance (``hashlib.sha256(arr.tobytes())``) before anything is written,
    so a corrupt or altered download raises and leaves no ``.npz`` behind. Existing files are
    kept and the download is skipped.

    Args:
        name: ``"cifar10"`` (``cifar-10-python.tar.gz``) or ``"mnist"`` (the four IDX ``.gz`` files).
        data_dir: destination folder; see :func:`resolve_data_dir`.
        base_url: folder URL to fetch from instead of the official one (may be ``file://``).
        progress: show tqdm progress bars.

    Returns:
        ``{"train": path, "test": path}`` of the ``.npz`` files.

    Raises:
        UnknownNameError, DataNotFoundError (fetch failed), ChecksumError (content mismatch).

    Example:
        >>> paths = download_dataset("mnist", "/tmp/purify-data")  # doctest: +SKIP
        >>> sorted(paths)  # doctest: +SKIP
        ['test', 'train']
    """
    fn = "download_dataset"
    check_choice(fn, name, name="dataset name", choices=tuple(DATASETS))
    spec = DATASETS[name]
    folder = resolve_data_dir(data_dir)
    targets = {s: _npz_path(folder, name, s) for s in spec.sha256}
    if all(p.is_file() for p in targets.values()):
        logger.info("%s: %s already present in %s; skipping the download", fn, name, folder)
        return targets
    url = base_url or spec.base_url
    if not isinstance(url, str):
        raise DTypeError(f"{fn}: expected base_url to be a str or None, got {type(base_url).__name__}")
    url = url if url.endswith("/") else url + "/"
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=f".{name}-download-") as tmp:
        raw = Path(tmp)
        for file in spec.files:
            download_file(url + file, raw / file, sha256=None, progress=progress)  # content is checked below
        arrays = spec.reader(raw)
        _check_hashes(name, spec, arrays)
        for split_file, (x, y) in arrays.items():
            part = raw / f"{name}_{split_file}.npz"
            np.savez_compressed(part, x=x, y=y)
            os.replace(part, targets[split_file])
            logger.info("%s: wrote %s", fn, targets[split_file])
    return targets
