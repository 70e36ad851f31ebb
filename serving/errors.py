"""Errors of the server, each with the HTTP status Triton uses for it.

A handler raises one of these; the app turns it into ``{"error": "..."}`` with ``status``.
``ConfigError`` is raised at start-up, never while serving.

Example:
    >>> BadRequest("infer: bad shape").status, Unavailable("queue full").status
    (400, 503)
    >>> Unauthorized("no token").status, RequestTimeout("slow").status, HeadersTooLarge("big").status
    (401, 408, 431)
"""

from __future__ import annotations

from purify.errors import PurifyError

__all__ = ["ConfigError", "ServingError", "BadRequest", "Unauthorized", "NotFound", "RequestTimeout",
           "PayloadTooLarge", "HeadersTooLarge", "Unavailable"]


class ConfigError(PurifyError, ValueError):
    """A model-repository config is invalid; the message names the file and the field."""


class ServingError(PurifyError):
    """An error answered to a client; ``status`` is the HTTP status code."""

    status = 500


class BadRequest(ServingError, ValueError):
    """Malformed or invalid request (Triton: INVALID_ARG)."""

    status = 400


class Unauthorized(ServingError, PermissionError):
    """Missing or wrong bearer token; answered with ``WWW-Authenticate: Bearer``."""

    status = 401


class NotFound(ServingError, LookupError):
    """Unknown model or version (Triton: NOT_FOUND)."""

    status = 404


class PayloadTooLarge(ServingError, ValueError):
    """Request body over the configured limit."""

    status = 413


class RequestTimeout(ServingError, TimeoutError):
    """The request's headers or body did not arrive within the server's read timeouts."""

    status = 408


class HeadersTooLarge(ServingError, ValueError):
    """Request line and headers over ``max_header_bytes``."""

    status = 431


class Unavailable(ServingError, RuntimeError):
    """Not ready, queue full, too many connections, shutting down, or the request's timeout expired
    (Triton: UNAVAILABLE)."""

    status = 503
