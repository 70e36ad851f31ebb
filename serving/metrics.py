"""Prometheus metrics of one app (its own registry, so several apps can live in one process).

Exposed at ``GET /metrics`` in the text format:

* ``purify_requests_total{model, status}`` — infer requests by HTTP status; ``499``: the client
  disconnected before its body was complete (nginx's "client closed request", not a server error),
  ``408``: its body was too slow (answered by the server's read timeout);
* ``purify_rejected_total{reason}`` — connections and requests refused before any handler:
  ``too_many_connections`` (503), ``header_too_large`` (431), ``header_timeout`` / ``body_timeout``
  (408), ``unauthorized`` (401);
* ``purify_request_seconds{model}`` — infer latency histogram (receipt to response);
* ``purify_batch_size{model}`` — images per executed batch;
* ``purify_queue_depth{model}`` — requests waiting for a batch, read at scrape time.

Example:
    >>> m = Metrics()
    >>> m.requests.labels("m", "200").inc()
    >>> b"purify_requests_total" in m.render()[0]
    True
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The app's collectors, registered in a private :class:`CollectorRegistry`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("purify_requests", "Infer requests by model and HTTP status",
                                ("model", "status"), registry=self.registry)
        self.latency = Histogram("purify_request_seconds", "Infer request latency (receipt to response)",
                                 ("model",), buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("purify_batch_size", "Images per executed batch", ("model",),
                                    buckets=_BATCH_BUCKETS, registry=self.registry)
        self.rejected = Counter("purify_rejected", "Connections and requests refused by the server's limits "
                                "or authentication, by reason", ("reason",), registry=self.registry)
        self.queue_depth = Gauge("purify_queue_depth", "Requests waiting for a batch", ("model",),
                                 registry=self.registry)

    def rejected_inc(self, reason: str) -> None:
        """Count one refusal (``serving.limits`` calls this from the protocol)."""
        self.rejected.labels(reason).inc()

    def track_queue(self, model: str, depth: Callable[[], int]) -> None:
        """Read ``depth()`` at every scrape."""
        self.queue_depth.labels(model).set_function(depth)

    def render(self) -> tuple[bytes, str]:
        """The text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
