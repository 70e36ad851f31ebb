"""Tests for purify.models: architecture, registry, safe weight loading and the accuracy contract."""

from __future__ import annotations

import dataclasses
import inspect
import shutil
import time

import pytest
import torch
from torch import nn

from purify.data import load_dataset
from purify.errors import ChecksumError, DataNotFoundError, DTypeError, RangeError, ShapeError, UnknownNameError
from purify.models import (BasicBlock, CifarResNet, Normalized, UserModel, count_correct, create_model,
                           get_model_config, list_models, load_checkpoint, register_model, resolve_weights,
                           unregister_model)
from purify.models import factory

PARAMS = {"resnet20": 269_722, "resnet56": 853_018}
# Full CIFAR-10 test set, upstream README: 8.27% / 6.61% test error.
CORRECT = {"resnet20": 9173, "resnet56": 9339}
# The checkpoint-backed ResNets; the shipped small CNN is tested in tests/test_small_cnn.py.
RESNETS = ["resnet20", "resnet56"]


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch, tmp_path):
    """Never read or write the user's ~/.cache/purify."""
    monkeypatch.setenv("PURIFY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PURIFY_DATA_DIR", raising=False)


def _checkpoint(data_dir, name):
    return data_dir / get_model_config(name).weights_file


# ---------------------------------------------------------------------------------------------- architecture


def test_list_models():
    assert list_models() == ["cnn_cifar10_gda", "cnn_cifar10_gda_brelu", "cnn_mnist_gda", "cnn_mnist_gda_brelu",
                             "convnet_cifar10_dd", "lenet5_mnist", "lenet5_mnist_at",
                             "lenet5_mnist_fgsm_rs", "lenet_mnist_dd", "mlp_mnist_dd", "resnet20", "resnet20_cifar10_at",
                             "resnet56", "resnet56_tvm_aug", "resnet56_tvm_data", "resnet56_wnll_e2e",
                             "resnet56_wnll_e2e_tvm_aug", "resnet56_wnll_e2e_tvm_data", "small_cnn_cifar10"]


@pytest.mark.parametrize("name", RESNETS)
def test_smoke(name):
    model = create_model(name)
    assert isinstance(model, Normalized) and not model.training
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    assert model.pretrained_cfg.name == name and model.model.depth == int(name[len("resnet"):])
    for b in (0, 1, 3):
        x = torch.rand(b, 3, 32, 32)
        assert model(x).shape == (b, 10)
        assert model.features(x).shape == (b, 64)


@pytest.mark.parametrize("name", RESNETS)
def test_features_feed_the_head(name):
    model = create_model(name)
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(model.model.linear(model.features(x)), model(x))


def test_cifar_resnet_depths():
    assert len(CifarResNet(32).layer1) == 5
    with pytest.raises(RangeError, match="6n \\+ 2"):
        CifarResNet(21)
    with pytest.raises(DTypeError, match="depth"):
        CifarResNet(20.0)


def test_option_a_shortcut_placement():
    """The down-sampling shortcut keeps x[:, :, ::2, ::2] and pads channels by planes // 4 on both sides."""
    for in_planes, planes, lo, hi in ((16, 32, 8, 24), (32, 64, 16, 48)):
        block = BasicBlock(in_planes, planes, stride=2).eval()
        nn.init.zeros_(block.bn2.weight)  # residual branch is now exactly 0: output = relu(shortcut(x))
        x = torch.rand(2, in_planes, 8, 6)
        with torch.no_grad():
            out = block(x)
        assert out.shape == (2, planes, 4, 3)
        torch.testing.assert_close(out[:, lo:hi], x[:, :, ::2, ::2], rtol=0, atol=0)
        assert out[:, :lo].abs().max() == 0 and out[:, hi:].abs().max() == 0
    net = CifarResNet(20)
    assert type(net.layer2[0].shortcut).__name__ == "_ShortcutA" and net.layer2[0].shortcut.pad == 8
    assert net.layer3[0].shortcut.pad == 16 and isinstance(net.layer1[0].shortcut, nn.Identity)
    with pytest.raises(RangeError, match="option-A"):
        BasicBlock(16, 48, stride=2)


def test_normalized():
    net = CifarResNet(20).eval()
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    model = Normalized(net, mean=mean, std=std)
    x = torch.rand(3, 3, 32, 32)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(model(x), net((x - m) / s))
    torch.testing.assert_close(model.features(x), net.features((x - m) / s))
    assert set(model.state_dict()) == {f"model.{k}" for k in net.state_dict()}  # mean/std not persisted
    with pytest.raises(ShapeError, match="add a batch dimension"):
        model(x[0])
    with pytest.raises(ShapeError, match="3 channels"):
        model(torch.rand(1, 1, 32, 32))
    with pytest.raises(RangeError, match="std > 0"):
        Normalized(net, mean=(0.5,), std=(0.0,))
    with pytest.raises(ShapeError, match="same length"):
        Normalized(net, mean=(0.5, 0.5), std=(0.2,))
    with pytest.raises(DTypeError, match="no features"):
        Normalized(nn.Conv2d(3, 3, 1), mean=mean, std=std).features(x)


def test_unknown_model():
    with pytest.raises(UnknownNameError, match="'resnet20', 'resnet20_cifar10_at', 'resnet56'"):
        create_model("resnet18")


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


def test_register_model_round_trip(tmp_path):
    record = register_model("my.tiny", _tiny, classes=["cat", "dog"], dataset="pets")
    try:
        assert "my.tiny" in list_models() and get_model_config("my.tiny") is record
        model = create_model("my.tiny")
        assert not model.training and model.pretrained_cfg.classes == ("cat", "dog")
        # weights_path loads a state dict strictly into what the factory built
        trained = _tiny()
        with torch.no_grad():
            trained[3].bias.fill_(7.0)
        torch.save(trained.state_dict(), tmp_path / "w.pt")
        loaded = create_model("my.tiny", weights_path=tmp_path / "w.pt")
        assert torch.equal(loaded[3].bias, torch.full((2,), 7.0))
        torch.save({"nope": torch.zeros(1)}, tmp_path / "bad.pt")
        with pytest.raises(ShapeError, match="does not fit the model 'my.tiny'"):
            create_model("my.tiny", weights_path=tmp_path / "bad.pt")
        with pytest.raises(ValueError, match="already registered"):
            register_model("my.tiny", _tiny)
        register_model("my.tiny", lambda: "not a module", overwrite=True)
        with pytest.raises(DTypeError, match="returned str, expected an nn.Module"):
            create_model("my.tiny")
    finally:
        unregister_model("my.tiny")
    assert "my.tiny" not in list_models()


@pytest.mark.parametrize("args, error, match", [
    (("resnet20", _tiny), ValueError, "built-in model"),
    (("my model", _tiny), DTypeError, "letters, digits"),
    (("m", "not callable"), DTypeError, "callable returning an nn.Module"),
])
def test_register_model_refuses(args, error, match):
    with pytest.raises(error, match=match):
        register_model(*args)
    with pytest.raises(DTypeError, match="class-name strings"):
        register_model("m", _tiny, classes="cat,dog")
    with pytest.raises(UnknownNameError, match="registered model name"):
        unregister_model("resnet20")
    assert isinstance(UserModel("x", _tiny).create(), nn.Module)


def test_create_model_signature():
    params = inspect.signature(create_model).parameters
    assert [p for p in params if params[p].kind is inspect.Parameter.KEYWORD_ONLY] == [
        "pretrained", "weights_path", "data_dir", "download", "map_location"]


# ---------------------------------------------------------------------------------------------- weights


@pytest.mark.parametrize("name", RESNETS)
def test_pretrained_from_data_dir(name, data_dir):
    model = create_model(name, pretrained=True, data_dir=data_dir)
    raw = torch.load(_checkpoint(data_dir, name), map_location="cpu", weights_only=True)["state_dict"]
    for key in ("conv1.weight", "layer3.0.bn2.running_var", "linear.bias"):
        torch.testing.assert_close(model.model.state_dict()[key], raw[f"module.{key}"], rtol=0, atol=0)
    assert not model.training


def test_pretrained_from_env_and_weights_path(data_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("PURIFY_DATA_DIR", str(data_dir))
    a = create_model("resnet20", pretrained=True)
    b = create_model("resnet20", weights_path=_checkpoint(data_dir, "resnet20"), data_dir=tmp_path)
    torch.testing.assert_close(a.state_dict(), b.state_dict(), rtol=0, atol=0)


def test_sha_mismatch(data_dir, tmp_path):
    path = tmp_path / "resnet20_cifar10.th"
    shutil.copyfile(_checkpoint(data_dir, "resnet20"), path)
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(ChecksumError) as info:
        create_model("resnet20", pretrained=True, weights_path=path)
    msg = str(info.value)
    assert get_model_config("resnet20").sha256 in msg and str(path) in msg
    assert msg.count("got ") == 1 and len(msg.split("got ")[1].split(";")[0].strip()) == 64


def test_missing_weights(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        create_model("resnet56", pretrained=True, data_dir=tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "weights" / "resnet56_cifar10.th") in msg and "resnet56-4bfd9763.th" in msg
    assert "download=True" in msg and "PURIFY_DATA_DIR" in msg
    with pytest.raises(DataNotFoundError, match="weights_path"):
        create_model("resnet56", weights_path=tmp_path / "nope.th")


def test_download_via_file_url(data_dir, tmp_path, monkeypatch):
    cfg = get_model_config("resnet20")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copyfile(_checkpoint(data_dir, "resnet20"), mirror / cfg.upstream_file)
    local = dataclasses.replace(cfg, url=(mirror / cfg.upstream_file).as_uri())
    monkeypatch.setitem(factory._REGISTRY, "resnet20", local)
    empty = tmp_path / "empty"
    with pytest.raises(DataNotFoundError):  # no download unless asked
        create_model("resnet20", pretrained=True, data_dir=empty)
    model = create_model("resnet20", pretrained=True, data_dir=empty, download=True)
    cached = tmp_path / "cache" / "weights" / "resnet20-12fca82f.th"
    assert sorted(p.name for p in cached.parent.iterdir()) == [cached.name]
    assert resolve_weights(local, data_dir=empty) == cached  # later calls use the cache
    reference = create_model("resnet20", pretrained=True, data_dir=data_dir)
    torch.testing.assert_close(model.state_dict(), reference.state_dict(), rtol=0, atol=0)


def test_download_bad_sha(data_dir, tmp_path):
    cfg = get_model_config("resnet20")
    mirror = tmp_path / "mirror" / cfg.upstream_file
    mirror.parent.mkdir()
    mirror.write_bytes(_checkpoint(data_dir, "resnet20").read_bytes()[:-1] + b"\x00")
    local = dataclasses.replace(cfg, url=mirror.as_uri())
    with pytest.raises(ChecksumError, match=f"expected {cfg.sha256}"):
        resolve_weights(local, data_dir=tmp_path / "empty", download=True, progress=False)
    cache = tmp_path / "cache" / "weights"
    assert not cache.exists() or list(cache.iterdir()) == []  # no partial or temp file left


class _NotATensor:
    pass


def test_load_checkpoint_structure_errors(data_dir, tmp_path):
    ckpt = _checkpoint(data_dir, "resnet20")
    with pytest.raises(ShapeError, match="missing keys"):
        load_checkpoint(CifarResNet(56), ckpt, sha256=None)
    with pytest.raises(ShapeError, match="shape mismatches"):
        load_checkpoint(CifarResNet(20, num_classes=100), ckpt, sha256=None)
    stripped = tmp_path / "plain.pt"
    torch.save(CifarResNet(20).state_dict(), stripped)  # plain state dict, no "module." prefix
    load_checkpoint(CifarResNet(20), stripped, sha256=None)
    tensor_only = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor_only)
    with pytest.raises(DTypeError, match="state dict"):
        load_checkpoint(CifarResNet(20), tensor_only, sha256=None)
    code = tmp_path / "code.pt"
    torch.save({"state_dict": _NotATensor()}, code)
    with pytest.raises(DTypeError, match="_NotATensor.*could run code"):
        load_checkpoint(CifarResNet(20), code, sha256=None)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(DTypeError, match="not a torch checkpoint"):
        load_checkpoint(CifarResNet(20), garbage, sha256=None)


# ---------------------------------------------------------------------------------------------- accuracy contract


@pytest.mark.slow
@pytest.mark.parametrize("name", RESNETS)
def test_cifar10_test_accuracy(name, data_dir):
    """Contract figure: exact top-1 of the pretrained checkpoints on the full CIFAR-10 test set."""
    model = create_model(name, pretrained=True, data_dir=data_dir)
    dataset = load_dataset("cifar10", "test", data_dir=data_dir)
    start = time.perf_counter()
    correct = count_correct(model, dataset, batch_size=500)
    elapsed = time.perf_counter() - start
    assert correct == CORRECT[name], f"{name}: {correct}/10000 correct in {elapsed:.1f}s"
    assert round(100 * correct / len(dataset), 2) == model.pretrained_cfg.top1
