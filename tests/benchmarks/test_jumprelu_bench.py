"""``python -m benchmarks.jumprelu`` on a few MNIST images: the sweep, κ*, the tables and the page."""

from __future__ import annotations

import json

import pytest

from benchmarks.jumprelu import KAPPAS, main, pick_kappa


def test_pick_kappa_is_the_largest_within_the_budget():
    rows = [{"kappa": 0.0, "clean": 90.0}, {"kappa": 0.1, "clean": 89.5}, {"kappa": 0.2, "clean": 88.9},
            {"kappa": 0.3, "clean": 89.2}, {"kappa": 0.4, "clean": 80.0}]
    assert pick_kappa(rows, 1.0) == 0.3          # not monotone: 0.2 misses the budget, 0.3 meets it
    assert pick_kappa(rows, 0.0) == 0.0


@pytest.mark.slow
def test_small_run_end_to_end(tmp_path, data_dir):
    out = tmp_path / "jumprelu"
    args = ["--models", "lenet5_mnist", "--count", "12", "--val-count", "60", "--rho-count", "8",
            "--data-dir", str(data_dir), "--threads", "1", "--out", str(out)]
    assert main(args) == 0
    r = json.loads((out / "lenet5_mnist.json").read_text())
    assert r["kappa"] in KAPPAS["mnist"] and r["selection"].startswith("the first 60 images of `val`")
    assert [s["kappa"] for s in r["sweep"]] == list(KAPPAS["mnist"])
    lo, hi = r["random_kappa"]
    assert lo == pytest.approx(0.6 * hi) and hi >= r["kappa"]
    for tag in ("relu", "jump", "rjump"):
        h = r["honest"][tag]
        chain = [h[k] for k in ("pgd_own", "pgd_bpda", "apgd_ce", "apgd_t", "square")]
        assert chain == sorted(chain, reverse=True)       # cumulative: each attack only removes images
        assert h["worst"]["accuracy"] == pytest.approx(chain[-1])
        assert r["white"][tag]["pgd"] >= h["worst"]["accuracy"]
    assert set(r["gray"]) == {"pgd", "df_linf", "df_l2", "tr"}
    page = (tmp_path / "jumprelu.md").read_text()
    for heading in ("κ chosen on validation data", "Table 1: gray-box", "Table 4", "The honest columns", "Cost",
                    "Commands"):
        assert heading in page
    assert main(args) == 0                                  # a finished model is not recomputed
    assert main(["--models", "nope", "--out", str(out)]) == 2
