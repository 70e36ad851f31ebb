"""purify._artifacts: the one place that resolves, verifies and loads every shipped or saved artifact."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from purify._artifacts import (SHIPPED_DIR, ArtifactError, artifact_format, artifact_log_path, artifact_paths,
                               list_artifacts, load_artifact, read_config, resolve_artifact, save_artifact)
from purify._download import sha256_file
from purify.errors import ChecksumError, DataNotFoundError, DTypeError

SHIPPED = {
    "purify.gcln_generator": ["gcln_cifar10", "gcln_cifar10_q5"],
    "purify.wnll_head": ["resnet56_wnll", "resnet56_wnll_e2e_head", "resnet56_wnll_e2e_tvm_aug_head",
                         "resnet56_wnll_e2e_tvm_data_head", "resnet56_wnll_plain"],
    "purify.small_cnn": ["small_cnn_cifar10"],
    "purify.template_set": [],
    "purify.trained_classifier": ["cnn_cifar10_gda", "cnn_cifar10_gda_brelu", "cnn_mnist_gda", "cnn_mnist_gda_brelu",
                                  "convnet_cifar10_dd", "lenet5_mnist", "lenet5_mnist_at", "lenet5_mnist_fgsm_rs",
                                  "lenet_mnist_dd", "mlp_mnist_dd", "resnet20_cifar10_at", "resnet56_tvm_aug",
                                  "resnet56_tvm_data", "resnet56_wnll_e2e", "resnet56_wnll_e2e_tvm_aug",
                                  "resnet56_wnll_e2e_tvm_data"],
}


def _tamper(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# ----------------------------------------------------------------------------- save / load

def test_round_trip_records_the_file_and_its_sha256(tmp_path):
    tensors = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([1, 2])}
    json_path = save_artifact(tmp_path / "sub" / "a", tensors, {"format": "demo", "sha256": "stale", "x": 1})
    assert json_path == tmp_path / "sub" / "a.json"
    cfg = json.loads(json_path.read_text())
    assert cfg["weights_file"] == "a.safetensors" and cfg["sha256"] == sha256_file(tmp_path / "sub" / "a.safetensors")
    for given in ("sub/a", "sub/a.json", "sub/a.safetensors"):
        back, cfg = load_artifact(tmp_path / given, expected_format="demo")
        assert back.keys() == tensors.keys() and all(torch.equal(back[k], v) for k, v in tensors.items())
        assert cfg["x"] == 1


def test_dotted_names_keep_their_stem(tmp_path):
    save_artifact(tmp_path / "gen.v2", {"w": torch.ones(1)}, {"format": "demo"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen.v2.json", "gen.v2.safetensors"]
    assert [p.name for p in artifact_paths(tmp_path / "gen.v2.json")] == ["gen.v2.safetensors", "gen.v2.json"]
    assert load_artifact(tmp_path / "gen.v2", expected_format="demo")[1]["weights_file"] == "gen.v2.safetensors"
    # the trainers' log sits beside them under the same stem (Path.with_suffix would give gen.log)
    log_path = tmp_path / "gen.v2.log"
    assert artifact_log_path(tmp_path / "gen.v2") == artifact_log_path(tmp_path / "gen.v2.json") == log_path


def test_exception_save_without_format(tmp_path):
    with pytest.raises(ArtifactError, match="'format'"):
        save_artifact(tmp_path / "a", {"w": torch.ones(1)}, {"x": 1})
    assert not list(tmp_path.iterdir())


def test_exception_checksum_before_parsing(tmp_path):
    """A damaged file is refused by its sha256, before safetensors ever parses it."""
    save_artifact(tmp_path / "a", {"w": torch.ones(4)}, {"format": "demo"})
    (tmp_path / "a.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ChecksumError, match="sha256 mismatch.*recorded in a.json"):
        load_artifact(tmp_path / "a", expected_format="demo")


def test_exception_wrong_format_bad_json_missing_files(tmp_path):
    save_artifact(tmp_path / "a", {"w": torch.ones(1)}, {"format": "demo"})
    with pytest.raises(ArtifactError, match="expected an artifact of format 'other', got 'demo'"):
        load_artifact(tmp_path / "a", expected_format="other")
    (tmp_path / "b.json").write_text("{not json")
    (tmp_path / "b.safetensors").write_bytes(b"")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_config(tmp_path / "b", expected_format="demo")
    (tmp_path / "a.safetensors").unlink()
    with pytest.raises(DataNotFoundError, match="a.safetensors does not exist"):
        load_artifact(tmp_path / "a.json", expected_format="demo")
    with pytest.raises(DataNotFoundError, match="c.json does not exist"):
        read_config(tmp_path / "c", expected_format="demo")


# ----------------------------------------------------------------------------- resolution

def test_resolve_shipped_names_and_paths(tmp_path, monkeypatch):
    for given in ("gcln_cifar10", "gcln_cifar10.json", "gcln_cifar10.safetensors", SHIPPED_DIR / "gcln_cifar10"):
        assert resolve_artifact(given, format="purify.gcln_generator") == SHIPPED_DIR / "gcln_cifar10.json"
    save_artifact(tmp_path / "gcln_cifar10", {"w": torch.ones(1)}, {"format": "purify.gcln_generator"})
    assert resolve_artifact(tmp_path / "gcln_cifar10", format="purify.gcln_generator") == tmp_path / "gcln_cifar10.json"
    monkeypatch.chdir(tmp_path)                     # a complete artifact in the working directory comes first
    assert resolve_artifact("gcln_cifar10", format="purify.gcln_generator").resolve() == tmp_path / "gcln_cifar10.json"
    (tmp_path / "gcln_cifar10.safetensors").unlink()   # a half one does not shadow the shipped artifact
    assert resolve_artifact("gcln_cifar10", format="purify.gcln_generator") == SHIPPED_DIR / "gcln_cifar10.json"


def test_exception_nothing_matches_lists_that_format(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"loadx: no head at 'nope'.*shipped heads: \['resnet56_wnll', "
                                                r"'resnet56_wnll_e2e_head', 'resnet56_wnll_e2e_tvm_aug_head', "
                                                r"'resnet56_wnll_e2e_tvm_data_head', 'resnet56_wnll_plain'\]\. "
                                                r"train one"):
        resolve_artifact("nope", format="purify.wnll_head", what="head", fn="loadx", hint="train one")
    with pytest.raises(DataNotFoundError, match=r"looked for .*absent\.json\); shipped artifacts: none yet"):
        resolve_artifact(tmp_path / "absent", format="purify.template_set")
    with pytest.raises(DTypeError, match="shipped generator name or a path, got int"):
        resolve_artifact(3, format="purify.gcln_generator", what="generator")


@pytest.mark.parametrize("fmt", sorted(SHIPPED))
def test_list_artifacts(fmt):
    assert list_artifacts(fmt) == SHIPPED[fmt]


def test_every_shipped_artifact_is_listed_resolves_and_verifies():
    """Each json in purify/weights has a known format, and its safetensors matches the recorded sha256."""
    jsons = sorted(p.stem for p in SHIPPED_DIR.glob("*.json"))
    assert jsons == sorted(n for names in SHIPPED.values() for n in names)
    for fmt, names in SHIPPED.items():
        for name in names:
            cfg = read_config(resolve_artifact(name, format=fmt), expected_format=fmt)
            assert artifact_format(cfg) == fmt
            tensors, cfg = load_artifact(SHIPPED_DIR / name, expected_format=fmt)
            assert tensors and cfg["sha256"] == sha256_file(SHIPPED_DIR / f"{name}.safetensors")
            assert cfg.get("weights_file", f"{name}.safetensors") == f"{name}.safetensors"


def test_small_cnn_json_predates_the_format_field():
    raw = json.loads((SHIPPED_DIR / "small_cnn_cifar10.json").read_text())
    assert "format" not in raw and artifact_format(raw) == "purify.small_cnn"
    assert artifact_format({"arch": {"type": "Other"}}) is None and artifact_format({"format": 3}) is None


# ----------------------------------------------------------------------------- every loader goes through it

def _load_gcln(folder, name):
    from purify.gcln import GCLN

    return GCLN(weights=folder / name)


def _load_head(folder, name):
    from purify.wnll import WNLLHead

    return WNLLHead.load(folder / name)


def _load_cnn(folder, name):
    from purify.models import load_packaged

    return load_packaged(name, weights_dir=folder)


@pytest.mark.parametrize("load, name", [(_load_gcln, "gcln_cifar10"), (_load_head, "resnet56_wnll"),
                                        (_load_cnn, "small_cnn_cifar10")], ids=["gcln", "wnll", "small_cnn"])
def test_loaders_share_resolution_and_checks(tmp_path, load, name):
    for suffix in (".json", ".safetensors"):
        shutil.copy(SHIPPED_DIR / f"{name}{suffix}", tmp_path / f"{name}{suffix}")
    assert load(tmp_path, name) is not None
    _tamper(tmp_path / f"{name}.safetensors")
    with pytest.raises(ChecksumError, match="sha256 mismatch"):
        load(tmp_path, name)
    (tmp_path / f"{name}.safetensors").unlink()
    with pytest.raises(DataNotFoundError, match=rf"shipped \w+( \w+)?s: \[.*'{name}'"):
        load(tmp_path / "elsewhere", name)
