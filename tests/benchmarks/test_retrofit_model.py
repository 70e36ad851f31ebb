"""``[model] retrofit``: the harness evaluates a classifier with its ReLUs replaced (purify.activations)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.harness import ConfigError, load_config
from benchmarks.harness.runner import prepare
from purify.activations import JumpReLU, Retrofitted
from tests.benchmarks.test_user_data import FACTORY, tiny_net, write_config
from tests.benchmarks.test_user_model import DATA, FGSM

RETROFIT = 'retrofit = { activation = "jumprelu", kappa = 0.5, backward = "relu" }'


@pytest.fixture
def npz(tmp_path):
    import numpy as np
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8),
             y=np.array([0, 1, 0, 1, 1, 0]))
    return tmp_path / "data.npz"


def _config(folder, model: str, name: str = "mine.toml"):
    return write_config(folder, DATA + "[model]\n" + model + "\n" + FGSM, name)


@pytest.mark.parametrize("model, match", [
    ('onnx = "m.onnx"\nretrofit = { activation = "jumprelu" }', "an ONNX graph is already built"),
    (f'factory = "{FACTORY}"\nretrofit = "jumprelu"', r"expected \{ activation"),
    (f'factory = "{FACTORY}"\nretrofit = {{ activation = "jumprelu", kappa = -1.0 }}', r"kappa in \[0.0"),
    (f'factory = "{FACTORY}"\nretrofit = {{ activation = "swish" }}', "unknown activation 'swish'"),
    (f'factory = "{FACTORY}"\nretrofit = {{ activation = "random_jumprelu" }}', "randomized classifier"),
])
def test_bad_retrofit_is_a_config_error(tmp_path, model, match):
    with pytest.raises(ConfigError, match=rf"model\.retrofit: .*{match}"):
        load_config(_config(tmp_path, model))


def test_retrofitted_model_is_what_is_evaluated_and_has_its_own_cells(tmp_path, npz):
    plain = prepare(load_config(_config(tmp_path, f'factory = "{FACTORY}"', "plain.toml")))
    jumpy = prepare(load_config(_config(tmp_path, f'factory = "{FACTORY}"\n{RETROFIT}', "jumpy.toml")))
    assert isinstance(jumpy.classifier, Retrofitted) and isinstance(jumpy.classifier.activation, JumpReLU)
    assert jumpy.classifier.activation.backward == "relu"           # every gradient attack is BPDA through it
    from purify.activations import retrofit
    want = retrofit(tiny_net(), "jumprelu", kappa=0.5)
    with torch.no_grad():
        torch.testing.assert_close(jumpy.classifier(jumpy.x), want(jumpy.x), rtol=0, atol=1e-6)
        assert not torch.allclose(plain.classifier(plain.x), jumpy.classifier(jumpy.x))
    assert plain.base != jumpy.base                                  # the cache keys tell them apart
