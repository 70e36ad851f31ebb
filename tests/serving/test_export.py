"""``purify-export`` (serving.export over serving.onnx_graph) and the ONNX Runtime backend serving its graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

import tritonclient.http as httpclient  # noqa: E402

from serving.errors import ConfigError  # noqa: E402
from serving.export import ExportError, export_config, main as export_main  # noqa: E402
from serving.backends import class_scores  # noqa: E402
from tests.serving.conftest import make_config, running_server  # noqa: E402

# Few TV iterations keep the unrolled graph small, so the test stays fast; the default model's
# 160-iteration export is what `purify-export` and benchmarks/serving_bench.py run.
STAGES = [{"name": "tvm", "params": {"drop_prob": 0.3, "weight": 0.1, "iters": 12}}]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, data_dir):
    cfg = make_config(stages=STAGES)
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    report = export_config(cfg, path, data_dir=data_dir, n_images=32)
    return cfg, report


def test_export_is_verified_on_real_images(exported):
    cfg, report = exported
    assert report.path.is_file() and report.images == 32 and report.batch_sizes == (32, 1)
    assert report.max_abs_diff <= 1e-4
    assert report.providers[-1] == "CPUExecutionProvider"


def test_graph_has_a_dynamic_batch_axis_and_the_stage_inputs(exported):
    import onnx

    _, report = exported
    graph = onnx.load(str(report.path)).graph
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert inputs == {"images": ["batch", 3, 32, 32], "stage0_tvm_mask": ["batch", 1, 32, 32],
                      "stage0_tvm_weight": ["batch"]}


def test_onnx_backend_serves_the_graph(exported, images):
    """Served through ONNX Runtime == the torch model given the same TVM mask, end to end over HTTP."""
    from serving.backends import build_defended_model

    cfg_torch, report = exported
    cfg = make_config(name="cnn_onnx", classifier={"registry": None, "onnx": str(report.path)}, stages=STAGES,
                      request_parameters={"tv_weight": {"stage": "tvm", "param": "weight", "min": 0.0, "max": 1.0}},
                      backend={"type": "onnxruntime"})
    with running_server([cfg]) as (address, app):
        client = httpclient.InferenceServerClient(address)
        meta = client.get_model_metadata("cnn_onnx")
        assert meta["platform"] == "onnxruntime_onnx"
        assert meta["parameters"]["providers"] == "CPUExecutionProvider"  # what the session actually uses
        # onnxruntime-gpu offers CUDA even without a GPU: it is requested, and the report says the CPU runs
        import onnxruntime as ort
        cuda_offered = "CUDAExecutionProvider" in ort.get_available_providers()
        assert ("CUDAExecutionProvider" in meta["parameters"]["requested_providers"]) == cuda_offered
        app.state.server.models["cnn_onnx"].backend.generator.manual_seed(123)
        inp = httpclient.InferInput("images", [4, 3, 32, 32], "FP32")
        inp.set_data_from_numpy(images[:4])
        probs = client.infer("cnn_onnx", [inp], parameters={"tv_weight": 0.2}).as_numpy("probabilities")
        client.close()
    model, _ = build_defended_model(cfg_torch)
    x = torch.from_numpy(images[:4])
    # The same mask the backend drew: the pipeline's own draw from a generator in the same state.
    drawn = model.pipeline.draw_inputs(x, generator=torch.Generator().manual_seed(123))
    assert drawn[0]["mask"].shape == (4, 1, 32, 32)
    with torch.inference_mode():
        expected = class_scores(model, x, overrides=[{"mask": drawn[0]["mask"], "weight": torch.full((4,), 0.2)}])
    np.testing.assert_allclose(probs, expected.numpy(), atol=1e-4)


def test_export_with_the_generator_stage(tmp_path, data_dir, images):
    """TVM -> GCLN -> CNN in one graph; the generator loads for the first time during the export."""
    from serving.backends import OnnxBackend, build_defended_model

    stages = [STAGES[0], {"name": "gcln", "params": {"weights": "gcln_cifar10"}}]
    report = export_config(make_config(stages=stages), tmp_path / "gcln.onnx", data_dir=data_dir, n_images=8)
    assert report.max_abs_diff <= 1e-4
    cfg = make_config(name="gcln_onnx", classifier={"registry": None, "onnx": str(report.path)}, stages=stages,
                      request_parameters={}, backend={"type": "onnxruntime"})
    backend = OnnxBackend(cfg)
    backend.generator.manual_seed(7)
    got = backend.run(images[:3], [{}, {}])
    model, _ = build_defended_model(make_config(stages=stages))
    x = torch.from_numpy(images[:3])
    drawn = model.pipeline.draw_inputs(x, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        expected = class_scores(model, x, overrides=[{"mask": drawn[0]["mask"]}, {}]).numpy()
    # The generator rounds: an image may flip a quantization step between the kernels (see
    # serving.onnx_graph); the others must agree closely.
    diff = np.abs(got - expected).max(axis=1)
    assert (diff <= 1e-4).sum() >= 2, diff


def test_onnx_backend_refuses_a_config_with_other_stages(exported):
    _, report = exported
    cfg = make_config(name="x", classifier={"registry": None, "onnx": str(report.path)},
                      stages=[{"name": "tvm", "params": {"drop_prob": 0.5}}], request_parameters={},
                      backend={"type": "onnxruntime"})
    from serving.backends import OnnxBackend

    with pytest.raises(ConfigError, match="stages: the ONNX graph was exported with stages"):
        OnnxBackend(cfg)


def test_export_fails_when_the_graph_disagrees(tmp_path, data_dir, monkeypatch):
    cfg = make_config(stages=[{"name": "dct", "params": {"q": 12.0}}], request_parameters={})
    real_run = __import__("onnxruntime").InferenceSession.run

    def off_by_a_bit(self, names, feeds):
        return [out + 1e-3 for out in real_run(self, names, feeds)]

    monkeypatch.setattr("onnxruntime.InferenceSession.run", off_by_a_bit)
    with pytest.raises(ExportError, match="differ by up to 0.001"):
        export_config(cfg, tmp_path / "m.onnx", data_dir=data_dir, n_images=4)
    assert not (tmp_path / "m.onnx").exists()


def test_export_refuses_early_stopping(tmp_path, data_dir):
    cfg = make_config(stages=[{"name": "tvm", "params": {"tol": 1e-3}}], request_parameters={})
    with pytest.raises(ConfigError, match=r"stage 0 \(tvm\) sets tol=0.001, which cannot be traced"):
        export_config(cfg, tmp_path / "m.onnx", data_dir=data_dir)


def test_purify_export_command(tmp_path, data_dir, capsys):
    """A rounding stage on real uint8 images: coefficients can sit exactly on a rounding boundary,
    where ONNX Runtime and torch legitimately round either way; the export still succeeds, and
    says how many images flipped."""
    config = tmp_path / "m.toml"
    config.write_text('name = "m"\n[classifier]\nregistry = "small_cnn_cifar10"\n'
                      '[[stages]]\nname = "dct"\nparams = { q = 10.0 }\n')
    out = tmp_path / "m.onnx"
    assert export_main(["--config", str(config), "-o", str(out), "--data-dir", str(data_dir), "--n", "8"]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "<= 0.0001 on 8 real images" in text
    torch_free = __import__("onnxruntime").InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in torch_free.get_inputs()] == ["images", "stage0_dct_q"]


def test_a_flip_far_from_a_rounding_boundary_fails(tmp_path, data_dir, monkeypatch):
    """A difference on an image whose rounded values all sit far from a boundary is a real error."""
    cfg = make_config(stages=[{"name": "dct", "params": {"q": 12.0}}], request_parameters={})
    monkeypatch.setattr("serving.onnx_graph.rounding_margins", lambda pipeline, x, inputs: torch.full((len(x),), 0.4))
    real_run = __import__("onnxruntime").InferenceSession.run
    calls = []

    def off_as_deployed(self, names, feeds):
        out = real_run(self, names, feeds)
        calls.append(float(feeds["stage0_dct_q"][0]))
        return [o + 1e-3 for o in out] if feeds["stage0_dct_q"][0] == 12.0 else out

    monkeypatch.setattr("onnxruntime.InferenceSession.run", off_as_deployed)
    with pytest.raises(ExportError, match="where the comparison is well defined"):
        export_config(cfg, tmp_path / "m.onnx", data_dir=data_dir, n_images=4)
    assert calls[0] == pytest.approx(1e-3)   # the pass with rounding made negligible ran first
    assert not (tmp_path / "m.onnx").exists()


def test_flips_near_a_boundary_are_accepted_and_counted(tmp_path, data_dir, monkeypatch):
    cfg = make_config(stages=[{"name": "dct", "params": {"q": 12.0}}], request_parameters={})
    from serving import onnx_graph as onnx_export

    real_margins = onnx_export.rounding_margins

    def first_image_near_a_boundary(pipeline, x, inputs):
        margins = real_margins(pipeline, x, inputs)   # real images may also sit on a boundary (uint8 data)
        margins[0] = 1e-5
        return margins

    monkeypatch.setattr("serving.onnx_graph.rounding_margins", first_image_near_a_boundary)
    real_run = __import__("onnxruntime").InferenceSession.run

    def first_image_flips(self, names, feeds):
        out = real_run(self, names, feeds)[0].copy()
        if feeds["stage0_dct_q"][0] == 12.0:
            out[0] += 2e-3
        return [out]

    monkeypatch.setattr("onnxruntime.InferenceSession.run", first_image_flips)
    report = export_config(cfg, tmp_path / "m.onnx", data_dir=data_dir, n_images=4)
    assert report.rounding_flips >= 2 and report.flip_max_abs_diff >= 2e-3 - 1e-4  # image 0 at batch 4, then 1
    assert report.max_abs_diff <= 1e-4
