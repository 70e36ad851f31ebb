"""A served model with a WNLL head (purify.wnll, when present): its scores are the head's interpolation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

wnll = pytest.importorskip("purify.wnll")

import tritonclient.http as httpclient  # noqa: E402

from purify import tv_minimize  # noqa: E402
from purify.data import load_dataset  # noqa: E402
from purify.models import create_model  # noqa: E402
from tests.serving.conftest import infer_probabilities, make_config, running_server  # noqa: E402


@pytest.fixture(scope="module")
def head_path(tmp_path_factory, data_dir):
    """A plain WNLL head: 20 validation images per class as templates on the small CNN's features."""
    model = create_model("small_cnn_cifar10", pretrained=True)
    x, y = load_dataset("cifar10", "val", data_dir=data_dir).tensors(slice(0, 300))
    with torch.inference_mode():
        templates = wnll.TemplateSet.build(model.features, x, y, per_class=20,
                                           generator=torch.Generator().manual_seed(0))
    path = tmp_path_factory.mktemp("wnll") / "head"
    wnll.WNLLHead(templates).save(path)
    return path


def test_wnll_head_serves_interpolated_scores(head_path, images):
    model = create_model("small_cnn_cifar10", pretrained=True)
    cfg = make_config(name="cnn_wnll", head={"type": "wnll", "templates": str(head_path)})
    with running_server([cfg]) as (address, app):
        assert app.state.server.models["cnn_wnll"].metadata()["parameters"]["head"] == "wnll"
        scores = infer_probabilities(address, "cnn_wnll", images[:4])
    # Independently: TVM as configured (drop 0, so deterministic), features, the saved head alone.
    head = wnll.WNLLHead.load(head_path, mode="inductive")
    with torch.inference_mode():
        purified = tv_minimize(torch.from_numpy(images[:4]), weight=0.1, drop_prob=0.0, iters=40)
        expected = head(model.features(purified)).numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    np.testing.assert_allclose(scores.sum(1), 1.0, atol=1e-4)


def test_wnll_head_exports_to_onnx(head_path, data_dir, tmp_path):
    from serving.export import export_config

    cfg = make_config(head={"type": "wnll", "templates": str(head_path)},
                      stages=[{"name": "tvm", "params": {"drop_prob": 0.3, "weight": 0.1, "iters": 10}}])
    report = export_config(cfg, tmp_path / "wnll.onnx", data_dir=data_dir, n_images=16)
    assert report.max_abs_diff <= 1e-4 and report.path.is_file()
