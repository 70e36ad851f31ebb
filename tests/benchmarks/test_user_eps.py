"""Budgets are on the [0, 1] image scale: a 0..255-scale eps is refused with a hint, not run silently.

``eps = [8]`` once ran as an L-inf budget of 8 (every pixel free: mean L-inf 0.976, 5 % accuracy).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.harness import ConfigError, load_config, run
from tests.benchmarks.test_user_data import FACTORY, write_config

CIFAR = """
description = "budgets"
[data]
dataset = "cifar10"
count = 2
[model]
name = "resnet20"
[defense]
stages = ["dct"]
"""


def _attack(eps, norm: str = "linf") -> str:
    eps_text = "[" + ", ".join(f'"{e}"' if isinstance(e, str) else str(e) for e in eps) + "]"
    return (f'[[attacks]]\nname = "pgd"\nid = "pgd-{norm}"\neps = {eps_text}\nthreat_models = ["bpda"]\n'
            f'params = {{ norm = "{norm}", iters = 1, step_ratio = 0.5 }}\n')


@pytest.mark.parametrize("eps, norm, match", [
    ([8], "linf", r'attacks\[0\]\.eps: 8 is above 1 \(an L-inf budget of 1 allows any image\): images are in '
                  r'\[0, 1\], not 0\.\.255; did you mean "8/255"\?'),
    (["4/255", 16], "linf", r'did you mean "16/255"'),
    ([128], "l2", r"attacks\[0\]\.eps: 128 is above sqrt\(C\*H\*W\) = 55\.4 .*did you mean \"128/255\""),
])
def test_exception_eps_on_the_0_255_scale(tmp_path, eps, norm, match):
    with pytest.raises(ConfigError, match=match):
        load_config(write_config(tmp_path, CIFAR + _attack(eps, norm)))


def test_eps_on_the_image_scale_accepted(tmp_path):
    cfg = load_config(write_config(tmp_path, CIFAR + _attack(["8/255", 0.03, 1]) + _attack([0.5, 55], "l2")))
    assert [e.value for e in cfg.attacks[0].eps] == [8 / 255, 0.03, 1.0]
    assert math.sqrt(3 * 32 * 32) > 55                                     # the largest L2 budget that means anything


def test_exception_worst_eps_and_its_sanity_budget(tmp_path):
    with pytest.raises(ConfigError, match=r'worst\.eps: 8 is above 1 .*did you mean "8/255"'):
        load_config(write_config(tmp_path, CIFAR + '[worst]\neps = [8]\n'))
    # MNIST's L-inf 0.3: the sanity cell runs at 8 x eps = 2.4, huge on purpose, and is not refused
    cfg = load_config(write_config(tmp_path, CIFAR + '[worst]\neps = [0.3]\n'))
    assert [e.value for a in cfg.attacks if a.id == "sanity-large-eps" for e in a.eps] == [pytest.approx(2.4)]


def test_exception_l2_eps_against_your_image_size(tmp_path, one_thread):
    """With your own images the size is known when they are loaded: 8 x 8 x 3 allows at most sqrt(192) = 13.9."""
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 8, 8, 3), np.uint8), y=np.array([0, 1]))
    head = f'description = "l2"\n[data]\npath = "d.npz"\n[model]\nfactory = "{FACTORY}"\n[defense]\nstages = ["dct"]\n'
    path = write_config(tmp_path, head + _attack([0.5]) + _attack([1, 20], "l2"))
    assert load_config(path).attacks[1].eps[1].value == 20                 # unknown size at parse time
    with pytest.raises(ConfigError, match=r"mine\.toml: attacks\[1\]\.eps: 20 is above sqrt\(C\*H\*W\) = 13\.9"):
        run(path, out=tmp_path / "out", progress=False, cache_dir=tmp_path / "cache")
