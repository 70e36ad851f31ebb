"""Request and response bodies: compression both ways, JSON parsing (types, depth, off-loop mode)."""

from __future__ import annotations

import gzip
import http.client
import json
import zlib

import numpy as np
import pytest

from serving.errors import BadRequest
from serving.protocol import MIN_COMPRESS_BYTES, decode_body, encode_body, parse_request


@pytest.mark.parametrize("accept, encoding, decode", [
    ("gzip", "gzip", gzip.decompress),
    ("deflate", "deflate", zlib.decompress),
    ("gzip, deflate;q=0.5", "gzip", gzip.decompress),
    ("br", None, bytes),
    (None, None, bytes),
])
def test_encode_body(accept, encoding, decode):
    big = json.dumps({"data": list(range(600))}).encode()
    assert len(big) >= MIN_COMPRESS_BYTES
    body, used = encode_body(big, accept)
    assert used == encoding and decode(body) == big
    small = b'{"outputs": []}'
    assert encode_body(small, accept) == (small, None)  # permitted, not required: not worth it


def _infer(address: str, x: np.ndarray, accept: str) -> tuple[int, str | None, bytes]:
    body = json.dumps({"inputs": [{"name": "images", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}],
                       "outputs": [{"name": "probabilities"}]}).encode()
    conn = http.client.HTTPConnection(address, timeout=60)
    try:
        conn.request("POST", "/v2/models/cnn/infer", body=body, headers={"Accept-Encoding": accept})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Encoding"), resp.read()
    finally:
        conn.close()


def test_server_compresses_large_answers_only(server, images, reference):
    status, encoding, raw = _infer(server[0], images[:16], "gzip")
    assert status == 200 and encoding == "gzip"
    probs = np.array(json.loads(gzip.decompress(raw))["outputs"][0]["data"]).reshape(16, -1)
    np.testing.assert_allclose(probs, reference(images[:16]), atol=1e-5)
    status, encoding, raw = _infer(server[0], images[:1], "gzip")
    assert status == 200 and encoding is None and json.loads(raw)["outputs"][0]["shape"] == [1, 10]


def test_cooperative_parse_equals_the_plain_parse():
    x = np.random.default_rng(1).random((2, 3, 4, 5), dtype=np.float32)
    body = json.dumps({"id": "a", "inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                              "data": x.tolist()}], "parameters": {"timeout": 12}}).encode()
    plain = parse_request(body, header_length=None)
    cooperative = parse_request(body, header_length=None, cooperative=True)
    np.testing.assert_array_equal(plain.inputs["x"].array, cooperative.inputs["x"].array)
    np.testing.assert_allclose(plain.inputs["x"].array, x, rtol=1e-7)
    assert plain.parameters == cooperative.parameters == {"timeout": 12}


@pytest.mark.parametrize("datatype, data, found", [
    ("FP32", [0.5, "0.5"], "str"), ("FP32", [0.5, True], "bool"), ("INT32", [1, 0.7], "float"),
    ("UINT8", [1, None], "NoneType"), ("BOOL", [True, 1], "int"), ("FP32", [[0.5], 0.5], "list"),
])
def test_data_values_of_the_wrong_json_type_are_refused(datatype, data, found):
    body = json.dumps({"inputs": [{"name": "x", "shape": [2], "datatype": datatype, "data": data}]}).encode()
    with pytest.raises(BadRequest, match=f"found {found}"):
        parse_request(body, header_length=None)


def test_data_values_out_of_the_datatype_range_are_refused():
    body = json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "UINT8", "data": [300]}]}).encode()
    with pytest.raises(BadRequest, match="does not fit UINT8"):
        parse_request(body, header_length=None)


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"a": ' * 50_000])
def test_deeply_nested_json_is_a_bad_request(body):
    for cooperative in (False, True):
        with pytest.raises(BadRequest, match="nested too deeply"):
            parse_request(body, header_length=None, cooperative=cooperative)


@pytest.mark.parametrize("encoding", ["gzip", "GZIP", " Gzip ", "x-gzip", "deflate", "DEFLATE"])
def test_content_codings_are_case_insensitive(encoding):
    compress = zlib.compress if "deflate" in encoding.lower() else gzip.compress
    assert decode_body(compress(b"payload"), encoding, limit=100) == b"payload"


def test_bytes_after_the_compressed_stream_are_refused():
    with pytest.raises(BadRequest, match="3 bytes after the end of the gzip data"):
        decode_body(gzip.compress(b"a") + b"xyz", "gzip", limit=100)
    with pytest.raises(BadRequest, match="after the end of the gzip data"):  # a second member too
        decode_body(gzip.compress(b"a") + gzip.compress(b"b"), "gzip", limit=100)
    with pytest.raises(BadRequest, match="after the end of the deflate data"):
        decode_body(zlib.compress(b"a") + b"\0", "deflate", limit=100)
