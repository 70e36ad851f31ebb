"""Your own images in the harness: ``[data] path`` (an .npz or a class-per-subfolder folder), at any size.

Also home of :func:`tiny_net`, the "user" classifier the ``test_user_*`` configs name as
``factory = "tests.benchmarks.test_user_data:tiny_net"`` (imported from ``sys.path`` like a user's module).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from benchmarks.harness import ConfigError, load_config, run
from benchmarks.harness.config import parse_config
from purify.errors import DataNotFoundError, DTypeError, RangeError, ShapeError
from purify.user_data import ImageFolder, load_user_dataset

FACTORY = "tests.benchmarks.test_user_data:tiny_net"


def tiny_net(num_classes: int = 2, channels: int = 3) -> nn.Module:
    """A user's classifier: any image size (global pooling), ``num_classes`` logits, seeded weights."""
    net = nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, num_classes))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return net


def tiny_net3() -> nn.Module:
    return tiny_net(3)


def make_folder(root: Path, classes=("dog", "cat"), per_class: int = 2, size=(224, 224), seed: int = 0) -> Path:
    """``root/<class>/<i>.png`` of random RGB images (W x H = size[1] x size[0])."""
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def write_config(folder: Path, body: str, name: str = "mine.toml") -> Path:
    path = folder / name
    path.write_text(body)
    return path


# ----------------------------------------------------------------------------- .npz files

def test_npz_uint8_nhwc_and_float_nchw_read_as_the_same_images(tmp_path):
    x8 = np.random.default_rng(0).integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    y = np.array([0, 2, 1])
    np.savez(tmp_path / "u8.npz", x=x8, y=y)
    # the same float32 division Dataset.tensors does, so the two reads are one computation: exact
    np.savez(tmp_path / "f.npz", x=(x8.astype(np.float32) / np.float32(255)).transpose(0, 3, 1, 2), y=y)
    a, b = load_user_dataset(tmp_path / "u8.npz"), load_user_dataset(tmp_path / "f.npz")
    (xa, ya), (xb, yb) = a.tensors(), b.tensors()
    assert xa.shape == (3, 3, 5, 7) and torch.equal(xa, xb) and ya.tolist() == yb.tolist() == [0, 2, 1]
    assert a.classes == ("0", "1", "2") and b.x.dtype == np.float32
    assert torch.equal(a.tensors([2])[0], xa[2:3])


def test_npz_grayscale_and_class_names(tmp_path):
    np.savez(tmp_path / "g.npz", x=np.zeros((2, 4, 6), np.uint8), y=np.array([1, 0]), classes=np.array(["no", "yes"]))
    ds = load_user_dataset(tmp_path / "g.npz")
    assert ds.tensors()[0].shape == (2, 1, 4, 6) and ds.classes == ("no", "yes") and ds.name == "g"


NPZ_BAD = [
    (dict(x=np.zeros((2, 3, 8, 8), np.uint8), y=np.zeros(2, int)), ShapeError, r"looks channels-first.*transpose"),
    (dict(x=np.zeros((2, 8, 8, 3), np.float32), y=np.zeros(2, int)), ShapeError, r"looks channels-last"),
    (dict(x=np.full((2, 3, 8, 8), 200.0), y=np.zeros(2, int)), RangeError,
     r"\[0, 1\], got \[200, 200\].*divide by 255"),
    (dict(x=np.zeros((2, 3, 8, 8), np.int16), y=np.zeros(2, int)), DTypeError, r"uint8 \(0\.\.255\) or floating"),
    (dict(x=np.zeros((2, 8, 8, 3), np.uint8)), DTypeError, r"expected arrays 'x' and 'y'"),
    (dict(x=np.zeros((2, 8, 8, 3), np.uint8), y=np.array([0, -1])), RangeError, r"labels >= 0"),
    (dict(x=np.zeros((2, 8, 8, 3), np.uint8), y=np.array([0.0, 1.0])), DTypeError, r"integer labels"),
    (dict(x=np.zeros((2, 8, 8, 3), np.uint8), y=np.array([0, 2]), classes=np.array(["a", "b"])), DTypeError,
     r"at least 3 strings"),
]


@pytest.mark.parametrize("arrays, error, match", NPZ_BAD, ids=[m[:20] for _, _, m in NPZ_BAD])
def test_exception_npz_layouts(tmp_path, arrays, error, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(error, match=match):
        load_user_dataset(tmp_path / "bad.npz")


def test_exception_npz_path(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"does not exist"):
        load_user_dataset(tmp_path / "none.npz")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(DTypeError, match=r"expected an \.npz file or a folder"):
        load_user_dataset(tmp_path / "a.txt")
    np.savez(tmp_path / "ok.npz", x=np.zeros((1, 2, 2, 3), np.uint8), y=np.zeros(1, int))
    with pytest.raises(DTypeError, match=r"resize and mode apply to an image folder"):
        load_user_dataset(tmp_path / "ok.npz", resize=(4, 4))


# ----------------------------------------------------------------------------- image folders

def test_folder_classes_sorted_files_sorted_and_decoded_lazily(tmp_path):
    root = make_folder(tmp_path / "imgs", classes=("dog", "cat"), per_class=2, size=(6, 9))
    (root / "dog" / "notes.txt").write_text("not an image")          # skipped, like torchvision
    (root / "readme.md").write_text("files at the top level are not images of a class")
    ds = load_user_dataset(root)
    assert isinstance(ds, ImageFolder) and ds.classes == ("cat", "dog") and ds.y.tolist() == [0, 0, 1, 1]
    assert [f.relative_to(root).as_posix() for f in ds.files] == ["cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png"]
    x, y = ds.tensors([3, 0])
    assert x.shape == (2, 3, 6, 9) and y.tolist() == [1, 0]
    with Image.open(root / "dog" / "1.png") as im:                    # pixels exactly as stored, / 255
        assert torch.equal(x[0], torch.from_numpy(np.asarray(im, np.float32)).permute(2, 0, 1) / 255)


def test_folder_resize_and_grayscale(tmp_path):
    root = make_folder(tmp_path / "imgs", per_class=1, size=(6, 9))
    Image.fromarray(np.zeros((20, 11, 3), np.uint8)).save(root / "cat" / "big.png")
    with pytest.raises(ShapeError, match=r"different sizes.*6x9 \(HxW\).*20x11; pass resize"):
        load_user_dataset(root).tensors()
    x, _ = load_user_dataset(root, resize=(12, 10), mode="L").tensors()
    assert x.shape == (3, 1, 12, 10)


def test_exception_folder_layouts(tmp_path):
    (tmp_path / "flat").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(DataNotFoundError, match=r"has no class subfolders"):
        load_user_dataset(tmp_path / "flat")
    root = make_folder(tmp_path / "imgs", per_class=1, size=(4, 4))
    (root / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match=r"empty has no images"):
        load_user_dataset(root)
    (root / "empty" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DTypeError, match=r"cannot read .*broken\.png as an image"):
        load_user_dataset(root).tensors()


# ----------------------------------------------------------------------------- the config's [data]

BASE = f"""
description = "user data"
batch_size = 4
device = "cpu"
[model]
factory = "{FACTORY}"
[[attacks]]
name = "fgsm"
eps = ["8/255"]
threat_models = ["none"]
"""

DATA_BAD = [
    ('path = "imgs"\ndataset = "cifar10"', r"data\.path: give data\.dataset .* or data\.path .*, not both"),
    ('path = "imgs"\nsplit = "test"', r"data\.split: a data\.path set is used whole"),
    ('dataset = "cifar10"\ncount = 2\nresize = [8, 8]', r"data\.resize: only used with data\.path"),
    ('path = "imgs"\nresize = [8]', r"data\.resize: expected \[H, W\]"),
    ('path = "imgs"\nmode = "CMYK"', r"data\.mode: unknown value 'CMYK'; expected one of 'RGB', 'L'"),
    ('path = "imgs"\nseed = 3', r"data\.seed: only used with data\.count"),
    ('count = 3', r"data\.dataset: missing required key; or give path"),
]


@pytest.mark.parametrize("data, match", DATA_BAD, ids=[d.split("\n")[-1] for d, _ in DATA_BAD])
def test_exception_data_table(tmp_path, data, match):
    path = write_config(tmp_path, BASE + "[data]\n" + data + "\n")
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_data_path_is_relative_to_the_config_and_count_optional(tmp_path):
    cfg = load_config(write_config(tmp_path, BASE + '[data]\npath = "imgs"\nresize = [16, 16]\n'))
    assert cfg.data == {"path": str((tmp_path / "imgs").resolve()), "resize": [16, 16], "mode": "RGB"}


def test_exception_model_and_folder_disagree_on_classes(tmp_path, one_thread):
    make_folder(tmp_path / "imgs", size=(8, 8))
    path = write_config(tmp_path, BASE.replace(FACTORY, FACTORY + "3") + '[data]\npath = "imgs"\n')
    with pytest.raises(ConfigError, match=r"mine\.toml: model: the model scores 3 classes, data\.path has 2 class "
                                          r"folders"):
        run(path, out=tmp_path / "out", progress=False, cache_dir=tmp_path / "cache")
    mixed = make_folder(tmp_path / "mixed", size=(8, 8))
    Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(mixed / "cat" / "odd.png")
    path = write_config(tmp_path, BASE + '[data]\npath = "mixed"\n', "mixed.toml")
    with pytest.raises(ConfigError, match=r"mixed\.toml: data\.path: .*different sizes.*set data\.resize = \[H, W\]"):
        run(path, out=tmp_path / "out", progress=False, cache_dir=tmp_path / "cache")


# ----------------------------------------------------------------------------- a 224 x 224 run, end to end

RUN_224 = f"""
description = "a user's 224 x 224 images and classifier behind TVM and DCT"
batch_size = 4
device = "cpu"
[data]
path = "imgs"
[model]
factory = "{FACTORY}"
[defense]
stages = [{{ name = "tvm", params = {{ weight = 0.05, iters = 10 }} }}, {{ name = "dct", params = {{ q = 10 }} }}]
[[attacks]]
name = "pgd"
eps = ["8/255"]
threat_models = ["transfer", "bpda", "bpda+eot"]
eot_samples = 2
params = {{ iters = 2, step_ratio = 0.5 }}
"""


def test_224_folder_and_factory_run_end_to_end(tmp_path, one_thread):
    make_folder(tmp_path / "imgs", size=(224, 224))
    path = write_config(tmp_path, RUN_224)
    # no data directory at all: the images and the model are the user's
    result = run(path, data_dir=tmp_path / "nowhere", out=tmp_path / "out", progress=False, cache_dir=tmp_path / "c")
    assert len(result.computed) == 3
    with open(tmp_path / "out" / "cells.csv") as f:
        rows = {r["threat_model"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"transfer", "bpda", "bpda+eot"}
    for r in rows.values():
        assert r["n_images"] == "4" and float(r["max_linf"]) <= 8 / 255 + 1e-6 and float(r["mean_linf"]) > 0
    assert int(rows["bpda+eot"]["forwards"]) == 2 * 2 * 4           # iters x EOT draws x images, at 224 x 224
    report = (tmp_path / "out" / "report.md").read_text()
    assert "- Data: imgs (3x224x224 images), all 4 images" in report
    assert f"- Model: factory {FACTORY}; defense: tvm(weight=0.05, iters=10) → dct(q=10)" in report
    with Image.open(tmp_path / "out" / "examples.png") as im:
        assert im.format == "PNG"
    again = run(path, data_dir=tmp_path / "nowhere", out=tmp_path / "out", progress=False, cache_dir=tmp_path / "c")
    assert again.computed == [] and len(again.cached) == 3
    # the cells are keyed by the pixels: a changed image is a new run, not a cache hit
    Image.fromarray(np.zeros((224, 224, 3), np.uint8)).save(tmp_path / "imgs" / "cat" / "0.png")
    changed = run(path, data_dir=tmp_path / "nowhere", out=tmp_path / "out", progress=False, cache_dir=tmp_path / "c")
    assert len(changed.computed) == 3


def test_user_config_parses_without_touching_files(tmp_path):
    cfg = parse_config({"description": "d", "data": {"path": "nowhere"}, "model": {"factory": FACTORY},
                        "attacks": [{"name": "fgsm", "eps": [0.01], "threat_models": ["none"]}]}, tmp_path / "x.toml")
    assert cfg.model == {"factory": FACTORY} and "count" not in cfg.data
