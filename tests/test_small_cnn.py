"""The shipped small CIFAR-10 CNN (purify/weights/small_cnn_cifar10.*) and its training recipe."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from purify.errors import ChecksumError, DTypeError
from purify.models import Normalized, SmallCNN, create_model, get_model_config, load_packaged
from purify.models.small_cnn import WEIGHTS_DIR
from purify.training import classifier as recipe

NAME = "small_cnn_cifar10"


def test_smoke_and_shapes():
    model = create_model(NAME)
    assert isinstance(model, Normalized) and not model.training
    for b in (0, 1, 3):
        x = torch.rand(b, 3, 32, 32)
        assert model(x).shape == (b, 10) and model.features(x).shape == (b, 128)
    assert sum(p.numel() for p in model.parameters()) == 94_762


def test_artifact_is_small_and_self_describing():
    cfg = get_model_config(NAME)
    assert (WEIGHTS_DIR / f"{NAME}.safetensors").stat().st_size < 1_000_000
    assert cfg.widths == (32, 64, 128) and cfg.classes[3] == "cat"
    assert cfg.raw["command"].startswith("python -m purify.training.classifier")
    log = (WEIGHTS_DIR / f"{NAME}.log").read_text()
    assert f"test accuracy {cfg.test_accuracy:.2f}%" in log and "epoch 5/5" in log


def test_pretrained_weights_differ_from_init_and_are_checked(tmp_path):
    trained = create_model(NAME, pretrained=True)
    fresh = create_model(NAME)
    assert not torch.equal(trained.model.linear.weight, fresh.model.linear.weight)
    for suffix in (".json", ".safetensors"):
        shutil.copy(WEIGHTS_DIR / f"{NAME}{suffix}", tmp_path / f"{NAME}{suffix}")
    raw = bytearray((tmp_path / f"{NAME}.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (tmp_path / f"{NAME}.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ChecksumError, match="sha256 mismatch"):
        load_packaged(NAME, weights_dir=tmp_path)
    with pytest.raises(DTypeError, match="weights_path is for the ResNets"):
        create_model(NAME, weights_path=tmp_path / f"{NAME}.safetensors")


def test_recorded_test_accuracy(data_dir):
    """The json's figure is the model's exact top-1 on the full CIFAR-10 test set."""
    from purify.data import load_dataset

    model = create_model(NAME, pretrained=True)
    x, y = load_dataset("cifar10", "test", data_dir=data_dir).tensors()
    # abs 0.03: three images, room for a kernel that rounds differently on another CPU.
    assert recipe.evaluate(model, x, y) == pytest.approx(get_model_config(NAME).test_accuracy, abs=0.03)


def test_recipe_writes_an_artifact_that_loads(tmp_path, data_dir):
    out = tmp_path / "w"
    assert recipe.main(["--data-dir", str(data_dir), "--out-dir", str(out), "--name", "tiny", "--limit", "512",
                        "--epochs", "1", "--widths", "4", "8", "8", "--batch-size", "64"]) == 0
    cfg = json.loads((out / "tiny.json").read_text())
    assert cfg["arch"]["widths"] == [4, 8, 8] and "--limit 512" in cfg["command"]
    assert cfg["format"] == "purify.small_cnn" and cfg["weights_file"] == "tiny.safetensors"   # via save_artifact
    assert "epoch 1/1: train loss" in (out / "tiny.log").read_text()
    model = load_packaged("tiny", weights_dir=out)
    assert isinstance(model.model, SmallCNN) and model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
