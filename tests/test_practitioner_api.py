"""What practitioners ran into: channels-last tensors, 16-bit images, devices, DefendedClassifier's inputs."""

from __future__ import annotations

import logging
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from purify import (DefendedClassifier, DeviceError, DTypeError, Pipeline, PurifyError, RangeError, ShapeError,
                    TVMinimize, create_purifier, dct_quantize, purify, tv_minimize)
from purify.__main__ import main
from purify.models import Normalized

# dct with a tiny step is the identity up to float noise: a stage that keeps values, so 16-bit
# round trips can be checked to the last unit (q is on the 0..255 scale: a step of 4e-6 in [0, 1]).
_IDENTITY = {"q": 1e-3}


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# ------------------------------------------------------------------------------------ channel layout

class TestChannelsLast:
    def test_the_report_nhwc_batch_is_refused(self):
        x_nhwc = (np.random.default_rng(0).random((4, 32, 32, 3)) * 255).astype(np.uint8)
        with pytest.raises(ShapeError, match=r"channels-last.*permute\(0, 3, 1, 2\)"):
            purify(torch.from_numpy(x_nhwc).float() / 255, device="cpu")
        assert purify(x_nhwc, device="cpu").shape == (4, 32, 32, 3)  # the numpy array itself is fine

    def test_hwc_image_is_refused(self):
        with pytest.raises(ShapeError, match=r"permute\(2, 0, 1\)"):
            purify(torch.rand(32, 32, 3), device="cpu")

    def test_many_channels_point_to_the_stage(self):
        with pytest.raises(ShapeError, match="tv_minimize"):
            purify(torch.rand(1, 8, 16, 16), device="cpu")
        assert tv_minimize(torch.rand(1, 8, 16, 16)).shape == (1, 8, 16, 16)  # the stage takes any C

    @pytest.mark.parametrize("c", [1, 2, 3, 4])
    def test_channels_first_keeps_working(self, c, rng):
        x = torch.rand(2, c, 16, 12, generator=rng)
        out = purify(x, "tvm", generator=_gen(), device="cpu")
        assert torch.equal(out, tv_minimize(x, generator=_gen()))
        assert purify(x[0], "dct", device="cpu").shape == (c, 16, 12)

    def test_channels_last_memory_format_is_channels_first(self, rng):
        x = torch.rand(2, 3, 16, 16, generator=rng)
        out = purify(x.to(memory_format=torch.channels_last), "tvm", generator=_gen(), device="cpu")
        assert torch.equal(out, purify(x, "tvm", generator=_gen(), device="cpu"))


# ------------------------------------------------------------------------------------ 16-bit images

def _ramp16(h: int = 16, w: int = 24) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((xx * 2 + yy * 3) / (2 * (w - 1) + 3 * (h - 1)) * 65535).round().astype(np.uint16)


def _write_png16(path, arr: np.ndarray) -> None:
    """A minimal 16-bit PNG writer (grayscale, gray+alpha, RGB, RGBA), filter 0: Pillow writes no 16-bit colour."""
    a = np.asarray(arr, dtype=">u2")
    a = a[..., None] if a.ndim == 2 else a
    h, w, c = a.shape
    raw = b"".join(b"\x00" + a[i].tobytes() for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


class TestSixteenBit:
    @pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
    def test_pil_16bit_modes_round_trip(self, mode):
        arr = _ramp16()
        layout = {"I;16": "<u2", "I;16B": ">u2", "I": "=i4"}[mode]
        img = Image.frombytes(mode, (arr.shape[1], arr.shape[0]), arr.astype(layout).tobytes())
        out = purify(img, "dct", device="cpu", **_IDENTITY)
        assert out.mode == mode and out.size == img.size
        # float32 holds v / 65535 to 3e-8, far inside half a unit; the tiny dct step moves less than 0.3 units.
        assert np.abs(np.asarray(out).astype(np.int64) - arr).max() <= 1

    def test_pil_16bit_purified_on_its_scale(self):
        img = Image.fromarray(_ramp16())
        out = np.asarray(purify(img, "tvm", weight=0.05, generator=_gen(), device="cpu")).astype(np.float64)
        ref = tv_minimize(torch.from_numpy(_ramp16().astype(np.float32) / 65535)[None, None], weight=0.05,
                          generator=_gen())[0, 0].double().numpy() * 65535
        assert np.abs(out - ref).max() <= 1  # rounding to the nearest unit, plus float32 noise of 65535 * 6e-8
        assert out.max() < 65535 and abs(out.mean() - _ramp16().mean()) < 0.05 * 65535

    def test_mode_i_outside_16_bits_is_refused(self):
        img = Image.fromarray(np.array([[0, 70000]], dtype=np.int32))
        with pytest.raises(RangeError, match="65535"):
            purify(img, device="cpu")

    @pytest.mark.parametrize("order", ["<u2", ">u2"])
    def test_numpy_uint16(self, order):
        arr = np.stack([_ramp16(), _ramp16()[::-1], _ramp16()[:, ::-1]], axis=-1).astype(order)
        out = purify(arr, "dct", device="cpu", **_IDENTITY)
        assert out.dtype == arr.dtype and out.shape == arr.shape
        assert np.abs(out.astype(np.int64) - arr.astype(np.int64)).max() <= 1

    def test_float_mode_hint_is_not_convert(self):
        with pytest.raises(DTypeError, match=r"np.asarray\(img\) / peak"):
            purify(Image.new("F", (4, 4)), device="cpu")

    def test_cli_16bit_grayscale_png(self, tmp_path):
        src, dst = tmp_path / "cat16.png", tmp_path / "out.png"
        Image.fromarray(_ramp16()).save(src)
        assert Image.open(src).mode == "I;16"
        assert main(["image", str(src), str(dst), "--method", "dct", "--q", "0.001", "--device", "cpu"]) == 0
        out = Image.open(dst)
        assert out.mode == "I;16"
        assert np.abs(np.asarray(out).astype(np.int64) - _ramp16()).max() <= 1
        # TVM on it: a purified ramp, not the all-white image the report got.
        assert main(["image", str(src), str(dst), "--seed", "0", "--device", "cpu"]) == 0
        tvm = np.asarray(Image.open(dst)).astype(np.float64)
        assert tvm.min() < 0.1 * 65535 and abs(tvm.mean() - _ramp16().mean()) < 0.05 * 65535

    def test_cli_16bit_rgb_png(self, tmp_path, caplog):
        rgb = np.stack([_ramp16(), _ramp16()[::-1], _ramp16()[:, ::-1]], axis=-1)
        src, dst = tmp_path / "cat16rgb.png", tmp_path / "out.png"
        _write_png16(src, rgb)
        with caplog.at_level(logging.WARNING, logger="purify.cli"):
            assert main(["image", str(src), str(dst), "--method", "dct", "--q", "0.001", "--device", "cpu"]) == 0
        assert "8 bits per channel" in caplog.text
        out = np.asarray(Image.open(dst)).astype(np.int64)
        # Pillow keeps the high byte of each sample; the tiny dct step then rounds back to it.
        assert out.shape == rgb.shape and np.abs(out - (rgb >> 8)).max() <= 1


# ------------------------------------------------------------------------------------ devices

class TestDevices:
    @pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
    def test_cuda_unavailable(self):
        with pytest.raises(DeviceError, match=r"CUDA is not available.*available on this machine: 'cpu'"):
            purify(np.zeros((8, 8)), device="cuda")
        with pytest.raises(DeviceError, match="cuda"):
            purify(torch.zeros(1, 3, 8, 8), device=torch.device("cuda", 1))

    @pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
    def test_mps_unavailable(self):
        with pytest.raises(DeviceError, match=r"MPS is not available.*available on this machine: 'cpu'"):
            purify(torch.zeros(1, 3, 8, 8), device="mps")

    @pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
    def test_artifact_loaders_check_the_device(self):
        from purify.gcln import load_generator
        from purify.wnll import TemplateSet, WNLLHead
        with pytest.raises(DeviceError, match="load_generator: .*CUDA is not available"):
            load_generator("gcln_cifar10", device="cuda")
        with pytest.raises(DeviceError, match="WNLLHead.load: .*CUDA is not available"):
            WNLLHead.load("resnet56_wnll", device="cuda")
        with pytest.raises(DeviceError, match="TemplateSet.to: .*CUDA is not available"):
            TemplateSet(torch.zeros(4, 2), torch.arange(4)).to("cuda")

    def test_device_error_is_a_purify_and_runtime_error(self):
        assert issubclass(DeviceError, PurifyError) and issubclass(DeviceError, RuntimeError)
        with pytest.raises(DeviceError, match="available on this machine"):
            purify(np.zeros((8, 8)), device="tpu")


# ------------------------------------------------------------------------------------ DefendedClassifier

def _clf() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10))


class TestDefendedClassifierInputs:
    @pytest.mark.parametrize("stages, spec", [
        ("tvm", ["tvm"]),
        (("tvm", {"weight": 0.1}), [("tvm", {"weight": 0.1})]),
        (TVMinimize(weight=0.1), [("tvm", {"weight": 0.1})]),
        (create_purifier("tvm", weight=0.1), [("tvm", {"weight": 0.1})]),
        (["tvm", ("dct", {"q": 10})], ["tvm", ("dct", {"q": 10})]),
        ([TVMinimize(weight=0.1), create_purifier("dct", q=12)], [("tvm", {"weight": 0.1}), ("dct", {"q": 12})]),
        (Pipeline.from_spec(["tvm", ("dct", {"q": 10})]), ["tvm", ("dct", {"q": 10})]),
    ], ids=["name", "pair", "module", "create_purifier", "names", "modules", "pipeline"])
    def test_accepts(self, stages, spec, rng):
        clf = _clf()
        x = torch.rand(2, 3, 16, 16, generator=rng)
        model = DefendedClassifier(stages, clf)
        assert torch.equal(model(x, _gen()), clf(Pipeline.from_spec(spec)(x, _gen())))

    def test_module_is_used_as_it_is(self):
        # Not the defaults (0.1 / 0.3): the stage records only the settings that differ from them.
        stage = TVMinimize(weight=0.05, drop_prob=0.4)
        model = DefendedClassifier(stage, _clf())
        assert model.pipeline.purifiers[0] is stage
        assert dict(model.pipeline.stages[0].params) == {"weight": 0.05, "drop_prob": 0.4}

    def test_unregistered_module_is_refused(self):
        with pytest.raises(DTypeError, match="not a registered purification stage.*TVMinimize"):
            DefendedClassifier(nn.Identity(), _clf())

    def test_with_a_normalized_model(self, rng):
        net = _clf()
        model = DefendedClassifier(("dct", {"q": 10}), Normalized(net, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25)))
        x = torch.rand(2, 3, 16, 16, generator=rng)
        mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.tensor([0.2, 0.3, 0.25]).view(1, 3, 1, 1)
        assert torch.equal(model(x), net((dct_quantize(x, q=10) - mean) / std))


# ------------------------------------------------------------------------------------ purify(): modules and seeds

def test_purify_takes_a_module(rng):
    x = torch.rand(2, 3, 16, 16, generator=rng)
    assert torch.equal(purify(x, TVMinimize(weight=0.1), generator=_gen(), device="cpu"),
                       tv_minimize(x, weight=0.1, generator=_gen()))
    with pytest.raises(DTypeError, match="cannot be applied"):
        purify(x, TVMinimize(), weight=0.1)


def test_purify_seed(rng):
    x = torch.rand(3, 3, 16, 16, generator=rng)
    out = purify(x, seed=11, device="cpu")
    assert torch.equal(out[1:2], purify(x[1:2], seed=11, device="cpu"))
    assert not torch.equal(out, purify(x, seed=12, device="cpu"))
    with pytest.raises(DTypeError, match="not both"):
        purify(x, seed=1, generator=_gen())
