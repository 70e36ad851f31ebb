"""Ray Serve deployment of the same app; skipped unless the ``ray`` extra is installed.

The node (GCS, raylet, workers), the dashboard agent and the Serve proxy bind 127.0.0.1: the node
address is 127.0.0.1 (asserted below) and the proxy's is ``http_options.host`` (Serve logs "ready
at http://127.0.0.1:<port>"); all traffic of the test goes to 127.0.0.1. One listener Ray 2.60 does
not let us move: each Serve replica's inter-deployment gRPC server is hard-coded to ``[::]:0``
(ray/serve/_private/replica.py); it sits behind Ray's token authentication and this test sends
it nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pytest

# Ray resolves a node address of 127.0.0.1 to the machine's external one unless it runs as a
# single-machine "cluster"; this switch (read when ray is imported) keeps the node, GCS and raylet
# on the loopback address.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
serve = pytest.importorskip("ray.serve")

import ray  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402

from serving.cli import bind_socket  # noqa: E402
from serving.ray_app import build_app  # noqa: E402
from tests.serving.conftest import make_config  # noqa: E402


def _free_port() -> int:
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()
    return port


@pytest.mark.slow
def test_ray_serve_deployment_answers_the_v2_protocol(images, reference):
    port = _free_port()
    # A short temp dir: Ray's unix sockets live under it and AF_UNIX paths stop at 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="purify_ray_")
    ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=2, log_to_driver=False,
             _temp_dir=temp_dir, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1",
                                                                         "NUMBA_NUM_THREADS": "1"}})
    try:
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app([make_config()], num_replicas=1, ray_actor_options={"num_cpus": 1}),
                  route_prefix="/", name="purify")
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=120)
        assert client.is_server_ready() and client.get_model_metadata("cnn")["name"] == "cnn"
        inp = httpclient.InferInput("images", [3, 3, 32, 32], "FP32")
        inp.set_data_from_numpy(images[:3])
        result = client.infer("cnn", [inp], parameters={"tv_weight": 0.3}, request_id="ray-1")
        assert result.get_response()["id"] == "ray-1"
        np.testing.assert_allclose(result.as_numpy("probabilities"), reference(images[:3], tv_weight=0.3), atol=1e-5)
        client.close()
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
