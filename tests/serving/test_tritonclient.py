"""The server driven by the unmodified ``tritonclient.http`` client, sync and aio."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from tritonclient.utils import InferenceServerException

from purify.data import CIFAR10_CLASSES


def _text(v) -> str:
    """BYTES elements come back as bytes from binary outputs and as str from JSON ones."""
    return v.decode() if isinstance(v, bytes) else v


def _input(x: np.ndarray, binary: bool) -> httpclient.InferInput:
    inp = httpclient.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    return inp


@pytest.fixture
def client(server):
    c = httpclient.InferenceServerClient(server[0], connection_timeout=30, network_timeout=60)
    yield c
    c.close()


def test_health_and_server_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "purify" and "binary_tensor_data" in meta["extensions"]
    assert client.is_model_ready("cnn") and client.is_model_ready("cnn", "1")
    assert not client.is_model_ready("nope")


def test_model_metadata_and_config(client):
    meta = client.get_model_metadata("cnn")
    assert meta["name"] == "cnn" and meta["versions"] == ["1"] and meta["platform"] == "pytorch_libtorch"
    assert meta["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]
    assert [o["name"] for o in meta["outputs"]] == ["probabilities", "labels"]
    assert meta["parameters"]["backend"] == "torch" and meta["parameters"]["device"] == "cpu"
    assert client.get_model_metadata("cnn", "1") == meta
    cfg = client.get_model_config("cnn")
    assert cfg["max_batch_size"] == 32
    assert cfg["dynamic_batching"]["max_queue_delay_microseconds"] == 5000
    assert cfg["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 512
    assert "tv_weight" in cfg["parameters"]


def test_repository_index(client):
    assert client.get_model_repository_index() == [{"name": "cnn", "version": "1", "state": "READY"}]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_matches_in_process(client, images, reference, binary):
    x = images[:3]
    outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=binary),
               httpclient.InferRequestedOutput("labels", binary_data=binary)]
    result = client.infer("cnn", [_input(x, binary)], outputs=outputs, request_id="r-1")
    assert result.get_response()["id"] == "r-1"
    probs = result.as_numpy("probabilities")
    np.testing.assert_allclose(probs, reference(x), atol=1e-5)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    labels = result.as_numpy("labels")
    assert labels.shape == (3, 3)
    score, index, name = _text(labels[0, 0]).split(":")
    assert int(index) == int(probs[0].argmax()) and name == CIFAR10_CLASSES[int(index)]
    assert float(score) == pytest.approx(float(probs[0].max()), abs=1e-6)


def test_default_outputs_are_binary(client, images, reference):
    result = client.infer("cnn", [_input(images[:2], True)])  # no outputs named: binary_data_output
    np.testing.assert_allclose(result.as_numpy("probabilities"), reference(images[:2]), atol=1e-5)
    assert result.as_numpy("labels").shape == (2, 3)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_request_and_response(client, images, reference, algorithm):
    # 16 images as JSON outputs: an answer big enough for the server to compress (serving.protocol)
    outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=False)]
    result = client.infer("cnn", [_input(images[:16], True)], outputs=outputs,
                          request_compression_algorithm=algorithm, response_compression_algorithm=algorithm)
    np.testing.assert_allclose(result.as_numpy("probabilities"), reference(images[:16]), atol=1e-5)


def test_classification_extension(client, images, reference):
    out = httpclient.InferRequestedOutput("probabilities", binary_data=False, class_count=2)
    result = client.infer("cnn", [_input(images[:1], False)], outputs=[out])
    top = result.as_numpy("probabilities")
    assert top.shape == (1, 2) and int(_text(top[0, 0]).split(":")[1]) == int(reference(images[:1])[0].argmax())


def test_per_request_parameter(client, images, reference):
    result = client.infer("cnn", [_input(images[:2], True)], parameters={"tv_weight": 0.4})
    np.testing.assert_allclose(result.as_numpy("probabilities"), reference(images[:2], tv_weight=0.4), atol=1e-5)
    assert not np.allclose(reference(images[:2], tv_weight=0.4), reference(images[:2]), atol=1e-3)


@pytest.mark.parametrize("params, match", [
    ({"tv_wieght": 0.1}, "unknown request parameter.*'tv_wieght'.*'tv_weight'"),
    ({"tv_weight": 5.0}, r"'tv_weight': expected a number in \[0, 1\]"),
    ({"tv_weight": "high"}, "expected a number"),
])
def test_bad_parameters_are_rejected(client, images, params, match):
    with pytest.raises(InferenceServerException, match=match) as info:
        client.infer("cnn", [_input(images[:1], True)], parameters=params)
    assert info.value.status() == "400"


def test_error_paths(client, images):
    with pytest.raises(InferenceServerException, match="unknown model 'nope'") as info:
        client.infer("nope", [_input(images[:1], True)])
    assert info.value.status() == "404"
    with pytest.raises(InferenceServerException, match="no version '7'") as info:
        client.infer("cnn", [_input(images[:1], True)], model_version="7")
    assert info.value.status() == "404"
    with pytest.raises(InferenceServerException, match="expected shape"):
        client.infer("cnn", [_input(images[:1, :, :16], True)])
    wrong = httpclient.InferInput("images", [1, 3, 32, 32], "FP64")
    wrong.set_data_from_numpy(images[:1].astype(np.float64))
    with pytest.raises(InferenceServerException, match="expected datatype FP32, got FP64"):
        client.infer("cnn", [wrong])
    with pytest.raises(InferenceServerException, match="unknown output 'logits'"):
        client.infer("cnn", [_input(images[:1], True)], outputs=[httpclient.InferRequestedOutput("logits")])
    with pytest.raises(InferenceServerException, match="over max_batch_size 32"):
        client.infer("cnn", [_input(np.repeat(images[:1], 33, axis=0), True)])
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_metadata("nope")


def test_aio_client(server, images, reference):
    async def go():
        client = aioclient.InferenceServerClient(server[0])
        try:
            assert await client.is_server_ready() and await client.is_model_ready("cnn")
            meta = await client.get_model_metadata("cnn")
            assert meta["name"] == "cnn"
            inputs = []
            for i in range(6):
                inp = aioclient.InferInput("images", [1, 3, 32, 32], "FP32")
                inp.set_data_from_numpy(images[i:i + 1], binary_data=i % 2 == 0)
                inputs.append(inp)
            results = await asyncio.gather(*(
                client.infer("cnn", [inp], request_id=f"a{i}", parameters={"tv_weight": 0.05 * (i + 1)},
                             request_compression_algorithm="gzip" if i == 3 else None)
                for i, inp in enumerate(inputs)))
            for i, r in enumerate(results):
                assert r.get_response()["id"] == f"a{i}"
                np.testing.assert_allclose(r.as_numpy("probabilities"),
                                           reference(images[i:i + 1], tv_weight=0.05 * (i + 1)), atol=1e-5)
            with pytest.raises(InferenceServerException, match="unknown model"):
                await client.infer("nope", inputs[:1])
        finally:
            await client.close()

    asyncio.run(go())


def test_plain_http_json_and_metrics(server, images):
    """What the README's curl example sends: plain JSON, no binary extension."""
    body = json.dumps({"id": "c1", "inputs": [{"name": "images", "shape": [1, 3, 32, 32], "datatype": "FP32",
                                               "data": images[0].ravel().tolist()}],
                       "parameters": {"tv_weight": 0.1}}).encode()
    req = urllib.request.Request(f"http://{server[0]}/v2/models/cnn/infer", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        answer = json.loads(resp.read())
    assert answer["id"] == "c1" and answer["model_name"] == "cnn"
    names = {o["name"]: o for o in answer["outputs"]}
    assert names["probabilities"]["shape"] == [1, 10] and len(names["labels"]["data"]) == 3
    with urllib.request.urlopen(f"http://{server[0]}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    assert 'purify_requests_total{model="cnn",status="200"}' in text
    assert "purify_batch_size_bucket" in text and 'purify_queue_depth{model="cnn"}' in text
