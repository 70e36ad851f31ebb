"""Bad input never takes the server down; a bounded load test on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import re
import time
import urllib.request

import numpy as np
import tritonclient.http.aio as aioclient

from tests.serving.conftest import make_config, running_server


def _post(address: str, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(address, timeout=30)
    try:
        conn.request("POST", path, body=body, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, (json.loads(raw) if raw else {})
    finally:
        conn.close()


def _json_body(x: np.ndarray, **extra) -> bytes:
    return json.dumps({"inputs": [{"name": "images", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}], **extra}).encode()


def _binary_body(x: np.ndarray, declared: int | None = None, extra_bytes: bytes = b"") -> tuple[bytes, dict]:
    raw = x.astype("<f4").tobytes()
    header = json.dumps({"inputs": [{"name": "images", "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": declared or len(raw)}}]}).encode()
    return header + raw + extra_bytes, {"Inference-Header-Content-Length": str(len(header))}


def _bad_requests(x: np.ndarray) -> list[tuple[str, bytes, dict, int, str]]:
    nan = x.copy()
    nan[0, 0, 0, 0] = np.nan
    short_body, short_headers = _binary_body(x)
    long_body, long_headers = _binary_body(x, extra_bytes=b"\0" * 8)
    lie_body, lie_headers = _binary_body(x, declared=4 * x.size - 4)
    return [
        ("malformed json", b'{"inputs": [', {}, 400, "malformed JSON"),
        ("not an object", b"[1, 2]", {}, 400, "JSON object"),
        ("wrong shape", _json_body(x[:, :, :8]), {}, 400, "expected shape"),
        ("wrong datatype", json.dumps({"inputs": [{"name": "images", "shape": [1, 3, 32, 32], "datatype": "INT32",
                                                   "data": [0] * 3072}]}).encode(), {}, 400,
         "expected datatype FP32, got INT32"),
        ("floats as INT32", _json_body(x).replace(b'"FP32"', b'"INT32"'), {}, 400, r"INT32 values \(int\), found float"),
        ("strings as FP32", _json_body(x).replace(b"[0.", b'["0.', 1).replace(b", 0.", b'", 0.', 1), {}, 400,
         "found str"),
        ("data count", json.dumps({"inputs": [{"name": "images", "shape": [1, 3, 32, 32], "datatype": "FP32",
                                               "data": [0.5] * 10}]}).encode(), {}, 400, "has 10 values"),
        ("nan pixels", _json_body(nan), {}, 400, "NaN"),
        ("out of range", _json_body(x * 2 + 0.5), {}, 400, r"values in \[0, 1\]"),
        ("binary shorter", short_body[:-16], short_headers, 400, "shorter than declared"),
        ("binary longer", long_body, long_headers, 400, "longer than declared"),
        ("binary size lie", lie_body, lie_headers, 400, "does not match shape"),
        ("bad header length", short_body, {"Inference-Header-Content-Length": "999999"}, 400, "does not fit"),
        ("bad gzip", b"\x1f\x8b garbage", {"Content-Encoding": "gzip"}, 400, "not valid gzip"),
        ("unknown encoding", _json_body(x), {"Content-Encoding": "br"}, 400, "unsupported Content-Encoding"),
        ("sequence params", _json_body(x, parameters={"sequence_id": 3}), {}, 400, "unknown request parameter"),
    ]


def test_bad_input_never_takes_the_server_down(server, images):
    address = server[0]
    x = images[:1]
    for label, body, headers, status, match in _bad_requests(x):
        got, answer = _post(address, "/v2/models/cnn/infer", body, headers)
        assert got == status, (label, got, answer)
        assert re.search(match, answer["error"]), (label, answer)
    for path, status in (("/v2/models/nope/infer", 404), ("/v2/models/cnn/versions/2/infer", 404),
                         ("/v2/nothing/here", 404)):
        got, answer = _post(address, path, _json_body(x))
        assert got == status and "error" in answer, (path, got, answer)
    got, answer = _post(address, "/v2/models/cnn/infer", _json_body(x))
    assert got == 200 and answer["outputs"][0]["shape"] == [1, 10]


def test_body_limit_413_then_still_serving(images):
    x = images[:1]
    with running_server([make_config()], max_body_bytes=20_000) as (address, _):
        big = _json_body(np.repeat(x, 4, axis=0))
        assert len(big) > 20_000
        got, answer = _post(address, "/v2/models/cnn/infer", big)
        assert got == 413 and "over the limit of 20000" in answer["error"]
        # A small gzip body that inflates past the limit is refused too (no decompression bomb).
        bomb = gzip.compress(b" " * 200_000)
        got, answer = _post(address, "/v2/models/cnn/infer", bomb, {"Content-Encoding": "gzip"})
        assert got == 413 and "decompressed" in answer["error"]
        body, headers = _binary_body(x)
        got, answer = _post(address, "/v2/models/cnn/infer", body, headers)
        assert got == 200


def _histogram(text: str, name: str) -> dict[str, float]:
    return {m.group(1): float(m.group(2))
            for m in re.finditer(name + r'_bucket\{le="([^"]+)",model="cnn"\} (\S+)', text)}


def test_load_2000_requests_32_clients(server, images, reference):
    """Bounded: 2,000 requests from 32 concurrent clients, 127.0.0.1 only, at most 120 s."""
    address = server[0]
    expected = reference(images[:32])
    total, concurrency = 2000, 32

    async def go():
        client = aioclient.InferenceServerClient(address, conn_limit=concurrency)
        errors, mismatched = [], []
        next_index = iter(range(total))

        async def worker():
            for i in next_index:
                inp = aioclient.InferInput("images", [1, 3, 32, 32], "FP32")
                inp.set_data_from_numpy(images[i % 32:i % 32 + 1], binary_data=True)
                try:
                    r = await client.infer("cnn", [inp], request_id=f"req-{i}")
                except Exception as err:  # noqa: BLE001 - every failure is counted, none may occur
                    errors.append(repr(err))
                    continue
                probs = r.as_numpy("probabilities")
                if r.get_response()["id"] != f"req-{i}" or not np.allclose(probs, expected[i % 32:i % 32 + 1],
                                                                           atol=1e-5):
                    mismatched.append(i)

        try:
            await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), timeout=120)
        finally:
            await client.close()
        return errors, mismatched

    start = time.perf_counter()
    errors, mismatched = asyncio.run(go())
    seconds = time.perf_counter() - start
    assert not errors, errors[:3]
    assert not mismatched, mismatched[:10]
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    buckets = _histogram(text, "purify_batch_size")
    batches = buckets["+Inf"]
    assert batches - buckets["1.0"] > 0, f"no batch larger than 1 in {batches:.0f} batches"
    ok = float(re.search(r'purify_requests_total\{model="cnn",status="200"\} (\S+)', text).group(1))
    assert ok >= total
    print(f"load: {total} requests in {seconds:.1f} s, {batches:.0f} batches")


def test_start_up_objects_are_frozen_out_of_the_gc(server):
    """Full GC passes would otherwise walk torch and the model on every collection (~120 ms each)."""
    import gc

    assert gc.get_freeze_count() > 10_000
