"""Shared fixtures: device / dtype / rng, the shared data directory, and the thread count.

Tests that need CIFAR-10 or the checkpoints use ``data_dir``. It resolves
``PURIFY_DATA_DIR`` or ``../shared/data`` beside the checkout; when neither exists
the test is skipped, unless ``PURIFY_REQUIRE_DATA=1`` (set by ``.ci/run``), in
which case it fails, so CI can never pass by skipping.

Conventions (the long form is ``tests/README.md``); the suite passes at
``OMP_NUM_THREADS=1`` and ``=2`` on any x86-64 machine of the kind we run on:

* Results from different kernels, chunkings, batch sizes, runtimes or thread counts are
  compared with a tolerance the math justifies, derived in a comment beside it; ``torch.equal``
  is for one function called twice on identical inputs in one process, for integer data and for
  copies.
* A rounding stage is compared where the comparison is well defined: the coefficients before
  rounding, or outputs that may differ only where a coefficient lies within the kernels' float
  noise of a rounding boundary. Never loosen a tolerance until it passes.
* No wall-clock windows: assert order and events (a recorded timestamp at least a delay is a
  robust lower bound; an upper bound on elapsed time is not). Speed belongs in benchmarks.
* ``_restore_torch_threads`` (autouse) puts torch's thread count back after every test, so a
  test (or code under test) that calls ``torch.set_num_threads`` cannot leak into the next.
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


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """torch's intra-op thread count after the test is what it was before (set from OMP_NUM_THREADS)."""
    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)


def _find_data_dir() -> Path | None:
    env = os.environ.get("PURIFY_DATA_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "data")
    for c in candidates:
        if (c / "cifar10_test.npz").is_file():
            return c.resolve()          # absolute: tests that chdir keep finding it
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
