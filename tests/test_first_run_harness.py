"""First run of the harness: without matplotlib it writes its report without plots and says why; results
go under the working directory, not into the package."""

from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path

import pytest
import torch

import benchmarks
from benchmarks.harness import default_results_dir, run

TINY = Path(__file__).parent / "benchmarks" / "tiny.toml"


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_default_results_dir_is_under_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_results_dir() == tmp_path / "benchmarks" / "results"
    assert not default_results_dir().is_relative_to(Path(benchmarks.__file__).parent)


def test_without_matplotlib_the_report_is_written_and_says_why(tmp_path, data_dir, monkeypatch, caplog, one_thread):
    monkeypatch.setitem(sys.modules, "matplotlib", None)      # import matplotlib -> ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="benchmarks.harness"):
        result = run(TINY, quick=True, data_dir=data_dir, progress=False, cache_dir=tmp_path / "cells")
    out = tmp_path / "benchmarks" / "results" / "tiny-quick"          # the default: the working directory
    assert result.out_dir == out
    assert sorted(p.name for p in out.iterdir()) == ["cells.csv", "report.md"]
    assert result.files == ["cells.csv", "report.md"] and "matplotlib" in result.plots_missing
    with open(out / "cells.csv") as f:
        assert len(list(csv.DictReader(f))) == len(result.computed) == 9
    report = (out / "report.md").read_text()
    assert "**No plots**: matplotlib is not installed" in report and ".png" not in report
    warnings = [r for r in caplog.records if r.name == "benchmarks.harness" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "matplotlib" in warnings[0].getMessage()
