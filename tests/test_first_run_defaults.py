"""First run: one TVM default everywhere (library, registry, purify(), CLI, server, harness configs, README)."""

from __future__ import annotations

import re
import tomllib

import numpy as np
import pytest
import torch

from purify import TVMinimize, get_purifier_spec, purify
from purify.__main__ import _shown, build_parser, stage_params
from purify.tv import DEFAULT_DROP_PROB, DEFAULT_TV_WEIGHT
from tests.conftest import REPO_ROOT

VALIDATED = {"drop_prob": 0.3, "weight": 0.1}   # benchmarks/results/tvm_selection.md


def _tvm_params(stages) -> list[dict]:
    return [dict(s.get("params", {})) for s in stages if s.get("name") == "tvm"]


def test_library_default_is_the_setting_chosen_on_validation():
    text = (REPO_ROOT / "benchmarks" / "results" / "tvm_selection.md").read_text()
    chosen = re.search(r"Chosen: drop rate ([\d.]+), weight ([\d.]+)", text)
    assert chosen is not None
    assert {"drop_prob": float(chosen[1]), "weight": float(chosen[2])} == VALIDATED
    assert {"drop_prob": DEFAULT_DROP_PROB, "weight": DEFAULT_TV_WEIGHT} == VALIDATED


def test_function_twin_and_registry_agree():
    defaults = get_purifier_spec("tvm").defaults()
    assert {k: defaults[k] for k in VALIDATED} == VALIDATED
    twin = TVMinimize()
    assert (twin.weight, twin.drop_prob) == (VALIDATED["weight"], VALIDATED["drop_prob"])


def test_purify_without_settings_runs_the_default():
    x = torch.rand(3, 3, 17, 13, generator=torch.Generator().manual_seed(0))
    plain = purify(x, "tvm", device="cpu", seed=5)
    # Same computation, same inputs, one process: exact.
    assert torch.equal(plain, purify(x, "tvm", device="cpu", seed=5, **VALIDATED))
    assert not torch.equal(plain, purify(x, "tvm", device="cpu", seed=5, weight=0.03, drop_prob=0.5))


def test_cli_default_is_the_library_default(capsys):
    args = build_parser().parse_args(["image", "in.png", "out.png"])
    assert stage_params(args) == {}              # nothing given: the stage's own defaults apply
    assert _shown(args, {}) == VALIDATED
    with pytest.raises(SystemExit):
        build_parser().parse_args(["image", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "(default: 0.1," in help_text and "(default: 0.3)" in help_text


def test_server_default_config_uses_the_library_default():
    from serving.config import DEFAULT_CONFIG, load_config

    cfg = load_config(DEFAULT_CONFIG)
    params = [dict(s.params) for s in cfg.stages if s.name == "tvm"]
    assert params == [VALIDATED]


def _bundled_tvm_settings() -> list[tuple[str, dict]]:
    found = []
    for path in sorted((REPO_ROOT / "benchmarks" / "configs").glob("*.toml")):
        stages = tomllib.loads(path.read_text()).get("defense", {}).get("stages", [])
        found += [(path.name, p) for p in _tvm_params(stages)]
    board = tomllib.loads((REPO_ROOT / "benchmarks" / "leaderboard.toml").read_text())
    for row in board.get("rows", []):
        found += [("leaderboard.toml", p) for p in _tvm_params(row.get("stages", []))]
    return found


def test_harness_configs_and_leaderboard_use_the_library_default():
    found = _bundled_tvm_settings()
    assert len(found) >= 8        # the walk saw the TVM configs and rows
    for name, params in found:
        assert {k: params.get(k, VALIDATED[k]) for k in VALIDATED} == VALIDATED, name


def test_readme_states_the_default_and_its_measured_cost():
    readme = " ".join((REPO_ROOT / "README.md").read_text().split())
    assert "**TVM's default** is drop rate 0.3 and weight λ 0.1" in readme
    assert "from 93.0 to 73.8 %" in readme and "benchmarks/results/wnll_tvm_table2/report.md" in readme
    report = (REPO_ROOT / "benchmarks" / "results" / "wnll_tvm_table2" / "report.md").read_text()
    assert "tvm(weight=0.1, drop_prob=0.3)" in report
    assert "undefended 93.0%, defended 73.8%" in report
    assert "weight=0.03, drop_prob=0.5" not in readme


def test_quickstart_example_has_the_default_values():
    readme = (REPO_ROOT / "README.md").read_text()
    block = readme[readme.index("## Python quickstart"):readme.index("## The TV solver")]
    pattern = r"tv_minimize\(x, weight=([\d.]+), drop_prob=([\d.]+)"
    values = {(float(w), float(d)) for w, d in re.findall(pattern, block)}
    assert values == {(0.1, 0.3)}
    assert np.isclose(DEFAULT_TV_WEIGHT, 0.1) and np.isclose(DEFAULT_DROP_PROB, 0.3)
