"""Your own classifier in the harness: ``[model]`` takes what the server's ``[classifier]`` takes.

A factory (``"module:function"``, with an optional state dict and its sha256), an ONNX graph (no
gradients: only score-based and transfer attacks), a registered name; and ``mean`` / ``std`` for a
model that expects normalized input.
"""

from __future__ import annotations

import csv
import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.harness import ConfigError, load_config, run
from benchmarks.harness.runner import prepare
from purify.errors import NonDifferentiableError
from purify.models import Normalized
from tests.benchmarks.test_user_data import FACTORY, tiny_net, write_config

DATA = """
description = "a user's model"
batch_size = 4
device = "cpu"
[data]
path = "data.npz"
"""
FGSM = """
[[attacks]]
name = "fgsm"
eps = ["8/255"]
threat_models = ["none"]
"""


@pytest.fixture
def npz(tmp_path) -> Path:
    """Six 16 x 16 RGB images of two classes, beside the configs."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8),
             y=np.array([0, 1, 0, 1, 1, 0]), classes=np.array(["cat", "dog"]))
    return tmp_path / "data.npz"


def _config(folder: Path, model: str, attacks: str = FGSM, name: str = "mine.toml", extra: str = "") -> Path:
    return write_config(folder, DATA + extra + "[model]\n" + model + "\n" + attacks, name)


MODEL_BAD = [
    ('name = "resnet20"\nfactory = "a:b"', r"model\.factory: give exactly one of model\.name, model\.factory or "
                                           r"model\.onnx, got name and factory"),
    ('pretrained = true', r"model\.name: missing required key; or give factory"),
    ('factory = "mynets.build"', r"model\.factory: expected 'package\.module:function', got 'mynets\.build'"),
    (f'factory = "{FACTORY}"\npretrained = true', r"model\.pretrained: only used with model\.name"),
    ('onnx = "m.onnx"\nweights = "w.pt"', r"model\.weights: applies to a name or factory model"),
    (f'factory = "{FACTORY}"\nweights_sha256 = "{"0" * 64}"', r"model\.weights_sha256: pins the weights file, so it "
                                                              r"needs model\.weights"),
    (f'factory = "{FACTORY}"\nweights = "w.pt"\nweights_sha256 = "abc"', r"weights_sha256: expected 64 hex digits"),
    (f'factory = "{FACTORY}"\nmean = [0.5, 0.5, 0.5]', r"model\.std: missing: model\.mean and model\.std go together"),
    (f'factory = "{FACTORY}"\nmean = [0.5]\nstd = [0.2, 0.2]', r"model\.std: expected as many values as model\.mean"),
    (f'factory = "{FACTORY}"\nmean = [0.5]\nstd = [0.0]', r"model\.std: expected every value > 0"),
    ('name = "resnet20"\nmean = [0.5]\nstd = [0.2]', r"model\.mean: resnet20 normalizes its input itself"),
    ('file = "m.pt"', r"model\.file: unknown key; model takes factory, mean, name, onnx"),
]


@pytest.mark.parametrize("model, match", MODEL_BAD, ids=[m.split("\n")[-1][:30] for m, _ in MODEL_BAD])
def test_exception_model_table(tmp_path, model, match):
    with pytest.raises(ConfigError, match=match):
        load_config(_config(tmp_path, model))


def test_model_paths_are_relative_to_the_config(tmp_path):
    cfg = load_config(_config(tmp_path, f'factory = "{FACTORY}"\nweights = "w.pt"\nmean = [0.5]\nstd = ["1/4"]'))
    assert cfg.model == {"factory": FACTORY, "weights": str((tmp_path / "w.pt").resolve()), "mean": [0.5],
                         "std": [0.25]}


def test_factory_weights_pin_and_normalization(tmp_path, npz, one_thread):
    trained = tiny_net()
    with torch.no_grad():
        for p in trained.parameters():
            p.mul_(-2.0)                                  # weights the factory alone does not have
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    sha = hashlib.sha256((tmp_path / "w.pt").read_bytes()).hexdigest()
    model = (f'factory = "{FACTORY}"\nweights = "w.pt"\nweights_sha256 = "{sha}"\n'
             'mean = [0.25, 0.5, 0.75]\nstd = [0.5, 0.25, 0.125]')
    p = prepare(load_config(_config(tmp_path, model)))
    assert isinstance(p.classifier, Normalized)
    mean, std = torch.tensor([0.25, 0.5, 0.75]).view(1, 3, 1, 1), torch.tensor([0.5, 0.25, 0.125]).view(1, 3, 1, 1)
    with torch.no_grad():                                 # one computation on one input: exact
        assert torch.equal(p.classifier(p.x), trained((p.x - mean) / std))
    assert p.base["model"]["weights_sha256"] == sha and p.base["model"]["source_sha256"] is not None
    assert "weights" not in p.base["model"]                # keyed by content, not by where the file lies
    wrong = model.replace(sha, "f" * 64)
    with pytest.raises(ConfigError, match=rf"wrong\.toml: model\.weights_sha256: .*w\.pt has sha256 {sha}, the "
                                          rf"config expects {'f' * 64}"):
        prepare(load_config(_config(tmp_path, wrong, name="wrong.toml")))


def test_changed_weights_are_new_cells(tmp_path, npz, one_thread):
    torch.save(tiny_net().state_dict(), tmp_path / "w.pt")
    path = _config(tmp_path, f'factory = "{FACTORY}"\nweights = "w.pt"')
    first = {c.label: c.hash for c in prepare(load_config(path)).cells}
    assert first == {c.label: c.hash for c in prepare(load_config(path)).cells}
    other = tiny_net()
    with torch.no_grad():
        other[0].bias.add_(1.0)
    torch.save(other.state_dict(), tmp_path / "w.pt")
    second = {c.label: c.hash for c in prepare(load_config(path)).cells}
    assert first.keys() == second.keys() and all(first[k] != second[k] for k in first)


def test_exception_factory_import_and_weights(tmp_path, npz):
    with pytest.raises(ConfigError, match=r"mine\.toml: model\.factory: cannot import 'no_such_module_x:build'"):
        prepare(load_config(_config(tmp_path, 'factory = "no_such_module_x:build"')))
    torch.save(tiny_net(3).state_dict(), tmp_path / "w3.pt")
    with pytest.raises(ConfigError, match=r"mine\.toml: model\.factory: .*does not fit the model"):
        prepare(load_config(_config(tmp_path, f'factory = "{FACTORY}"\nweights = "w3.pt"')))


def test_factory_beside_the_config(tmp_path, npz, one_thread):
    """A module next to the config file is found (the config's folder is searched first), as by the server."""
    (tmp_path / "mynets_beside.py").write_text(
        "from tests.benchmarks.test_user_data import tiny_net\n\ndef build():\n    return tiny_net()\n")
    p = prepare(load_config(_config(tmp_path, 'factory = "mynets_beside:build"')))
    assert p.classifier(p.x).shape == (6, 2)


# ----------------------------------------------------------------------------- ONNX

ONNX_ATTACKS = """
[defense]
stages = [{ name = "tvm", params = { weight = 0.05, iters = 5 } }]
[[attacks]]
name = "square"
eps = ["8/255"]
threat_models = ["none", "bpda"]
params = { queries = 20 }
"""


@pytest.mark.parametrize("attacks, match", [
    (FGSM, r"attacks\[0\]\.name: fgsm differentiates the model it attacks \(threat model 'none'\), and model\.onnx "
           r"is an ONNX graph without gradients; use a score-based attack \(square\)"),
    (ONNX_ATTACKS + '[worst]\neps = ["8/255"]\n', r"worst: apgd differentiates the model it attacks"),
])
def test_exception_onnx_gradient_attacks_refused_before_work(tmp_path, attacks, match):
    with pytest.raises(ConfigError, match=match):
        load_config(_config(tmp_path, 'onnx = "never_read.onnx"', attacks))


def test_onnx_with_wnll_head_refused(tmp_path):
    attacks = ONNX_ATTACKS.replace("[defense]\n", '[defense]\nhead = "wnll"\n')
    with pytest.raises(ConfigError, match=r"defense\.head: the WNLL head labels by the classifier's features"):
        load_config(_config(tmp_path, 'onnx = "m.onnx"', attacks))


def _export(net: torch.nn.Module, path: Path, batch: int | None) -> Path:
    pytest.importorskip("onnx")
    x = torch.rand(batch or 2, 3, 16, 16)
    with warnings.catch_warnings():    # the TorchScript exporter (what purify-export uses too) is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (x,), str(path), input_names=["x"], output_names=["logits"], opset_version=17,
                          dynamo=False, dynamic_axes=None if batch else {"x": {0: "b"}, "logits": {0: "b"}})
    return path


@pytest.fixture
def substitute():
    """A torch substitute for transfer attacks on an ONNX model: a registered classifier."""
    from purify.models import register_model, unregister_model

    register_model("tiny_substitute", lambda: tiny_net(), classes=["cat", "dog"])
    yield "tiny_substitute"
    unregister_model("tiny_substitute")


def test_onnx_model_runs_score_based_and_transfer_attacks(tmp_path, npz, substitute, one_thread):
    pytest.importorskip("onnxruntime")
    path = _export(tiny_net(), tmp_path / "m.onnx", None)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    transfer = ('\n[[attacks]]\nname = "pgd"\neps = ["8/255"]\nthreat_models = ["substitute", "blackbox"]\n'
                'params = { iters = 2, step_ratio = 0.5 }\n')
    cfg = load_config(_config(tmp_path, f'onnx = "m.onnx"\nonnx_sha256 = "{sha}"', ONNX_ATTACKS + transfer,
                              extra=f'[substitute]\nname = "{substitute}"\n'))
    result = run(cfg.path, out=tmp_path / "out", progress=False, cache_dir=tmp_path / "cache")
    with open(tmp_path / "out" / "cells.csv") as f:
        rows = {(r["attack"], r["threat_model"]): r for r in csv.DictReader(f)}
    assert set(rows) == {("square", "none"), ("square", "bpda"), ("pgd", "substitute"), ("pgd", "blackbox")}
    assert len(result.computed) == 4
    for (attack, _), r in rows.items():
        assert r["n_images"] == "6" and float(r["max_linf"]) <= 8 / 255 + 1e-6
        assert (int(r["backwards"]) == 0) == (attack == "square")    # gradients only through the substitute
    assert "- Model: ONNX m.onnx" in (tmp_path / "out" / "report.md").read_text()
    p = prepare(cfg)
    assert p.base["model"] == {"onnx_sha256": sha}
    with pytest.raises(NonDifferentiableError, match=r"ONNX graph and has no gradients"):
        p.classifier(p.x.clone().requires_grad_(True))


def test_onnx_fixed_batch_graph_runs_in_chunks(tmp_path):
    pytest.importorskip("onnxruntime")
    from benchmarks.harness.onnx_model import OnnxClassifier

    model = OnnxClassifier(_export(tiny_net(), tmp_path / "b1.onnx", 1))
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    out = model(x)
    # each chunk is the same graph on the same one-image input as the per-image calls: exact
    assert out.shape == (3, 2) and all(torch.equal(out[i:i + 1], model(x[i:i + 1])) for i in range(3))
