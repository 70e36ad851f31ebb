"""``python -m benchmarks leaderboard`` on a tiny spec: rows run through the harness, the page from their cells."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.harness.config import ConfigError, load_config
from benchmarks.leaderboard import DEFAULT_SPEC, load_leaderboard, main, row_config, to_toml

TINY = '''
[settings]
dataset = "cifar10"
count_deterministic = 4
count_randomized = 2
batch_size = 4
budgets = [{ norm = "linf", eps = "8/255" }]
worst = { iters = 2, restarts = 1, n_target_classes = 1, queries = 4, eot_samples = 1 }
transfer = { iters = 2 }

[[rows]]
id = "plain"
name = "undefended ResNet-20"
model = "resnet20"

[[rows]]
id = "robust"
name = "robust reference"
model = "resnet20"
reference = true

[[rows]]
id = "robust-dct"
name = "DCT in front"
model = "resnet20"
stages = [{ name = "dct", params = { q = 10.0 } }]

[[rows]]
id = "mnist"
name = "MNIST reference"
model = "lenet5_mnist_at"
dataset = "mnist"
budgets = [{ norm = "linf", eps = 0.3 }]
reference = true

[[rows]]
id = "later"
name = "a reference still training"
model = "not_trained_yet"
'''


def test_the_bundled_spec_makes_valid_configs(tmp_path):
    settings, rows = load_leaderboard(DEFAULT_SPEC)
    assert {"resnet56", "tvm", "dct", "gcln", "wnll", "robust", "mnist-robust"} <= {r.id for r in rows}
    assert {ds: [r.id for r in rows if r.reference and r.dataset == ds] for ds in ("cifar10", "mnist")} == \
        {"cifar10": ["robust"], "mnist": ["mnist-robust"]}
    for row in rows:
        for b in row.budgets:
            path = tmp_path / f"{row.id}-{b['norm']}.toml"
            path.write_text(to_toml(row_config(settings, row, b)))
            cfg = load_config(path)
            assert cfg.worst is not None and cfg.worst.norm == b["norm"]
            assert cfg.data["count"] == (200 if row.randomized else 500)
            assert cfg.data["dataset"] == row.dataset
    assert [b["eps"] for b in next(r for r in rows if r.id == "mnist-robust").budgets] == [0.3]
    # The JumpReLU rows retrofit their model, with BPDA through it.
    jr = load_config(tmp_path / "jumprelu-linf.toml")
    assert jr.model["retrofit"] == {"activation": "jumprelu", "kappa": 0.2, "backward": "relu"}
    # The TVM rows add EOT over the exact gradient to the ensemble, at each budget's norm.
    tvm = next(r for r in rows if r.id == "tvm")
    for b in tvm.budgets:
        cfg = load_config(tmp_path / f"tvm-{b['norm']}.toml")
        extra = next(a for a in cfg.attacks if a.id == "apgd-ce-eot-exact")
        assert cfg.worst.include == ("apgd-ce-eot-exact",) and extra.threat_models == ("eot",)
        assert extra.norm == b["norm"] and extra.eot_samples == (10,)


def test_tiny_leaderboard_end_to_end(tmp_path, data_dir, capsys):
    spec = tmp_path / "spec.toml"
    spec.write_text(TINY)
    out = tmp_path / "board"
    args = ["--spec", str(spec), "--out", str(out), "--data-dir", str(data_dir), "--cache-dir",
            str(tmp_path / "cache"), "--no-progress", "--threads", "1"]
    assert main(args) == 0
    page = (tmp_path / "leaderboard.md").read_text()
    assert (tmp_path / "leaderboard.png").is_file()
    for name in ("undefended ResNet-20", "robust reference", "DCT in front"):
        assert f"| {name} | resnet20 |" in page
    assert "a reference still training: model 'not_trained_yet' is not registered yet" in page
    assert "The robust reference alone keeps" in page and "- DCT in front:" in page
    # The MNIST row has its own table, at its own budget, and its own reading.
    cifar, mnist = page.split("## CIFAR-10")[1].split("## MNIST")
    assert "| MNIST reference | lenet5_mnist_at |" in mnist and "worst linf 0.3" in mnist
    assert "MNIST reference" not in cifar and (out / "mnist-linf" / "cells.csv").is_file()
    assert "MNIST:\n\nThe robust reference alone keeps" in page
    # Rebuilt from the rows' cells.csv alone: the same table, nothing attacked.
    (out / "plain-linf" / "report.md").unlink()
    assert main(args + ["--report-only"]) == 0
    assert (tmp_path / "leaderboard.md").read_text().split("## Reading")[0].split("- Date")[1] == \
        page.split("## Reading")[0].split("- Date")[1]
    assert not (out / "plain-linf" / "report.md").exists()
    # The cost column again, without attacking: every available row re-measured.
    (out / "costs.json").unlink()
    assert main(args + ["--measure-costs"]) == 0
    costs = json.loads((out / "costs.json").read_text())
    assert costs["plain"] == {"1": 0.0, "2": 0.0} and costs["robust-dct"]["1"] > 0
    assert not (out / "plain-linf" / "report.md").exists()


def test_bad_spec_is_a_config_error(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(TINY.replace('id = "later"', 'id = "plain"'))
    with pytest.raises(ConfigError, match="used twice"):
        load_leaderboard(spec)
    spec.write_text(TINY.replace('model = "lenet5_mnist_at"\ndataset = "mnist"', 'model = "lenet5_mnist_at"'))
    with pytest.raises(ConfigError, match="more than one reference = true row on cifar10"):
        load_leaderboard(spec)
    spec.write_text(TINY.replace('reference = true\n\n[[rows]]\nid = "later"',
                                 'reference = true\nattacks = [{ name = "pgd", id = "p", eps = [0.1] }]\n\n[[rows]]\nid = "later"'))
    with pytest.raises(ConfigError, match=r"rows\[3\].attacks\[0\]: .*no eps"):
        load_leaderboard(spec)
    spec.write_text(TINY.replace('budgets = [{ norm = "linf", eps = 0.3 }]', 'budgets = []'))
    with pytest.raises(ConfigError, match=r"rows\[3\].budgets"):
        load_leaderboard(spec)
    assert main(["--spec", str(Path(DEFAULT_SPEC)), "--rows", "nope", "--report-only", "--out",
                 str(tmp_path / "b")]) == 2
