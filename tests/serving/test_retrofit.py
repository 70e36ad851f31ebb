"""``[classifier] retrofit``: a JumpReLU-retrofitted classifier is checked, served and exported by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from purify.activations import JumpReLU, retrofit  # noqa: E402
from purify.models import create_model  # noqa: E402
from serving.config import ConfigError  # noqa: E402
from serving.export import export_config  # noqa: E402
from tests.serving.conftest import infer_probabilities, make_config, running_server  # noqa: E402

KAPPA = 0.3
RETROFIT = {"retrofit": {"activation": "jumprelu", "kappa": KAPPA}}
# DCT only: deterministic, so the server's answer can be compared with the in-process model.
STAGES = [{"name": "dct", "params": {"q": 10.0}}]


def config(**overrides):
    return make_config(request_parameters={}, **overrides)


def test_config_parses_and_checks_the_retrofit():
    cfg = config(classifier=RETROFIT, stages=STAGES)
    assert cfg.retrofit == {"activation": "jumprelu", "kappa": KAPPA}
    with pytest.raises(ConfigError, match="classifier.retrofit: .*unknown activation 'swish'"):
        config(classifier={"retrofit": {"activation": "swish"}})
    with pytest.raises(ConfigError, match=r"classifier.retrofit: .*kappa in \[0.0"):
        config(classifier={"retrofit": {"activation": "jumprelu", "kappa": -1.0}})
    with pytest.raises(ConfigError, match="classifier.retrofit: expected"):
        config(classifier={"retrofit": "jumprelu"})
    with pytest.raises(ConfigError, match="already built"):
        config(classifier={"registry": None, "onnx": "m.onnx", **RETROFIT}, backend={"type": "onnxruntime"})


def test_served_retrofit_equals_the_in_process_model(images):
    from serving.backends import build_defended_model

    cfg = config(classifier=RETROFIT, stages=STAGES)
    model, _ = build_defended_model(cfg)
    assert isinstance(model.classifier.activation, JumpReLU) and model.classifier.activation.kappa == KAPPA
    x = images[:8]
    with torch.no_grad():
        want = torch.softmax(model(torch.from_numpy(x)), 1).numpy()
        plain = torch.softmax(create_model("small_cnn_cifar10", pretrained=True)(torch.from_numpy(x)), 1).numpy()
    assert np.abs(want - plain).max() > 1e-3            # the retrofit changed the answers
    with running_server([cfg]) as (address, _):
        got = infer_probabilities(address, "cnn", x)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_export_of_a_retrofitted_classifier(tmp_path, data_dir, images):
    """The exported graph computes JumpReLU (the torch-function mode is traced), verified on real images."""
    import onnxruntime as ort

    cfg = config(classifier=RETROFIT, stages=[])
    report = export_config(cfg, tmp_path / "jump.onnx", data_dir=data_dir, n_images=8)
    assert report.max_abs_diff <= 1e-4
    sess = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    x = images[:4]
    outputs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"images": x})))
    net = retrofit(create_model("small_cnn_cifar10", pretrained=True), "jumprelu", kappa=KAPPA).eval()
    with torch.no_grad():
        want = torch.softmax(net(torch.from_numpy(x)), 1).numpy()
        plain = torch.softmax(create_model("small_cnn_cifar10", pretrained=True)(torch.from_numpy(x)), 1).numpy()
    np.testing.assert_allclose(outputs["probabilities"], want, atol=1e-5, rtol=0)
    assert np.abs(outputs["probabilities"] - plain).max() > 1e-3
