"""Run a config's cells on a Ray cluster: the same cells, cache and resume as a local run.

    python -m benchmarks run tvm_adaptive --ray local --ray-workers 2      # a Ray started here, 2 workers
    python -m benchmarks run tvm_adaptive --ray auto                       # the cluster `ray start` made
    python -m benchmarks run tvm_adaptive --ray ray://head-node:10001      # a remote cluster's client port

The driver (this process) reads the cell cache, runs the clean pass, and sends each job of missing
cells (one attack shared by its evaluations, :func:`~benchmarks.harness.cells.group_jobs`) to a
pool of worker actors; each worker loads the config, the data and the models once, and attacks
with the same seeded generators a local run uses (every cell's randomness is derived from the
run seed, the cell and the batch index, never from the order jobs run in), so the rows equal a
serial run's at the same thread count. Finished jobs are written to the driver's cache as they
arrive, so an interrupted distributed run resumes, locally or on Ray. The example images are made
on the driver.

A real cluster: start it with ``ray start --head`` on one machine and ``ray start --address
HEAD:6379`` on the others, install purify (``pip install -e ".[ray]"``) and put the data directory
at the same path on every node (``--data-dir``), then pass ``--ray auto`` on the head node (or
``--ray ray://HEAD:10001`` from elsewhere). Each worker takes ``--threads`` CPUs (default 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

__all__ = ["ray_jobs"]


def _worker_class():
    import ray

    @ray.remote
    class CellWorker:
        """Holds one prepared run (config, images, models) and attacks the jobs it is sent."""

        def __init__(self, raw: dict[str, Any], path: str, quick: bool, data_dir: str | None, device: str | None,
                     threads: int) -> None:
            import torch

            from .config import parse_config
            from .runner import prepare

            torch.set_num_threads(threads)
            self.p = prepare(parse_config(raw, Path(path), quick=quick), data_dir=data_dir, device=device)

        def run(self, hashes: list[str], clean: dict[str, Any]) -> dict[str, dict[str, Any]]:
            from .runner import _run_job

            cells = [c for c in self.p.cells if c.hash in set(hashes)]
            return _run_job(self.p, cells, clean, _NoBar(), None)

    return CellWorker


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


def ray_jobs(p, todo: list[list[Any]], clean: dict[str, Any], *, address: str, workers: int, threads: int,
             data_dir: str | Path | None, device: str | None) -> Iterator[tuple[list[Any], dict[str, dict[str, Any]]]]:
    """Yield ``(job, {cell hash: row})`` as the Ray workers finish the jobs of ``todo``.

    ``address``: ``"local"`` starts a Ray here on the loopback interface with ``workers`` CPUs
    (x ``threads``); anything else (``"auto"``, ``"ray://host:10001"``) connects to a running cluster.
    """
    import ray

    started = False
    if not ray.is_initialized():
        if address == "local":
            ray.init(num_cpus=workers * threads, include_dashboard=False, _node_ip_address="127.0.0.1",
                     log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        started = True
    try:
        worker = _worker_class()
        cfg = p.cfg
        pool = [worker.options(num_cpus=threads).remote(cfg.raw, str(cfg.path), cfg.is_quick,
                                                        None if data_dir is None else str(data_dir), device, threads)
                for _ in range(max(1, min(workers, len(todo))))]
        pending: dict[Any, tuple[int, list[Any]]] = {}
        queue = list(todo)
        for i, actor in enumerate(pool):
            if queue:
                job = queue.pop(0)
                pending[actor.run.remote([c.hash for c in job], clean)] = (i, job)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            i, job = pending.pop(done[0])
            rows = ray.get(done[0])
            if queue:
                nxt = queue.pop(0)
                pending[pool[i].run.remote([c.hash for c in nxt], clean)] = (i, nxt)
            yield job, rows
    finally:
        if started:
            ray.shutdown()
