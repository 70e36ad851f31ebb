"""The feature-squeezing stages (bit_depth, median_smooth) in the server and in ``purify-export``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from purify import bit_depth_reduce, median_smooth
from serving.errors import ConfigError
from tests.serving.conftest import infer_probabilities, make_config, running_server

STAGES = [{"name": "bit_depth", "params": {"bits": 5}}, {"name": "median_smooth", "params": {"size": 2}}]


def test_nothing_of_theirs_varies_per_request():
    # bits and size are integers that fix the computation: the registry declares no per-sample parameter.
    with pytest.raises(ConfigError, match=r"expected a per-sample parameter of 'bit_depth' \(none\), got 'bits'"):
        make_config(stages=STAGES, request_parameters={"bits": {"stage": "bit_depth", "param": "bits", "max": 8}})
    with pytest.raises(ConfigError, match=r"'median_smooth' \(none\), got 'size'"):
        make_config(stages=STAGES, request_parameters={"size": {"stage": "median_smooth", "param": "size", "max": 5}})


def test_served_over_http_equals_the_library(images):
    from serving.backends import build_defended_model

    cfg = make_config(name="squeezed", stages=STAGES, request_parameters={}, backend={"memory_format": "contiguous"})
    with running_server([cfg]) as (address, _):
        probs = infer_probabilities(address, "squeezed", images[:5])
    model, _ = build_defended_model(cfg)
    x = torch.from_numpy(images[:5])
    with torch.inference_mode():
        expected = torch.softmax(model.classifier(median_smooth(bit_depth_reduce(x, bits=5), size=2)), dim=1)
    # The same kernels on the same batch; the server's batcher may split it, and a classifier's
    # float32 sums can then differ in the last bits (one batched GEMM against another).
    np.testing.assert_allclose(probs, expected.numpy(), rtol=0, atol=1e-6)


def test_median_smooth_exports_and_verifies(tmp_path, data_dir):
    import onnx
    pytest.importorskip("onnxruntime")
    from serving.export import export_config

    cfg = make_config(stages=[{"name": "median_smooth", "params": {"size": 3}}], request_parameters={})
    report = export_config(cfg, tmp_path / "median.onnx", data_dir=data_dir, n_images=8)
    # It selects values: nothing rounds, every image is compared, none is excused.
    assert report.max_abs_diff <= 1e-4 and report.rounding_flips == 0
    assert [i.name for i in onnx.load(str(report.path)).graph.input] == ["images"]


def test_bit_depth_export_is_refused_before_tracing(tmp_path, data_dir, monkeypatch):
    pytest.importorskip("onnxruntime")
    from serving.export import export_config

    def traced(*args, **kwargs):
        raise AssertionError("the model was traced")

    monkeypatch.setattr(torch.onnx, "export", traced)
    cfg = make_config(stages=STAGES, request_parameters={})
    with pytest.raises(ConfigError, match=r"stage 0 \(bit_depth\) rounds but takes no per-sample q, so the graph "
                                          r"cannot be verified.*torch backend"):
        export_config(cfg, tmp_path / "bits.onnx", data_dir=data_dir, n_images=4)
    assert not (tmp_path / "bits.onnx").exists()
