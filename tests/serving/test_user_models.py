"""A user's own torch module behind purify-serve (``classifier.factory``), and the head's memory format."""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pytest
import torch

from serving.backends import TorchBackend
from serving.config import ServeConfig, load_config
from serving.errors import ConfigError
from serving.model import ServedModel
from tests.serving.conftest import infer_probabilities, make_config, running_server

MODULE = "purify_test_user_nets"

NETS = '''
import torch
from torch import nn


class Net(nn.Module):
    """conv -> ReLU -> max-pool -> linear on (B, 3, 32, 32) images in [0, 1]."""

    def __init__(self, flatten_with_view=False):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(4)
        self.fc = nn.Linear(8 * 8 * 8, 4)
        self.flatten_with_view = flatten_with_view

    def features(self, x):
        h = self.pool(torch.relu(self.conv(x)))
        # .view needs contiguous strides: it fails on a channels_last tensor, as in many user models.
        return h.view(h.shape[0], -1) if self.flatten_with_view else h.flatten(1)

    def forward(self, x):
        return self.fc(self.features(x))


def build():
    return Net()


def build_view():
    return Net(flatten_with_view=True)


def build_plain():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4))


def build_broken():
    raise RuntimeError("weights server unreachable")


def not_a_module():
    return 42
'''


@pytest.fixture(scope="module")
def nets_dir(tmp_path_factory):
    """A folder holding the user's module and a trained state dict for ``build``; the module is forgotten after."""
    folder = tmp_path_factory.mktemp("user_nets")
    (folder / f"{MODULE}.py").write_text(NETS)
    sys.path.insert(0, str(folder))
    try:
        import importlib

        nets = importlib.import_module(MODULE)
        trained = nets.build()
        with torch.no_grad():
            trained.fc.bias.copy_(torch.tensor([0.5, -0.5, 1.0, 0.0]))
        torch.save(trained.state_dict(), folder / "trained.pt")
    finally:
        sys.path.remove(str(folder))
    yield folder
    sys.modules.pop(MODULE, None)


def _config(folder, factory: str, **tables: dict) -> ServeConfig:
    """``<factory>.toml`` in ``folder``: the factory (with the trained state dict for ``build``), 4 class
    names, one thread; ``tables`` add or override keys of a table, e.g. ``backend={"memory_format": ...}``."""
    data = {"classifier": {"factory": f"{MODULE}:{factory}"},
            "outputs": {"classes": ["ant", "bee", "cat", "dog"], "top_k": 2}, "backend": {"threads": 1}}
    if factory == "build":
        data["classifier"]["weights"] = "trained.pt"
    for table, values in tables.items():
        data[table] = {**data.get(table, {}), **values}
    lines = ['name = "mine"']
    for table, values in data.items():
        lines.append(f"[{table}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    path = folder / f"{factory}.toml"
    path.write_text("\n".join(lines) + "\n")
    return load_config(path)


def test_factory_model_is_served_with_its_weights(nets_dir, data_dir):
    """Imported from the config's folder, state dict loaded, answers equal the module's own softmax."""
    from purify.data import load_dataset

    cfg = _config(nets_dir, "build")
    x = load_dataset("cifar10", "test", data_dir=data_dir).tensors(slice(0, 6))[0].numpy()
    nets = sys.modules[MODULE]
    expected_net = nets.build()
    expected_net.load_state_dict(torch.load(nets_dir / "trained.pt", weights_only=True))
    with torch.no_grad():
        expected = torch.softmax(expected_net.eval()(torch.from_numpy(x)), dim=1).numpy()
    with running_server([cfg]) as (address, app):
        np.testing.assert_allclose(infer_probabilities(address, "mine", x), expected, atol=1e-5)
        model = app.state.server.models["mine"]
        assert model.metadata()["parameters"]["memory_format"] == "channels_last"
        assert model.num_classes == 4 and model.classes == ("ant", "bee", "cat", "dog")


def test_a_head_that_breaks_on_channels_last_falls_back(nets_dir, caplog):
    cfg = _config(nets_dir, "build_view")
    with caplog.at_level(logging.WARNING, logger="serving"):
        backend = TorchBackend(cfg)
    assert backend.info["memory_format"] == "contiguous"
    assert "serving the head contiguous" in caplog.text and "view" in caplog.text
    x = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        expected = torch.softmax(sys.modules[MODULE].build_view().eval()(torch.from_numpy(x)), dim=1).numpy()
    np.testing.assert_allclose(backend.run(x, []), expected, atol=1e-6)
    with pytest.raises(ConfigError, match="backend.memory_format: 'channels_last' cannot be used: the head fails"):
        TorchBackend(_config(nets_dir, "build_view", backend={"memory_format": "channels_last"}))


@pytest.mark.parametrize("factory, match", [
    ("no_such_function", r"classifier.factory: cannot import .*AttributeError"),
    ("build_broken", r"classifier.factory: .*build_broken' failed: RuntimeError: weights server unreachable"),
    ("not_a_module", r"classifier.factory: .*returned int, expected an nn.Module"),
])
def test_factory_errors_name_the_field(nets_dir, factory, match):
    with pytest.raises(ConfigError, match=match):
        TorchBackend(_config(nets_dir, factory))


def test_factory_module_that_does_not_import(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('name = "m"\n[classifier]\nfactory = "purify_no_such_module_xyz:build"\n')
    with pytest.raises(ConfigError, match=r"m.toml: classifier.factory: cannot import .*ModuleNotFoundError"):
        TorchBackend(load_config(path))


def test_wnll_head_needs_features(nets_dir):
    templates = nets_dir / "templates.safetensors"
    templates.write_bytes(b"")
    with pytest.raises(ConfigError, match="head.type: 'wnll' .* no features"):
        TorchBackend(_config(nets_dir, "build_plain", head={"type": "wnll", "templates": str(templates)}))


def test_a_model_that_fails_on_the_input_shape_fails_at_start_up(nets_dir):
    cfg = _config(nets_dir, "build", input={"shape": [3, 16, 16]})  # the Net's linear layer wants 32x32
    with pytest.raises(ConfigError, match=r"classifier: the model fails on a probe batch of shape \(1, 3, 16, 16\)"):
        ServedModel(cfg)


def test_channels_last_head_matches_the_contiguous_one(data_dir):
    """The built-in default classifier gives the same scores in either layout (no randomness: no stages)."""
    from purify.data import load_dataset

    x = load_dataset("cifar10", "test", data_dir=data_dir).tensors(slice(0, 16))[0].numpy()
    fast = TorchBackend(make_config(stages=[], request_parameters={}))
    plain = TorchBackend(make_config(stages=[], request_parameters={}, backend={"memory_format": "contiguous"}))
    assert (fast.info["memory_format"], plain.info["memory_format"]) == ("channels_last", "contiguous")
    np.testing.assert_allclose(fast.run(x, []), plain.run(x, []), atol=1e-5)
