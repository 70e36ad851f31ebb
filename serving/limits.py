"""Server-wide limits against hostile or broken clients, and the uvicorn server that enforces them.

Per-model settings live in the model configs (``serving/config.py``); these are per server:

=========================  ============  ===================================================  ======
field                      default       what happens beyond it                               status
=========================  ============  ===================================================  ======
``max_body_bytes``         16 MiB        body (declared, streamed or decompressed) refused    413
``max_header_bytes``       32 KiB        request line + headers refused, connection closed    431
``header_timeout_s``       10            headers not complete this long after the connection   408
                                         opened (or the request's first byte, on keep-alive)
``body_timeout_s``         60            whole body not received this long after the headers   408
``keep_alive_s``           5             idle keep-alive connection closed (uvicorn's)         --
``max_connections``        1000          a new connection answered at once and closed          503
``parse_offload_bytes``    1 MiB         bodies this large (or compressed) are decoded and     --
                                         parsed in a worker thread, not on the event loop
``parse_threads``          2             worker threads for those parses
``shutdown_timeout_s``     30            requests still running at shutdown are cancelled      503
=========================  ============  ===================================================  ======

Set them with ``purify-serve`` flags (``--max-header-bytes`` ...), or in a server config file
given by ``--server-config`` (flags win over the file, the file over the defaults)::

    [limits]
    max_connections = 200
    body_timeout_s = 30.0

    [auth]
    token_file = "/etc/purify/token"     # or PURIFY_SERVE_TOKEN / --auth-token-file
    scope = "api"                        # "api": inference + repository; "all": health, /v2, /metrics too

The connection-level limits (headers, read timeouts, connection cap) are enforced by
:func:`limited_protocol`, a subclass of uvicorn's httptools protocol: the app never sees those
requests. uvicorn has ``limit_concurrency``, but it answers only once a request's headers have
arrived, so idle connections still pile up; and httptools has no header-size limit at all.

Example:
    >>> ServerLimits(max_connections=50).max_connections
    50
    >>> ServerLimits(header_timeout_s=0)
    Traceback (most recent call last):
    ...
    serving.errors.ConfigError: ServerLimits: header_timeout_s: expected a number > 0, got 0
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError, HeadersTooLarge, RequestTimeout, ServingError, Unavailable

__all__ = ["ServerLimits", "ServerSettings", "load_server_config", "limited_protocol", "make_server",
           "BODY_TIMEOUT_SCOPE_KEY"]

log = logging.getLogger("serving")

#: Set in an ASGI scope's ``extensions`` when the protocol answered 408 because the body was too slow,
#: so the app can count that request as 408 rather than as a client disconnect.
BODY_TIMEOUT_SCOPE_KEY = "purify.body_timeout"


@dataclass(frozen=True)
class ServerLimits:
    """Server-wide limits (see the module docstring for each field and what exceeding it answers)."""

    max_body_bytes: int = 16 * 1024 * 1024
    max_header_bytes: int = 32 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    keep_alive_s: float = 5.0
    max_connections: int = 1000
    parse_offload_bytes: int = 1024 * 1024
    parse_threads: int = 2
    shutdown_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int":
                ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
                expected = "an int >= 1"
            else:
                ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                      and value > 0)
                expected = "a number > 0"
            if not ok:
                raise ConfigError(f"ServerLimits: {f.name}: expected {expected}, got {value!r}")


@dataclass(frozen=True)
class ServerSettings:
    """A server config file: its limits and its bearer-token settings."""

    limits: ServerLimits = ServerLimits()
    auth_token_file: Path | None = None
    auth_scope: str = "api"


def load_server_config(path: str | os.PathLike) -> ServerSettings:
    """Read a ``--server-config`` file (TOML, or YAML with pyyaml): ``[limits]`` and ``[auth]`` tables.

    Raises:
        ConfigError: the message names the file and the field.
    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "server.toml"
        >>> _ = p.write_text("[limits]\\nmax_connections = 64\\n")
        >>> load_server_config(p).limits.max_connections
        64
    """
    from .config import _read_file, _Table

    p = Path(path).expanduser()
    source = str(p)
    data = _read_file(p)
    _Table(source, "", data, ("limits", "auth"))
    names = tuple(f.name for f in fields(ServerLimits))
    table = _Table(source, "limits", data.get("limits", {}), names)
    values: dict[str, Any] = {}
    for f in fields(ServerLimits):
        if f.name in table.data:
            values[f.name] = (table.int(f.name, 1, low=1) if f.type == "int"
                              else table.float(f.name, None, low=1e-3))
    auth = _Table(source, "auth", data.get("auth", {}), ("token_file", "scope"))
    return ServerSettings(limits=ServerLimits(**values),
                          auth_token_file=auth.path_("token_file", p.resolve().parent),
                          auth_scope=auth.str("scope", "api", choices=("api", "all")))


def check_descriptor_budget(limits: ServerLimits) -> None:
    """Warn when ``max_connections`` cannot be reached within the process's open-file limit."""
    try:
        import resource   # POSIX only; Windows has no such limit to check
    except ImportError:
        return
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Reserve for what the server itself keeps open: weights, libraries, the listening socket, logs.
    reserve = 64
    if soft != resource.RLIM_INFINITY and limits.max_connections + reserve > soft:
        log.warning("max_connections = %d but the open-file limit is %d: connections past ~%d fail at accept; "
                    "raise it (ulimit -n) or lower --max-connections", limits.max_connections, soft, soft - reserve)


def _answer_and_close(transport: asyncio.Transport, err: ServingError) -> None:
    """Write a complete ``{"error": ...}`` response outside any ASGI cycle and close the connection."""
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE

    body = json.dumps({"error": str(err)}).encode()
    transport.write(b"".join([STATUS_LINE[err.status], b"content-type: application/json\r\n",
                              b"content-length: %d\r\n" % len(body), b"connection: close\r\n\r\n", body]))
    transport.close()


def limited_protocol(limits: ServerLimits, on_reject: Callable[[str], None] | None = None) -> type:
    """uvicorn's httptools protocol with the header-size, read-timeout and connection limits.

    ``on_reject(reason)`` is called for each refused connection or request, with reason one of
    ``too_many_connections``, ``header_too_large``, ``header_timeout``, ``body_timeout`` (metrics).
    """
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    def rejected(reason: str) -> None:
        log.info("refused a connection or request: %s", reason)
        if on_reject is not None:
            on_reject(reason)

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        """Headers are counted before httptools buffers them; timers bound the header and body phases."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._reading_headers = True
            self._header_bytes = 0
            self._header_timer: asyncio.TimerHandle | None = None
            self._body_timer: asyncio.TimerHandle | None = None
            if len(self.connections) > limits.max_connections:
                # Out of the set at once, so a flood of refused connections never counts against the cap.
                self.connections.discard(self)
                rejected("too_many_connections")
                _answer_and_close(transport, Unavailable(
                    f"too many connections (limit {limits.max_connections}); retry later"))
                return
            # A fresh connection that never sends a byte is held only this long (uvicorn: forever).
            self._header_timer = self.loop.call_later(limits.header_timeout_s, self._header_timeout)

        def connection_lost(self, exc: Exception | None) -> None:
            for timer in (self._header_timer, self._body_timer):
                if timer is not None:
                    timer.cancel()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            # Feed the header phase at most the remaining budget: httptools would buffer a header of
            # any size before calling on_header, so the count must come before the parser sees it.
            while self._reading_headers and data and not self.transport.is_closing():
                room = limits.max_header_bytes - self._header_bytes
                if room <= 0:
                    self._refuse_headers()
                    return
                piece, data = data[:room], data[room:]
                self._header_bytes += len(piece)
                super().data_received(piece)
            if data and not self.transport.is_closing():
                super().data_received(data)

        def _refuse_headers(self) -> None:
            rejected("header_too_large")
            err = HeadersTooLarge(f"request line and headers are over the limit of {limits.max_header_bytes} bytes")
            if self.cycle is not None and not self.cycle.response_complete:
                self.transport.close()  # a pipelined earlier request is still answering: no room for ours
            else:
                _answer_and_close(self.transport, err)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._header_timer is None:  # keep-alive: the next request's headers get their own deadline
                self._header_timer = self.loop.call_later(limits.header_timeout_s, self._header_timeout)

        def on_headers_complete(self) -> None:
            self._reading_headers = False
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            super().on_headers_complete()
            self._body_timer = self.loop.call_later(limits.body_timeout_s, self._body_timeout)

        def on_message_complete(self) -> None:
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None
            self._reading_headers, self._header_bytes = True, 0
            super().on_message_complete()

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self.transport.is_closing():
                return
            rejected("header_timeout")
            if self.cycle is not None and not self.cycle.response_complete:
                self.cycle.keep_alive = False  # close once the earlier request is answered
                return
            _answer_and_close(self.transport, RequestTimeout(
                f"request headers not received within {limits.header_timeout_s:g} s"))

        def _body_timeout(self) -> None:
            self._body_timer = None
            if self.transport.is_closing():
                return
            rejected("body_timeout")
            cycle = self.cycle
            if cycle is not None and not cycle.response_started:
                # The app is still waiting for the body: answer for it, then its receive() sees a
                # disconnect and its own answer goes nowhere; the scope key tells it why.
                cycle.scope.setdefault("extensions", {})[BODY_TIMEOUT_SCOPE_KEY] = {}
                _answer_and_close(self.transport, RequestTimeout(
                    f"request body not received within {limits.body_timeout_s:g} s"))
                cycle.disconnected = True
                cycle.message_event.set()
            else:
                self.transport.close()  # answered already; the rest of the body is not worth waiting for

    return LimitedHttpToolsProtocol


def make_server(app: Any, limits: ServerLimits, *, log_level: str = "info",
                on_reject: Callable[[str], None] | None = None) -> Any:
    """The ``uvicorn.Server`` that ``purify-serve`` runs: :func:`limited_protocol`, no websockets.

    ``on_reject`` defaults to the app's ``purify_rejected_total`` counter when ``app`` comes from
    :func:`serving.app.create_app`. Start it with ``server.run(sockets=[sock])``.
    """
    import uvicorn

    if on_reject is None and hasattr(getattr(app, "state", None), "server"):
        on_reject = app.state.server.metrics.rejected_inc
    check_descriptor_budget(limits)
    # uvicorn annotates both timeouts as int; it only ever passes them to call_later / wait_for.
    config = uvicorn.Config(app, http=limited_protocol(limits, on_reject), ws="none", lifespan="on",
                            log_level=log_level, access_log=False,
                            timeout_keep_alive=limits.keep_alive_s,  # type: ignore[arg-type]
                            timeout_graceful_shutdown=limits.shutdown_timeout_s)  # type: ignore[arg-type]
    return uvicorn.Server(config)
