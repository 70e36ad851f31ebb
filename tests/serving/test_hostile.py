"""The server under hostile clients (issue 12): each defect a bounded fuzz found, as a test.

Every server here is started as ``purify-serve`` starts it (:func:`serving.limits.make_server`),
on 127.0.0.1 and a free port, with small limits so the slow-client cases take a second or two,
and is stopped by the test. No assertion is about elapsed time: where a timeout is the point,
the test waits for its answer (with a socket timeout far above it, only so a hang cannot block).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http.client
import json
import logging
import re
import socket
import threading
import time
from typing import Any, Iterator

import numpy as np
import pytest

import serving.app
from serving.app import create_app
from serving.errors import ConfigError
from serving.integrity import BearerAuth, load_token
from serving.limits import ServerLimits
from tests.serving.conftest import make_config, serve_app

# Generous read timeouts for the server the ordinary hostile requests go to (a loaded 2-core
# machine must not turn a good request into a 408); a second server has small ones.
ROOMY = ServerLimits(max_body_bytes=1 << 20, max_header_bytes=8192, header_timeout_s=30.0, body_timeout_s=30.0,
                     parse_offload_bytes=16 * 1024, parse_threads=1, shutdown_timeout_s=5.0)
TIGHT = ServerLimits(max_body_bytes=1 << 20, max_header_bytes=4096, header_timeout_s=1.5, body_timeout_s=1.5,
                     max_connections=50, parse_threads=1, shutdown_timeout_s=5.0)


@contextlib.contextmanager
def limited_server(limits: ServerLimits, **app_kwargs: Any) -> Iterator[tuple[str, Any, Any]]:
    """``purify-serve``'s server over TEST_CONFIG in a thread; yields (address, app, uvicorn server)."""
    import torch

    torch.set_num_threads(1)
    app = create_app([make_config()], limits=limits, **app_kwargs)
    with serve_app(app, limits) as (address, server):
        yield address, app, server


@pytest.fixture(scope="module")
def roomy() -> Iterator[tuple[str, Any, Any]]:
    with limited_server(ROOMY) as s:
        yield s


@pytest.fixture(scope="module")
def tight() -> Iterator[tuple[str, Any, Any]]:
    with limited_server(TIGHT) as s:
        yield s


def _post(address: str, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict, Any]:
    conn = http.client.HTTPConnection(address, timeout=60)
    try:
        conn.request("POST", path, body=body, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, (json.loads(raw) if raw else {}), resp
    finally:
        conn.close()


def _get(address: str, path: str, timeout: float = 30) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(address, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _connect(address: str, timeout: float = 30) -> socket.socket:
    host, port = address.split(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (the socket's timeout bounds the wait)."""
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _answer(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


def _read_response(sock: socket.socket) -> tuple[int, dict]:
    """One response (status line, headers, Content-Length body); the connection may stay open."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a complete response: {raw!r}"
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed in the middle of the response body"
        body += chunk
    return int(head.split(b" ")[1]), json.loads(body)


def _metric(address: str, pattern: str) -> float:
    text = _get(address, "/metrics")[1].decode()
    found = re.search(pattern + r" (\S+)", text)
    return float(found.group(1)) if found else 0.0


def _wait_for_metric(address: str, pattern: str, value: float, deadline_s: float = 30) -> float:
    deadline = time.monotonic() + deadline_s
    while (got := _metric(address, pattern)) < value and time.monotonic() < deadline:
        time.sleep(0.05)
    return got


def _json_body(x: np.ndarray, **extra: Any) -> bytes:
    return json.dumps({"inputs": [{"name": "images", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}], **extra}).encode()


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)


# --------------------------------------------------------------------------------- bodies and parsing

@pytest.mark.parametrize("depth", [5_000, 100_000])  # parsed on the loop / in the parse pool
def test_deep_json_is_400_on_infer_and_index(roomy, depth):
    body = b'{"inputs":' + b"[" * depth
    for path in ("/v2/models/cnn/infer", "/v2/repository/index"):
        status, answer, _ = _post(roomy[0], path, body)
        assert status == 400 and "nested too deeply" in answer["error"], (path, status, answer)


def test_huge_timeout_parameter_is_400(roomy, image):
    status, answer, _ = _post(roomy[0], "/v2/models/cnn/infer", _json_body(image, parameters={"timeout": 10**400}))
    assert status == 400 and "below 2**64" in answer["error"], answer


def test_index_refuses_a_body_over_the_limit_before_reading_it(roomy):
    with _connect(roomy[0]) as sock:  # declared: answered before a byte of the 512 MiB is sent
        sock.sendall(b"POST /v2/repository/index HTTP/1.1\r\nHost: t\r\nContent-Length: 536870912\r\n\r\n")
        status, answer = _read_response(sock)
    assert status == 413 and "over the limit" in answer["error"]
    chunk = 64 * 1024
    with _connect(roomy[0]) as sock:  # streamed (chunked): answered once past the limit, not at the end
        sock.sendall(b"POST /v2/repository/index HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(ROOMY.max_body_bytes // chunk + 1):
            sock.sendall(b"%x\r\n" % chunk + b" " * chunk + b"\r\n")
        status, answer = _read_response(sock)
    assert status == 413 and "over the limit" in answer["error"]
    status, answer, _ = _post(roomy[0], "/v2/repository/index", b'{"ready": true}')
    assert status == 200 and answer[0]["name"] == "cnn"


def test_client_disconnect_mid_upload_is_499_and_quiet(roomy, caplog):
    caplog.set_level(logging.INFO)
    before = _metric(roomy[0], r'purify_requests_total\{model="cnn",status="499"\}')
    with _connect(roomy[0]) as sock:
        sock.sendall(b"POST /v2/models/cnn/infer HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n" + b"[" * 1000)
        time.sleep(0.2)  # let the handler start reading; not a timing assertion
    assert _wait_for_metric(roomy[0], r'purify_requests_total\{model="cnn",status="499"\}', before + 1) == before + 1
    assert _metric(roomy[0], r'purify_requests_total\{model="cnn",status="500"\}') == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert "client disconnected" in caplog.text


def test_large_body_is_parsed_off_the_event_loop(roomy, image, monkeypatch):
    """While a large body's parse is held, a health check is answered: the parse is not on the loop."""
    real = serving.app.parse_request
    threads: list[str] = []
    entered, released = threading.Event(), threading.Event()

    def held_parse(body, **kwargs):
        threads.append(threading.current_thread().name)
        if len(body) >= ROOMY.parse_offload_bytes:
            entered.set()
            released.wait(60)
        return real(body, **kwargs)

    monkeypatch.setattr(serving.app, "parse_request", held_parse)
    big = _json_body(image)
    assert len(big) >= ROOMY.parse_offload_bytes
    result: list[int] = []
    client = threading.Thread(target=lambda: result.append(_post(roomy[0], "/v2/models/cnn/infer", big)[0]))
    client.start()
    try:
        assert entered.wait(60), "the large request never reached the parser"
        assert _get(roomy[0], "/v2/health/live", timeout=20)[0] == 200  # times out if the loop is blocked
    finally:
        released.set()
        client.join(60)
    assert result == [200]
    assert threads[0].startswith("purify-parse")
    small = json.dumps({"inputs": [{"name": "images", "shape": [1, 3, 32, 32], "datatype": "FP32",
                                    "parameters": {"binary_data_size": image.nbytes}}]}).encode()
    status, _, _ = _post(roomy[0], "/v2/models/cnn/infer", small + image.tobytes(),
                         {"Inference-Header-Content-Length": str(len(small))})
    assert status == 200 and not threads[1].startswith("purify-parse")  # small bodies stay inline


def test_content_encoding_is_case_insensitive_and_trailing_bytes_refused(roomy, image):
    body = gzip.compress(_json_body(image))
    status, answer, _ = _post(roomy[0], "/v2/models/cnn/infer", body, {"Content-Encoding": "GZIP"})
    assert status == 200 and answer["outputs"][0]["shape"] == [1, 10]
    status, answer, _ = _post(roomy[0], "/v2/models/cnn/infer", body + b"trailing", {"Content-Encoding": "gzip"})
    assert status == 400 and "after the end of the gzip data" in answer["error"]


@pytest.mark.parametrize("value, kind", [('"0.5"', "str"), ("true", "bool"), ("[0.5]", "list")])
def test_strings_and_booleans_in_fp32_data_are_400(roomy, value, kind):
    body = b'{"inputs": [{"name": "images", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [' + \
        b"0.5, " * 3071 + value.encode() + b"]}]}"
    status, answer, _ = _post(roomy[0], "/v2/models/cnn/infer", body)
    assert status == 400 and f"found {kind}" in answer["error"], answer


# ------------------------------------------------------------------------------- connection limits

def test_oversized_headers_are_431_and_never_buffered(tight):
    with _connect(tight[0]) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 3 * TIGHT.max_header_bytes)
        status, answer = _answer(_read_all(sock))
    assert status == 431 and str(TIGHT.max_header_bytes) in answer["error"]
    # A 64 MiB header: the server closes after the limit, so the client cannot send it all.
    with _connect(tight[0]) as sock, pytest.raises((BrokenPipeError, ConnectionResetError)):
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nX-Big: ")
        for _ in range(64):
            sock.sendall(b"a" * (1 << 20))
    assert _metric(tight[0], r'purify_rejected_total\{reason="header_too_large"\}') >= 2
    assert _get(tight[0], "/v2/health/live")[0] == 200


@pytest.mark.parametrize("sent", [b"", b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n"])
def test_slow_or_missing_headers_are_408(tight, sent):
    with _connect(tight[0]) as sock:
        sock.sendall(sent)
        status, answer = _answer(_read_all(sock))  # the server's header timeout ends the wait
    assert status == 408 and "headers not received" in answer["error"]


def test_slow_body_is_408_and_counted(tight):
    with _connect(tight[0]) as sock:
        sock.sendall(b"POST /v2/models/cnn/infer HTTP/1.1\r\nHost: t\r\nContent-Length: 10000\r\n\r\n" + b"{" * 100)
        status, answer = _answer(_read_all(sock))
    assert status == 408 and "body not received" in answer["error"]
    assert _wait_for_metric(tight[0], r'purify_requests_total\{model="cnn",status="408"\}', 1) >= 1
    assert _metric(tight[0], r'purify_rejected_total\{reason="body_timeout"\}') >= 1


def _open_connections(server: Any) -> int:
    """The server's connection count, read on its event loop.

    Read from this thread, the set can be caught inside ``connection_made``, after uvicorn adds a
    connection over the cap and before the limit removes it again; on the loop, between callbacks,
    the count is the one the cap governs.
    """
    async def count() -> int:
        return len(server.server_state.connections)

    return asyncio.run_coroutine_threadsafe(count(), server.servers[0].get_loop()).result(timeout=30)


def test_idle_connection_flood_is_capped_with_503(tight):
    """300 idle connections against a cap of 50: the rest are answered 503 and closed at once."""
    address, _, server = tight
    socks = [_connect(address) for _ in range(300)]
    try:
        assert _open_connections(server) <= TIGHT.max_connections
        answers = [_answer(_read_all(s))[0] for s in socks]  # 503 now, or 408 at the header timeout
    finally:
        for s in socks:
            s.close()
    n503, n408 = answers.count(503), answers.count(408)
    assert n503 + n408 == 300 and n408 >= TIGHT.max_connections and n503 >= 150, (n503, n408)
    assert _metric(address, r'purify_rejected_total\{reason="too_many_connections"\}') == n503
    assert _get(address, "/v2/health/ready")[0] == 200


# ---------------------------------------------------------------------------------- shutdown, auth

def test_request_cancelled_at_shutdown_is_json_503(image):
    limits = ServerLimits(shutdown_timeout_s=0.5)
    entered = threading.Event()
    result: list[tuple[int, dict]] = []
    with limited_server(limits) as (address, app, server):
        async def never_answers(req):
            entered.set()
            await asyncio.sleep(300)

        app.state.server.models["cnn"].infer = never_answers
        client = threading.Thread(target=lambda: result.append(
            _post(address, "/v2/models/cnn/infer", _json_body(image))[:2]))
        client.start()
        assert entered.wait(60)
        server.should_exit = True  # graceful shutdown: 0.5 s, then the request is cancelled
        client.join(60)
    assert result and result[0][0] == 503 and "shutting down" in result[0][1]["error"], result


def test_bearer_token_protects_the_api_and_is_never_logged(image, caplog):
    caplog.set_level(logging.DEBUG)
    token = "t0k3n-for-the-hostile-test"
    with limited_server(ServerLimits(), auth=BearerAuth(token)) as (address, _, _):
        body = _json_body(image)
        status, answer, resp = _post(address, "/v2/models/cnn/infer", body)
        assert status == 401 and "bearer token" in answer["error"]
        assert resp.getheader("WWW-Authenticate").startswith("Bearer")
        status, _, resp = _post(address, "/v2/models/cnn/infer", body, {"Authorization": "Bearer nope"})
        assert status == 401 and 'error="invalid_token"' in resp.getheader("WWW-Authenticate")
        status, answer, _ = _post(address, "/v2/models/cnn/infer", body, {"Authorization": f"Bearer {token}"})
        assert status == 200 and answer["outputs"][0]["shape"] == [1, 10]
        assert _post(address, "/v2/repository/index", b"{}")[0] == 401
        assert _get(address, "/v2/models/cnn")[0] == 401
        assert _get(address, "/v2/health/ready")[0] == 200 and _get(address, "/metrics")[0] == 200
    assert token not in caplog.text and token not in repr(BearerAuth(token))
    strict = BearerAuth(token, scope="all")
    assert not strict.allows("/metrics", None) and strict.allows("/metrics", f"Bearer {token}")


def test_load_token_from_file_or_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("PURIFY_SERVE_TOKEN", raising=False)
    assert load_token(None) is None
    monkeypatch.setenv("PURIFY_SERVE_TOKEN", "from-env")
    assert load_token(None).allows("/v2/models/m/infer", "Bearer from-env")
    f = tmp_path / "token"
    f.write_text("from-file\n")
    f.chmod(0o600)
    assert load_token(f).allows("/v2/models/m/infer", "Bearer from-file")  # the file wins over the env
    f.write_text("two words\n")
    with pytest.raises(ConfigError, match="token characters"):
        load_token(f)


# ------------------------------------------------------------------------------ artifact integrity

def test_weights_sha256_is_checked_before_loading(tmp_path):
    from purify._download import sha256_file
    from serving.backends import create_backend

    weights = tmp_path / "w.pt"
    weights.write_bytes(b"not a checkpoint")
    wrong = "0" * 64
    cfg = make_config(classifier={"registry": "small_cnn_cifar10", "weights": str(weights), "weights_sha256": wrong})
    with pytest.raises(ConfigError, match=f"classifier.weights_sha256: .* has sha256 {sha256_file(weights)}, "
                                          f"the config expects {wrong}"):
        create_backend(cfg)
    right = make_config(classifier={"registry": "small_cnn_cifar10", "weights": str(weights),
                                    "weights_sha256": sha256_file(weights).upper()})
    with pytest.raises(ConfigError) as err:  # past the check: the loader now refuses the junk file
        create_backend(right)
    assert "sha256" not in str(err.value)


def test_onnx_sha256_is_checked_before_loading(tmp_path):
    pytest.importorskip("onnxruntime")
    from purify._download import sha256_file
    from serving.backends import create_backend

    graph = tmp_path / "m.onnx"
    graph.write_bytes(b"not a graph")
    base = {"name": "m", "classifier": {"onnx": str(graph)}, "backend": {"type": "onnxruntime"}}
    from serving.config import parse_config

    with pytest.raises(ConfigError, match="classifier.onnx_sha256: .* the config expects " + "a" * 64):
        create_backend(parse_config({**base, "classifier": {"onnx": str(graph), "onnx_sha256": "a" * 64}}))
    with pytest.raises(ConfigError, match="cannot be loaded"):
        create_backend(parse_config({**base, "classifier": {"onnx": str(graph), "onnx_sha256": sha256_file(graph)}}))


@pytest.mark.parametrize("classifier, match", [
    ({"registry": "small_cnn_cifar10", "weights": "w.pt", "weights_sha256": "abc"}, "expected 64 hex digits"),
    ({"registry": "small_cnn_cifar10", "weights_sha256": "a" * 64}, "needs classifier.weights"),
])
def test_sha256_keys_are_validated(classifier, match):
    with pytest.raises(ConfigError, match=match):
        make_config(classifier=classifier)
