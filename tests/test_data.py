"""Tests for purify.data: loading splits from the data directory and the offline-tested download path.

The download tests never touch the network: they rebuild official-format files (gzipped IDX
for MNIST, a ``cifar-10-python.tar.gz`` of Python-2-style pickled batches for CIFAR-10) from
the real shared arrays in ``tmp_path`` and fetch them through ``file://`` URLs.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from purify import data as pdata
from purify._download import download_file
from purify.data import (DATA_DIR_ENV, VAL_SIZE, Dataset, download_dataset, load_dataset,
                         resolve_data_dir)
from purify.errors import ChecksumError, DataNotFoundError, DTypeError, RangeError, ShapeError, UnknownNameError

# sha256(arr.tobytes()) from the shared data's PROVENANCE.md
PROVENANCE_SHA = {
    ("cifar10", "train"): ("47af8b02cfcfb6cdf3dbbd1969ad7f1b70f4413f6f80f437b020ee4e5bc8304a",
                           "2b7cd2f24487317614016b72ffd53071c3062f592f0eb300c18a770d41ae1253"),
    ("cifar10", "test"): ("f9b1e2130bab680db56eb06d886f7f1ad0f1183907ceff4659d1735c890f5b04",
                          "cec8a24a1e92aa2ecaa0bbd3dbfa86bf6cd8759fbd209a832824c8cf0afca9d5"),
    ("mnist", "train"): ("741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
                         "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13"),
    ("mnist", "test"): ("6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
                        "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5"),
}


def _sha(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def _raw(data_dir: Path, name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(data_dir / f"{name}_{split}.npz", allow_pickle=False) as f:
        return f["x"], f["y"]


@pytest.fixture(scope="module")
def cifar_train_full(data_dir: Path) -> Dataset:
    return load_dataset("cifar10", "train_full", data_dir=data_dir)


# ---------------------------------------------------------------------------------------------- loading


def test_resolve_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv(DATA_DIR_ENV)
    monkeypatch.setenv("PURIFY_CACHE_DIR", str(tmp_path / "cache"))
    assert resolve_data_dir() == tmp_path / "cache" / "data"
    monkeypatch.delenv("PURIFY_CACHE_DIR")
    assert resolve_data_dir() == Path.home() / ".cache" / "purify" / "data"
    with pytest.raises(DTypeError, match="data_dir"):
        resolve_data_dir(3)


def test_env_var_is_used(monkeypatch, data_dir):
    monkeypatch.setenv(DATA_DIR_ENV, str(data_dir))
    assert len(load_dataset("mnist", "test")) == 10_000


def test_cifar10_test(data_dir):
    ds = load_dataset("cifar10", data_dir=data_dir)
    assert (ds.name, ds.split, len(ds)) == ("cifar10", "test", 10_000)
    assert ds.x.shape == (10_000, 32, 32, 3) and ds.x.dtype == np.uint8
    assert ds.y.shape == (10_000,) and ds.y.dtype == np.int64
    assert ds.y[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert ds.classes == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    assert np.bincount(ds.y).tolist() == [1000] * 10
    assert not ds.x.flags.writeable and not ds.y.flags.writeable


def test_cifar10_splits(data_dir, cifar_train_full):
    full = cifar_train_full
    train = load_dataset("cifar10", "train", data_dir=data_dir)
    val = load_dataset("cifar10", "val", data_dir=data_dir)
    assert (len(train), len(val), len(full)) == (45_000, VAL_SIZE, 50_000)
    assert full.y[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    np.testing.assert_array_equal(val.x, full.x[-5000:])
    np.testing.assert_array_equal(val.y, full.y[-5000:])
    np.testing.assert_array_equal(train.x, full.x[:45_000])
    np.testing.assert_array_equal(train.y, full.y[:45_000])


def test_mnist_test(data_dir):
    ds = load_dataset("mnist", "test", data_dir=data_dir)
    assert ds.x.shape == (10_000, 28, 28, 1) and ds.x.dtype == np.uint8
    assert ds.y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert ds.classes == tuple("0123456789")
    x, _ = ds.tensors([0])
    assert x.shape == (1, 1, 28, 28)


def test_missing_data_dir(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("cifar10", data_dir=missing)
    msg = str(info.value)
    assert str(missing / "cifar10_test.npz") in msg
    for hint in ("data_dir", "--data-dir", DATA_DIR_ENV, "download=True"):
        assert hint in msg
    assert isinstance(info.value, FileNotFoundError)


def test_unknown_name_and_split(data_dir):
    with pytest.raises(UnknownNameError, match="'cifar10', 'mnist'"):
        load_dataset("cifar100", data_dir=data_dir)
    with pytest.raises(UnknownNameError, match="'train', 'val', 'train_full', 'test'"):
        load_dataset("cifar10", "validation", data_dir=data_dir)
    with pytest.raises(UnknownNameError, match="cifar10"):
        download_dataset("svhn")


def test_bad_npz_layout(tmp_path):
    np.savez(tmp_path / "cifar10_test.npz", x=np.zeros((4, 3, 32, 32), np.uint8), y=np.zeros(4, np.uint8))
    with pytest.raises(ShapeError, match=r"\(N, 32, 32, 3\)"):
        load_dataset("cifar10", data_dir=tmp_path)
    np.savez(tmp_path / "cifar10_test.npz", x=np.zeros((4, 32, 32, 3), np.float32), y=np.zeros(4, np.uint8))
    with pytest.raises(DTypeError, match="uint8"):
        load_dataset("cifar10", data_dir=tmp_path)


# ---------------------------------------------------------------------------------------------- tensors()


def test_tensors(data_dir):
    ds = load_dataset("cifar10", data_dir=data_dir)
    x, y = ds.tensors(slice(0, 7))
    assert x.shape == (7, 3, 32, 32) and x.dtype == torch.float32 and x.is_contiguous()
    assert y.dtype == torch.int64 and y.tolist() == [3, 8, 8, 0, 6, 6, 1]
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    expected = torch.from_numpy(ds.x[:7].astype(np.float32) / 255).permute(0, 3, 1, 2)
    torch.testing.assert_close(x, expected, rtol=0, atol=0)
    for idx in ([4, 1], np.array([4, 1]), torch.tensor([4, 1]), [-9996, 1]):
        xi, yi = ds.tensors(idx)
        torch.testing.assert_close(xi, x[[4, 1]], rtol=0, atol=0)
        assert yi.tolist() == [6, 8]
    x0, y0 = ds.tensors([])
    assert x0.shape == (0, 3, 32, 32) and y0.shape == (0,)


def test_tensors_bad_indices():
    ds = Dataset("toy", "test", np.zeros((5, 4, 4, 3), np.uint8), np.zeros(5, np.int64), ("a",))
    with pytest.raises(DTypeError, match="integer indices"):
        ds.tensors(np.array([0.5, 1.0]))
    with pytest.raises(DTypeError, match="np.flatnonzero"):
        ds.tensors(np.ones(5, bool))
    with pytest.raises(DTypeError, match=r"wrap it in a list"):
        ds.tensors(3)
    with pytest.raises(RangeError, match=r"\[-5, 5\).*got values in \[0, 5\]"):
        ds.tensors([0, 5])
    with pytest.raises(ShapeError, match="1-D"):
        ds.tensors([[0, 1]])


# ---------------------------------------------------------------------------------------------- download: MNIST


def _idx_gz(arr: np.ndarray, path: Path) -> None:
    magic = 2051 if arr.ndim == 3 else 2049
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape)
    path.write_bytes(gzip.compress(header + arr.tobytes(), compresslevel=1))


@pytest.fixture(scope="module")
def mnist_mirror(data_dir, tmp_path_factory) -> Path:
    """The four official MNIST IDX .gz files rebuilt from the shared arrays."""
    mirror = tmp_path_factory.mktemp("mnist-mirror")
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x, y = _raw(data_dir, "mnist", split)
        _idx_gz(x, mirror / f"{prefix}-images-idx3-ubyte.gz")
        _idx_gz(y, mirror / f"{prefix}-labels-idx1-ubyte.gz")
    return mirror


def test_download_mnist_file_url(mnist_mirror, data_dir, tmp_path):
    out = tmp_path / "data"
    paths = download_dataset("mnist", out, base_url=mnist_mirror.as_uri(), progress=False)
    assert paths == {"train": out / "mnist_train.npz", "test": out / "mnist_test.npz"}
    assert sorted(p.name for p in out.iterdir()) == ["mnist_test.npz", "mnist_train.npz"]  # raw files cleaned up
    for split in ("train", "test"):
        x, y = _raw(out, "mnist", split)
        assert (_sha(x), _sha(y)) == PROVENANCE_SHA[("mnist", split)]
        assert x.shape[1:] == (28, 28) and y.dtype == np.uint8
    ds = load_dataset("mnist", "val", data_dir=out)
    np.testing.assert_array_equal(ds.x[..., 0], _raw(data_dir, "mnist", "train")[0][-5000:])
    # a second call finds the files and does not fetch again (the URL would fail)
    assert download_dataset("mnist", out, base_url=(tmp_path / "gone").as_uri(), progress=False) == paths


def test_load_dataset_download_flag(mnist_mirror, monkeypatch, tmp_path):
    spec = dataclasses.replace(pdata.DATASETS["mnist"], base_url=mnist_mirror.as_uri())
    monkeypatch.setitem(pdata.DATASETS, "mnist", spec)
    ds = load_dataset("mnist", "test", data_dir=tmp_path, download=True)
    assert ds.y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def test_download_mnist_corrupted(mnist_mirror, tmp_path):
    bad = tmp_path / "bad-mirror"
    bad.mkdir()
    for f in mnist_mirror.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    raw = bytearray(gzip.decompress((bad / "t10k-images-idx3-ubyte.gz").read_bytes()))
    raw[16 + 1234] ^= 0xFF  # one pixel of the test images
    (bad / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes(raw), compresslevel=1))
    out = tmp_path / "data"
    with pytest.raises(ChecksumError, match="mnist test array 'x'.*expected 6d87418d") as info:
        download_dataset("mnist", out, base_url=bad.as_uri(), progress=False)
    assert "nothing was written" in str(info.value)
    assert list(out.iterdir()) == []
    # a truncated archive is a ChecksumError too, not a gzip/EOF error
    (bad / "t10k-labels-idx1-ubyte.gz").write_bytes((mnist_mirror / "t10k-labels-idx1-ubyte.gz").read_bytes()[:100])
    with pytest.raises(ChecksumError, match="not a valid MNIST IDX file"):
        download_dataset("mnist", out, base_url=bad.as_uri(), progress=False)
    assert list(out.iterdir()) == []


def test_download_unreachable(tmp_path):
    with pytest.raises(DataNotFoundError, match="could not fetch"):
        download_dataset("mnist", tmp_path / "data", base_url=(tmp_path / "no-mirror").as_uri(), progress=False)
    assert not any(p.suffix == ".npz" for p in (tmp_path / "data").iterdir())


# ---------------------------------------------------------------------------------------------- download: CIFAR-10


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes ``bytes`` as Python 2 ``str`` opcodes, like the cPickle that made the official batches."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def _save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        opcode = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(opcode + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _official_batch(x: np.ndarray, y: np.ndarray, label: str) -> bytes:
    rows = np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(len(x), 3072)  # HWC -> CHW rows
    batch = {b"batch_label": label.encode(), b"labels": [int(v) for v in y], b"data": rows,
             b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(x))]}
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(batch)
    # numpy 1.x (and so the official files) name the module numpy.core.multiarray
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def _write_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


@pytest.mark.slow
def test_download_cifar10_file_url(data_dir, tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    xtr, ytr = _raw(data_dir, "cifar10", "train")
    xte, yte = _raw(data_dir, "cifar10", "test")
    members = {}
    for i in range(5):
        part = slice(i * 10_000, (i + 1) * 10_000)
        members[f"data_batch_{i + 1}"] = _official_batch(xtr[part], ytr[part], f"training batch {i + 1} of 5")
    members["test_batch"] = _official_batch(xte, yte, "testing batch 1 of 1")
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in members["test_batch"]
    _write_tar(mirror / "cifar-10-python.tar.gz", members)
    del members
    out = tmp_path / "data"
    download_dataset("cifar10", out, base_url=mirror.as_uri(), progress=False)
    for split in ("train", "test"):
        x, y = _raw(out, "cifar10", split)
        assert (_sha(x), _sha(y)) == PROVENANCE_SHA[("cifar10", split)]
    assert load_dataset("cifar10", data_dir=out).y[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_download_cifar10_refuses_code(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"data": _Evil(marker), "labels": []}, protocol=2)
    _write_tar(mirror / "cifar-10-python.tar.gz", {f"data_batch_{i}": evil for i in range(1, 6)} | {"test_batch": evil})
    out = tmp_path / "data"
    with pytest.raises(ChecksumError, match=r"refusing to load global (posix|os|nt)\.system"):
        download_dataset("cifar10", out, base_url=mirror.as_uri(), progress=False)
    assert not marker.exists()
    assert list(out.iterdir()) == []


def test_download_cifar10_wrong_content(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    rng = np.random.default_rng(0)
    fake = {f"data_batch_{i}": _official_batch(rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8),
                                               rng.integers(0, 10, 10), "fake") for i in range(1, 6)}
    fake["test_batch"] = fake["data_batch_1"]
    _write_tar(mirror / "cifar-10-python.tar.gz", fake)
    out = tmp_path / "data"
    with pytest.raises(ChecksumError, match="cifar10 train array 'x'"):
        download_dataset("cifar10", out, base_url=mirror.as_uri(), progress=False)
    assert list(out.iterdir()) == []


def test_download_file_helper(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"abc")
    good = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    dest = tmp_path / "out" / "dest.bin"
    assert download_file(src.as_uri(), dest, sha256=good, progress=False).read_bytes() == b"abc"
    with pytest.raises(ChecksumError, match=f"expected {'0' * 64}, got {good}"):
        download_file(src.as_uri(), tmp_path / "out" / "other.bin", sha256="0" * 64, progress=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["dest.bin"]  # no temp or partial file
    with pytest.raises(UnknownNameError, match="'https', 'http', 'file'"):
        download_file("ftp://example.org/x", dest, sha256=None, progress=False)
