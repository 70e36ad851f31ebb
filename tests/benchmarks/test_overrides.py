"""``--set KEY=VALUE`` overrides: value parsing, paths into the document, errors, and their effect on a run."""

from __future__ import annotations

import pytest

from benchmarks.__main__ import main
from benchmarks.harness import ConfigError, load_config
from benchmarks.harness.overrides import apply_overrides, parse_value
from tests.benchmarks.test_harness import TINY, _cells, _raw


@pytest.mark.parametrize("text, value", [
    ("5", 5), ("5.0", 5.0), ('"8/255"', "8/255"), ("true", True), ("[1,2]", [1, 2]), ("-3", -3),
    ('["4/255", 0.1]', ["4/255", 0.1]), ("{ name = \"tvm\" }", {"name": "tvm"}),
    ("8/255", "8/255"), ("resnet56", "resnet56"), ("", ""), ("1\nx = 2", "1\nx = 2"),
])
def test_parse_value(text, value):
    got = parse_value(text)
    assert got == value and type(got) is type(value)


def test_smoke_load_config_with_overrides():
    cfg = load_config(TINY, overrides=["data.count=5", "defense.stages.0.params.weight=0.07",
                                       "defense.stages.0.params.drop_prob=0.25",     # a key the file does not set
                                       "attacks.0.eps.0=8/255", "attacks.1.threat_models=[\"bpda\"]",
                                       "model.name=resnet56", "seed = 3"])
    assert cfg.data["count"] == 5 and cfg.seed == 3 and cfg.model["name"] == "resnet56"
    assert cfg.stages == (("tvm", {"weight": 0.07, "iters": 10, "drop_prob": 0.25}),)
    assert [e.label for e in cfg.attacks[0].eps] == ["8/255"] and cfg.attacks[1].threat_models == ("bpda",)
    assert cfg.raw["data"]["count"] == 5                 # the document the checks saw
    assert load_config(TINY).data["count"] == 8          # the file is untouched


def test_overrides_apply_in_order_and_do_not_touch_the_input():
    raw = _raw()
    out = apply_overrides(raw, ["data.count=5", "data.count=6", "defense.stages.0.params.iters=3"], TINY)
    assert out["data"]["count"] == 6 and out["defense"]["stages"][0]["params"]["iters"] == 3
    assert raw == _raw()


def test_overrides_come_before_quick():
    assert load_config(TINY, quick=True, overrides=["data.count=6"]).data["count"] == 4      # [quick] wins
    assert load_config(TINY, quick=True, overrides=["quick.data.count=2"]).data["count"] == 2
    assert load_config(TINY, quick=True, overrides=["quick.batch_size=2"]).batch_size == 2


def test_overrides_change_the_cell_keys():
    base = _cells(_raw())
    changed = _cells(apply_overrides(_raw(), ["defense.stages.0.params.weight=0.07"], TINY))
    assert changed["fgsm eps=0.03 [none]"] == base["fgsm eps=0.03 [none]"]
    assert changed["fgsm eps=0.03 [bpda]"] != base["fgsm eps=0.03 [bpda]"]


BAD = [
    ("data.count", r"expected KEY=VALUE, e\.g\. --set data\.count=200"),
    ("dta.count=3", r"the top level has no key 'dta' \(it has attacks, .*\); only the last part of KEY may add"),
    ("defense.stagez.0.params.q=5", r"defense has no key 'stagez' \(it has stages\)"),
    ("defense.stages.1.params.q=5", r"defense\.stages is an array of 1; index '1' out of range \(use 0\.\.0\)"),
    ("defense.stages.-1.params.q=5", r"index '-1' out of range"),
    ("defense.stages.first.params.q=5", r"index 'first' out of range"),
    ("attacks.1.eps.2=0.1", r"attacks\.1\.eps is an array of 1; index '2' out of range"),
    ("data.count.x=1", r"data\.count is 8, not a table or an array; cannot set 'x' inside it"),
    ("description.a.b=1", r"description is 'test: tiny harness run', not a table .*cannot set 'a\.b'"),
    ("data..count=1", r"KEY 'data\.\.count' has an empty part"),
    ("=1", r"KEY '' has an empty part"),
]


@pytest.mark.parametrize("option, match", BAD, ids=[b[0] for b in BAD])
def test_exception_bad_override(option, match):
    with pytest.raises(ConfigError, match=match) as info:
        load_config(TINY, overrides=[option])
    assert str(info.value).startswith(f"{TINY}: --set {option}: ")        # names the file and the option


def test_exception_overrides_not_a_list():
    with pytest.raises(ConfigError, match=r"tiny\.toml: overrides: expected a list of 'KEY=VALUE' strings"):
        load_config(TINY, overrides="data.count=3")


@pytest.mark.parametrize("option, match", [
    ("attacks.0.name=fgsmm", r"attacks\[0\]\.name: unknown value 'fgsmm'"),
    ("data.count=0", r"data\.count: expected an integer >= 1, got 0"),
    ("data.count=\"8\"", r"data\.count: expected an integer, got '8'"),
    ("attacks.0.eps=[-0.1]", r"attacks\[0\]\.eps: expected a finite value >= 0"),
    ("data.cout=3", r"data\.cout: unknown key"),
])
def test_exception_overridden_value_is_checked(option, match):
    with pytest.raises(ConfigError, match=match):
        load_config(TINY, overrides=[option])


def test_cli_reports_bad_override(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(TINY), "--set", "data.count=4", "--set", "dta.count=3", "--out", str(out),
                 "--no-progress"]) == 2
    assert f"{TINY}: --set dta.count=3: the top level has no key 'dta'" in capsys.readouterr().err
    assert not out.exists()
