"""Errors of the server, each with the HTTP status Triton uses for it.

A handler raises one of these; the app turns it into ``{"error": "..."}`` with ``status``.
``ConfigError`` is raised at start-up, never while serving.

Example:
    >>> BadRequest("infer: bad shape").status, Unavailable("queue full").status
    (400, 503)
"""

from __future__ import annotations

from purify.errors import PurifyError

__all__ = ["ConfigError", "ServingError", "BadRequest", "NotFound", "PayloadTooLarge", "Unavailable"]


class ConfigError(PurifyError, ValueError):
    """A model-repository config is invalid; the message names the file and the field."""


class ServingError(PurifyError):
    """An error answered to a client; ``status`` is the HTTP status code."""

    status = 500


class BadRequest(ServingError, ValueError):
    """Malformed or invalid request (Triton: INVALID_ARG)."""

    status = 400


class NotFound(ServingError, LookupError):
    """Unknown model or version (Triton: NOT_FOUND)."""

    status = 404


class PayloadTooLarge(ServingError, ValueError):
    """Request body over the configured limit."""

    status = 413


class Unavailable(ServingError, RuntimeError):
    """Not ready, queue full, shutting down, or the request's timeout expired (Triton: UNAVAILABLE)."""

    status = 503
