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

Errors are ``{"error": "..."}`` with Triton's status codes: 400 bad request, 401 missing or wrong
bearer token (when one is set, :mod:`serving.integrity`), 404 unknown model or version, 408 headers
or body too slow, 413 body over ``max_body_bytes``, 431 headers too large, 503 not ready / queue
full / timed out / too many connections / cancelled at shutdown. The connection-level limits
(408, 431, the connection cap) are the server's (:mod:`serving.limits`); run the app with
:func:`serving.limits.make_server` to have them.

Bodies of ``parse_offload_bytes`` or more, and compressed ones, are decoded and parsed in a small
thread pool, so one client's 15 MiB JSON does not hold up health checks and other clients.
A client that disconnects before its body is complete is logged at INFO and counted with
status ``499`` (nginx's "client closed request"), never as a server error.

Example:
    >>> from serving.config import load_config, DEFAULT_CONFIG
    >>> app = create_app([load_config(DEFAULT_CONFIG)])  # doctest: +SKIP
    >>> # uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

import purify
from .config import ServeConfig
from .errors import NotFound, PayloadTooLarge, RequestTimeout, ServingError, Unauthorized, Unavailable
from .integrity import BearerAuth
from .limits import BODY_TIMEOUT_SCOPE_KEY, ServerLimits
from .metrics import Metrics
from .model import ServedModel
from .protocol import InferRequest, decode_body, encode_body, encode_response, load_json, parse_request

__all__ = ["create_app", "DEFAULT_MAX_BODY_BYTES"]

log = logging.getLogger("serving")

#: Default request body limit: a batch of 64 CIFAR-sized FP32 images as JSON text is ~5 MB.
DEFAULT_MAX_BODY_BYTES = ServerLimits.max_body_bytes
_EXTENSIONS = ["binary_tensor_data", "classification", "model_repository", "parameters"]
# After a 408 the client is too slow to be worth waiting for: close. After a 401 or 413 the
# connection stays open and the server reads and discards the rest of the body (bounded by
# body_timeout_s), as nginx's lingering close does: closing with unread data in the socket makes
# the kernel send a reset, which can destroy the answer before the client has read it.
_CLOSE_AFTER = (408,)


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(payload, separators=(",", ":")), status_code=status, headers=headers,
                    media_type="application/json")


async def _http_error(request: Request, exc: HTTPException) -> Response:
    """Unknown paths and methods answer in the protocol's error shape too."""
    return _json({"error": f"{exc.detail}: {request.method} {request.url.path}"}, exc.status_code)


def _error(err: Exception) -> Response:
    status = err.status if isinstance(err, ServingError) else 500
    return _json({"error": str(err)}, status, {"Connection": "close"} if status in _CLOSE_AFTER else None)


async def _send_error(send: Any, err: ServingError, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """Answer ``err`` from plain ASGI (outside starlette's routing)."""
    body = json.dumps({"error": str(err)}).encode()
    await send({"type": "http.response.start", "status": err.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers, *([(b"connection", b"close")] if err.status in _CLOSE_AFTER else [])]})
    await send({"type": "http.response.body", "body": body})


class _Guard:
    """Outermost ASGI layer: the bearer token, and a JSON 503 for a request cancelled at shutdown.

    uvicorn cancels the requests still running when its graceful-shutdown timeout ends; without
    this, the client would get uvicorn's plain-text 500 and the log a traceback.
    """

    def __init__(self, app: Any, *, auth: BearerAuth | None, metrics: Metrics) -> None:
        self.app, self.auth, self.metrics = app, auth, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.auth is not None:
            given = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
            if not self.auth.allows(scope["path"], given):
                self.metrics.rejected_inc("unauthorized")
                challenge = b'Bearer realm="purify"' + (b', error="invalid_token"' if given else b"")
                await _send_error(send, Unauthorized("missing or wrong bearer token (Authorization: Bearer "
                                                     "<token>)"), [(b"www-authenticate", challenge)])
                return
        started = False

        async def tracked_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except asyncio.CancelledError:
            if started:
                raise
            task = asyncio.current_task()
            if task is not None and hasattr(task, "uncancel"):  # 3.11+: the cancellation is handled here
                task.uncancel()
            log.info("%s %s cancelled at shutdown; answered 503", scope["method"], scope["path"])
            await _send_error(send, Unavailable("the server is shutting down; the request was cancelled, "
                                                "retry it elsewhere"))


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

    def __init__(self, configs: Sequence[ServeConfig], limits: ServerLimits) -> None:
        self.metrics = Metrics()
        self.models: dict[str, ServedModel] = {}
        for cfg in configs:
            if cfg.name in self.models:
                raise ValueError(f"two configs serve the model name {cfg.name!r} ({cfg.source})")
            model = self.models[cfg.name] = ServedModel(cfg, metrics=self.metrics)
            self.metrics.track_queue(cfg.name, lambda batcher=model.batcher: batcher.depth)
        self.limits = limits
        self.max_body_bytes = limits.max_body_bytes
        self.parse_pool = ThreadPoolExecutor(limits.parse_threads, thread_name_prefix="purify-parse")

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
            self.parse_pool.shutdown(wait=True)

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
            raw = await self._read_body(request)
            body = await self._off_loop(raw, request, lambda text, cooperative: load_json(
                text or b"{}", cooperative=cooperative))
        except ServingError as err:
            return _error(err)
        except ClientDisconnect:
            self._disconnected(request, "repository index")
            return Response(status_code=400)  # goes nowhere: the client is gone
        only_ready = isinstance(body, dict) and body.get("ready") is True
        return _json([{"name": m.cfg.name, "version": m.cfg.version, "state": "READY" if m.ready else "UNAVAILABLE"}
                      for m in self.models.values() if m.ready or not only_ready])

    async def metrics_endpoint(self, request: Request) -> Response:
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)

    async def _read_body(self, request: Request) -> bytes:
        """The raw (still encoded) body; 413 as soon as the declared or streamed size passes the limit."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise PayloadTooLarge(f"request body of {declared} bytes is over the limit of {self.max_body_bytes}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise PayloadTooLarge(f"request body is over the limit of {self.max_body_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _off_loop(self, raw: bytes, request: Request, parse: Any) -> Any:
        """Decode ``raw`` and ``parse(text, cooperative)`` it: inline when small, else in the parse pool.

        Compressed bodies always go to the pool: a small one may inflate to ``max_body_bytes``.
        """
        encoding = request.headers.get("content-encoding")
        compressed = (encoding or "identity").strip().lower() != "identity"

        def run(cooperative: bool) -> Any:
            return parse(decode_body(raw, encoding, limit=self.max_body_bytes), cooperative)

        if len(raw) < self.limits.parse_offload_bytes and not compressed:
            return run(False)
        return await asyncio.get_running_loop().run_in_executor(self.parse_pool, run, True)

    def _disconnected(self, request: Request, what: str) -> str:
        """Log a client gone mid-request quietly; the status label it is counted under."""
        if BODY_TIMEOUT_SCOPE_KEY in request.scope.get("extensions", {}):
            log.info("%s: request body too slow; answered 408 and closed", what)
            return str(RequestTimeout.status)
        log.info("%s: client disconnected before its request body was complete", what)
        return "499"

    async def infer(self, request: Request) -> Response:
        start = time.perf_counter()
        label = request.path_params["model"]
        status: str | None = None
        response: Response | None = None
        try:
            model = self._model(request)
            if not model.ready:
                raise Unavailable(f"model {label!r} is not ready")
            raw = await self._read_body(request)
            header_length = request.headers.get("inference-header-content-length")
            req: InferRequest = await self._off_loop(raw, request, lambda body, cooperative: parse_request(
                body, header_length=header_length, cooperative=cooperative))
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
        except ClientDisconnect:
            status = self._disconnected(request, f"infer on {label}")
            response = Response(status_code=400)  # goes nowhere: the client is gone
        except asyncio.CancelledError:
            status = "503"  # cancelled at shutdown; _Guard answers it
            raise
        except Exception as err:  # noqa: BLE001 - a bug must answer 500, never take the server down
            log.exception("infer on %s failed", label)
            response = _json({"error": f"internal error: {type(err).__name__}: {err}"}, 500)
        finally:
            # Unknown names stay out of the label set (unbounded cardinality).
            if label in self.models and (status is not None or response is not None):
                self.metrics.requests.labels(label, status or str(response.status_code)).inc()
                self.metrics.latency.labels(label).observe(time.perf_counter() - start)
        return response


def create_app(configs: Sequence[ServeConfig], *, max_body_bytes: int | None = None,
               limits: ServerLimits | None = None, auth: BearerAuth | None = None) -> Starlette:
    """Build the ASGI app; models load now (bad configs fail here), batchers start with the app.

    Args:
        limits: the server's limits (:class:`~serving.limits.ServerLimits`; its defaults when None).
        max_body_bytes: shorthand that replaces ``limits.max_body_bytes``.
        auth: a bearer token the protected endpoints require (:class:`~serving.integrity.BearerAuth`).

    The returned app has ``app.state.server`` (handlers, ``models``, ``metrics``, ``limits``).
    """
    if not configs:
        raise ValueError("create_app: expected at least one model config")
    limits = limits or ServerLimits()
    if max_body_bytes is not None:
        limits = dataclasses.replace(limits, max_body_bytes=max_body_bytes)
    server = _Server(configs, limits)
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
    app = Starlette(routes=routes, lifespan=server.lifespan, exception_handlers={HTTPException: _http_error},
                    middleware=[Middleware(_Guard, auth=auth, metrics=server.metrics)])
    app.state.server = server
    return app
