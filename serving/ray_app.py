"""Ray Serve scale-out: the same v2 app (:func:`serving.app.create_app`) as a Ray Serve deployment.

Install the extra (``pip install -c constraints.txt -e ".[ray]"``), then::

    import ray
    from ray import serve
    from .ray_app import build_app

    ray.init(_node_ip_address="127.0.0.1", include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": 8000})
    serve.run(build_app(["model.toml"], num_replicas=2), route_prefix="/")
    # POST http://127.0.0.1:8000/v2/models/<name>/infer, exactly as against purify-serve

Settings (keyword arguments of :func:`build_app`, passed to ``@serve.deployment``):

* ``num_replicas``: fixed replica count, or ``"auto"`` with ``autoscaling_config`` such as
  ``{"min_replicas": 1, "max_replicas": 8, "target_ongoing_requests": 32}``; every replica is
  one process with its own model and its own dynamic batcher, so the target should be about
  ``max_batch_size`` / 2 to keep batches full while requests queue in Ray rather than at a replica;
* ``ray_actor_options``: placement, e.g. ``{"num_gpus": 1}`` puts each replica on its own GPU
  (the torch backend then runs on CUDA), ``{"num_cpus": 2}`` reserves cores per replica;
* ``max_ongoing_requests``: requests one replica accepts at once (default: twice the largest
  ``max_queue_size``, at most 1024; beyond it Ray queues them at the proxy).

Batching stays inside the replica (the app's own batcher), not ``@serve.batch``: the app already
batches with Triton's semantics, and ``@serve.batch`` fails under Ray 2.60's ``_local_testing_mode``.
Configs are validated on the driver, before anything is deployed.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from .config import ServeConfig, load_config

__all__ = ["build_app"]


def build_app(configs: Sequence[str | os.PathLike | ServeConfig], *, num_replicas: int | str = 1,
              autoscaling_config: dict[str, Any] | None = None, ray_actor_options: dict[str, Any] | None = None,
              max_ongoing_requests: int | None = None, name: str = "purify") -> Any:
    """A bound Ray Serve application serving ``configs`` (paths or parsed configs).

    Raises:
        ConfigError: a config is invalid (checked here, on the driver).
        ImportError: ray[serve] is not installed.
    """
    from ray import serve

    parsed = [c if isinstance(c, ServeConfig) else load_config(c) for c in configs]
    if max_ongoing_requests is None:
        max_ongoing_requests = min(1024, 2 * max(c.batching.max_queue_size for c in parsed))

    def make_app():
        # Evaluated on each replica, so every replica loads its own model and starts its own batcher.
        from .app import create_app

        return create_app(parsed)

    options: dict[str, Any] = {"name": name, "max_ongoing_requests": max_ongoing_requests,
                               "ray_actor_options": ray_actor_options or {"num_cpus": 1}}
    if autoscaling_config is not None:
        options["autoscaling_config"] = autoscaling_config
    else:
        options["num_replicas"] = num_replicas

    @serve.deployment(**options)
    @serve.ingress(make_app)
    class PurifyDeployment:
        """One replica of the v2 app; the routes come from the ASGI app."""

    return PurifyDeployment.bind()
