"""Your own attack: ``register_attack(AttackSpec(...))``, named in a config as ``"module:attribute"``.

The spec describes the settings :data:`~purify.attacks.registry.PARAMS` does not know, so the
harness checks them (types, bounds, sweeps) as it checks the library's attacks.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from benchmarks.harness import ConfigError, load_config, run
from purify.attacks.registry import (BOUNDED, AttackSpec, Param, get_attack_spec, list_attacks, register_attack,
                                     unregister_attack)
from purify.errors import DTypeError, UnknownNameError
from tests.benchmarks.test_user_data import FACTORY, write_config

BUILTIN = ["fgsm", "rand_fgsm", "bim", "pgd", "apgd", "square", "fgsm_minimal", "cw_l2", "deepfool", "trust_region",
           "jsma"]


def sign_noise(model_fn, x, y, *, eps, draws: int = 1, generator=None):
    """Best of ``draws`` random corners of the L-inf ball (by the model's loss): a score-based attack."""
    best, worst_loss = x, torch.full((len(x),), -float("inf"), device=x.device)
    with torch.no_grad():
        for _ in range(draws):
            sign = torch.randint(0, 2, x.shape, generator=generator, device=x.device).mul(2).sub(1)
            cand = (x + eps * sign).clamp(0, 1)
            loss = torch.nn.functional.cross_entropy(model_fn(cand), y, reduction="none")
            better = loss > worst_loss
            best = torch.where(better.view(-1, 1, 1, 1), cand, best)
            worst_loss = torch.maximum(loss, worst_loss)
    return best


#: What a user's module holds; a config names it "tests.benchmarks.test_user_attack:SIGN_NOISE".
SIGN_NOISE = AttackSpec("sign_noise", sign_noise, BOUNDED, ("linf",), False, "best of random L-inf corners",
                        settings=(("draws", Param("int", "random corners tried per image", low=1, sweep=True)),))
NOT_A_SPEC = sign_noise


@pytest.fixture(autouse=True)
def _clean_registry():
    """Every test starts and ends with the library's attacks only."""
    yield
    for name in list_attacks()[len(BUILTIN):]:
        unregister_attack(name)
    assert list_attacks() == BUILTIN


def test_register_attack_lists_and_describes_it():
    assert register_attack(SIGN_NOISE) is SIGN_NOISE
    assert register_attack(SIGN_NOISE) is SIGN_NOISE                      # the same spec again: a no-op
    assert list_attacks() == BUILTIN + ["sign_noise"] and get_attack_spec("sign_noise") is SIGN_NOISE
    assert SIGN_NOISE.params == ("draws",) and SIGN_NOISE.sweep == ("draws",) and SIGN_NOISE.randomized
    assert SIGN_NOISE.param("draws").low == 1
    x, y = torch.rand(3, 3, 5, 5), torch.tensor([0, 1, 0])
    adv = SIGN_NOISE.run(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(75, 2)), x, y, eps=0.1, draws=2,
                         generator=torch.Generator().manual_seed(0))
    assert float((adv - x).abs().max()) <= 0.1 + 1e-7
    unregister_attack("sign_noise")
    assert "sign_noise" not in list_attacks()


def test_exception_register_attack():
    with pytest.raises(DTypeError, match=r"AttackSpec 'x': setting\(s\) 'draws' of 'sign_noise' are not described"):
        AttackSpec("x", sign_noise, BOUNDED, ("linf",), False, "no description of draws")
    with pytest.raises(DTypeError, match=r"expected kind in"):
        AttackSpec("x", sign_noise, "strong", ("linf",), False, "d", settings=SIGN_NOISE.settings)
    with pytest.raises(ValueError, match=r"'pgd' is a built-in attack"):
        register_attack(AttackSpec("pgd", sign_noise, BOUNDED, ("linf",), False, "d", settings=SIGN_NOISE.settings))
    with pytest.raises(DTypeError, match=r"expected an AttackSpec, got function"):
        register_attack(sign_noise)
    register_attack(SIGN_NOISE)
    other = AttackSpec("sign_noise", sign_noise, BOUNDED, ("linf",), False, "another", settings=SIGN_NOISE.settings)
    with pytest.raises(ValueError, match=r"already registered with another spec; pass overwrite=True"):
        register_attack(other)
    assert register_attack(other, overwrite=True) is get_attack_spec("sign_noise")
    with pytest.raises(UnknownNameError, match=r"unknown registered attack 'pgd'"):
        unregister_attack("pgd")


CONFIG = f"""
description = "a user's attack"
batch_size = 3
device = "cpu"
[data]
path = "data.npz"
[model]
factory = "{FACTORY}"
[defense]
stages = [{{ name = "dct", params = {{ q = 10 }} }}]
[[attacks]]
name = "{{name}}"
eps = ["8/255"]
threat_models = ["none", "bpda"]
params = {{{{ draws = [1, 3] }}}}
"""


def _config(tmp_path, name: str, params: str = "draws = [1, 3]"):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8), y=np.array([0, 1, 1]))
    text = CONFIG.replace("{name}", name).replace("{{ draws = [1, 3] }}", "{ " + params + " }")
    return write_config(tmp_path, text)


def test_config_names_a_user_attack_as_module_attribute(tmp_path, one_thread):
    path = _config(tmp_path, "tests.benchmarks.test_user_attack:SIGN_NOISE")
    cfg = load_config(path)
    assert "sign_noise" in list_attacks()                                  # registered by the parse
    assert cfg.attacks[0].name == cfg.attacks[0].id == "sign_noise" and cfg.attacks[0].params == {"draws": [1, 3]}
    assert load_config(path).attacks == cfg.attacks                        # parsed again: registered again, same
    result = run(path, out=tmp_path / "out", progress=False, cache_dir=tmp_path / "cache")
    assert len(result.computed) == 4                                       # 2 draws values x 2 threat models
    with open(tmp_path / "out" / "cells.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["params"] for r in rows) == ["draws=1", "draws=1", "draws=3", "draws=3"]
    for r in rows:
        assert r["attack"] == "sign_noise" and r["backwards"] == "0"
        assert abs(float(r["max_linf"]) - 8 / 255) < 1e-6                  # every pixel moved by eps, none beyond


def test_config_names_an_attack_registered_in_python(tmp_path):
    with pytest.raises(ConfigError, match=r"attacks\[0\]\.name: unknown value 'sign_noise'"):
        load_config(_config(tmp_path, "sign_noise"))
    register_attack(SIGN_NOISE)
    assert load_config(_config(tmp_path, "sign_noise")).attacks[0].name == "sign_noise"


@pytest.mark.parametrize("name, params, match", [
    ("no_such_module_y:SPEC", "draws = 1", r"attacks\[0\]\.name: cannot import 'no_such_module_y:SPEC': "
                                           r"ModuleNotFoundError"),
    ("tests.benchmarks.test_user_attack:NOT_A_SPEC", "draws = 1", r"is a function, expected an AttackSpec"),
    ("tests.benchmarks.test_user_attack:SIGN_NOISE", "draws = 0", r"params\.draws: expected an integer >= 1, got 0"),
    ("tests.benchmarks.test_user_attack:SIGN_NOISE", "tries = 2", r"params\.tries: unknown parameter of sign_noise; "
                                                                  r"it takes draws"),
    ("a:b:c", "draws = 1", r"expected a registered attack or 'package\.module:attribute'"),
])
def test_exception_user_attack_in_config(tmp_path, name, params, match):
    with pytest.raises(ConfigError, match=match):
        load_config(_config(tmp_path, name, params))
