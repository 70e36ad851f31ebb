"""A served model with the shipped generative cleaning network behind TVM: answers equal the in-process pipeline."""

from __future__ import annotations

import numpy as np
import torch

from purify import Pipeline
from purify.models import create_model
from tests.serving.conftest import infer_probabilities, make_config, running_server

STAGES = [{"name": "tvm", "params": {"drop_prob": 0.0, "weight": 0.1, "iters": 40}},
          {"name": "gcln", "params": {"weights": "gcln_cifar10"}}]


def test_gcln_behind_tvm_serves_the_pipeline(images):
    cfg = make_config(name="cnn_gcln", stages=STAGES)
    with running_server([cfg]) as (address, app):
        assert app.state.server.models["cnn_gcln"].metadata()["parameters"]["stages"] == "tvm, gcln"
        served = infer_probabilities(address, "cnn_gcln", images[:4])
    pipeline = Pipeline.from_spec([(s["name"], s["params"]) for s in STAGES])
    with torch.no_grad():
        expected = create_model("small_cnn_cifar10", pretrained=True).eval()(pipeline(torch.from_numpy(images[:4])))
    np.testing.assert_allclose(served, torch.softmax(expected, 1).numpy(), atol=1e-5)
