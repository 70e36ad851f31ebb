"""Fixtures shared by the harness tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: on a 2-core machine shared with a busy process, 2 threads run ~100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def _cell_cache(tmp_path_factory):
    """Runs that name no cache_dir cache their cells in a temporary folder, never in ~/.cache/purify."""
    from benchmarks.harness import cells

    root = tmp_path_factory.mktemp("cell-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cells, "default_cache_dir", lambda: root)
        yield root
