"""purify.transforms.Purify: the transform twin of purify() for torchvision-style pipelines."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from purify import DTypeError, ShapeError, purify
from purify.transforms import Purify
from tests.conftest import REPO_ROOT


class Compose:
    """What torchvision's Compose does (torchvision does not import with the CPU torch build here)."""

    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, img):
        for t in self.transforms:
            img = t(img)
        return img


def to_tensor(img: Image.Image) -> torch.Tensor:
    """torchvision's ToTensor for 8-bit images: (H, W, C) uint8 -> (C, H, W) float in [0, 1]."""
    arr = np.asarray(img)
    arr = arr[..., None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr.transpose(2, 0, 1).copy()).float() / 255


def _pil(mode: str, size=(24, 20)) -> Image.Image:
    rng = np.random.default_rng(0)
    if mode == "I;16":
        return Image.fromarray((rng.random(size[::-1]) * 65535).astype(np.uint16))
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    return Image.fromarray((rng.random((*size[::-1], channels)) * 255).astype(np.uint8).squeeze(), mode=mode)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "I;16"])
def test_pil_in_pil_out(mode):
    img = _pil(mode)
    out = Purify("tvm", weight=0.1, drop_prob=0.3, seed=0)(img)
    assert isinstance(out, Image.Image) and out.mode == mode and out.size == img.size
    assert not np.array_equal(np.asarray(out), np.asarray(img))


@pytest.mark.parametrize("shape", [(3, 20, 24), (1, 20, 24), (3, 3, 20, 24), (0, 3, 8, 8)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.uint8])
def test_tensor_in_tensor_out(shape, dtype, rng):
    x = torch.rand(shape, generator=rng)
    x = (x * 255).to(torch.uint8) if dtype == torch.uint8 else x.to(dtype)
    out = Purify("tvm", weight=0.1, seed=0)(x)
    assert isinstance(out, torch.Tensor) and out.shape == x.shape and out.dtype == x.dtype
    assert x.numel() == 0 or not torch.equal(out, x)


def test_module_twin_calls_purify(rng):
    x = torch.rand(2, 3, 16, 16, generator=rng)
    tf = Purify(["tvm", ("dct", {"q": 8})], seed=3)
    assert torch.equal(tf(x), purify(x, ["tvm", ("dct", {"q": 8})], seed=3, device="cpu"))
    assert "seed=3" in repr(tf) and "dct(q=8)" in repr(tf)


def test_in_a_compose_chain():
    img = _pil("RGB")
    tf = Purify("tvm", weight=0.1, drop_prob=0.3, seed=1)
    chained = Compose([tf, to_tensor])(img)
    assert torch.equal(chained, to_tensor(tf(img)))
    # After ToTensor the transform sees a (C, H, W) float tensor and hands one back.
    later = Compose([to_tensor, tf])(img)
    assert later.shape == (3, 20, 24) and later.dtype == torch.float32
    assert torch.equal(later, tf(to_tensor(img)))


def test_seed_is_per_image():
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    tf = Purify("tvm", weight=0.1, drop_prob=0.3, seed=7)
    batch = tf(x)
    for i in range(4):
        # Same mask (drawn from image i's own seed) and a per-plane solver: exact.
        assert torch.equal(batch[i], tf(x[i]))
    assert torch.equal(tf(x[2]), tf(x[2]))                              # calls do not consume randomness
    assert not torch.equal(tf(x[2]), Purify("tvm", weight=0.1, drop_prob=0.3, seed=8)(x[2]))
    twins = torch.stack([x[0], x[0]])
    assert torch.equal(tf(twins)[0], tf(twins)[1])                     # same image, same draw


def test_seed_gives_the_same_mask_to_pil_and_tensor():
    # Both become the same float32 [0, 1] image, so both get the same seed and mask.
    img = _pil("RGB")
    tf = Purify("tvm", weight=0.1, drop_prob=0.3, seed=2)
    from_pil = np.asarray(tf(img))
    from_tensor = tf(torch.from_numpy(np.asarray(img).transpose(2, 0, 1).copy()))
    assert np.array_equal(from_pil, from_tensor.permute(1, 2, 0).numpy())


def test_without_seed_uses_torch_global_rng(rng):
    x = torch.rand(3, 16, 16, generator=rng)
    tf = Purify("tvm", weight=0.1, drop_prob=0.3)
    torch.manual_seed(0)
    first = tf(x)
    torch.manual_seed(0)
    assert torch.equal(tf(x), first)
    assert not torch.equal(tf(x), first)


def test_pickle_round_trip(rng):
    x = torch.rand(3, 16, 16, generator=rng)
    tf = Purify([("tvm", {"weight": 0.1}), ("dct", {"q": 12})], seed=4)
    clone = pickle.loads(pickle.dumps(tf))
    assert clone is not tf and clone.seed == 4 and clone.pipeline.names == ["tvm", "dct"]
    assert torch.equal(clone(x), tf(x))


@pytest.mark.parametrize("kwargs, err, match", [
    ({"seed": 1.5}, DTypeError, "seed"),
    ({"seed": True}, DTypeError, "seed"),
])
def test_bad_arguments(kwargs, err, match):
    with pytest.raises(err, match=match):
        Purify("tvm", **kwargs)


def test_channels_last_tensor_is_refused():
    with pytest.raises(ShapeError, match=r"permute\(2, 0, 1\)"):
        Purify("dct")(torch.rand(20, 24, 3))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_dataloader_workers_same_result_for_any_worker_count():
    # Fork-started workers after TVM ran in the parent; in a fresh interpreter, with a timeout, so that
    # a crash or a hang cannot take pytest down.
    script = textwrap.dedent("""
        import torch
        from torch.utils.data import DataLoader, Dataset
        from purify.transforms import Purify

        torch.set_num_threads(1)  # the workers' thread count, so every run is the same computation
        images = (torch.rand(12, 3, 20, 24, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)

        class Images(Dataset):
            def __init__(self, tf, same=False):
                self.tf, self.same = tf, same

            def __len__(self):
                return len(images)

            def __getitem__(self, i):
                return self.tf(images[0] if self.same else images[i])

        def run(tf, workers, batch_size=2, same=False):
            ctx = "fork" if workers else None
            loader = DataLoader(Images(tf, same), batch_size=batch_size, num_workers=workers,
                                multiprocessing_context=ctx)
            return torch.cat(list(loader))

        seeded = Purify("tvm", weight=0.1, drop_prob=0.3, seed=5)
        runs = {w: run(seeded, w) for w in (0, 2, 3)}
        assert runs[0].dtype == torch.uint8 and runs[0].shape == images.shape
        assert not torch.equal(runs[0], images)
        for w, got in runs.items():
            assert torch.equal(got, runs[0]), w
        assert torch.equal(run(seeded, 2, batch_size=5), runs[0])

        # Without a seed every worker draws from its own torch RNG stream: the same image in two
        # workers' first calls gets two different masks (a generator copied into the workers would not).
        fresh = run(Purify("tvm", weight=0.1, drop_prob=0.3), 2, batch_size=1, same=True)
        assert not torch.equal(fresh[0], fresh[1])
        print("OK")
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-4000:]
