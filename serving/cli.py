"""``purify-serve``: serve one or more model configs over the Open Inference Protocol.

    purify-serve                                # the built-in default (serving/default.toml), 127.0.0.1:8000
    purify-serve --config model.toml            # a user's model (repeat --config for several)
    purify-serve --config model.toml --port 0   # any free port; the chosen one is logged
    purify-serve --threads 2                    # CPU threads of every model (torch, TV kernel, ONNX Runtime)

The server binds 127.0.0.1 unless ``--host`` says otherwise. Configs are validated and models
loaded before the port opens; a bad config exits with status 2 and a message naming the field.
SIGINT / SIGTERM stop accepting connections and drain the queued requests before exiting.

Limits against hostile or broken clients (defaults in :class:`serving.limits.ServerLimits`)::

    purify-serve --max-connections 200 --header-timeout-s 5 --body-timeout-s 30
    purify-serve --server-config server.toml    # [limits] and [auth] tables; flags win over the file

Flags: ``--max-body-bytes`` (16 MiB, 413), ``--max-header-bytes`` (32 KiB, 431),
``--header-timeout-s`` (10, 408), ``--body-timeout-s`` (60, 408), ``--keep-alive-s`` (5),
``--max-connections`` (1000, 503), ``--parse-offload-bytes`` (1 MiB), ``--parse-threads`` (2),
``--shutdown-timeout-s`` (30). A bearer token: ``--auth-token-file FILE`` or ``PURIFY_SERVE_TOKEN``
(``--auth-scope all`` protects health, ``/v2`` and ``/metrics`` too; see :mod:`serving.integrity`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import socket
import sys

from purify.errors import PurifyError
from purify.tv import set_threads
from .config import DEFAULT_CONFIG, ServeConfig, load_config
from .limits import ServerLimits, ServerSettings, load_server_config

__all__ = ["main", "build_parser", "bind_socket"]

log = logging.getLogger("serving")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on ``host:port`` (port 0: a free one, read it with ``getsockname``).

    Example:
        >>> s = bind_socket("127.0.0.1", 0); s.getsockname()[1] > 0
        True
        >>> s.close()
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


# (flag, ServerLimits field, type, help); defaults come from ServerLimits, then --server-config.
_LIMIT_FLAGS = (
    ("--max-body-bytes", "max_body_bytes", int, "largest request body, before and after decompression (413)"),
    ("--max-header-bytes", "max_header_bytes", int, "largest request line + headers (431)"),
    ("--header-timeout-s", "header_timeout_s", float, "time for a request's headers to arrive (408)"),
    ("--body-timeout-s", "body_timeout_s", float, "time for a request's whole body to arrive (408)"),
    ("--keep-alive-s", "keep_alive_s", float, "idle time before a keep-alive connection is closed"),
    ("--max-connections", "max_connections", int, "open connections; a new one beyond is answered 503"),
    ("--parse-offload-bytes", "parse_offload_bytes", int, "bodies this large are parsed off the event loop"),
    ("--parse-threads", "parse_threads", int, "threads parsing those bodies"),
    ("--shutdown-timeout-s", "shutdown_timeout_s", float, "drain time at shutdown; still running: 503"),
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="purify-serve", description="Serve defended classifiers over the Open "
                                "Inference Protocol (KServe v2 REST, Triton-compatible).")
    p.add_argument("--config", action="append", default=None, metavar="FILE",
                   help=f"model config (.toml, or .yaml with pyyaml); repeatable (default: {DEFAULT_CONFIG.name})")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--server-config", metavar="FILE", default=None,
                   help="server limits and auth: a TOML file with [limits] and [auth] tables (serving/limits.py)")
    defaults = ServerLimits()
    for flag, field, kind, text in _LIMIT_FLAGS:
        p.add_argument(flag, type=kind, default=None, help=f"{text} (default {getattr(defaults, field)})")
    p.add_argument("--auth-token-file", metavar="FILE", default=None,
                   help="require 'Authorization: Bearer <token>' with the token in FILE "
                        "(else $PURIFY_SERVE_TOKEN, else [auth] token_file; none: no authentication)")
    p.add_argument("--auth-scope", choices=("api", "all"), default=None,
                   help="api (default): inference, models and repository; all: health, /v2 and /metrics too")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of every model, replacing each config's backend.threads (torch and the TV "
                        "kernel: purify.tv.set_threads; ONNX Runtime's intra-op threads); default: the configs'")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return p


def with_threads(cfg: ServeConfig, threads: int | None) -> ServeConfig:
    """``cfg`` with ``backend.threads`` replaced by ``--threads`` (unchanged when None).

    Example:
        >>> from serving.config import load_config, DEFAULT_CONFIG
        >>> with_threads(load_config(DEFAULT_CONFIG), 2).backend.threads
        2
    """
    if threads is None:
        return cfg
    return dataclasses.replace(cfg, backend=dataclasses.replace(cfg.backend, threads=threads))


def server_settings(args: argparse.Namespace) -> ServerSettings:
    """Defaults, then ``--server-config``, then the flags given on the command line.

    Example:
        >>> server_settings(build_parser().parse_args(["--max-connections", "8"])).limits.max_connections
        8
    """
    settings = load_server_config(args.server_config) if args.server_config else ServerSettings()
    given = {field: getattr(args, field) for _, field, _, _ in _LIMIT_FLAGS if getattr(args, field) is not None}
    return ServerSettings(limits=dataclasses.replace(settings.limits, **given),
                          auth_token_file=args.auth_token_file or settings.auth_token_file,
                          auth_scope=args.auth_scope or settings.auth_scope)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from .app import create_app
    from .integrity import load_token
    from .limits import make_server

    if args.threads is not None and args.threads < 1:
        log.error("purify-serve: --threads must be >= 1, got %d", args.threads)
        return 2
    try:
        settings = server_settings(args)
        auth = load_token(settings.auth_token_file, scope=settings.auth_scope)
        configs = [with_threads(load_config(path), args.threads) for path in (args.config or [DEFAULT_CONFIG])]
        if args.threads is not None:
            set_threads(args.threads)
        app = create_app(configs, limits=settings.limits, auth=auth)
    except (PurifyError, OSError, ValueError) as err:
        log.error("purify-serve: %s", err)
        return 2
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as err:
        log.error("purify-serve: cannot bind %s:%d: %s", args.host, args.port, err)
        return 2
    host, port = sock.getsockname()[:2]
    names = ", ".join(c.name for c in configs)
    log.info("purify-serve: serving %s on http://%s:%d (GET /v2/health/ready, POST /v2/models/%s/infer)",
             names, host if ":" not in host else f"[{host}]", port, configs[0].name)
    if auth is None and host not in ("127.0.0.1", "::1", "localhost"):
        log.warning("purify-serve: listening on %s without a bearer token: anyone who can reach it can use "
                    "it; see README 'Exposing the server'", host)
    log.info("purify-serve: limits %s; auth %s", settings.limits, auth or "off")
    server = make_server(app, settings.limits, log_level=args.log_level)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn re-raises the SIGINT it captured once the graceful shutdown (drain) is done.
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
