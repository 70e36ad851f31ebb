"""Readers for the official CIFAR-10 and MNIST distribution files.

Used only by :func:`purify.data.download_dataset`, which converts them into purify's
``.npz`` layout and then checks the sha256 of the decoded arrays.

Why a restricted unpickler: the official CIFAR-10 "python version" batches are Python 2
pickles (dicts holding a ``uint8`` ndarray, a list of labels and a few byte strings).
``pickle.load`` on a downloaded file would run whatever callables the file names, so a
tampered mirror could execute code on the user's machine. :class:`_NumpyOnlyUnpickler`
resolves exactly the three globals an ndarray needs (``_reconstruct``, ``ndarray``,
``dtype``) and refuses every other one, and members are read from the tar in memory, so no
archive path is ever written to disk.
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from purify.errors import ChecksumError

__all__ = ["read_cifar10_archive", "read_idx_gz", "safe_unpickle_numpy", "FORMAT_ERRORS"]

#: Exceptions that mean "this file is not a valid archive of the expected format".
FORMAT_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, pickle.UnpicklingError,
                 ValueError, KeyError, TypeError, IndexError, AttributeError)

CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST_BATCH = "test_batch"


def _allowed_globals() -> dict[tuple[str, str], Any]:
    try:  # numpy >= 2 moved the module; pickles written by numpy 1.x (and the official CIFAR files) name the old one
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild plain containers and numpy arrays, and nothing else."""

    _ALLOWED = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only numpy array reconstruction is allowed"
            ) from None


def safe_unpickle_numpy(data: bytes) -> Any:
    """Unpickle ``data`` allowing only builtin containers/scalars and numpy arrays.

    Python 2 byte strings are decoded as latin-1 (the way numpy's own py2 compatibility
    expects), so dict keys come back as ``str``.

    Example:
        >>> safe_unpickle_numpy(pickle.dumps({"a": np.arange(3)}, protocol=4))["a"].tolist()
        [0, 1, 2]
    """
    return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()


def _get(batch: dict, key: str) -> Any:
    if key in batch:
        return batch[key]
    return batch[key.encode("latin1")]


def _decode_cifar_batch(raw: bytes, member: str) -> tuple[np.ndarray, np.ndarray]:
    batch = safe_unpickle_numpy(raw)
    if not isinstance(batch, dict):
        raise TypeError(f"{member}: expected a pickled dict, got {type(batch).__name__}")
    data, labels = _get(batch, "data"), _get(batch, "labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{member}: expected 'data' to be a uint8 array of shape (N, 3072)")
    y = np.asarray(labels)
    if y.shape != (data.shape[0],) or not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() > 9:
        raise ValueError(f"{member}: expected {data.shape[0]} integer labels in 0..9")
    # Each row is CHW (1024 R, 1024 G, 1024 B); purify stores HWC.
    x = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return x, y.astype(np.uint8)


def read_cifar10_archive(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Decode ``cifar-10-python.tar.gz`` into ``{"train": (x, y), "test": (x, y)}``.

    ``x`` is ``uint8 (N, 32, 32, 3)`` HWC RGB, ``y`` is ``uint8 (N,)``. Members are read in
    memory through :func:`safe_unpickle_numpy`.

    Raises:
        ChecksumError: the archive is not a valid official CIFAR-10 python archive.
    """
    try:
        with tarfile.open(path, "r:gz") as tar:
            def load(batch: str) -> tuple[np.ndarray, np.ndarray]:
                member = f"{_CIFAR_FOLDER}/{batch}"
                f = tar.extractfile(member)
                if f is None:
                    raise KeyError(f"{member} is not a regular file")
                return _decode_cifar_batch(f.read(), member)

            train = [load(b) for b in _CIFAR_TRAIN_BATCHES]
            test = load(_CIFAR_TEST_BATCH)
    except FORMAT_ERRORS as e:
        raise ChecksumError(
            f"download_dataset: {path} is not a valid CIFAR-10 python archive ({type(e).__name__}: {e}); "
            "the download is corrupt or not the official file; nothing was written"
        ) from e
    return {
        "train": (np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train])),
        "test": test,
    }


def read_idx_gz(path: str | Path, *, images: bool) -> np.ndarray:
    """Decode a gzipped MNIST IDX file: images -> ``uint8 (N, 28, 28)``, labels -> ``uint8 (N,)``.

    Raises:
        ChecksumError: wrong magic number, size or compression.
    """
    try:
        raw = gzip.decompress(Path(path).read_bytes())
        magic, ndim, header = (2051, 3, 16) if images else (2049, 1, 8)
        if len(raw) < header:
            raise ValueError("file shorter than its header")
        got_magic = int.from_bytes(raw[0:4], "big")
        if got_magic != magic:
            raise ValueError(f"magic number {got_magic}, expected {magic}")
        dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
        body = np.frombuffer(raw, dtype=np.uint8, offset=header)
        if body.size != int(np.prod(dims)):
            raise ValueError(f"body has {body.size} bytes, header says {dims}")
        return body.reshape(dims).copy()
    except (OSError, *FORMAT_ERRORS) as e:
        raise ChecksumError(
            f"download_dataset: {path} is not a valid MNIST IDX file ({type(e).__name__}: {e}); "
            "the download is corrupt or not the official file; nothing was written"
        ) from e
