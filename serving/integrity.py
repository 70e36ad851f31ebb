"""What the server trusts: a user's artifacts (sha256 checked before loading) and its clients (a bearer token).

Artifacts. A model config may pin its files, as the shipped weights are pinned::

    [classifier]
    factory = "mynets:build"
    weights = "mynet_state.pt"
    weights_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

``classifier.weights_sha256`` / ``classifier.onnx_sha256`` are checked at start-up, before the
file is loaded; a mismatch is a :class:`~serving.errors.ConfigError` naming the field and both hashes.

Clients. With a token (``--auth-token-file FILE``, the environment variable ``PURIFY_SERVE_TOKEN``,
or ``[auth] token_file`` of the server config), every request must carry
``Authorization: Bearer <token>``; otherwise the answer is 401 with ``WWW-Authenticate: Bearer``.
``scope = "api"`` (default) protects inference, model metadata and the repository and leaves
``/v2/health/*``, ``/v2`` and ``/metrics`` open for probes and scrapers; ``"all"`` protects those too.
The token is compared in constant time and never logged.

Example:
    >>> auth = BearerAuth("s3cret-token-value", scope="api")
    >>> auth.allows("/v2/health/ready", None), auth.allows("/v2/models/m/infer", "Bearer s3cret-token-value")
    (True, True)
    >>> auth.allows("/v2/models/m/infer", "Bearer wrong")
    False
    >>> auth
    BearerAuth(scope='api', token=<18 characters, hidden>)
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import stat
from pathlib import Path

from .config import ServeConfig
from .errors import ConfigError

__all__ = ["verify_artifact", "BearerAuth", "load_token", "TOKEN_ENV", "OPEN_PATHS"]

log = logging.getLogger("serving")

#: Environment variable holding the bearer token (when no token file is given).
TOKEN_ENV = "PURIFY_SERVE_TOKEN"
#: Paths left open under ``scope = "api"``: probes and scrapers usually cannot send a token.
OPEN_PATHS = ("/v2/health/live", "/v2/health/ready", "/v2", "/metrics")
# RFC 6750 token68 characters; anything else (spaces, newlines inside) is a mistake in the file.
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def verify_artifact(cfg: ServeConfig, field: str) -> None:
    """Check ``classifier.<field>`` against ``classifier.<field>_sha256`` when the config pins it.

    ``field`` is ``"weights"`` or ``"onnx"``. Runs before the file is loaded, so a swapped or
    truncated file never reaches the loader.

    Raises:
        ConfigError: the file is missing, or its sha256 differs (both hashes in the message).
    """
    from purify._download import sha256_file

    path, expected = getattr(cfg, field), getattr(cfg, f"{field}_sha256")
    if expected is None or path is None:
        return
    try:
        got = sha256_file(path)
    except OSError as err:
        raise ConfigError(f"{cfg.source}: classifier.{field}: cannot read {path} to check its sha256: {err}") from err
    if not hmac.compare_digest(got, expected.lower()):
        raise ConfigError(f"{cfg.source}: classifier.{field}_sha256: {path} has sha256 {got}, the config "
                          f"expects {expected.lower()}; the file is corrupt, truncated or a different one")


class BearerAuth:
    """A bearer token and the paths it protects (see the module docstring)."""

    def __init__(self, token: str, *, scope: str = "api") -> None:
        if scope not in ("api", "all"):
            raise ConfigError(f"BearerAuth: scope: expected 'api' or 'all', got {scope!r}")
        if not _TOKEN.fullmatch(token):
            raise ConfigError("BearerAuth: token: expected RFC 6750 token characters (letters, digits, "
                              "-._~+/ and trailing =), no spaces; the token itself is not shown")
        self._token = token.encode()
        self.scope = scope

    def __repr__(self) -> str:  # never the token: reprs end up in logs and tracebacks
        return f"BearerAuth(scope={self.scope!r}, token=<{len(self._token)} characters, hidden>)"

    def protects(self, path: str) -> bool:
        return self.scope == "all" or path not in OPEN_PATHS

    def allows(self, path: str, authorization: str | None) -> bool:
        """Whether a request for ``path`` with this ``Authorization`` header may proceed."""
        if not self.protects(path):
            return True
        scheme, _, given = (authorization or "").partition(" ")
        # compare_digest on bytes: constant time in the token's content (its length may leak, as usual).
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token)


def load_token(file: str | os.PathLike | None, *, scope: str = "api") -> BearerAuth | None:
    """The token from ``file``, else from ``$PURIFY_SERVE_TOKEN``, else None (no authentication).

    Raises:
        ConfigError: the file cannot be read, or the token is empty or malformed.
    """
    if file is not None:
        path = Path(file).expanduser()
        try:
            token = path.read_text().strip()
            mode = path.stat().st_mode
        except OSError as err:
            raise ConfigError(f"auth token file {path}: cannot read it: {err}") from err
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("auth token file %s is readable by other users; chmod 600 it", path)
        where = f"auth token file {path}"
    elif os.environ.get(TOKEN_ENV):
        token, where = os.environ[TOKEN_ENV].strip(), f"${TOKEN_ENV}"
    else:
        return None
    if not token:
        raise ConfigError(f"{where}: the token is empty")
    try:
        return BearerAuth(token, scope=scope)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
