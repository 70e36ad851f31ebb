"""Download and checksum helpers shared by :mod:`purify.data` and :mod:`purify.models`.

Everything purify fetches goes through :func:`download_file`: the bytes are streamed into a
temporary file beside the destination, hashed on the way, and only renamed into place
(atomically, with :func:`os.replace`) once the sha256 matches. A failed or interrupted
download therefore never leaves a half-written file under the final name. ``file://`` URLs
work as well, which is how the tests exercise this path without a network.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

from tqdm.auto import tqdm

from purify.errors import ChecksumError, DataNotFoundError, DTypeError, UnknownNameError

__all__ = ["CACHE_DIR_ENV", "cache_root", "sha256_file", "sha256_bytes", "verify_sha256", "download_file"]

logger = logging.getLogger(__name__)

#: Environment variable that moves purify's cache (default ``~/.cache/purify``).
CACHE_DIR_ENV = "PURIFY_CACHE_DIR"

_CHUNK = 1 << 20
_TIMEOUT_S = 60.0
_SCHEMES = ("https", "http", "file")


def cache_root() -> Path:
    """Return purify's cache folder: ``$PURIFY_CACHE_DIR`` if set, else ``~/.cache/purify``.

    Nothing is created; callers make the sub-folders they write to.

    Example:
        >>> isinstance(cache_root(), Path)
        True
    """
    env = os.environ.get(CACHE_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "purify"


def sha256_bytes(data: bytes | memoryview) -> str:
    """Hex sha256 of an in-memory buffer (used for ``arr.tobytes()`` checks)."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "empty"; _ = p.write_bytes(b"")
        >>> sha256_file(p)[:12]
        'e3b0c44298fc'
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_sha256(fn: str, path: str | os.PathLike, expected: str) -> None:
    """Raise :class:`ChecksumError` naming both hashes when ``path``'s sha256 is not ``expected``."""
    got = sha256_file(path)
    if got != expected.lower():
        raise ChecksumError(
            f"{fn}: sha256 mismatch for {path}: expected {expected.lower()}, got {got}; "
            "the file is corrupt, truncated or a different version; delete it and fetch it again"
        )


def download_file(url: str, dest: str | os.PathLike, *, sha256: str | None, progress: bool = True) -> Path:
    """Fetch ``url`` to ``dest``, checking its sha256 before the file appears under that name.

    The download goes to a temporary file in ``dest``'s folder; on success it is renamed to
    ``dest`` atomically (replacing an older file), on any failure it is removed.

    Args:
        url: ``https://``, ``http://`` or ``file://`` URL.
        dest: final path; parent folders are created.
        sha256: expected hex digest. ``None`` skips the check and must only be used when the
            caller verifies the content itself (``purify.data`` checks the decoded arrays).
        progress: show a tqdm progress bar.

    Returns:
        ``Path(dest)``.

    Raises:
        UnknownNameError: the URL scheme is not https, http or file.
        DataNotFoundError: the URL could not be fetched (no network, 404, missing local file).
        ChecksumError: the bytes do not have the expected sha256; nothing is written.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "a.bin").write_bytes(b"abc")
        >>> h = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        >>> download_file((d / "a.bin").as_uri(), d / "b.bin", sha256=h, progress=False).read_bytes()
        b'abc'
    """
    fn = "download_file"
    if not isinstance(url, str):
        raise DTypeError(f"{fn}: expected url to be a str, got {type(url).__name__}")
    if sha256 is not None and (not isinstance(sha256, str) or len(sha256) != 64):
        raise DTypeError(f"{fn}: expected sha256 to be a 64-character hex string or None, got {sha256!r}")
    scheme = urlparse(url).scheme
    if scheme not in _SCHEMES:
        raise UnknownNameError(f"{fn}: unsupported URL scheme {scheme!r} in {url!r}; expected one of "
                               f"{', '.join(map(repr, _SCHEMES))}")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s -> %s", url, dest)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                got = _stream(url, out, desc=dest.name, progress=progress)
            except (urllib.error.URLError, OSError, ValueError) as e:
                raise DataNotFoundError(
                    f"{fn}: could not fetch {url}: {getattr(e, 'reason', e)}; check the network connection "
                    f"or the URL, or place the file at {dest} yourself"
                ) from e
        if sha256 is not None and got != sha256.lower():
            raise ChecksumError(
                f"{fn}: sha256 mismatch for {url}: expected {sha256.lower()}, got {got}; "
                "the download is corrupt or the upstream file changed; nothing was written"
            )
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _stream(url: str, out: BinaryIO, *, desc: str, progress: bool) -> str:
    """Copy ``url`` into ``out`` chunk by chunk with a progress bar; return the sha256 of the bytes."""
    h = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:  # noqa: S310 (scheme checked above)
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                  disable=not progress, leave=False) as bar:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)
                h.update(chunk)
                bar.update(len(chunk))
    return h.hexdigest()
