"""The Open Inference Protocol (KServe v2) REST app over one or more served models (starlette, ASGI).

Endpoints:

======================================================  ==========================================
``GET  /v2/health/live``, ``/v2/health/ready``          200, or 503 while not ready
``GET  /v2``                                            server metadata and extensions
``GET  /v2/models/{m}[/versions/{v}]``                  model metadata (backend, providers in use)
``GET  /v2/models/{m}[/versions/{v}]/ready``            200, or 503 while not ready
``GET  /v2/models/{m}[/versions/{v}]/config``           Triton-style config with the batching settings
``POST /v2/models/{m}[/versions/{v}]/infer``            inference: JSON or binary tensors, gzip/deflate
``POST /v2/repository/index``                           the served models (model-repository extension)
``GET  /metrics``                                       Prometheus text format
======================================================  ==========================================

Errors are ``{"error": "..."}`` with Triton's status codes: 400 bad request, 404 unknown model
or version, 413 body over ``max_body_bytes``, 503 not ready / queue full / timed out.

Example:
    >>> from serving.config import load_config, DEFAULT_CONFIG
    >>> app = create_app([load_config(DEFAULT_CONFIG)])  # doctest: +SKIP
    >>> # uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import threading
import time
from typing import Any, Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import purify
from serving.config import ServeConfig
from serving.errors import NotFound, PayloadTooLarge, ServingError, Unavailable
from serving.metrics import Metrics
from serving.model import ServedModel
from serving.protocol import decode_body, encode_body, encode_response, parse_request

__all__ = ["create_app", "DEFAULT_MAX_BODY_BYTES"]

log = logging.getLogger("serving")

#: Default request body limit: a batch of 64 CIFAR-sized FP32 images as JSON text is ~5 MB.
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
_EXTENSIONS = ["binary_tensor_data", "classification", "model_repository", "parameters"]


def _json(payload: Any, status: int = 200) -> Response:
    return Response(json.dumps(payload, separators=(",", ":")), status_code=status, media_type="application/json")


async def _http_error(request: Request, exc: HTTPException) -> Response:
    """Unknown paths and methods answer in the protocol's error shape too."""
    return _json({"error": f"{exc.detail}: {request.method} {request.url.path}"}, exc.status_code)


def _error(err: Exception) -> Response:
    status = err.status if isinstance(err, ServingError) else 500
    return _json({"error": str(err)}, status)


_running_apps = 0
_running_apps_lock = threading.Lock()  # apps may start and stop on different threads' event loops


def _freeze_start_up_objects() -> None:
    """Move everything allocated so far into the GC's permanent generation.

    What is loaded by the time an app starts (torch, numba, the models) lives as long as the
    server. Freezing it keeps the cyclic GC's full collections from walking it on every pass: with
    the default model loaded, one full collection takes about 120 ms on the event loop, and near
    0 ms once frozen (``benchmarks/results/serving_profile.md``). ``gc.freeze`` is process-wide,
    so apps sharing a process (tests, an embedding application) count themselves and the last one
    to stop thaws.
    """
    global _running_apps
    with _running_apps_lock:
        gc.collect()
        gc.freeze()
        _running_apps += 1


def _thaw_when_last_app_stops() -> None:
    global _running_apps
    with _running_apps_lock:
        _running_apps -= 1
        if _running_apps == 0:
            gc.unfreeze()


class _Server:
    """Route handlers over the served models; one instance per app."""

    def __init__(self, configs: Sequence[ServeConfig], max_body_bytes: int) -> None:
        self.metrics = Metrics()
        self.models: dict[str, ServedModel] = {}
        for cfg in configs:
            if cfg.name in self.models:
                raise ValueError(f"two configs serve the model name {cfg.name!r} ({cfg.source})")
            model = self.models[cfg.name] = ServedModel(cfg, metrics=self.metrics)
            self.metrics.track_queue(cfg.name, lambda batcher=model.batcher: batcher.depth)
        self.max_body_bytes = max_body_bytes

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette):
        for name, model in self.models.items():
            await model.start()
            log.info("model %s ready: %s", name, model.metadata()["parameters"])
        _freeze_start_up_objects()
        try:
            yield
        finally:
            _thaw_when_last_app_stops()
            # Drain: every queued request is answered before the process exits.
            for name, model in self.models.items():
                await model.stop()
                log.info("model %s stopped; its queue is drained", name)

    def _model(self, request: Request) -> ServedModel:
        name = request.path_params["model"]
        model = self.models.get(name)
        if model is None:
            raise NotFound(f"unknown model {name!r}; served models: {', '.join(map(repr, self.models))}")
        version = request.path_params.get("version")
        if version is not None and version != model.cfg.version:
            raise NotFound(f"model {name!r} has no version {version!r}; available: {model.cfg.version!r}")
        return model

    async def live(self, request: Request) -> Response:
        return Response(status_code=200)

    async def ready(self, request: Request) -> Response:
        ok = bool(self.models) and all(m.ready for m in self.models.values())
        return Response(status_code=200 if ok else 503)

    async def server_metadata(self, request: Request) -> Response:
        return _json({"name": "purify", "version": purify.__version__, "extensions": _EXTENSIONS})

    def _about_model(self, request: Request, answer) -> Response:
        """``answer(model)`` for the addressed model, or the 404 of an unknown name / version."""
        try:
            return answer(self._model(request))
        except ServingError as err:
            return _error(err)

    async def model_metadata(self, request: Request) -> Response:
        return self._about_model(request, lambda m: _json(m.metadata()))

    async def model_ready(self, request: Request) -> Response:
        return self._about_model(request, lambda m: Response(status_code=200 if m.ready else 503))

    async def model_config(self, request: Request) -> Response:
        return self._about_model(request, lambda m: _json(m.model_config()))

    async def repository_index(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
        except json.JSONDecodeError as err:
            return _json({"error": f"malformed JSON: {err}"}, 400)
        only_ready = isinstance(body, dict) and body.get("ready") is True
        return _json([{"name": m.cfg.name, "version": m.cfg.version, "state": "READY" if m.ready else "UNAVAILABLE"}
                      for m in self.models.values() if m.ready or not only_ready])

    async def metrics_endpoint(self, request: Request) -> Response:
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)

    async def _read_body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise PayloadTooLarge(f"request body of {declared} bytes is over the limit of {self.max_body_bytes}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise PayloadTooLarge(f"request body is over the limit of {self.max_body_bytes} bytes")
            chunks.append(chunk)
        return decode_body(b"".join(chunks), request.headers.get("content-encoding"), limit=self.max_body_bytes)

    async def infer(self, request: Request) -> Response:
        start = time.perf_counter()
        label = request.path_params["model"]
        try:
            model = self._model(request)
            if not model.ready:
                raise Unavailable(f"model {label!r} is not ready")
            body = await self._read_body(request)
            req = parse_request(body, header_length=request.headers.get("inference-header-content-length"))
            outputs = await model.infer(req)
            payload, header_len = encode_response(model.cfg.name, model.cfg.version, req.id, outputs)
            headers = {}
            if header_len is not None:
                headers["Inference-Header-Content-Length"] = str(header_len)
            payload, encoding = encode_body(payload, request.headers.get("accept-encoding"))
            if encoding is not None:
                headers["Content-Encoding"] = encoding
            media = "application/octet-stream" if header_len is not None else "application/json"
            response = Response(payload, status_code=200, headers=headers, media_type=media)
        except ServingError as err:
            response = _error(err)
        except Exception as err:  # noqa: BLE001 - a bug must answer 500, never take the server down
            log.exception("infer on %s failed", label)
            response = _json({"error": f"internal error: {type(err).__name__}: {err}"}, 500)
        if label in self.models:  # unknown names stay out of the label set (unbounded cardinality)
            self.metrics.requests.labels(label, str(response.status_code)).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - start)
        return response


def create_app(configs: Sequence[ServeConfig], *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> Starlette:
    """Build the ASGI app; models load now (bad configs fail here), batchers start with the app.

    The returned app has ``app.state.server`` (handlers, ``models``, ``metrics``).
    """
    if not configs:
        raise ValueError("create_app: expected at least one model config")
    server = _Server(configs, max_body_bytes)
    model_routes = []
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        model_routes += [
            Route(prefix, server.model_metadata, methods=["GET"]),
            Route(prefix + "/ready", server.model_ready, methods=["GET"]),
            Route(prefix + "/config", server.model_config, methods=["GET"]),
            Route(prefix + "/infer", server.infer, methods=["POST"]),
        ]
    routes = [
        Route("/v2/health/live", server.live, methods=["GET"]),
        Route("/v2/health/ready", server.ready, methods=["GET"]),
        Route("/v2", server.server_metadata, methods=["GET"]),
        Route("/v2/repository/index", server.repository_index, methods=["POST"]),
        Route("/metrics", server.metrics_endpoint, methods=["GET"]),
        *model_routes,
    ]
    app = Starlette(routes=routes, lifespan=server.lifespan,
                    exception_handlers={HTTPException: _http_error})
    app.state.server = server
    return app
