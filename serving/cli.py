"""``purify-serve``: serve one or more model configs over the Open Inference Protocol.

    purify-serve                                # the built-in default (serving/default.toml), 127.0.0.1:8000
    purify-serve --config model.toml            # a user's model (repeat --config for several)
    purify-serve --config model.toml --port 0   # any free port; the chosen one is logged

The server binds 127.0.0.1 unless ``--host`` says otherwise. Configs are validated and models
loaded before the port opens; a bad config exits with status 2 and a message naming the field.
SIGINT / SIGTERM stop accepting connections and drain the queued requests before exiting.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys

from purify.errors import PurifyError
from serving.config import DEFAULT_CONFIG, load_config

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


def build_parser() -> argparse.ArgumentParser:
    from serving.app import DEFAULT_MAX_BODY_BYTES

    p = argparse.ArgumentParser(prog="purify-serve", description="Serve defended classifiers over the Open "
                                "Inference Protocol (KServe v2 REST, Triton-compatible).")
    p.add_argument("--config", action="append", default=None, metavar="FILE",
                   help=f"model config (.toml, or .yaml with pyyaml); repeatable (default: {DEFAULT_CONFIG.name})")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                   help="largest request body accepted, before and after decompression (413 beyond)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import uvicorn

    from serving.app import create_app

    try:
        configs = [load_config(path) for path in (args.config or [DEFAULT_CONFIG])]
        app = create_app(configs, max_body_bytes=args.max_body_bytes)
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
    server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level, access_log=False,
                                           timeout_graceful_shutdown=30))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn re-raises the SIGINT it captured once the graceful shutdown (drain) is done.
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
