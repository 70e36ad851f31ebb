"""Black-box transfer from a [substitute] model: config checks, cell keys, a tiny run, the report."""

from __future__ import annotations

import csv
import dataclasses
import json
import tomllib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from benchmarks.__main__ import main
from benchmarks.harness import ConfigError, load_config, run
from benchmarks.harness import runner as runner_mod
from benchmarks.harness.cells import CACHE_VERSION, base_key, derive_seed, expand_cells, group_jobs
from benchmarks.harness.config import parse_config
from benchmarks.harness.report import _headline, _headline_note
from tests.benchmarks.test_harness import _DELETE, TINY, _cells, _raw, _set

SUB = Path(__file__).resolve().parent / "tiny_substitute.toml"
SUBSTITUTE = {"name": "resnet20", "pretrained": True}


def _sub_raw() -> dict:
    with open(SUB, "rb") as f:
        return tomllib.load(f)


def _sub_cells(raw: dict) -> dict:
    """{threat model: cell} of the config's single fgsm entry, for a fixed set of images."""
    cfg = parse_config(raw, SUB)
    return {c.threat_model: c for c in expand_cells(cfg, base_key(cfg, np.arange(8)))}


# ----------------------------------------------------------------------------- config checks

BAD = [
    ([("substitute", _DELETE)],
     r"tiny_substitute\.toml: substitute: missing required table: attacks\[0\] has threat model 'substitute', "
     r"which attacks a substitute model; add \[substitute\] with name = \"resnet20\""),
    ([("substitute", _DELETE), ("attacks.0.threat_models", ["none", "blackbox"])],
     r"substitute: missing required table: attacks\[0\] has threat model 'blackbox'"),
    ([("defense", _DELETE)], r"defense: missing required table: threat model 'blackbox' evaluates a defense"),
    ([("substitute.name", "resnet21")], r"substitute\.name: unknown value 'resnet21'; expected one of .*'resnet20'"),
    ([("substitute.name", _DELETE)], r"substitute\.name: missing required key"),
    ([("substitute.pretrained", "yes")], r"substitute\.pretrained: expected true or false, got 'yes'"),
    ([("substitute.weights", "x.th")], r"substitute\.weights: unknown key; substitute takes name, pretrained"),
    ([("substitute", "resnet20")], r"substitute: expected a table, got str"),
    ([("paper.results.0.threat_model", "black-box")], r"paper\.results\[0\]\.threat_model: unknown value 'black-box'"),
]


@pytest.mark.parametrize("changes, match", BAD, ids=[b[1][:40] for b in BAD])
def test_exception_bad_substitute_config(changes, match):
    raw = _sub_raw()
    for path, value in changes:
        raw = _set(raw, path, value)
    with pytest.raises(ConfigError, match=match) as info:
        parse_config(raw, SUB)
    assert str(SUB) in str(info.value)


def test_substitute_config_parses():
    cfg = load_config(SUB)
    assert cfg.substitute == SUBSTITUTE and cfg.model["name"] == "resnet56"
    assert cfg.attacks[0].threat_models == ("none", "transfer", "substitute", "blackbox")
    assert cfg.paper["results"][0]["threat_model"] == "blackbox"
    assert load_config(SUB, quick=True).attacks[0].threat_models == ("substitute", "blackbox")   # --quick takes them
    assert load_config(TINY).substitute is None


def test_substitute_needs_no_defense():
    raw = _set(_set(_sub_raw(), "defense", _DELETE), "attacks.0.threat_models", ["none", "substitute"])
    assert parse_config(raw, SUB).stages == ()


def test_exception_substitute_dataset_mismatch(tmp_path, monkeypatch):
    import purify.models
    real = purify.models.get_model_config
    monkeypatch.setattr(purify.models, "get_model_config", lambda name: dataclasses.replace(
        real(name), dataset="mnist", input_size=(1, 28, 28)) if name == "resnet20" else real(name))
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"tiny_substitute\.toml: substitute\.name: resnet20 takes mnist images of "
                                          r"shape \(1, 28, 28\) but data\.dataset = 'cifar10' has images of shape "
                                          r"\(3, 32, 32\); pick a model trained on cifar10"):
        run(SUB, data_dir=tmp_path, out=out, progress=False)
    assert not out.exists()


def test_exception_substitute_checkpoint_missing(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("PURIFY_CACHE_DIR", str(tmp_path / "cache"))      # no downloaded weights either
    folder, data_dir = tmp_path / "data", data_dir.resolve()
    (folder / "weights").mkdir(parents=True)
    (folder / "cifar10_test.npz").symlink_to(data_dir / "cifar10_test.npz")
    (folder / "weights" / "resnet56_cifar10.th").symlink_to(data_dir / "weights" / "resnet56_cifar10.th")
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"tiny_substitute\.toml: substitute\.pretrained: .*no pretrained "
                                          r"weights for 'resnet20'"):
        run(SUB, data_dir=folder, out=out, progress=False)
    assert not out.exists()


# ----------------------------------------------------------------------------- cells and cache keys

# The keys of tiny.toml's cells before substitute models existed (images 0..7): cells cached by
# earlier runs must keep their file names, and none / transfer their shared attack seeds.
TINY_HASHES = {
    "fgsm eps=0.03 [none]": ("fdade99918abfe07", "7f2a0004d9f46397"),
    "fgsm eps=0.03 [transfer]": ("208ff973791b8a2e", "7f2a0004d9f46397"),
    "fgsm eps=0.03 [bpda]": ("5b5eb886cecfddf3", "5b5eb886cecfddf3"),
    "pgd eps=4/255 [full] iters=2": ("19b1f712000fe8f8", "19b1f712000fe8f8"),
    "bim eps=0.02 [bpda+eot] iters=1 eot=2": ("b4c68fd133b2675b", "b4c68fd133b2675b"),
    "deepfool [none]": ("a392683b2609dd9b", "febfe39274aa16eb"),
}


@pytest.mark.parametrize("with_substitute", [False, True])
def test_cache_keys_of_other_cells_unchanged(with_substitute):
    raw = _raw()
    if with_substitute:                          # an unused [substitute] changes no key either
        raw["substitute"] = dict(SUBSTITUTE)
    cfg = parse_config(raw, TINY)
    cells = {c.label: c for c in expand_cells(cfg, base_key(cfg, np.arange(8)))}
    assert CACHE_VERSION == 1
    assert {k: (cells[k].hash, cells[k].attack_hash) for k in TINY_HASHES} == TINY_HASHES
    assert all("substitute" not in c.key for c in cells.values())


def test_substitute_and_blackbox_share_examples():
    cells = _sub_cells(_sub_raw())
    none, transfer, sub, bb = (cells[t] for t in ("none", "transfer", "substitute", "blackbox"))
    assert sub.attack_hash == bb.attack_hash != none.attack_hash == transfer.attack_hash
    assert len({none.hash, transfer.hash, sub.hash, bb.hash}) == 4
    assert [[c.threat_model for c in job] for job in group_jobs(list(cells.values()))] == \
        [["none", "transfer"], ["substitute", "blackbox"]]
    assert sub.key["substitute"] == bb.key["substitute"] == SUBSTITUTE
    assert "substitute" not in none.key and "substitute" not in transfer.key
    assert "defense" not in sub.key and "defense" in bb.key         # `substitute` never sees the defense


@pytest.mark.parametrize("path, value", [("substitute.name", "resnet56"), ("substitute.pretrained", False)])
def test_substitute_is_part_of_its_cells_keys_only(path, value):
    base = _sub_cells(_sub_raw())
    changed = _sub_cells(_set(_sub_raw(), path, value))
    for tm in ("substitute", "blackbox"):
        assert changed[tm].hash != base[tm].hash and changed[tm].attack_hash != base[tm].attack_hash
    for tm in ("none", "transfer"):
        assert changed[tm].hash == base[tm].hash


def test_substitute_cell_ignores_the_defense():
    base = _sub_cells(_sub_raw())
    changed = _sub_cells(_set(_sub_raw(), "defense.stages.0.params.weight", 0.07))
    assert changed["substitute"].hash == base["substitute"].hash
    assert changed["substitute"].attack_hash == base["substitute"].attack_hash
    assert changed["blackbox"].hash != base["blackbox"].hash


# ----------------------------------------------------------------------------- the headline table

def _row(tm: str, acc: float) -> dict:
    return {"attack": "fgsm", "eps_label": "0.03", "threat_model": tm, "accuracy": acc, "iters": "", "eot_samples": ""}


def test_headline_blackbox_has_its_own_column_and_is_not_worst_defended():
    rows = [_row("none", 0.1), _row("transfer", 0.6), _row("bpda", 0.3), _row("substitute", 0.5),
            _row("blackbox", 0.2)]
    lines = _headline(rows)
    assert lines[0] == ("| attack | eps | undefended (none) | transfer | substitute (undefended) | blackbox | "
                        "worst defended | its threat model |")
    assert lines[1] == "|---|---|---:|---:|---:|---:|---:|---|"
    assert lines[2] == "| fgsm | 0.03 | 10.0 | 60.0 | 50.0 | 20.0 | **30.0** | bpda |"
    without = _headline(rows[:3])                  # no substitute cells: the table of earlier reports
    assert without[0] == "| attack | eps | undefended (none) | transfer | worst defended | its threat model |"
    assert without[2] == "| fgsm | 0.03 | 10.0 | 60.0 | **30.0** | bpda |"
    undefended = _headline([_row("none", 0.1), _row("substitute", 0.5)])
    assert undefended == ["| attack | eps | undefended (none) | substitute (undefended) |", "|---|---|---:|---:|",
                          "| fgsm | 0.03 | 10.0 | 50.0 |"]
    blackbox_only = _headline([_row("substitute", 0.5), _row("blackbox", 0.2)])     # as in a Table 3 config
    assert blackbox_only == ["| attack | eps | substitute (undefended) | blackbox |", "|---|---|---:|---:|",
                             "| fgsm | 0.03 | 50.0 | 20.0 |"]
    defended = SimpleNamespace(stages=(("tvm", {}),))
    assert "no worst defended case" in _headline_note(defended, [_row("substitute", 0.5), _row("blackbox", 0.2)])
    assert _headline_note(defended, rows).endswith("not `transfer` or `blackbox`.")
    assert _headline_note(defended, rows[:3]).endswith("not `transfer`.")


# ----------------------------------------------------------------------------- a tiny run

SET = "defense.stages.0.params.iters=5"


@pytest.fixture(scope="module")
def sub_run(tmp_path_factory, data_dir, one_thread):
    """The tiny substitute config run through the CLI with a --set option; the attacks it ran."""
    out = tmp_path_factory.mktemp("bench") / "sub"
    calls = []
    real = runner_mod.run_attack
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner_mod, "run_attack", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
        assert main(["run", str(SUB), "--set", SET, "--data-dir", str(data_dir), "--out", str(out),
                     "--cache-dir", str(out.parent / "cache"), "--no-progress"]) == 0
    with open(out / "cells.csv") as f:
        rows = {r["threat_model"]: r for r in csv.DictReader(f)}
    return out, rows, calls


def test_run_substitute_accuracy_matches_independent_attack(sub_run, data_dir):
    from purify.attacks import fgsm
    from purify.data import load_dataset
    from purify.models import create_model
    from purify.pipeline import Pipeline

    out, rows, calls = sub_run
    assert calls == ["fgsm", "fgsm"]                 # one attack for none / transfer, one for substitute / blackbox
    (npz,) = (out.parent / "cache" / SUB.stem).glob("fgsm_eps0.03_substitute-*-examples8.npz")
    with np.load(npz) as f:
        index, adv8 = f["index"], f["adv"]
    x, y = load_dataset("cifar10", "test", data_dir=data_dir).tensors(index)
    target = create_model("resnet56", pretrained=True, data_dir=data_dir).eval()
    substitute = create_model("resnet20", pretrained=True, data_dir=data_dir).eval()
    x_sub = fgsm(substitute, x, y, eps=0.03)
    x_own = fgsm(target, x, y, eps=0.03)
    to8 = lambda t: (t.clamp(0, 1) * 255).round().to(torch.int16).numpy()  # noqa: E731
    assert np.abs(adv8.astype(np.int16) - to8(x_sub)).max() <= 1       # the run's examples are the substitute's
    assert np.abs(adv8.astype(np.int16) - to8(x_own)).max() > 1        # ... not the target's own
    with torch.no_grad():
        acc = lambda z: float((target(z).argmax(1) == y).float().mean())  # noqa: E731
        purified = Pipeline.from_spec([("tvm", {"weight": 0.05, "iters": 5})])(
            x_sub, generator=torch.Generator().manual_seed(derive_seed(0, "eval", 0)))
        assert float(rows["substitute"]["accuracy"]) == acc(x_sub)
        assert float(rows["blackbox"]["accuracy"]) == acc(purified)
        assert float(rows["none"]["accuracy"]) == acc(x_own)
    sub, bb = rows["substitute"], rows["blackbox"]
    assert sub["mean_l2"] == bb["mean_l2"] and sub["forwards"] == bb["forwards"] == "8"
    assert sub["clean_accuracy"] == rows["none"]["clean_accuracy"] != ""
    assert bb["clean_accuracy"] == rows["transfer"]["clean_accuracy"]


def test_run_cells_hold_the_override_and_the_substitute(sub_run):
    out, rows, _ = sub_run
    (path,) = (out.parent / "cache" / SUB.stem).glob(f"fgsm_eps0.03_blackbox-{rows['blackbox']['cell']}.json")
    key = json.loads(path.read_text())["key"]
    assert key["substitute"] == SUBSTITUTE and key["defense"]["stages"] == [["tvm", {"weight": 0.05, "iters": 5}]]


def test_run_report_lists_substitute_and_command(sub_run):
    out, rows, _ = sub_run
    text = (out / "report.md").read_text()
    assert f"--set {SET}" in text and "substitute: resnet20 (pretrained=True)" in text
    assert "| substitute (undefended) | blackbox | worst defended |" in text
    assert "not `transfer` or `blackbox`" in text and "`blackbox` evaluates the defended model" in text
    assert f"| fgsm (GCLN) | blackbox | 0.03 | 55.5 | {100 * float(rows['blackbox']['accuracy']):.1f} |" in text
