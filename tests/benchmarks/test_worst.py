"""The ``worst`` threat model: the per-image worst over the ensemble, its interval and the sanity flags."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks.harness.config import ConfigError, parse_config
from benchmarks.harness.schema import Eps
from benchmarks.harness.worst import (WorstConfig, decode_bits, encode_bits, gradient_threat_models, sanity_flags,
                                      wilson, worst_rows)

BASE = {"description": "d", "data": {"dataset": "cifar10", "count": 4}, "model": {"name": "resnet20"}}


def _cfg(**extra):
    return parse_config({**BASE, **extra}, Path("t.toml"))


@pytest.mark.parametrize("bits", [[], [True], [False, True, True, False, True], [True] * 9, [False] * 13])
def test_bits_round_trip(bits):
    assert decode_bits(encode_bits(bits), len(bits)) == bits


def test_wilson_matches_hand_computed_values():
    # k = 50, n = 100: centre (0.5 + 1.96^2/200) / (1 + 1.96^2/100) = 0.5, half-width 0.0962.
    lo, hi = wilson(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0


@pytest.mark.parametrize("stages, expected", [
    ((), ("none",)), ((("dct", {}),), ("bpda", "full")), ((("tvm", {}),), ("bpda+eot",)),
    ((("tvm", {}), ("gcln", {})), ("bpda+eot",)),
])
def test_threat_models_follow_the_defense(stages, expected):
    assert gradient_threat_models(stages) == expected


def test_worst_table_expands_into_entries():
    cfg = _cfg(defense={"stages": [{"name": "tvm"}]}, worst={"eps": ["8/255"], "iters": 7, "queries": 30})
    by_id = {a.id: a for a in cfg.attacks}
    assert set(by_id) == {"worst-apgd-ce", "worst-apgd-t", "worst-square", "sanity-large-eps", "sanity-more"}
    assert by_id["worst-apgd-ce"].threat_models == ("bpda+eot",) and by_id["worst-apgd-ce"].params["iters"] == 7
    assert _cfg(defense={"stages": [{"name": "tvm"}]}, worst={"eps": ["8/255"], "threat_models": ["bpda+eot", "eot"]}
                ).attacks[0].threat_models == ("bpda+eot", "eot")     # exact-gradient EOT when asked for
    assert by_id["worst-apgd-t"].params["loss"] == "dlr-targeted"
    assert by_id["worst-square"].threat_models == ("bpda",) and by_id["worst-square"].params["queries"] == 30
    assert by_id["sanity-large-eps"].eps[0].value == pytest.approx(64 / 255)
    assert by_id["sanity-large-eps"].eps[0].label == "64/255"
    assert by_id["sanity-more"].params["iters"] == 14 and by_id["sanity-more"].eot_samples == (20,)


@pytest.mark.parametrize("worst, match", [
    ({"eps": []}, "at least one budget"),
    ({"eps": ["8/255"], "threat_models": ["full"]}, "attacked under bpda\\+eot, eot"),
    ({"eps": ["8/255"], "norm": "l1"}, "unknown value"),
    ({"eps": ["8/255"], "include": ["nope"]}, "unknown value"),
    ({"eps": ["8/255"], "speed": 2}, "unknown key"),
])
def test_bad_worst_tables(worst, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(defense={"stages": [{"name": "tvm"}]}, worst=worst)


def _row(attack, tm, bits, *, eps=8 / 255, iters=10, eot=""):
    return {"attack": attack, "threat_model": tm, "eps": eps, "eps_label": "8/255", "n_images": len(bits),
            "accuracy": sum(bits) / len(bits), "adv_correct": encode_bits(bits), "iters": iters, "eot_samples": eot}


def _stub(**w):
    base = dict(norm="linf", eps=(Eps(8 / 255, "8/255"),), iters=10, restarts=1, n_target_classes=9, queries=100,
                eot_samples=2, threat_models=("bpda",), include=(), sanity=True, sanity_eps=Eps(64 / 255, "64/255"))
    return SimpleNamespace(worst=WorstConfig(**{**base, **w}), stages=(("dct", {}),))


def test_worst_is_the_per_image_and_over_cells():
    rows = [_row("worst-apgd-ce", "bpda", [1, 1, 0, 1, 1, 0]), _row("worst-apgd-t", "bpda", [1, 0, 1, 1, 1, 0]),
            _row("worst-square", "bpda", [1, 1, 1, 0, 1, 1]),
            _row("worst-apgd-ce", "transfer", [0, 0, 0, 0, 0, 0]),      # never part of the worst case
            _row("pgd", "bpda", [0, 0, 0, 0, 0, 0])]                    # not included
    (w,) = worst_rows(_stub(), rows)
    assert w["accuracy"] == pytest.approx(2 / 6) and w["n_images"] == 6 and w["cells"] == 3
    assert w["decisive"] == {"worst-apgd-ce (bpda, iters 10)": 1, "worst-apgd-t (bpda, iters 10)": 1,
                             "worst-square (bpda, iters 10)": 1}
    (w,) = worst_rows(_stub(include=("pgd",)), rows)
    assert w["accuracy"] == 0.0


def test_sanity_flags_raise_with_evidence():
    ok = [1] * 40 + [0] * 60
    rows = [_row("worst-apgd-ce", "bpda", ok), _row("worst-apgd-t", "bpda", ok),
            _row("worst-square", "bpda", [1] * 10 + [0] * 90),                    # Square far better: masking
            _row("sanity-large-eps", "bpda", [1] * 30 + [0] * 70, eps=64 / 255),   # 30 % at 64/255
            _row("sanity-more", "bpda", [1] * 20 + [0] * 80, iters=20)]            # 40 % -> 20 %: not converged
    cfg = _stub()
    flags = {f["check"].split(" (")[0]: f for f in sanity_flags(cfg, rows, worst_rows(cfg, rows))}
    assert [f["status"] for f in flags.values()] == ["FLAG", "FLAG", "FLAG"]
    assert "30.0 %" in flags["accuracy reaches ~0 at a large eps"]["evidence"]
    assert "40.0 % → 20.0 %" in flags["more iterations / EOT samples do not lower accuracy further"]["evidence"]
    assert "Square 10.0 %" in flags["Square does not beat the gradient attacks"]["evidence"]
    healthy = [_row("worst-apgd-ce", "bpda", ok), _row("worst-square", "bpda", [1] * 60 + [0] * 40),
               _row("sanity-large-eps", "bpda", [0] * 100, eps=64 / 255), _row("sanity-more", "bpda", ok, iters=20)]
    assert {f["status"] for f in sanity_flags(cfg, healthy, worst_rows(cfg, healthy))} == {"ok"}


def test_a_worst_run_reports_the_ensemble(tmp_path, data_dir):
    """End to end on 4 images with tiny budgets: cells carry per-image results, the report the section."""
    from benchmarks.harness import run

    path = tmp_path / "w.toml"
    path.write_text('description = "worst"\nbatch_size = 4\n[data]\ndataset = "cifar10"\ncount = 4\n'
                    '[model]\nname = "resnet20"\n[defense]\nstages = [{ name = "dct" }]\n'
                    '[worst]\neps = ["8/255"]\niters = 2\nqueries = 5\nn_target_classes = 1\n')
    result = run(path, data_dir=data_dir, out=tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    assert all(len(decode_bits(r["adv_correct"], 4)) == 4 for r in result.rows)
    text = (tmp_path / "out" / "report.md").read_text()
    assert "## Worst case over an AutoAttack-grade ensemble" in text and "### Sanity checks" in text


def test_a_wnll_head_is_attacked_on_both_sides():
    wnll = {"stages": [], "head": "wnll", "head_params": {"artifact": "resnet56_wnll"}}
    cfg = _cfg(defense=wnll, worst={"eps": ["8/255"], "through": ["head", "surrogate"]})
    by_id = {a.id: a for a in cfg.attacks}
    assert set(by_id) == {"worst-apgd-ce", "worst-apgd-t", "worst-square", "sanity-large-eps", "sanity-more",
                          "worst-apgd-ce-surrogate", "worst-apgd-t-surrogate", "sanity-large-eps-surrogate",
                          "sanity-more-surrogate"}
    assert by_id["worst-apgd-ce"].through is None and by_id["worst-apgd-ce-surrogate"].through == "surrogate"
    assert by_id["worst-square"].through is None                       # Square reads the defended outputs only
    # the side of attack_through keeps the plain ids (and the cells they already have)
    other = _cfg(defense={**wnll, "attack_through": "surrogate"}, worst={"eps": ["8/255"], "through": ["surrogate", "head"]})
    assert {a.id: a.through for a in other.attacks}["worst-apgd-ce-head"] == "head"
    assert _cfg(defense=wnll, worst={"eps": ["8/255"]}).worst.sides == ("head",)
    with pytest.raises(ConfigError, match="only used with head"):
        _cfg(defense={"stages": [{"name": "tvm"}]}, worst={"eps": ["8/255"], "through": ["head"]})
    with pytest.raises(ConfigError, match="distinct values"):
        _cfg(defense=wnll, worst={"eps": ["8/255"], "through": ["head", "head"]})


def test_the_worst_case_and_flags_cover_both_sides_of_a_head():
    ok = [1] * 40 + [0] * 60
    rows = [_row("worst-apgd-ce", "none", [1] * 70 + [0] * 30), _row("worst-apgd-t", "none", [1] * 70 + [0] * 30),
            _row("worst-square", "none", ok),                                          # beats the head side ...
            _row("worst-apgd-ce-surrogate", "none", [1] * 5 + [0] * 95),                # ... not the surrogate side
            _row("worst-apgd-t-surrogate", "none", [1] * 5 + [0] * 95),
            _row("sanity-large-eps", "none", [1] * 4 + [0] * 96, eps=64 / 255),         # 4 %: the head side masks
            _row("sanity-large-eps-surrogate", "none", [0] * 100, eps=64 / 255),        # the surrogate reaches 0
            _row("sanity-more", "none", [1] * 70 + [0] * 30, iters=20),
            _row("sanity-more-surrogate", "none", [1] * 5 + [0] * 95, iters=20)]
    cfg = SimpleNamespace(worst=_stub(threat_models=("none",), through=("head", "surrogate")).worst, stages=())
    (w,) = worst_rows(cfg, rows)
    assert w["accuracy"] == pytest.approx(0.05) and w["cells"] == 5
    flags = {f["check"].split(" (")[0]: f for f in sanity_flags(cfg, rows, [w])}
    assert {f["status"] for f in flags.values()} == {"ok"}, flags
    assert "sanity-large-eps-surrogate (none, iters 10) 0.0 %" in flags["accuracy reaches ~0 at a large eps"]["evidence"]
    assert "through the surrogate" in flags["more iterations / EOT samples do not lower accuracy further"]["evidence"]
    # the head side alone would be flagged: Square beats it, and it does not reach 0 at a large eps
    head_only = SimpleNamespace(worst=_stub(threat_models=("none",)).worst, stages=())
    flags = {f["check"].split(" (")[0]: f["status"] for f in sanity_flags(head_only, rows, worst_rows(head_only, rows))}
    assert flags["accuracy reaches ~0 at a large eps"] == "FLAG" and flags["Square does not beat the gradient attacks"] == "FLAG"


def test_large_eps_check_takes_the_per_image_worst_over_the_sides():
    """Each side alone keeps 4 % at the large eps, on different images: together they break every image."""
    rows = [_row("sanity-large-eps", "none", [1] * 4 + [0] * 96, eps=64 / 255),
            _row("sanity-large-eps-surrogate", "none", [0] * 4 + [1] * 4 + [0] * 92, eps=64 / 255)]
    cfg = SimpleNamespace(worst=_stub(threat_models=("none",), through=("head", "surrogate")).worst, stages=())
    (flag,) = [f for f in sanity_flags(cfg, rows, []) if f["check"].startswith("accuracy reaches")]
    assert flag["status"] == "ok" and "APGD-CE at 64/255: 0.0 % per image over" in flag["evidence"]
    rows[1] = _row("sanity-large-eps-surrogate", "none", [1] * 4 + [0] * 96, eps=64 / 255)   # the same images
    (flag,) = [f for f in sanity_flags(cfg, rows, []) if f["check"].startswith("accuracy reaches")]
    assert flag["status"] == "FLAG" and "4.0 %" in flag["evidence"]
