"""Packaging: what a wheel of this repository installs into a user's environment.

The wheel is built offline from a copy of the sources (no build isolation: setuptools and wheel come
from the test environment), so the checkout's ``build/`` and ``*.egg-info`` are left alone.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytest.importorskip("setuptools")
pytest.importorskip("wheel")

_SOURCES = ("pyproject.toml", "README.md", "purify", "serving", "benchmarks")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    src = tmp_path_factory.mktemp("src")
    skip = shutil.ignore_patterns("__pycache__", "results", "*.egg-info")
    for name in _SOURCES:
        path = REPO_ROOT / name
        (shutil.copytree(path, src / name, ignore=skip) if path.is_dir() else shutil.copy(path, src / name))
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (path,) = out.glob("purify-*.whl")
    with zipfile.ZipFile(path) as zf:
        yield zf


def _dist_info(zf: zipfile.ZipFile, name: str) -> str:
    (member,) = [n for n in zf.namelist() if n.endswith(f".dist-info/{name}")]
    return zf.read(member).decode()


def test_wheel_ships_the_library_and_its_commands(wheel):
    names = set(wheel.namelist())
    assert "purify/__init__.py" in names and "purify/weights/small_cnn_cifar10.safetensors" in names
    scripts = _dist_info(wheel, "entry_points.txt")
    assert all(f"{cmd} =" in scripts for cmd in ("purify", "purify-serve", "purify-export"))


def test_wheel_claims_no_generic_top_level_names(wheel):
    top = {n.split("/")[0] for n in wheel.namelist() if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"purify", "purify_serving", "purify_benchmarks"}, sorted(top)
    names = set(wheel.namelist())
    assert "purify_serving/default.toml" in names and "purify_benchmarks/configs/tvm_adaptive_cpu.toml" in names
    scripts = _dist_info(wheel, "entry_points.txt")
    assert "purify_serving.cli:main" in scripts and "purify_serving.export:main" in scripts


def test_installed_wheel_imports_under_its_own_names(wheel, tmp_path):
    """Installed outside the repository: the server, the harness and its configs load; nothing called
    ``serving`` or ``benchmarks`` is imported (the harness finds the server as ``purify_serving``)."""
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                           str(target), wheel.filename], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    code = ("import sys, purify_serving.cli, purify_serving.export, purify_benchmarks.harness.loading\n"
            "from purify_benchmarks import _serving\n"
            "from purify_benchmarks.harness import bundled_configs\n"
            "assert _serving.module('config').__name__ == 'purify_serving.config'\n"
            "assert not {'serving', 'benchmarks'} & {m.split('.')[0] for m in sys.modules}, 'generic names'\n"
            "print(purify_serving.cli.__file__, len(bundled_configs()))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**__import__("os").environ, "PYTHONPATH": str(target)})
    assert proc.returncode == 0, proc.stderr
    where, n_configs = proc.stdout.split()
    assert where.startswith(str(target)) and int(n_configs) > 5
