"""Shared fixtures: device / dtype / rng, and the shared data directory.

Tests that need CIFAR-10 or the checkpoints use ``data_dir``. It resolves
``PURIFY_DATA_DIR`` or ``../shared/data`` beside the checkout; when neither exists
the test is skipped, unless ``PURIFY_REQUIRE_DATA=1`` (set by ``.ci/run``), in
which case it fails, so CI can never pass by skipping.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=_DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(params=[torch.float32])
def dtype(request) -> torch.dtype:
    return request.param


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _find_data_dir() -> Path | None:
    env = os.environ.get("PURIFY_DATA_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "data")
    for c in candidates:
        if (c / "cifar10_test.npz").is_file():
            return c
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    found = _find_data_dir()
    if found is None:
        msg = "no data directory: set PURIFY_DATA_DIR to the folder holding cifar10_test.npz"
        if os.environ.get("PURIFY_REQUIRE_DATA") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return found


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
