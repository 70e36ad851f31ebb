"""Serving throughput and latency: dynamic batching vs none, torch vs ONNX Runtime, server vs in-process.

Usage::

    OMP_NUM_THREADS=1 python -m benchmarks.serving_bench --data-dir ../shared/data

One run, the same model (``purify-serve``'s built-in default: TVM drop 0.3 / weight 0.1 in
front of the shipped small CIFAR-10 CNN) and the same client load for every row: real CIFAR-10
test images, one image per request, binary tensors, sent by the unmodified ``tritonclient.http.aio``
client from this process to a ``purify-serve`` subprocess on 127.0.0.1 (one torch / ONNX Runtime
thread). Each server is measured at concurrency 1, 8 and 32 after a warm-up; the in-process rows
call the same backend directly, one image at a time and in batches of 32. The ONNX graph comes
from :func:`serving.export.export_config` (verified against torch before it is used).

Writes ``benchmarks/results/serving.md``: requests/s, p50 / p99 latency, mean executed batch size
(from the server's ``/metrics``), with the exact command, the machine and the date.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import gc
import os
import platform
import re
import shlex
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Sequence

import numpy as np
from . import _serving   # the server's modules, under their name beside this package

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "serving.md"
CONCURRENCY = (1, 8, 32)


def _config_file(work: Path, name: str, *, max_batch_size: int, delay_ms: float, threads: int,
                 onnx: Path | None) -> Path:
    """The built-in default config with the batching (and backend) of one benchmark row, as YAML."""
    import yaml


    DEFAULT_CONFIG = _serving.module("config").DEFAULT_CONFIG

    data = tomllib.loads(DEFAULT_CONFIG.read_text())
    data["name"] = name
    data["batching"]["max_batch_size"] = max_batch_size
    data["batching"]["max_queue_delay_ms"] = delay_ms
    data["backend"]["threads"] = threads
    if onnx is not None:
        data["classifier"] = {"onnx": str(onnx)}
        data["backend"]["type"] = "onnxruntime"
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class Server:
    """A ``purify-serve`` subprocess on 127.0.0.1:<free port>; its log is kept for the report."""

    def __init__(self, config: Path | None, threads: int, flags: Sequence[str] = ()) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "NUMBA_NUM_THREADS": str(threads)}
        config_flags = ["--config", str(config)] if config is not None else []   # None: the built-in default
        self.proc = subprocess.Popen([sys.executable, "-m", f"{_serving.PACKAGE}.cli", *config_flags, "--port", "0", *flags],
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        self.log: list[str] = []
        self.address: str | None = None
        found = threading.Event()

        def drain() -> None:
            for line in self.proc.stderr:
                self.log.append(line.rstrip())
                m = re.search(r"on http://(127\.0\.0\.1:\d+)", line)
                if m:
                    self.address = m.group(1)
                    found.set()

        threading.Thread(target=drain, daemon=True).start()
        if not found.wait(600):
            self.stop()
            raise RuntimeError("server did not start:\n" + "\n".join(self.log[-20:]))
        deadline = time.monotonic() + 600
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server not ready:\n" + "\n".join(self.log[-20:]))
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.address}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def batch_stats(self, model: str) -> tuple[float, float]:
        """(batches, images) executed so far, from /metrics."""
        with urllib.request.urlopen(f"http://{self.address}/metrics", timeout=10) as r:
            text = r.read().decode()
        count = float(re.search(rf'purify_batch_size_count{{model="{model}"}} (\S+)', text).group(1))
        total = float(re.search(rf'purify_batch_size_sum{{model="{model}"}} (\S+)', text).group(1))
        return count, total

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def _load(address: str, model: str, images: np.ndarray, *, concurrency: int, requests: int) -> dict:
    import tritonclient.http.aio as aioclient

    client = aioclient.InferenceServerClient(address, conn_limit=concurrency)
    latencies: list[float] = []
    errors = 0
    counter = iter(range(requests))

    async def worker() -> None:
        nonlocal errors
        for i in counter:
            x = images[i % len(images)][None]
            inp = aioclient.InferInput("images", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=True)
            t = time.perf_counter()
            try:
                await client.infer(model, [inp], request_id=str(i))
            except Exception:  # noqa: BLE001 - counted and reported
                errors += 1
                continue
            latencies.append(time.perf_counter() - t)

    start = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await client.close()
    wall = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    return {"rps": len(latencies) / wall, "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
            "errors": errors, "requests": requests}


def measure_server(config: Path, model: str, images: np.ndarray, *, threads: int, requests: dict[int, int],
                   warmup: int) -> tuple[list[dict], list[str]]:
    server = Server(config, threads)
    try:
        asyncio.run(_load(server.address, model, images, concurrency=8, requests=warmup))
        rows = []
        for c in CONCURRENCY:
            b0, n0 = server.batch_stats(model)
            row = asyncio.run(_load(server.address, model, images, concurrency=c, requests=requests[c]))
            b1, n1 = server.batch_stats(model)
            row.update(concurrency=c, mean_batch=(n1 - n0) / max(1.0, b1 - b0))
            rows.append(row)
            print(f"  {model} c={c}: {row['rps']:.1f} req/s, p50 {row['p50']:.1f} ms, p99 {row['p99']:.1f} ms, "
                  f"batch {row['mean_batch']:.1f}, errors {row['errors']}", flush=True)
        return rows, [line for line in server.log if "ready" in line or "providers" in line]
    finally:
        server.stop()


def measure_in_process(config: Path, images: np.ndarray, *, threads: int, repeats: int) -> list[dict]:
    """The backend called directly: one image per call, and batches of 32."""
    import torch


    create_backend = _serving.module("backends").create_backend
    load_config = _serving.module("config").load_config

    torch.set_num_threads(threads)
    backend = create_backend(load_config(config))
    rows = []
    for batch in (1, 32):
        x = images[:batch]
        for _ in range(3):
            backend.run(x, [{}])
        times = []
        for i in range(repeats):
            x = images[(i * batch) % (len(images) - batch + 1):][:batch]
            t = time.perf_counter()
            backend.run(np.ascontiguousarray(x), [{}])
            times.append(time.perf_counter() - t)
        ms = np.array(times) * 1000
        rows.append({"batch": batch, "ips": batch / np.mean(times), "p50": float(np.percentile(ms, 50)),
                     "p99": float(np.percentile(ms, 99))})
    return rows


def measure_batcher_delay(delay_ms: float, requests: int = 200) -> float:
    """Median latency the batcher alone adds to a lone request (no-op model, no HTTP), in ms."""
    DynamicBatcher = _serving.module("batcher").DynamicBatcher

    async def go() -> float:
        b = DynamicBatcher(lambda payloads: payloads, max_batch_size=64, max_queue_delay_ms=delay_ms)
        await b.start()
        times = []
        for i in range(requests):
            t = time.perf_counter()
            await b.submit(i, size=1)
            times.append(time.perf_counter() - t)
        await b.close()
        return float(np.median(times) * 1000)

    return asyncio.run(go())


def render(results: dict, in_process: dict, logs: dict, *, command: str, export_note: str, seconds: float,
           batcher_ms: float, delay_ms: float, threads: int) -> str:
    lines = [
        "# Serving: throughput and latency",
        "",
        "`purify-serve`'s built-in default model (TVM drop 0.3 / weight 0.1, 160 iterations, in front of the",
        "shipped small CIFAR-10 CNN, softmax head), one CIFAR-10 test image per request, binary tensors,",
        "`tritonclient.http.aio` from the benchmark process to a `purify-serve` subprocess on 127.0.0.1",
        f"({threads} torch / ONNX Runtime thread{'s' if threads > 1 else ''} in the server; the client shares the "
        f"machine's {os.cpu_count()} cores). Batched rows: `max_batch_size = 64`,",
        f"`max_queue_delay_ms = {delay_ms:g}`; unbatched rows: `max_batch_size = 1`. Latency is client-side, per request.",
        "",
        "| backend | batching | concurrency | requests | req/s | p50 (ms) | p99 (ms) | mean batch | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (backend, batching), rows in results.items():
        for r in rows:
            lines.append(f"| {backend} | {batching} | {r['concurrency']} | {r['requests']} | {r['rps']:.1f} | "
                         f"{r['p50']:.1f} | {r['p99']:.1f} | {r['mean_batch']:.1f} | {r['errors']} |")
    lines += ["", "In-process (the same backend object called directly, no HTTP, no batcher):", "",
              "| backend | images per call | images/s | p50 per call (ms) | p99 per call (ms) |",
              "|---|---:|---:|---:|---:|"]
    for backend, rows in in_process.items():
        for r in rows:
            lines.append(f"| {backend} | {r['batch']} | {r['ips']:.1f} | {r['p50']:.2f} | {r['p99']:.2f} |")
    lines += ["", "## Against the targets", ""]
    for backend in ("torch", "onnxruntime"):
        if (backend, "dynamic") not in results:
            continue
        dyn = {r["concurrency"]: r for r in results[(backend, "dynamic")]}
        one = {r["concurrency"]: r for r in results[(backend, "max_batch_size=1")]}
        inproc = {r["batch"]: r for r in in_process[backend]}
        ratio = dyn[32]["rps"] / one[32]["rps"]
        lines += [
            f"- {backend}, concurrency 32: batched/unbatched throughput {ratio:.2f}x (target >= 3x: "
            f"{'met' if ratio >= 3 else 'NOT met'}); p99 {dyn[32]['p99']:.1f} vs {one[32]['p99']:.1f} ms "
            f"({'lower' if dyn[32]['p99'] < one[32]['p99'] else 'NOT lower'}).",
            f"- {backend}, concurrency 1: median {dyn[1]['p50']:.1f} ms batched vs {one[1]['p50']:.1f} ms unbatched, "
            f"{dyn[1]['p50'] - one[1]['p50']:+.1f} ms (target: at most max_queue_delay_ms = {delay_ms:g} ms: "
            f"{'met' if dyn[1]['p50'] - one[1]['p50'] <= delay_ms else 'NOT met'}); the batcher alone (no-op model, no "
            f"HTTP) adds {batcher_ms:.2f} ms to a lone request's median; the rest happens outside the batcher "
            "(event loop and process wake-up after the idle wait on this shared machine; not separated here).",
            f"- {backend}, server overhead: concurrency-1 median {one[1]['p50']:.1f} ms vs "
            f"{inproc[1]['p50']:.2f} ms in-process for one image ({one[1]['p50'] - inproc[1]['p50']:+.1f} ms of HTTP, "
            f"parsing and client); concurrency-32 batched throughput {dyn[32]['rps']:.0f} images/s vs "
            f"{inproc[32]['ips']:.0f} in-process at batch 32 ({100 * dyn[32]['rps'] / inproc[32]['ips']:.0f}%).",
        ]
    lines += ["", "## Run", "", "```", command, "```", "",
              f"- ONNX graph: {export_note}", "- server start-up log lines:"]
    for name, log in logs.items():
        lines += [f"  - {name}: `{line.split(' serving ', 1)[-1][:200]}`" for line in log]
    load = os.getloadavg()[0]
    lines += [
        f"- machine: {os.cpu_count()} CPU cores ({platform.machine()}), no GPU; 1-minute load average at the end "
        f"{load:.2f} (the machine is shared with other jobs: absolute figures are noisy, rows of one run compare)",
        f"- Python {platform.python_version()}, {platform.system()} {platform.release()}",
        f"- date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; wall time {seconds:.0f} s",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m benchmarks.serving_bench", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None, help="folder with cifar10_test.npz (default: $PURIFY_DATA_DIR)")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/purify_serving_bench"),
                   help="configs and the exported graph (reused when present)")
    p.add_argument("--requests", type=int, nargs=3, default=[200, 400, 800], metavar=("C1", "C8", "C32"),
                   help="requests per row at concurrency 1, 8 and 32")
    p.add_argument("--warmup", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch / onnxruntime threads in the server")
    p.add_argument("--delay-ms", type=float, default=5.0,
                   help="max_queue_delay_ms of the batched rows (0: Triton's default, a batch goes as soon as the "
                        "model is free, with whatever queued while it ran)")
    p.add_argument("--skip-onnx", action="store_true", help="torch rows only")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = p.parse_args(argv)
    start = time.perf_counter()
    from purify.data import load_dataset

    x, _ = load_dataset("cifar10", "test", data_dir=args.data_dir).tensors(slice(0, 256))
    images = x.numpy()
    # The load client is Python too: keep its cyclic GC off the start-up objects (torch and all),
    # as the server does, so a full collection in the client does not show up as server latency.
    gc.collect()
    gc.freeze()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    requests = dict(zip(CONCURRENCY, args.requests))
    backends = {"torch": None}
    export_note = "not measured (--skip-onnx)"
    if not args.skip_onnx:
        server_config = _serving.module("config")
        DEFAULT_CONFIG, load_config = server_config.DEFAULT_CONFIG, server_config.load_config
        export_config = _serving.module("export").export_config

        onnx_path = args.work_dir / "default.onnx"
        if not onnx_path.is_file():
            report = export_config(load_config(DEFAULT_CONFIG), onnx_path, data_dir=args.data_dir)
            export_note = f"exported now, max abs diff vs torch {report.max_abs_diff:.2e} on {report.images} images"
        else:
            export_note = f"reused {onnx_path} (written and verified by export_config)"
        backends["onnxruntime"] = onnx_path
    results, logs, in_process = {}, {}, {}
    for backend, onnx in backends.items():
        for batching, mbs in (("dynamic", 64), ("max_batch_size=1", 1)):
            name = f"{'ort' if onnx else 'torch'}_{'batched' if mbs > 1 else 'single'}"
            config = _config_file(args.work_dir, name, max_batch_size=mbs, delay_ms=args.delay_ms,
                                  threads=args.threads, onnx=onnx)
            print(f"{backend} / {batching}", flush=True)
            results[(backend, batching)], logs[name] = measure_server(config, name, images, threads=args.threads,
                                                                      requests=requests, warmup=args.warmup)
        in_process[backend] = measure_in_process(config, images, threads=args.threads, repeats=60)
    command = f"OMP_NUM_THREADS={args.threads} " + shlex.join(["python", "-m", "benchmarks.serving_bench", *argv])
    text = render(results, in_process, logs, command=command, export_note=export_note,
                  seconds=time.perf_counter() - start, batcher_ms=measure_batcher_delay(args.delay_ms),
                  delay_ms=args.delay_ms, threads=args.threads)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
