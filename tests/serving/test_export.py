"""``purify export`` and the ONNX Runtime backend serving its graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

import tritonclient.http as httpclient  # noqa: E402

from purify.__main__ import main as purify_main  # noqa: E402
from serving.errors import ConfigError  # noqa: E402
from serving.export import ExportError, export_onnx  # noqa: E402
from tests.serving.conftest import make_config, running_server  # noqa: E402

# Few TV iterations keep the unrolled graph small, so the test stays fast; the default model's
# 160-iteration export is what `purify export` and benchmarks/serving_bench.py run.
STAGES = [{"name": "tvm", "params": {"drop_prob": 0.3, "weight": 0.1, "iters": 12}}]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, data_dir):
    cfg = make_config(stages=STAGES)
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    report = export_onnx(cfg, path, data_dir=data_dir, n_images=32)
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
        app.state.server.models["cnn_onnx"].backend.rng = np.random.default_rng(123)
        inp = httpclient.InferInput("images", [4, 3, 32, 32], "FP32")
        inp.set_data_from_numpy(images[:4])
        probs = client.infer("cnn_onnx", [inp], parameters={"tv_weight": 0.2}).as_numpy("probabilities")
        client.close()
    mask = np.random.default_rng(123).random((4, 1, 32, 32), dtype=np.float32) < 0.3
    model, _ = build_defended_model(cfg_torch)
    with torch.inference_mode():
        expected = model(torch.from_numpy(images[:4]), [{"mask": torch.from_numpy(mask).float(),
                                                         "weight": torch.full((4,), 0.2)}]).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-4)


def test_export_with_the_generator_stage(tmp_path, data_dir, images):
    """TVM -> GCLN -> CNN in one graph; the generator loads for the first time during the export."""
    from purify import gcln
    from serving.backends import OnnxBackend, build_defended_model

    stages = [STAGES[0], {"name": "gcln", "params": {"weights": "gcln_cifar10"}}]
    gcln._load_cached.cache_clear()  # loading inside the trace would be recorded; export must load first
    report = export_onnx(make_config(stages=stages), tmp_path / "gcln.onnx", data_dir=data_dir, n_images=8)
    assert report.max_abs_diff <= 1e-4
    cfg = make_config(name="gcln_onnx", classifier={"registry": None, "onnx": str(report.path)}, stages=stages,
                      request_parameters={}, backend={"type": "onnxruntime"})
    backend = OnnxBackend(cfg)
    backend.rng = np.random.default_rng(7)
    got = backend.run(images[:3], [{}, {}])
    mask = np.random.default_rng(7).random((3, 1, 32, 32), dtype=np.float32) < 0.3
    model, _ = build_defended_model(make_config(stages=stages))
    with torch.inference_mode():
        expected = model(torch.from_numpy(images[:3]), [{"mask": torch.from_numpy(mask).float()}, {}]).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)


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
        export_onnx(cfg, tmp_path / "m.onnx", data_dir=data_dir, n_images=4)
    assert not (tmp_path / "m.onnx").exists()


def test_export_refuses_early_stopping(tmp_path, data_dir):
    cfg = make_config(stages=[{"name": "tvm", "params": {"tol": 1e-3}}], request_parameters={})
    with pytest.raises(ConfigError, match=r"stages\[0\].params.tol"):
        export_onnx(cfg, tmp_path / "m.onnx", data_dir=data_dir)


def test_purify_export_command(tmp_path, data_dir, capsys):
    config = tmp_path / "m.toml"
    config.write_text('name = "m"\n[classifier]\nregistry = "small_cnn_cifar10"\n'
                      '[[stages]]\nname = "dct"\nparams = { q = 10.0 }\n')
    out = tmp_path / "m.onnx"
    assert purify_main(["export", "--config", str(config), "-o", str(out), "--data-dir", str(data_dir),
                        "--n", "8"]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "<= 0.0001 on 8 real images" in text
    torch_free = __import__("onnxruntime").InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in torch_free.get_inputs()] == ["images", "stage0_dct_q"]
