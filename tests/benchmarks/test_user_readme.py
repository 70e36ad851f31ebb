"""The README's "Evaluate your own model" walk-through runs as written: its model module, image script and config."""

from __future__ import annotations

import csv
import re
import runpy
import sys

from benchmarks.harness import run
from tests.conftest import REPO_ROOT

BLOCKS = ("mynets.py", "images", "mine.toml")


def _blocks() -> dict[str, str]:
    text = (REPO_ROOT / "README.md").read_text()
    found = {tag: re.search(rf"<!-- user-model:{re.escape(tag)} -->\n```\w+\n(.*?)```", text, re.S) for tag in BLOCKS}
    missing = [tag for tag, m in found.items() if m is None]
    assert not missing, f"README.md lost the marked block(s) {missing}"
    return {tag: m.group(1) for tag, m in found.items()}


def test_readme_example_runs(tmp_path, data_dir, monkeypatch, one_thread):
    blocks = _blocks()
    monkeypatch.setenv("PURIFY_DATA_DIR", str(data_dir))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mynets.py").write_text(blocks["mynets.py"])
    (tmp_path / "images.py").write_text(blocks["images"])
    (tmp_path / "mine.toml").write_text(blocks["mine.toml"])
    runpy.run_path(str(tmp_path / "images.py"), run_name="__main__")
    assert sorted(p.name for p in (tmp_path / "my_images").iterdir())[:2] == ["airplane", "automobile"]
    monkeypatch.delitem(sys.modules, "mynets", raising=False)   # the module beside this config, not another test's
    # the README's config as written, with the attack budgets cut for the test's time
    result = run(tmp_path / "mine.toml", out=tmp_path / "results", progress=False, cache_dir=tmp_path / "cache",
                 overrides=["data.count=8", "attacks.0.params.iters=1", "attacks.0.eot_samples=2",
                            "attacks.1.params.queries=4"])
    assert len(result.computed) == 4
    with open(tmp_path / "results" / "cells.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["threat_model"] for r in rows} == {"transfer", "bpda", "bpda+eot"}
    assert all(r["n_images"] == "8" and float(r["max_linf"]) <= 8 / 255 + 1e-6 for r in rows)
    # the stand-in is the pretrained ResNet-20 behind its normalization: it classifies CIFAR-10 images
    assert result.clean["undefended_accuracy"] >= 0.75
    monkeypatch.delitem(sys.modules, "mynets", raising=False)

