"""First run: the TV kernel's compile is announced once per dtype and process, and cached somewhere writable."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

_tv_numba = pytest.importorskip("purify._tv_numba")

from tests.conftest import REPO_ROOT  # noqa: E402

# A child process in which the purify package folder is read-only, as in a system site-packages.
# (Tests run as root here, and chmod does not stop root: the child refuses writes the way a read-only
# folder would, for numba's own check and for purify's, both of which write a temporary file.)
_CHILD = textwrap.dedent("""
    import logging, os, sys, tempfile
    import purify
    package = os.path.dirname(purify.__file__)
    real = tempfile.TemporaryFile

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and os.path.abspath(str(dir)).startswith(package):
            raise PermissionError(13, "Read-only file system", str(dir))
        return real(*args, dir=dir, **kwargs)

    if os.environ.get("READ_ONLY_PACKAGE") == "1":
        tempfile.TemporaryFile = read_only
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    import torch
    from purify import _tv_numba, tv_minimize
    print("CACHE_DIR", _tv_numba.CACHE_DIR, flush=True)
    x = torch.rand(2, 3, 9, 7, generator=torch.Generator().manual_seed(0))
    tv_minimize(x, iters=3)
    tv_minimize(x, iters=3)
""")


def _child(env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update(OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", **env_extra)
    return subprocess.run([sys.executable, "-c", _CHILD], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def test_cache_stays_beside_the_module_when_writable(tmp_path, monkeypatch):
    monkeypatch.setattr(_tv_numba.nb.config, "CACHE_DIR", "")
    assert _tv_numba.choose_cache_dir(tmp_path) is None
    assert (tmp_path / "__pycache__").is_dir()


def test_read_only_package_caches_in_purify_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(_tv_numba.nb.config, "CACHE_DIR", "")
    monkeypatch.setenv("PURIFY_CACHE_DIR", str(tmp_path / "cache"))
    package = tmp_path / "site-packages" / "purify"
    monkeypatch.setattr(_tv_numba, "_writable", lambda folder: not str(folder).startswith(str(package)))
    assert _tv_numba.choose_cache_dir(package) == str(tmp_path / "cache" / "numba")


def test_nothing_writable_means_no_disk_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(_tv_numba.nb.config, "CACHE_DIR", "")
    monkeypatch.setattr(_tv_numba, "_writable", lambda folder: False)
    assert _tv_numba.choose_cache_dir(tmp_path) is False


def test_numba_cache_dir_set_by_the_user_wins(tmp_path, monkeypatch):
    monkeypatch.setattr(_tv_numba.nb.config, "CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setattr(_tv_numba, "_writable", lambda folder: False)
    assert _tv_numba.choose_cache_dir(tmp_path) is None


def test_decorating_leaves_numba_config_as_it_was():
    assert _tv_numba.nb.config.CACHE_DIR == os.environ.get("NUMBA_CACHE_DIR", "")


@pytest.mark.slow
def test_first_call_announces_the_compile_once_and_later_processes_load_the_cache(tmp_path):
    """A fresh process, a read-only package folder, an empty cache: one warning, then a cache hit."""
    env = {"PURIFY_CACHE_DIR": str(tmp_path / "cache"), "READ_ONLY_PACKAGE": "1"}
    first = _child(env)
    assert first.returncode == 0, first.stderr
    assert f"CACHE_DIR {tmp_path / 'cache' / 'numba'}" in first.stdout
    assert first.stderr.count("compiling the TV kernel for float32") == 1, first.stderr
    assert f"cached in {tmp_path / 'cache' / 'numba'}" in first.stderr
    assert list((tmp_path / "cache" / "numba").rglob("*.nbi")), "numba wrote no cache index"
    second = _child(env)
    assert second.returncode == 0, second.stderr
    assert "the TV kernel" not in second.stderr, second.stderr      # loaded from the cache: nothing to say
