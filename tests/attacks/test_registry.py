"""The attack registry: every spec tells the truth about its function, and the harness takes every name."""

from __future__ import annotations

import inspect

import pytest
import torch

import purify.attacks as attacks
from purify.attacks import CountedModel, get_attack_spec, list_attacks
from purify.attacks.registry import BOUNDED, KINDS, MINIMAL, NORMS, PARAMS, RATIO
from purify.errors import RangeError, UnknownNameError
from tests.attacks.conftest import images, make_convnet, make_linear

NAMES = list_attacks()
EPS = 0.05
#: Values for the settings an attack requires, small enough for a tiny model.
REQUIRED = {"iters": 3, "step": 0.02}


def _norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1).double()
    if norm == "l0":                                # how many values changed
        return (flat != 0).sum(1).double()
    return flat.abs().amax(1) if norm == "linf" else torch.linalg.vector_norm(flat, dim=1)


def _call(spec, model, x, y, **params):
    """One call with the spec's required settings filled in and eps where it takes one."""
    params = {**{k: REQUIRED[k] for k in spec.required if k not in params}, **params}
    return spec.run(model, x, y, eps=EPS if spec.uses_eps else None, generator=torch.Generator().manual_seed(0),
                    **params)


def _batch(model, n=4, seed=0):
    x = images(n, lo=0.2, hi=0.8, seed=seed)
    with torch.no_grad():
        y = model(x).argmax(1)
    return x, y


# ----------------------------------------------------------------------------- the registry itself

def test_list_attacks_order_and_public_names():
    assert list_attacks() == ["fgsm", "rand_fgsm", "bim", "pgd", "apgd", "square", "fgsm_minimal", "cw_l2",
                            "deepfool", "trust_region", "jsma"]
    assert attacks.list_attacks() == list_attacks()
    for name in NAMES:
        assert getattr(attacks, name) is get_attack_spec(name).function      # the public function itself


def test_exception_unknown_name_lists_the_known_ones():
    with pytest.raises(UnknownNameError, match=r"unknown attack 'fab'; known attacks: 'fgsm', 'rand_fgsm', 'bim'"):
        get_attack_spec("fab")
    with pytest.raises(KeyError):
        get_attack_spec(None)


def test_every_param_is_described():
    used = {p for name in NAMES for p in get_attack_spec(name).params}
    assert used <= set(PARAMS)
    assert set(PARAMS) <= used                      # no stale entries either


# ----------------------------------------------------------------------------- each spec against its function

@pytest.mark.parametrize("name", NAMES)
def test_spec_matches_signature(name):
    spec = get_attack_spec(name)
    sig = inspect.signature(spec.function).parameters
    assert spec.name == name and spec.kind in KINDS and spec.description
    assert list(sig)[:3] == ["model_fn", "x", "y"]
    assert all(p.kind == p.KEYWORD_ONLY for n, p in sig.items() if n not in ("model_fn", "x", "y"))
    assert ("eps" in sig) is spec.uses_eps is (spec.kind == BOUNDED)
    assert ("generator" in sig) is spec.randomized
    assert set(spec.params) == set(sig) - {"model_fn", "x", "y", "eps", "generator", "target"}
    assert set(spec.eps_relative) <= set(spec.params) and (not spec.eps_relative or spec.uses_eps)
    assert spec.norms and set(spec.norms) <= set(NORMS) and len(set(spec.norms)) == len(spec.norms)
    if len(spec.norms) > 1:                         # a choice of norm is the function's `norm`, default first
        assert sig["norm"].default == spec.norms[0]
    else:
        assert "norm" not in sig or sig["norm"].default == spec.norms[0]
    for p, default in spec.defaults().items():     # defaults have the declared type
        if default is None:     # derived from other settings: rand_fgsm's alpha = eps / 2, jsma's max_iter from gamma
            assert p in ("alpha", "max_iter"), p
            continue
        kind = PARAMS[p].kind
        assert {"int": type(default) is int, "float": isinstance(default, float), "bool": isinstance(default, bool),
                "choice": default in spec.param(p).choices}[kind], (p, default)


@pytest.mark.parametrize("name", NAMES)
def test_declared_bounds_and_choices_are_the_functions(name):
    """The value at a declared bound is accepted and one past it refused; every choice runs."""
    spec = get_attack_spec(name)
    model = make_linear(k=4)
    x, y = _batch(model, n=2)
    for p in spec.params:
        d = spec.param(p)                           # PARAMS[p] with the spec's own choices (norms, APGD's losses)
        if d.kind == "int":
            _call(spec, model, x, y, **{p: int(d.low)})
            with pytest.raises(RangeError):
                _call(spec, model, x, y, **{p: int(d.low) - 1})
        elif d.kind == "float" and d.low is not None:
            if not d.low_open:
                _call(spec, model, x, y, **{p: d.low})
            with pytest.raises(RangeError):
                _call(spec, model, x, y, **{p: d.low if d.low_open else d.low - 0.5})
        elif d.kind == "choice":
            for choice in d.choices:
                assert _call(spec, model, x, y, **{p: choice}).shape == x.shape
            with pytest.raises(UnknownNameError):
                _call(spec, model, x, y, **{p: "nope"})
        elif d.kind == "bool":
            for v in (True, False):
                _call(spec, model, x, y, **{p: v})


@pytest.mark.parametrize("name", [n for n in NAMES if get_attack_spec(n).kind == BOUNDED])
def test_bounded_spec_respects_eps_in_each_norm(name):
    spec = get_attack_spec(name)
    model = make_convnet()
    x, y = _batch(model, n=5)
    for norm in spec.norms:
        extra = {"norm": norm} if "norm" in spec.params else {}
        if "random_start" in spec.params:
            extra["random_start"] = True
        adv = _call(spec, model, x, y, **extra)
        assert adv.shape == x.shape and adv.dtype == x.dtype
        assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
        assert float(_norm(adv - x, norm).max()) <= EPS + 1e-6
        assert float(_norm(adv - x, norm).max()) > EPS / 10              # it does move
        assert spec.norm(extra) == norm
        zero = spec.run(model, x, y, eps=0.0, **{**{k: REQUIRED[k] for k in spec.required}, **extra})
        assert torch.equal(zero, x)                                       # eps = 0 is the identity


@pytest.mark.parametrize("name", [n for n in NAMES if get_attack_spec(n).kind == MINIMAL])
def test_minimal_spec_has_no_budget_and_changes_labels(name):
    spec = get_attack_spec(name)
    model = make_linear(k=4)
    x, y = _batch(model, n=6)
    for norm in spec.norms:
        extra = {"norm": norm} if "norm" in spec.params else {}
        adv = _call(spec, model, x, y, **extra)
        assert adv.shape == x.shape and float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
        with torch.no_grad():
            fooled = model(adv).argmax(1) != y
        assert int(fooled.sum()) >= 4                                     # finds adversarial examples
        small = 0.5 * x[0].numel() if norm == "l0" else 1.0               # L0: fewer than half the values
        assert float(_norm(adv - x, norm)[fooled].max()) < small          # ... small ones
    with pytest.raises(RangeError, match=rf"attack '{name}': got eps=0.1, but it has no budget"):
        spec.run(model, x, y, eps=0.1)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_flag_is_true(name):
    spec = get_attack_spec(name)
    counted = CountedModel(make_linear(k=4))
    x, y = _batch(counted.model_fn, n=3)
    _call(spec, counted, x, y)
    assert counted.forwards > 0
    assert (counted.backwards > 0) is spec.gradients


@pytest.mark.parametrize("name", NAMES)
def test_run_is_the_function(name):
    """``run`` passes settings through unchanged: the same numbers as calling the function."""
    spec = get_attack_spec(name)
    model = make_convnet()
    x, y = _batch(model, n=3, seed=2)
    kwargs = {k: REQUIRED[k] for k in spec.required}
    if spec.uses_eps:
        kwargs["eps"] = EPS
    if spec.randomized:
        kwargs["generator"] = torch.Generator().manual_seed(0)
    direct = spec.function(model, x, y, **kwargs)
    assert torch.equal(_call(spec, model, x, y), direct)


@pytest.mark.parametrize("name", NAMES)
def test_exception_run_checks_eps_and_names(name):
    spec = get_attack_spec(name)
    model = make_linear(k=4)
    x, y = _batch(model, n=2)
    with pytest.raises(UnknownNameError, match=rf"attack '{name}': unknown parameter\(s\) 'bogus'; it takes"):
        _call(spec, model, x, y, bogus=1)
    if spec.uses_eps:
        with pytest.raises(RangeError, match="expected eps"):
            spec.run(model, x, y, **{k: REQUIRED[k] for k in spec.required})


@pytest.mark.parametrize("name", [n for n in NAMES if get_attack_spec(n).eps_relative])
def test_ratio_settings_resolve_against_eps(name):
    spec = get_attack_spec(name)
    model = make_convnet()
    x, y = _batch(model, n=3)
    others = {k: REQUIRED[k] for k in spec.required if k not in spec.eps_relative}
    for p in spec.eps_relative:
        seeded = lambda: torch.Generator().manual_seed(0)  # noqa: E731  (rand_fgsm draws its random step)
        by_ratio = spec.run(model, x, y, eps=EPS, generator=seeded(), **others, **{p + RATIO: 0.25})
        absolute = spec.run(model, x, y, eps=EPS, generator=seeded(), **others, **{p: 0.25 * EPS})
        assert torch.equal(by_ratio, absolute)
        assert spec.resolve({p + RATIO: 0.5}, eps=0.1) == {p: 0.05}
        with pytest.raises(RangeError, match="give one"):
            spec.resolve({p + RATIO: 0.5, p: 0.1}, eps=0.1)
        with pytest.raises(RangeError, match="needs eps"):
            spec.resolve({p + RATIO: 0.5})


@pytest.mark.parametrize("name", [n for n in NAMES if get_attack_spec(n).randomized])
def test_randomized_spec_draws_from_the_generator(name):
    spec = get_attack_spec(name)
    model = make_convnet()
    x, y = _batch(model, n=3)
    extra = {"random_start": True} if "random_start" in spec.params else {}
    run = lambda seed: spec.run(model, x, y, eps=EPS if spec.uses_eps else None,  # noqa: E731
                                generator=torch.Generator().manual_seed(seed),
                                **{k: REQUIRED[k] for k in spec.required}, **extra)
    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))


@pytest.mark.parametrize("name", [n for n in NAMES if not get_attack_spec(n).randomized])
def test_deterministic_spec_ignores_the_generator(name):
    spec = get_attack_spec(name)
    model = make_linear(k=4)
    x, y = _batch(model, n=2)
    assert torch.equal(_call(spec, model, x, y), spec.run(model, x, y, eps=EPS if spec.uses_eps else None,
                                                           generator=torch.Generator().manual_seed(7),
                                                           **{k: REQUIRED[k] for k in spec.required}))


# ----------------------------------------------------------------------------- the harness reads the registry

def _entry(name: str) -> dict:
    spec = get_attack_spec(name)
    entry = {"name": name, "threat_models": ["none", "transfer"]}
    if spec.uses_eps:
        entry["eps"] = [EPS]
    params = {k: REQUIRED[k] for k in spec.required}
    for p in spec.eps_relative:                                         # written as a fraction of eps
        params.pop(p, None)
        params[p + RATIO] = 0.25
    if params:
        entry["params"] = params
    return entry


def _harness_config(entries: list[dict]) -> dict:
    return {"description": "every registered attack", "data": {"dataset": "cifar10", "count": 4},
            "model": {"name": "resnet20"}, "defense": {"stages": [{"name": "tvm"}]}, "attacks": entries}


@pytest.mark.parametrize("name", NAMES)
def test_harness_accepts_every_registered_name(name, tmp_path):
    from benchmarks.harness.cells import base_key, expand_cells
    from benchmarks.harness.config import ConfigError, parse_config
    from benchmarks.harness.schema import config_params

    spec = get_attack_spec(name)
    cfg = parse_config(_harness_config([_entry(name)]), tmp_path / "all.toml")
    (entry,) = cfg.attacks
    assert entry.spec is spec and entry.norm == spec.norms[0]
    cells = expand_cells(cfg, base_key(cfg, torch.arange(4).numpy()))
    assert [c.threat_model for c in cells] == ["none", "transfer"]
    assert all(set(c.params) <= set(spec.params) for c in cells)       # ratios resolved for the function
    assert set(config_params(spec)) == set(spec.accepted) - {"targeted"}
    if spec.targeted:                                                   # the harness attacks the true label
        bad = _harness_config([{**_entry(name), "params": {**_entry(name).get("params", {}), "targeted": True}}])
        with pytest.raises(ConfigError, match=r"unknown parameter .*targeted: set by the harness"):
            parse_config(bad, tmp_path / "all.toml")
    if spec.uses_eps:
        with pytest.raises(ConfigError, match=rf"{name} needs at least one budget"):
            parse_config(_harness_config([{k: v for k, v in _entry(name).items() if k != "eps"}]), tmp_path / "x.toml")
    else:
        with pytest.raises(ConfigError, match=rf"{name} has no budget"):
            parse_config(_harness_config([{**_entry(name), "eps": [EPS]}]), tmp_path / "x.toml")
    for p in spec.sweep:                                                # swept settings make one cell per value
        swept = _entry(name)
        swept["params"] = {**swept.get("params", {}), p: [1, 2]}
        cfg = parse_config(_harness_config([swept]), tmp_path / "x.toml")
        assert len(expand_cells(cfg, base_key(cfg, torch.arange(4).numpy()))) == 4


def test_harness_refuses_values_the_registry_refuses(tmp_path):
    from benchmarks.harness.config import ConfigError, parse_config

    def bad(name, params, match):
        with pytest.raises(ConfigError, match=match):
            parse_config(_harness_config([{**_entry(name), "params": {**_entry(name).get("params", {}), **params}}]),
                         tmp_path / "x.toml")

    bad("deepfool", {"num_classes": 1}, r"params\.num_classes: expected an integer >= 2")
    bad("cw_l2", {"lr": 0}, r"params\.lr: expected a value > 0")
    bad("fgsm", {"loss": "hinge"}, r"params\.loss: unknown value 'hinge'; expected one of 'ce', 'margin'")
    bad("pgd", {"norm": "l1"}, r"params\.norm: unknown value 'l1'; expected one of 'linf', 'l2'")
    bad("pgd", {"random_start": "yes"}, r"params\.random_start: expected true or false")
    bad("bim", {"loss": ["ce", "margin"]}, r"params\.loss: only iters may be a list for bim")
    cfg = parse_config(_harness_config([{**_entry("deepfool"), "params": {"norm": "linf"}}]), tmp_path / "x.toml")
    assert cfg.attacks[0].norm == "linf"                               # the entry's norm, not a fixed one
