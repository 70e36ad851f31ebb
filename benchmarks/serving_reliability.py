"""Serving reliability: ``purify-serve`` under a hostile-client mix, with good clients verified throughout.

Usage::

    OMP_NUM_THREADS=1 python -m benchmarks.serving_reliability --data-dir ../shared/data

Starts the built-in default server (``serving/default.toml``) as a ``purify-serve`` subprocess on
127.0.0.1 with small read timeouts and a connection cap (flags below), then runs, all at once and
bounded (well under two minutes): good clients sending real CIFAR-10 test images with
``tv_drop_prob = 0`` (deterministic), each answer checked against the in-process model's
probabilities (tolerance 1e-5); and hostile clients: deep JSON (infer and index), a 10**400
timeout, strings in ``data``, gzip with trailing bytes, an index body declaring 512 MiB, 1 MiB
headers, slow headers, slow bodies, disconnects mid-upload, an idle-connection flood past the cap,
and an overload burst past the batcher's queue. It reports the status counts per kind, the
server's own counters, its peak RSS (``VmHWM`` from ``/proc``), and whether it answers a good
request afterwards, in ``benchmarks/results/serving_reliability.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as _dt
import gzip
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from .serving_bench import Server
from . import _serving   # the server's modules, under their name beside this package

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "serving_reliability.md"
FLAGS = ["--header-timeout-s", "2", "--body-timeout-s", "2", "--max-connections", "1000",
         "--max-body-bytes", str(4 << 20), "--max-header-bytes", str(32 << 10)]
MODEL = "cifar10_tvm"


async def _exchange(address: str, raw: bytes, *, linger: float = 0.0, close_early: bool = False) -> int | str:
    """Send ``raw``; the answer's status, or what happened instead ("reset", "closed", "sent")."""
    host, port = address.split(":")
    try:
        reader, writer = await asyncio.open_connection(host, int(port))
    except OSError:
        return "refused"
    try:
        writer.write(raw)
        await writer.drain()
        if close_early:
            return "sent"
        if linger:
            await asyncio.sleep(linger)
        line = await asyncio.wait_for(reader.readline(), 30)
        return int(line.split()[1]) if line else "closed"
    except (ConnectionError, asyncio.TimeoutError):
        return "reset"
    finally:
        writer.close()


def _request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    head = {"Host": "bench", "Connection": "close", "Content-Length": str(len(body)), **(headers or {})}
    return (f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items()) + "\r\n").encode() + body


def _json_infer(x: np.ndarray, **extra) -> bytes:
    return json.dumps({"inputs": [{"name": "images", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}], "outputs": [{"name": "probabilities"}],
                       **extra}).encode()


def hostile_kinds(x: np.ndarray) -> dict[str, tuple[bytes, dict]]:
    infer = f"/v2/models/{MODEL}/infer"
    good = _json_infer(x, parameters={"tv_drop_prob": 0.0})
    return {
        "deep JSON (infer)": (_request("POST", infer, b'{"inputs":' + b"[" * 100_000), {}),
        "deep JSON (index)": (_request("POST", "/v2/repository/index", b"[" * 100_000), {}),
        "timeout 10**400": (_request("POST", infer, _json_infer(x, parameters={"timeout": 10**400})), {}),
        "strings in data": (_request("POST", infer, good.replace(b"[0.", b'["0.', 1).replace(b", ", b'", ', 1)), {}),
        "gzip + trailing bytes": (_request("POST", infer, gzip.compress(good) + b"junk",
                                           {"Content-Encoding": "gzip"}), {}),
        "GZIP (upper case)": (_request("POST", infer, gzip.compress(good), {"Content-Encoding": "GZIP"}), {}),
        "index body of 512 MiB": (_request("POST", "/v2/repository/index").replace(
            b"Content-Length: 0", b"Content-Length: 536870912"), {}),
        "1 MiB header": (b"GET /v2/health/live HTTP/1.1\r\nHost: b\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n", {}),
        "slow headers": (b"GET /v2/health/live HTTP/1.1\r\nHost: b\r\n", {}),
        "slow body": (_request("POST", infer).replace(b"Content-Length: 0", b"Content-Length: 100000") + b"[", {}),
        "disconnect mid-upload": (_request("POST", infer).replace(b"Content-Length: 0", b"Content-Length: 100000")
                                  + b"[" * 5000, {"close_early": True}),
    }


async def run_mix(address: str, images: np.ndarray, reference: np.ndarray, *, seconds: float) -> dict:
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    good = {"answered": 0, "verified": 0, "mismatched": 0, "refused": 0, "errors": 0}
    stop = time.monotonic() + seconds
    kinds = hostile_kinds(images[:1])
    infer = f"/v2/models/{MODEL}/infer"

    async def good_client(k: int) -> None:
        host, port = address.split(":")
        i = k
        while time.monotonic() < stop:
            x = images[i % len(images)][None]
            body = _json_infer(x, parameters={"tv_drop_prob": 0.0})
            try:
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(_request("POST", infer, body))
                await writer.drain()
                raw = await asyncio.wait_for(reader.read(), 60)
                writer.close()
            except (OSError, asyncio.TimeoutError, IndexError):  # reset / refused connection, empty answer
                good["errors"] += 1
                await asyncio.sleep(0.05)
                continue
            if not raw:
                good["errors"] += 1
                continue
            status = int(raw.split(b" ", 2)[1])
            counts["good"][status] += 1
            if status != 200:
                good["refused"] += 1
                await asyncio.sleep(0.05)
                continue
            probs = np.array(json.loads(raw.partition(b"\r\n\r\n")[2])["outputs"][0]["data"]).reshape(1, -1)
            good["answered"] += 1
            ok = np.allclose(probs, reference[i % len(images)][None], atol=1e-5, rtol=0)
            good["verified" if ok else "mismatched"] += 1
            i += 7

    async def hostile_client(name: str) -> None:
        raw, opts = kinds[name]
        while time.monotonic() < stop:
            counts[name][await _exchange(address, raw, **opts)] += 1
            await asyncio.sleep(0.2)

    async def idle_flood() -> None:
        """Past the cap: 1,050 idle connections against --max-connections 1000, held until answered."""
        await asyncio.sleep(seconds / 3)
        results = await asyncio.gather(*(_exchange(address, b"") for _ in range(1050)))
        counts["idle flood (1,050 vs cap 1,000)"].update(results)

    async def overload() -> None:
        """More requests at once than the batcher queues (max_queue_size 256): the rest get 503."""
        await asyncio.sleep(2 * seconds / 3)
        x = images[:1]
        head = json.dumps({"inputs": [{"name": "images", "shape": list(x.shape), "datatype": "FP32",
                                       "parameters": {"binary_data_size": x.nbytes}}],
                           "parameters": {"tv_drop_prob": 0.0}}).encode()
        body = _request("POST", infer, head + x.tobytes(), {"Inference-Header-Content-Length": str(len(head))})
        counts["overload (800 binary at once)"].update(
            await asyncio.gather(*(_exchange(address, body) for _ in range(800))))

    await asyncio.gather(*(good_client(k) for k in range(4)), *(hostile_client(n) for n in kinds),
                         idle_flood(), overload())
    return {"counts": counts, "good": good}


def _metrics(address: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://{address}/metrics", timeout=30) as r:
        return r.read().decode()


def _peak_rss_mib(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) / 1024


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("PURIFY_DATA_DIR", "../shared/data"))
    p.add_argument("--seconds", type=float, default=45.0, help="length of the mixed phase")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = p.parse_args(argv)

    import torch

    from .harness.report import machine
    from purify.data import load_dataset
    create_backend = _serving.module("backends").create_backend
    server_config = _serving.module("config")
    DEFAULT_CONFIG, load_config = server_config.DEFAULT_CONFIG, server_config.load_config

    torch.set_num_threads(1)
    images = load_dataset("cifar10", "test", data_dir=args.data_dir).tensors(slice(0, 64))[0].numpy()
    backend = create_backend(load_config(DEFAULT_CONFIG))
    drop0 = [{"drop_prob": np.zeros(1, np.float32)}]
    reference = np.concatenate([backend.run(images[i:i + 1], drop0) for i in range(len(images))])

    server = Server(None, 1, FLAGS)
    try:
        start = time.perf_counter()
        result = asyncio.run(run_mix(server.address, images, reference, seconds=args.seconds))
        mixed_s = time.perf_counter() - start
        metrics = _metrics(server.address)
        after = asyncio.run(_exchange(server.address, _request(
            "POST", f"/v2/models/{MODEL}/infer", _json_infer(images[:1], parameters={"tv_drop_prob": 0.0}))))
        peak = _peak_rss_mib(server.proc.pid)
        alive = server.proc.poll() is None
    finally:
        server.stop()
    errors = [ln for ln in server.log if " ERROR " in ln or "Traceback" in ln]

    counts, good = result["counts"], result["good"]
    answered = sum(v for c in counts.values() for k, v in c.items() if isinstance(k, int))
    command = shlex.join(["python", "-m", "benchmarks.serving_reliability",
                          *(argv if argv is not None else sys.argv[1:])])
    lines = [
        "# Serving reliability under hostile clients", "",
        f"Command: `OMP_NUM_THREADS=1 {command}`  ",
        f"Server: `purify-serve --port 0 {' '.join(FLAGS)}` (built-in default model, 1 thread)  ",
        f"Machine: {machine()}  ", f"Date: {_dt.date.today().isoformat()}", "",
        f"Mixed phase: {mixed_s:.1f} s; every kind ran concurrently with 4 good clients.", "",
        "| client kind | answers (status: count) |", "|---|---|",
        *[f"| {name} | {', '.join(f'{k}: {v}' for k, v in sorted(c.items(), key=str))} |" for name, c in counts.items()],
        "", f"- HTTP answers in all: {answered}",
        f"- good answers: {good['answered']}, verified against the in-process model (atol 1e-5): "
        f"{good['verified']}, mismatched: {good['mismatched']}; answered 503 (cap or queue full, retried): "
        f"{good['refused']}; connection errors (retried): {good['errors']}",
        f"- server peak RSS (VmHWM): {peak:.0f} MiB",
        f"- server alive after the mix: {alive}; a good request afterwards: {after}",
        f"- ERROR lines or tracebacks in the server log: {len(errors)}", "",
        "Server counters (`/metrics`):", "", "```",
        *[ln for ln in metrics.splitlines() if ln.startswith(("purify_requests_total", "purify_rejected_total"))],
        "```", "",
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0 if alive and after == 200 and good["mismatched"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
