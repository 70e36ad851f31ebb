"""benchmarks.convergence: the table and plot of accuracy against attack work."""

from __future__ import annotations

import csv

from benchmarks.convergence import main, wilson
from benchmarks.harness.report import COLUMNS


def test_wilson_interval_contains_the_estimate():
    lo, hi = wilson(30, 100)
    assert lo < 0.3 < hi and round(hi - lo, 2) == 0.18


def test_table_and_plot_from_cells_csv(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = [("none", 10, ""), ("bpda", 10, ""), ("bpda", 50, ""), ("bpda+eot", 10, "5"), ("bpda+eot", 10, "20")]
    with open(run / "cells.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for i, (tm, iters, n) in enumerate(rows):
            w.writerow({**{k: "" for k in COLUMNS}, "threat_model": tm, "iters": iters, "eot_samples": n,
                        "eps_label": "4/255", "n_images": 100, "accuracy": 0.5 - 0.1 * i, "wall_s": 1.0})
    assert main([str(run)]) == 0
    text = (run / "convergence.md").read_text()
    assert "| run (100 images) | 4/255 | bpda+eot | 10 | 20 | 200 | 10.0 |" in text
    assert "| none |" not in text                       # undefended cells are not convergence rows
    assert (run / "convergence.png").stat().st_size > 1000
