"""``purify-serve``: the built-in default in a real subprocess, on 127.0.0.1 and a free port; bad configs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np

from serving.cli import main as serve_main

_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}


def _wait_for_address(proc: subprocess.Popen, deadline: float) -> str:
    """Read the server's log until it names its address (the log goes to stderr)."""
    for line in proc.stderr:
        found = re.search(r"on http://(127\.0\.0\.1:\d+)", line)
        if found:
            return found.group(1)
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"purify-serve did not report its address (exit code {proc.poll()})")


def test_default_server_in_a_subprocess(images):
    proc = subprocess.Popen([sys.executable, "-m", "serving.cli", "--port", "0"], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=_ENV)
    try:
        address = _wait_for_address(proc, time.monotonic() + 120)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://{address}/v2/health/ready", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.1)
        with urllib.request.urlopen(f"http://{address}/v2/models/cifar10_tvm", timeout=10) as resp:
            meta = json.loads(resp.read())
        assert meta["parameters"]["stages"] == "tvm" and meta["parameters"]["backend"] == "torch"
        body = json.dumps({"inputs": [{"name": "images", "shape": [2, 3, 32, 32], "datatype": "FP32",
                                       "data": images[:2].ravel().tolist()}]}).encode()
        req = urllib.request.Request(f"http://{address}/v2/models/cifar10_tvm/infer", data=body)
        with urllib.request.urlopen(req, timeout=30) as resp:
            out = {o["name"]: o for o in json.loads(resp.read())["outputs"]}
        probs = np.array(out["probabilities"]["data"]).reshape(2, 10)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert "model cifar10_tvm stopped; its queue is drained" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def test_bad_config_exits_2_naming_the_field(tmp_path, caplog):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "m"\n[classifier]\nregistry = "small_cnn_cifar10"\n[batching]\nmax_batch_size = 0\n')
    assert serve_main(["--config", str(bad), "--port", "0"]) == 2
    assert "batching.max_batch_size: expected an int >= 1, got 0" in caplog.text


def test_server_limits_from_defaults_file_and_flags(tmp_path):
    from serving.cli import build_parser, server_settings
    from serving.limits import ServerLimits

    cfg = tmp_path / "server.toml"
    cfg.write_text('[limits]\nmax_connections = 64\nbody_timeout_s = 7.5\n[auth]\ntoken_file = "tok"\nscope = "all"\n')
    settings = server_settings(build_parser().parse_args(["--server-config", str(cfg), "--max-connections", "8"]))
    assert settings.limits.max_connections == 8                     # the flag wins over the file
    assert settings.limits.body_timeout_s == 7.5                     # the file over the default
    assert settings.limits.header_timeout_s == ServerLimits().header_timeout_s
    assert settings.auth_token_file == tmp_path / "tok" and settings.auth_scope == "all"


def test_bad_server_config_exits_2_naming_the_field(tmp_path, caplog):
    bad = tmp_path / "server.toml"
    bad.write_text("[limits]\nmax_conections = 5\n")
    assert serve_main(["--server-config", str(bad), "--port", "0"]) == 2
    assert "limits.max_conections: unknown key" in caplog.text
    bad.write_text("[limits]\nheader_timeout_s = -1\n")
    assert serve_main(["--server-config", str(bad), "--port", "0"]) == 2
    assert "limits.header_timeout_s: expected a finite number" in caplog.text
