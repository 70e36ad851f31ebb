"""Configs that extend another: merge rules, errors, and the bundled configs rewritten to use it.

``golden_configs.json`` holds the parsed form (every field of ``RunConfig`` but its path and raw
document, plus the cells' labels and cache keys) of the bundled configs that were full copies
before ``extends`` existed, made from those copies. The rewritten configs must parse to exactly
the same thing. When a base config changes on purpose, regenerate the file with
``python -m tests.benchmarks.test_extends`` and review the diff: it shows what changed in the
configs that extend it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.harness import ConfigError, load_config
from benchmarks.harness.cells import base_key, expand_cells
from benchmarks.harness.config import parse_config
from benchmarks.harness.overrides import merge_documents

HERE = Path(__file__).resolve().parent
TINY = HERE / "tiny.toml"
GOLDEN = HERE / "golden_configs.json"
#: Bundled configs written as ``extends`` of another bundled config.
EXTENDED = {"gcln_table_q5": "gcln_table", "wnll_head_table2": "wnll_tvm_table2",
            "tvm_convergence_cpu": "tvm_adaptive_cpu"}


def canonical(cfg) -> dict:
    """A JSON-able form of a parsed config: every field but ``path`` and ``raw``, and its cells' keys."""
    # ``worst`` and ``metrics`` came after the golden file; unset (None) they change nothing, so they are
    # left out then.
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
              if f.name not in ("path", "raw") and not (f.name in ("worst", "metrics") and getattr(cfg, f.name) is None)}
    as_json = json.dumps(fields, sort_keys=True,
                         default=lambda o: dataclasses.asdict(o) if dataclasses.is_dataclass(o) else str(o))
    cells = [[c.label, c.hash] for c in expand_cells(cfg, base_key(cfg, np.arange(8)))]
    return {"config": json.loads(as_json), "cells": cells}


def _golden_entries() -> dict:
    return {f"{name}{'-quick' if quick else ''}": canonical(load_config(name, quick=quick))
            for name in sorted(EXTENDED) for quick in (False, True)}


# ----------------------------------------------------------------------------- the bundled configs

@pytest.mark.parametrize("name", sorted(EXTENDED))
@pytest.mark.parametrize("quick", [False, True])
def test_rewritten_config_parses_as_its_full_copy_did(name, quick):
    golden = json.loads(GOLDEN.read_text())[f"{name}{'-quick' if quick else ''}"]
    assert canonical(load_config(name, quick=quick)) == golden


@pytest.mark.parametrize("name", sorted(EXTENDED))
def test_rewritten_config_extends_its_base(name):
    from benchmarks.harness.overrides import BUNDLED_DIR, read_document
    doc = read_document(BUNDLED_DIR / f"{name}.toml")
    assert doc["extends"] == EXTENDED[name]
    assert "data" not in doc and "model" not in doc            # inherited, not copied
    assert load_config(name).name == name                      # named by its own file


# ----------------------------------------------------------------------------- merge rules

def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


CHILD = f'''extends = "{TINY.as_posix()}"
description = "tiny, twice the images, FGSM only"
batch_size = 8

[data]
count = 16

[defense]
stages = [{{ name = "tvm", params = {{ weight = 0.06, iters = 10 }} }}]

[[attacks]]
name = "fgsm"
eps = [0.03, 0.05]
threat_models = ["none", "transfer"]

[examples]
eps = 0.05
threat_model = "transfer"
'''


def test_child_parses_as_its_full_copy(tmp_path):
    """A small base / child pair: the child equals the base copied with the same edits made by hand."""
    child = load_config(_write(tmp_path, "child.toml", CHILD))
    doc = load_config(TINY).raw
    doc = {**doc, "description": "tiny, twice the images, FGSM only", "batch_size": 8,
           "data": {**doc["data"], "count": 16},
           "defense": {**doc["defense"], "stages": [{"name": "tvm", "params": {"weight": 0.06, "iters": 10}}]},
           "attacks": [{"name": "fgsm", "eps": [0.03, 0.05], "threat_models": ["none", "transfer"]}],
           "examples": {**doc["examples"], "eps": 0.05, "threat_model": "transfer"}}
    expected = parse_config(doc, tmp_path / "child.toml")
    assert canonical(child) == canonical(expected)
    assert child.raw == expected.raw
    assert child.data["count"] == 16 and child.data["seed"] == doc["data"]["seed"]        # tables merge
    assert [a.id for a in child.attacks] == ["fgsm"]                                        # arrays replaced


def test_merge_documents_tables_deep_arrays_whole():
    base = {"a": {"b": {"c": 1, "d": 2}, "e": [1, 2]}, "f": [{"x": 1}, {"x": 2}], "g": 1}
    child = {"a": {"b": {"c": 9}, "e": [3]}, "f": [{"y": 1}], "h": {"i": 1}}
    out = merge_documents(base, child)
    assert out == {"a": {"b": {"c": 9, "d": 2}, "e": [3]}, "f": [{"y": 1}], "g": 1, "h": {"i": 1}}
    assert base["a"]["b"] == {"c": 1, "d": 2} and child == {"a": {"b": {"c": 9}, "e": [3]}, "f": [{"y": 1}],
                                                             "h": {"i": 1}}       # inputs untouched
    out["a"]["e"].append(4)
    assert child["a"]["e"] == [3]                                                  # no shared lists


def test_chain_of_three_name_not_inherited_and_overrides_reach_inherited_keys(tmp_path):
    base = _write(tmp_path, "base.toml", TINY.read_text().replace("[data]", 'name = "base_name"\n\n[data]', 1))
    mid = _write(tmp_path, "mid.toml", 'extends = "base.toml"\n[data]\ncount = 6\n')
    sub = tmp_path / "sub"
    sub.mkdir()
    leaf = _write(sub, "leaf.toml", 'extends = "../mid.toml"\nbatch_size = 3\n')
    assert load_config(base).name == "base_name"
    cfg = load_config(leaf)
    assert cfg.name == "leaf" and load_config(mid).name == "mid"
    assert (cfg.data["count"], cfg.batch_size, cfg.attacks) == (6, 3, load_config(TINY).attacks)
    over = load_config(leaf, overrides=["data.seed=5", "attacks.0.eps=[0.01]"])
    assert over.data == {"dataset": "cifar10", "split": "test", "count": 6, "seed": 5}
    assert [e.value for e in over.attacks[0].eps] == [0.01]
    assert load_config(leaf, quick=True).data["count"] == 4                       # [quick] is inherited


def test_bundled_base_by_name(tmp_path):
    cfg = load_config(_write(tmp_path, "mine.toml", 'extends = "quick_demo"\n[data]\ncount = 10\n'))
    demo = load_config("quick_demo")
    assert cfg.name == "mine" and cfg.data["count"] == 10
    assert dataclasses.replace(cfg, name="quick_demo", path=demo.path, raw=demo.raw,
                               data=demo.data) == demo


@pytest.mark.parametrize("text, match", [
    ('extends = "no_such_config"\n', r"extends: no bundled config 'no_such_config'; bundled: .*gcln_table.*quick_demo"),
    ('extends = "missing.toml"\n', r"extends: no config file .*missing\.toml \(a path is relative to "),
    ("extends = 3\n", r"extends: expected a bundled config name .* got 3"),
    ('extends = ""\n', r"extends: expected a bundled config name"),
])
def test_exception_bad_extends(tmp_path, text, match):
    path = _write(tmp_path, "bad.toml", text)
    with pytest.raises(ConfigError, match=match) as info:
        load_config(path)
    assert str(path) in str(info.value) and isinstance(info.value, ValueError)


def test_exception_cycles(tmp_path):
    me = _write(tmp_path, "me.toml", 'extends = "me.toml"\n')
    with pytest.raises(ConfigError, match=r"me\.toml: extends: cycle: me\.toml -> me\.toml; a config cannot "
                                          r"extend itself"):
        load_config(me)
    _write(tmp_path, "a.toml", 'extends = "b.toml"\n')
    _write(tmp_path, "b.toml", 'extends = "c.toml"\n')
    _write(tmp_path, "c.toml", 'extends = "a.toml"\n')
    with pytest.raises(ConfigError, match=r"c\.toml: extends: cycle: a\.toml -> b\.toml -> c\.toml -> a\.toml"):
        load_config(tmp_path / "a.toml")


def test_exception_invalid_base_names_the_base(tmp_path):
    _write(tmp_path, "broken.toml", "description = \n")
    with pytest.raises(ConfigError, match=r"broken\.toml: not valid TOML"):
        load_config(_write(tmp_path, "child.toml", 'extends = "broken.toml"\n'))


if __name__ == "__main__":        # regenerate golden_configs.json from the configs as they are now
    GOLDEN.write_text(json.dumps(_golden_entries(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}", file=sys.stderr)
