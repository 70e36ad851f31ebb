"""The benchmark harness: config checks, cell cache keys and resume, outputs, and the CLI."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from PIL import Image

from benchmarks.__main__ import main
from benchmarks.harness import CONFIG_DIR, ConfigError, bundled_configs, load_config, run
from benchmarks.harness import runner as runner_mod
from benchmarks.harness.cells import base_key, expand_cells
from benchmarks.harness.config import parse_config
from benchmarks.harness.report import COLUMNS
from tests.benchmarks.test_user_data import FACTORY, write_config
from tests.conftest import REPO_ROOT

HERE = Path(__file__).resolve().parent
TINY = HERE / "tiny.toml"
COMMAND = "python -m benchmarks run tiny.toml --test-marker"


def _raw() -> dict:
    with open(TINY, "rb") as f:
        return tomllib.load(f)


def _cells(raw: dict) -> dict[str, str]:
    """{label: hash} of the cells of a config, for a fixed set of images."""
    import numpy as np
    cfg = parse_config(raw, TINY)
    return {c.label: c.hash for c in expand_cells(cfg, base_key(cfg, np.arange(8)))}


# ----------------------------------------------------------------------------- config checks

def _set(raw: dict, path: str, value) -> dict:
    *parents, last = path.split(".")
    node = raw
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return raw


_DELETE = object()

BAD = [
    ("attacks.0.name", "fgsmm", r"attacks\[0\]\.name: unknown value 'fgsmm'; expected one of 'fgsm'"),
    ("attacks.0.threat_models", ["none", "bpda2"], r"attacks\[0\]\.threat_models: unknown value 'bpda2'.*'bpda\+eot'"),
    ("defense.stages", [{"name": "tvmm"}], r"defense\.stages\[0\]\.name: unknown value 'tvmm'; expected one of 'tvm'"),
    ("defense.stages", [{"name": "tvm", "params": {"lam": 1}}], r"defense\.stages\[0\]\.params: .*unknown parameter.*'lam'"),
    ("attacks.0.eps", [0.03, -0.01], r"attacks\[0\]\.eps: expected a finite value >= 0, got -0.01"),
    ("attacks.0.eps", ["8/0"], r"attacks\[0\]\.eps: expected a number or a fraction"),
    ("attacks.0.eps", [], r"attacks\[0\]\.eps: fgsm needs at least one budget"),
    ("attacks.3.eps", [0.1], r"attacks\[3\]\.eps: deepfool has no budget; remove eps"),
    ("attacks.0.params", {"iters": 3}, r"attacks\[0\]\.params\.iters: unknown parameter of fgsm; it takes loss"),
    ("attacks.1.params", {"step_ratio": 0.5}, r"attacks\[1\]\.params\.iters: missing required parameter of pgd"),
    ("attacks.1.params", {"iters": 2}, r"attacks\[1\]\.params\.step: pgd needs exactly one of step"),
    ("model", _DELETE, r"tiny\.toml: model: missing required key"),
    ("attacks.0.threat_models", _DELETE, r"attacks\[0\]\.threat_models: missing required key"),
    ("batchsize", 8, r"tiny\.toml: batchsize: unknown key; the top level takes"),
    ("data.cout", 8, r"data\.cout: unknown key; data takes count, dataset"),
    ("data.indices", [1, 2], r"data\.count: give exactly one of data\.count"),
    ("model.name", "resnet21", r"model\.name: unknown value 'resnet21'; expected one of .*'resnet20', .*'resnet56'"),
    ("defense.head", "knn", r"defense\.head: unknown value 'knn'; expected one of 'softmax', 'wnll'"),
    ("defense.head_params", {"artifact": "x"}, r"defense\.head_params: only used with head = \"wnll\""),
    ("defense", _DELETE, r"defense: missing required table: threat model 'bpda'"),
    ("batch_size", 0, r"batch_size: expected an integer >= 1, got 0"),
    ("device", "tpu", r"device: expected 'auto', 'cpu' or 'cuda\[:N\]'"),
    ("examples.eps", 0.5, r"examples\.eps: 0\.5 is not one of attack 'fgsm'"),
    ("quick.attacks", {"nope": {"eps": [0.1]}}, r"quick\.attacks\.nope: no attack entry with that id"),
]


@pytest.mark.parametrize("path, value, match", BAD, ids=[b[0] + ":" + b[2][:20] for b in BAD])
def test_exception_bad_config(path, value, match):
    raw = _set(_raw(), path, value)
    with pytest.raises(ConfigError, match=match) as info:
        parse_config(raw, TINY)
    assert str(TINY) in str(info.value)              # names the file
    assert isinstance(info.value, ValueError)


def test_exception_unknown_config_name_lists_bundled():
    with pytest.raises(ConfigError, match=r"no bundled config of that name.*quick_demo"):
        load_config("no_such_config")


def test_exception_quick_without_quick_table():
    raw = _raw()
    del raw["quick"]
    with pytest.raises(ConfigError, match=r"quick: --quick needs a \[quick\] table"):
        parse_config(raw, TINY, quick=True)


def test_exception_missing_data_dir_fails_before_work(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"tiny\.toml: data: data directory .*nowhere does not exist; pass --data-dir"):
        run(TINY, data_dir=tmp_path / "nowhere", out=out, progress=False)
    assert not out.exists()


def test_exception_model_dataset_mismatch(tmp_path):
    raw = _set(_raw(), "data.dataset", "mnist")
    path = tmp_path / "mnist.toml"
    path.write_text(TINY.read_text().replace('dataset = "cifar10"', 'dataset = "mnist"'))
    assert parse_config(raw, path).data["dataset"] == "mnist"
    with pytest.raises(ConfigError, match=r"mnist\.toml: model\.name: resnet20 takes cifar10 images of shape "
                                          r"\(3, 32, 32\) but data\.dataset = 'mnist' has images of shape \(1, 28, 28\)"):
        run(path, data_dir=tmp_path, out=tmp_path / "out", progress=False)


def test_exception_count_too_large(tmp_path, data_dir):
    path = tmp_path / "big.toml"
    path.write_text(TINY.read_text().replace("count = 8", "count = 10001"))
    with pytest.raises(ConfigError, match=r"big\.toml: data\.count: 10001 images asked for, cifar10 test has 10000"):
        run(path, data_dir=data_dir, out=tmp_path / "out", progress=False)


def test_cli_reports_config_error(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(TINY.read_text().replace('name = "deepfool"', 'name = "deepfoo"'))
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "attacks[3].name: unknown value 'deepfoo'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIG_DIR.glob("*.toml")))
@pytest.mark.parametrize("quick", [False, True])
def test_bundled_configs_parse(name, quick):
    cfg = load_config(name, quick=quick)
    assert cfg.name == name and cfg.is_quick is quick and cfg.description


def test_quick_overrides():
    cfg = load_config(TINY, quick=True)
    assert cfg.data["count"] == 4
    assert [e.label for e in cfg.attacks[0].eps] == ["0.03"]
    full = load_config(TINY)
    assert full.data["count"] == 8


# ----------------------------------------------------------------------------- cache keys

def test_cache_key_stable_and_specific():
    base = _cells(_raw())
    assert base == _cells(_raw())                    # same config, same keys
    assert len(set(base.values())) == len(base) == 9
    cosmetic = _raw()
    cosmetic["description"] = "something else"
    cosmetic["paper"]["clean"] = 12.0
    cosmetic["examples"]["n"] = 3
    assert _cells(cosmetic) == base                  # descriptions, paper numbers, examples do not count
    weight = _set(_raw(), "defense.stages", [{"name": "tvm", "params": {"weight": 0.06, "iters": 10}}])
    changed = _cells(weight)
    assert changed["fgsm eps=0.03 [none]"] == base["fgsm eps=0.03 [none]"]   # `none` never sees the defense
    assert all(changed[k] != v for k, v in base.items() if "[none]" not in k)
    eps = _cells(_set(_raw(), "attacks.0.eps", [0.031]))
    assert "fgsm eps=0.031 [transfer]" in eps and eps["deepfool [none]"] == base["deepfool [none]"]


def test_cache_key_names_shipped_weights(data_dir, tmp_path, one_thread):
    """Cells made with weights that ship in the package (a trained classifier, the GCLN generator) name
    their sha256, so a re-trained artifact under the same name is never served the old cells; the
    upstream checkpoints, pinned by sha256 in the registry, keep their name alone."""
    from benchmarks.harness.runner import prepare
    from purify.models import get_model_config

    raw = _raw()
    raw["data"] = {"dataset": "mnist", "split": "test", "count": 4, "seed": 1}
    raw["model"] = {"name": "lenet5_mnist", "pretrained": True}
    raw.pop("defense")
    raw["attacks"] = [{"name": "fgsm", "eps": [0.1], "threat_models": ["none"]}]
    for key in ("examples", "paper", "quick"):
        raw.pop(key)
    trained = prepare(parse_config(raw, tmp_path / "trained.toml"), data_dir=data_dir)
    assert trained.base["model"] == {"name": "lenet5_mnist", "pretrained": True,
                                     "weights_sha256": get_model_config("lenet5_mnist").sha256}
    assert "artifacts" not in trained.base["defense"]

    raw = _raw()
    raw["defense"] = {"stages": [{"name": "gcln"}]}
    raw["attacks"] = [{"name": "fgsm", "eps": [0.03], "threat_models": ["bpda"]}]
    for key in ("examples", "paper", "quick"):
        raw.pop(key)
    staged = prepare(parse_config(raw, tmp_path / "gcln.toml"), data_dir=data_dir)
    assert staged.base["model"] == {"name": "resnet20", "pretrained": True}       # upstream: the name pins it
    sha = staged.pipeline.purifiers[0].artifact_sha256
    assert len(sha) == 64 and staged.base["defense"]["artifacts"] == {"0": sha}
    assert staged.cells[0].key["defense"]["artifacts"] == {"0": sha}


# ----------------------------------------------------------------------------- a tiny run, resumed

@pytest.fixture(scope="module")
def first_run(tmp_path_factory, data_dir, one_thread):
    out = tmp_path_factory.mktemp("bench") / "tiny"
    result = run(TINY, data_dir=data_dir, out=out, progress=False, command=COMMAND, cache_dir=out.parent / "cache")
    return result, out


def test_run_computes_every_cell(first_run):
    result, out = first_run
    assert len(result.computed) == 9 and result.cached == []
    assert result.cells_dir == out.parent / "cache" / "tiny"
    assert len(list(result.cells_dir.glob("*.json"))) == 9 + 1   # + the cached clean pass
    assert not (out / "cells").exists()                          # the results folder holds no cache
    assert sorted(p.name for p in out.iterdir()) == ["accuracy_vs_eps.png", "cells.csv", "examples.png", "report.md"]


def test_csv_columns_and_values(first_run):
    _, out = first_run
    with open(out / "cells.csv") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == COLUMNS
        rows = list(reader)
    assert len(rows) == 9
    for r in rows:
        assert int(r["n_images"]) == 8
        assert 0.0 <= float(r["accuracy"]) <= 1.0 and 0.0 <= float(r["clean_accuracy"]) <= 1.0
        if r["norm"] == "linf":
            assert float(r["max_linf"]) <= float(r["eps"]) + 1e-6
            assert float(r["mean_linf"]) <= float(r["max_linf"]) + 1e-9
        assert float(r["mean_l2"]) > 0 and float(r["wall_s"]) > 0
    by = {(r["attack"], r["threat_model"], r["iters"]): r for r in rows}
    # none and transfer share one set of adversarial examples: same perturbation, same attack cost
    none, transfer = by[("fgsm", "none", "")], by[("fgsm", "transfer", "")]
    assert none["mean_l2"] == transfer["mean_l2"] and none["forwards"] == transfer["forwards"] == "8"
    # EOT counts every draw: iters x samples x images
    eot = by[("pgd", "eot", "2")]
    assert int(eot["forwards"]) == int(eot["backwards"]) == 2 * 2 * 8
    assert int(by[("pgd", "full", "1")]["backwards"]) == 8
    assert float(by[("deepfool", "none", "")]["rho2"]) > 0


def test_report_has_paper_numbers_and_command(first_run):
    _, out = first_run
    text = (out / "report.md").read_text()
    assert COMMAND in text
    assert "| fgsm (TVM) | transfer | 0.03 | 12.3 |" in text and "| 91.7 |" in text
    result, _ = first_run
    defended = 100 * result.clean["defended_accuracy"]
    assert f"| clean (no attack), defended | – | 0 | 45.6 | {defended:.1f} | {defended - 45.6:+.1f} |" in text
    assert "Machine:" in text and "Total wall time:" in text and "GPU:" in text


@pytest.mark.parametrize("name", ["accuracy_vs_eps.png", "examples.png"])
def test_pngs_are_valid_images(first_run, name):
    _, out = first_run
    with Image.open(out / name) as im:
        im.verify()
    with Image.open(out / name) as im:
        assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200


def test_second_run_computes_nothing_and_resume_recomputes_only_missing(first_run, tmp_path, data_dir, monkeypatch,
                                                                       one_thread):
    result, out = first_run
    copy, cache = tmp_path / "tiny", tmp_path / "cache"
    shutil.copytree(out, copy)
    shutil.copytree(result.cells_dir.parent, cache)
    calls = []
    real = runner_mod.run_attack
    monkeypatch.setattr(runner_mod, "run_attack", lambda *a, **k: calls.append(a[0]) or real(*a, **k))

    again = run(TINY, data_dir=data_dir, out=copy, progress=False, command=COMMAND, cache_dir=cache)
    assert again.computed == [] and len(again.cached) == 9 and calls == []
    elsewhere = run(TINY, data_dir=data_dir, out=tmp_path / "other", progress=False, cache_dir=cache)
    assert elsewhere.computed == [] and calls == []      # the cache is keyed by the cells, not the --out folder

    victim = next((cache / "tiny").glob("fgsm_eps0.03_transfer-*.json"))
    victim.unlink()                                      # as if the run had been interrupted there
    resumed = run(TINY, data_dir=data_dir, out=copy, progress=False, command=COMMAND, cache_dir=cache)
    assert resumed.computed == ["fgsm eps=0.03 [transfer]"] and calls == ["fgsm"]
    assert victim.is_file()
    old = {r["cell"]: r for r in result.rows}
    for r in resumed.rows:                               # seeded: recomputed numbers are identical
        assert {k: v for k, v in r.items() if k != "wall_s"} == {k: v for k, v in old[r["cell"]].items()
                                                                 if k != "wall_s"}


def test_quick_run_writes_to_quick_folder(tmp_path, data_dir, one_thread):
    result = run(TINY, quick=True, data_dir=data_dir, out=tmp_path / "tiny", progress=False)
    assert result.out_dir == tmp_path / "tiny-quick" and not (tmp_path / "tiny").exists()
    with open(tmp_path / "tiny-quick" / "cells.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9 and all(r["n_images"] == "4" for r in rows)
    assert "(quick)" in (tmp_path / "tiny-quick" / "report.md").read_text()


# ----------------------------------------------------------------------------- CLI

def test_cli_list_prints_bundled_configs():
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "list"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name, desc in bundled_configs():
        assert any(line.startswith(name) and desc in line for line in proc.stdout.splitlines())
    for name in ("wnll_tvm_table2", "tvm_adaptive", "gcln_no_defense", "quick_demo"):
        assert name in proc.stdout


# ----------------------------------------------------------------------------- WNLL head

def _wnll_config(tmp_path: Path, artifact: Path, through: str) -> Path:
    text = TINY.read_text().split("[[attacks]]")[0].replace(
        "[defense]\n", f'[defense]\nhead = "wnll"\nattack_through = "{through}"\n'
        f'head_params = {{ artifact = "{artifact}", mode = "transductive" }}\n')
    text += '[[attacks]]\nname = "fgsm"\neps = [0.03]\nthreat_models = ["none", "transfer"]\n'
    path = tmp_path / f"wnll_{through}.toml"
    path.write_text(text)
    return path


def test_wnll_head_runs_and_checks_its_artifact(tmp_path, data_dir, one_thread):
    from purify.models import create_model
    from purify.data import load_dataset
    from purify.wnll import TemplateSet, WNLLHead, make_buffer

    torch.manual_seed(0)
    model = create_model("resnet20", pretrained=True, data_dir=data_dir).eval()
    ds = load_dataset("cifar10", "train", data_dir=data_dir)
    x, y = ds.tensors(slice(0, 200))
    buffer = make_buffer(64, 32)
    with torch.no_grad():
        ts = TemplateSet(buffer(model.features(x)), y)
    head = WNLLHead(ts, buffer=buffer, surrogate=torch.nn.Linear(32, 10), meta={"backbone": "resnet20"})
    artifact = head.save(tmp_path / "head")
    results = {}
    for through in ("head", "surrogate"):
        res = run(_wnll_config(tmp_path, artifact, through), data_dir=data_dir, out=tmp_path / through, progress=False)
        results[through] = {r["threat_model"]: r for r in res.rows}
        assert "WNLL" in (tmp_path / through / "report.md").read_text()
    # the same images, attacked through different models: the undefended accuracies differ in general,
    # and the clean pass is the head's, not the softmax's
    assert {r["clean_accuracy"] for r in results["head"].values()} == {r["clean_accuracy"] for r in results["surrogate"].values()}
    assert results["head"]["none"]["accuracy"] <= results["head"]["none"]["clean_accuracy"]
    # one config with both sides: an entry's own `through` attacks the surrogate beside the head's entry,
    # and gives what the surrogate config gives (same images, same seeds, same model differentiated)
    both = tmp_path / "both.toml"
    both.write_text(_wnll_config(tmp_path, artifact, "head").read_text()
                    + '[[attacks]]\nname = "fgsm"\nid = "fgsm-surrogate"\nthrough = "surrogate"\neps = [0.03]\n'
                      'threat_models = ["none"]\n')
    res = run(both, data_dir=data_dir, out=tmp_path / "both", progress=False)
    by = {(r["attack"], r["threat_model"]): r for r in res.rows}
    assert by[("fgsm-surrogate", "none")]["accuracy"] == results["surrogate"]["none"]["accuracy"]
    assert by[("fgsm", "none")]["accuracy"] == results["head"]["none"]["accuracy"]
    assert by[("fgsm-surrogate", "none")]["cell"] != by[("fgsm", "none")]["cell"]
    softmax = tmp_path / "softmax.toml"
    softmax.write_text(TINY.read_text() + '[[attacks]]\nname = "fgsm"\nid = "f2"\nthrough = "surrogate"\n'
                       'eps = [0.03]\nthreat_models = ["none"]\n')
    with pytest.raises(ConfigError, match=r'attacks\[\d\]\.through: only used with head = "wnll"'):
        run(softmax, data_dir=data_dir, out=tmp_path / "softmax", progress=False)
    bad = tmp_path / "bad.toml"
    bad.write_text(_wnll_config(tmp_path, artifact, "head").read_text().replace("resnet20", "resnet56"))
    with pytest.raises(ConfigError, match=r"head_params\.artifact: the head was built on resnet20 features"):
        run(bad, data_dir=data_dir, out=tmp_path / "bad", progress=False)
    missing = tmp_path / "missing.toml"
    missing.write_text(_wnll_config(tmp_path, tmp_path / "nope", "head").read_text())
    with pytest.raises(ConfigError, match=r"head_params: .*nope\.json"):
        run(missing, data_dir=data_dir, out=tmp_path / "missing", progress=False)


# ----------------------------------------------------------------------------- an L0 attack and Rand+FGSM

L0_CONFIG = f"""
description = "JSMA and Rand+FGSM beside FGSM"
batch_size = 3
device = "cpu"
[data]
path = "data.npz"
[model]
factory = "{FACTORY}"
[defense]
stages = [{{ name = "dct", params = {{ q = 10 }} }}]
[[attacks]]
name = "fgsm"
eps = ["8/255"]
threat_models = ["none"]
[[attacks]]
name = "rand_fgsm"
eps = ["8/255"]
threat_models = ["none", "bpda"]
params = {{ alpha_ratio = 0.5 }}
[[attacks]]
name = "jsma"
threat_models = ["none", "transfer"]
params = {{ gamma = 0.2, max_iter = 5 }}
"""


def test_l0_attack_is_reported_by_its_mean_l0(tmp_path, one_thread):
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8), y=np.array([0, 1, 1]))
    path = write_config(tmp_path, L0_CONFIG)
    assert [(a.name, a.norm) for a in load_config(path).attacks] == [("fgsm", "linf"), ("rand_fgsm", "linf"),
                                                                     ("jsma", "l0")]
    result = run(path, out=tmp_path / "out", progress=False, cache_dir=tmp_path / "cache")
    with open(tmp_path / "out" / "cells.csv") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == COLUMNS and COLUMNS[23] == "mean_l0"   # appended: old positions kept
        rows = {(r["attack"], r["threat_model"]): r for r in reader}
    jsma_row = rows[("jsma", "none")]
    assert jsma_row["norm"] == "l0" and jsma_row["eps"] == "" and jsma_row["params"] == "gamma=0.2 max_iter=5"
    assert 0 < float(jsma_row["mean_l0"]) <= 2 * 5                     # at most two values per step
    assert rows[("jsma", "transfer")]["mean_l0"] == jsma_row["mean_l0"]  # the same adversarial examples
    assert float(rows[("fgsm", "none")]["mean_l0"]) > 0.9 * 3 * 8 * 8  # FGSM moves (nearly) every value
    for tm in ("none", "bpda"):
        r = rows[("rand_fgsm", tm)]
        assert r["params"] == "alpha=0.0156863" and float(r["max_linf"]) <= 8 / 255 + 1e-6
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| max Linf | mean L0 | rho2 |" in report
    assert f"| {float(jsma_row['mean_l0']):.1f} | {float(jsma_row['rho2']):.4f} |" in report
    # A cell cached before mean_l0 existed is still read, not recomputed; its mean L0 is left empty.
    victim = next(result.cells_dir.glob("fgsm_*.json"))
    cell = json.loads(victim.read_text())
    del cell["row"]["mean_l0"]
    victim.write_text(json.dumps(cell))
    again = run(path, out=tmp_path / "again", progress=False, cache_dir=tmp_path / "cache")
    assert again.computed == [] and len(again.cached) == 5
    with open(tmp_path / "again" / "cells.csv") as f:
        old = {(r["attack"], r["threat_model"]): r for r in csv.DictReader(f)}
    assert old[("fgsm", "none")]["mean_l0"] == "" and old[("jsma", "none")]["mean_l0"] == jsma_row["mean_l0"]
    assert {k: v for k, v in old[("fgsm", "none")].items() if k != "mean_l0"} == \
        {k: v for k, v in rows[("fgsm", "none")].items() if k != "mean_l0"}
    every = (tmp_path / "again" / "report.md").read_text().split("## Every cell")[1]
    header = next(line for line in every.splitlines() if line.startswith("| attack |"))
    fgsm = next(line for line in every.splitlines() if line.startswith("| fgsm |"))
    cols = [c.strip() for c in header.split("|")]
    assert [c.strip() for c in fgsm.split("|")][cols.index("mean L0")] == "–"
