"""Serving fixtures: a real uvicorn server on 127.0.0.1 (a free port) in a thread, stopped by the test.

The test model is the shipped small CNN behind TVM with ``drop_prob = 0`` by default, so a
request's answer is deterministic and can be compared with the in-process model image by image
(order, per-sample parameters); requests may still ask for a drop rate per sample.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch

pytest.importorskip("tritonclient.http")
pytest.importorskip("uvicorn")

from serving.app import create_app  # noqa: E402
from serving.cli import bind_socket  # noqa: E402
from serving.config import ServeConfig, parse_config  # noqa: E402

TEST_CONFIG: dict[str, Any] = {
    "name": "cnn",
    "version": "1",
    "classifier": {"registry": "small_cnn_cifar10"},
    "stages": [{"name": "tvm", "params": {"drop_prob": 0.0, "weight": 0.1, "iters": 40}}],
    "request_parameters": {"tv_weight": {"stage": "tvm", "param": "weight", "min": 0.0, "max": 1.0},
                           "tv_drop_prob": {"stage": "tvm", "param": "drop_prob", "min": 0.0, "max": 0.9}},
    "batching": {"max_batch_size": 32, "max_queue_delay_ms": 5.0, "max_queue_size": 512, "timeout_ms": 30000},
    "backend": {"threads": 1},
}


def make_config(**overrides: Any) -> ServeConfig:
    """TEST_CONFIG with top-level entries replaced; ``classifier``, ``batching`` and ``backend`` merge."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in TEST_CONFIG.items()}
    for key, value in overrides.items():
        merge = key in ("classifier", "batching", "backend")
        data[key] = {**data.get(key, {}), **value} if merge else value
    return parse_config(data, source="test-config", base=Path.cwd())


def infer_probabilities(address: str, model: str, images: np.ndarray) -> np.ndarray:
    """One binary-tensor request of ``images`` (B, 3, 32, 32) to ``model`` with the sync tritonclient."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(address)
    try:
        inp = httpclient.InferInput("images", list(images.shape), "FP32")
        inp.set_data_from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        return client.infer(model, [inp]).as_numpy("probabilities")
    finally:
        client.close()


@contextlib.contextmanager
def serve_app(app: Any, limits: Any = None) -> Iterator[tuple[str, Any]]:
    """Serve ``app`` as ``purify-serve`` does (its limits) on 127.0.0.1:<free port> in a thread.

    Yields ("127.0.0.1:port", the uvicorn server); stops and joins on exit.
    """
    from serving.limits import ServerLimits, make_server

    sock = bind_socket("127.0.0.1", 0)
    server = make_server(app, limits or ServerLimits(), log_level="warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}", server
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()
        assert not thread.is_alive(), "the test server did not stop"


@contextlib.contextmanager
def running_server(configs: list[ServeConfig], **app_kwargs: Any) -> Iterator[tuple[str, Any]]:
    """Serve ``configs`` on 127.0.0.1:<free port>; yields ("127.0.0.1:port", app); stops and joins on exit."""
    torch.set_num_threads(1)
    app = create_app(configs, **app_kwargs)
    with serve_app(app, app_kwargs.get("limits")) as (address, _):
        yield address, app


@pytest.fixture(scope="package")
def server() -> Iterator[tuple[str, Any]]:
    """One shared server of TEST_CONFIG for the protocol and reliability tests."""
    with running_server([make_config()]) as s:
        yield s


@pytest.fixture(scope="package")
def images(data_dir) -> np.ndarray:
    """64 CIFAR-10 test images, (64, 3, 32, 32) float32 in [0, 1]."""
    from purify.data import load_dataset

    x, _ = load_dataset("cifar10", "test", data_dir=data_dir).tensors(slice(0, 64))
    return x.numpy()


@pytest.fixture(scope="package")
def reference(server) -> Any:
    """In-process scores of the served model: ``reference(x, tv_weight=None) -> (B, K)``, one image at a time."""
    from serving.backends import class_scores

    model = server[1].state.server.models["cnn"].backend.model

    def run(x: np.ndarray, tv_weight: float | None = None) -> np.ndarray:
        overrides = [{"weight": torch.tensor([tv_weight])}] if tv_weight is not None else None
        with torch.inference_mode():
            return np.concatenate([class_scores(model, torch.from_numpy(x[i:i + 1]), overrides=overrides).numpy()
                                   for i in range(len(x))])

    return run
