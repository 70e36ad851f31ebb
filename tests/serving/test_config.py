"""Model-repository configs: the default loads; every invalid field fails at start-up, naming the field."""

from __future__ import annotations

import sys

import pytest

from serving.config import DEFAULT_CONFIG, load_config, parse_config
from serving.errors import ConfigError

BASE = {"name": "m", "classifier": {"registry": "small_cnn_cifar10"},
        "stages": [{"name": "tvm", "params": {"drop_prob": 0.3, "weight": 0.1}}]}


def _with(**tables):
    data = {k: v for k, v in BASE.items()}
    data.update(tables)
    return data


def test_default_config():
    cfg = load_config(DEFAULT_CONFIG)
    assert cfg.name == "cifar10_tvm" and cfg.registry == "small_cnn_cifar10"
    assert [(s.name, dict(s.params)) for s in cfg.stages] == [("tvm", {"drop_prob": 0.3, "weight": 0.1})]
    assert cfg.request_params["tv_weight"].param == "weight" and cfg.head.type == "softmax"
    assert cfg.batching.max_queue_delay_ms == 5.0 and cfg.backend.type == "torch"


def test_yaml_equals_toml(tmp_path):
    yaml = pytest.importorskip("yaml")
    import tomllib

    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(tomllib.loads(DEFAULT_CONFIG.read_text())))
    a, b = load_config(path), load_config(DEFAULT_CONFIG)
    assert (a.stages, a.request_params, a.batching, a.outputs) == (b.stages, b.request_params, b.batching, b.outputs)


@pytest.mark.parametrize("tables, field, hint", [
    ({"name": "my model"}, "name", "letters, digits"),
    ({"classifier": {}}, "classifier", "exactly one of registry"),
    ({"classifier": {"registry": "resnet99"}}, "classifier.registry", "'resnet20'"),
    ({"classifier": {"registry": "resnet20", "onnx": "m.onnx"}}, "classifier", "exactly one"),
    ({"classifier": {"registry": "resnet20", "factory": "nets:build"}}, "classifier", "exactly one"),
    ({"classifier": {"factory": "nets.build"}}, "classifier.factory", "'package.module:function'"),
    ({"classifier": {"onnx": "m.onnx", "weights": "w.pt"}, "backend": {"type": "onnxruntime"}},
     "classifier.weights", "registry or factory classifier only"),
    ({"classifier": {"factory": "nets:build", "data_dir": "d"}}, "classifier.data_dir", "registry classifier only"),
    ({"input": {"shape": [3, 32]}}, "input.shape", "list of 3 ints"),
    ({"input": {"datatype": "FP16"}}, "input.datatype", "'FP32', 'UINT8'"),
    ({"input": {"range": [1, 0]}}, "input.range", "low < high"),
    ({"input": {"colour": "rgb"}}, "input.colour", "unknown key"),
    ({"stages": [{"name": "blur"}]}, "stages[0].name", "'tvm'"),
    ({"stages": [{"name": "tvm", "params": {"lambda": 0.1}}]}, "stages[0].params", "unknown parameter"),
    ({"stages": "tvm"}, "stages", "list of tables"),
    ({"request_parameters": {"q": {"stage": "dct", "param": "q", "max": 20}}}, "request_parameters.q.stage",
     "configured stage"),
    ({"request_parameters": {"it": {"stage": "tvm", "param": "iters", "max": 20}}}, "request_parameters.it.param",
     "per-sample parameter"),
    ({"request_parameters": {"w": {"stage": "tvm", "param": "weight"}}}, "request_parameters.w.max", "finite number"),
    ({"head": {"type": "knn"}}, "head.type", "'softmax', 'wnll'"),
    ({"head": {"type": "wnll"}}, "head.templates", "needs templates"),
    ({"outputs": {"top_k": 0}}, "outputs.top_k", "int >= 1"),
    ({"batching": {"max_batch_size": 0}}, "batching.max_batch_size", "int >= 1"),
    ({"batching": {"max_queue_delay_ms": -1}}, "batching.max_queue_delay_ms", ">= 0"),
    ({"batching": {"timeout_ms": "soon"}}, "batching.timeout_ms", "finite number"),
    ({"backend": {"type": "onnxruntime"}}, "backend.type", "classifier.onnx"),
    ({"backend": {"device": "tpu"}}, "backend.device", "'auto', 'cpu', 'cuda'"),
    ({"backend": {"memory_format": "nhwc"}}, "backend.memory_format", "'auto', 'channels_last', 'contiguous'"),
    ({"classifier": {"onnx": "m.onnx"}, "backend": {"type": "onnxruntime", "memory_format": "channels_last"}},
     "backend.memory_format", "torch backend only"),
])
def test_invalid_field_is_named(tables, field, hint):
    with pytest.raises(ConfigError) as info:
        parse_config(_with(**tables), source="bad.toml")
    msg = str(info.value)
    assert msg.startswith(f"bad.toml: {field}: ") and hint in msg, msg


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_relative_paths_are_relative_to_the_file(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "m.toml"
    path.write_text('name = "m"\n[classifier]\nonnx = "graph.onnx"\n[backend]\ntype = "onnxruntime"\n')
    assert load_config(path).onnx == tmp_path / "sub" / "graph.onnx"


def test_wnll_head_loads_lazily_with_a_clear_error(tmp_path, monkeypatch):
    """A wnll config validates its file at parse time; the head class is imported only when the model loads."""
    from serving.backends import _load_wnll

    templates = tmp_path / "templates.safetensors"
    templates.write_bytes(b"")
    cfg = parse_config(_with(head={"type": "wnll", "templates": str(templates)}), source="w.toml")
    assert cfg.head.templates == templates
    monkeypatch.setitem(sys.modules, "purify.wnll", None)  # as if the module could not be imported
    with pytest.raises(ConfigError, match=r"w.toml: head.type: 'wnll' needs purify.wnll.WNLLHead"):
        _load_wnll(cfg)


def test_wnll_head_that_cannot_load_names_the_field():
    pytest.importorskip("purify.wnll")
    from serving.backends import _load_wnll

    cfg = parse_config(_with(head={"type": "wnll", "templates": "no_such_head"}), source="w.toml")
    with pytest.raises(ConfigError, match=r"w.toml: head.templates: cannot load no_such_head"):
        _load_wnll(cfg)
