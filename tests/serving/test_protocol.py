"""Response compression: gzip / deflate when the client accepts it and the body is worth compressing."""

from __future__ import annotations

import gzip
import http.client
import json
import zlib

import numpy as np
import pytest

from serving.protocol import MIN_COMPRESS_BYTES, encode_body


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
