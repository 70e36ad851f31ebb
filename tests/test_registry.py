"""Registry tests, parametrized over every registered purifier."""

from __future__ import annotations

import inspect

import pytest
import torch

from purify import UnknownNameError, create_purifier, get_purifier_spec, list_purifiers

NAMES = list_purifiers()


def test_known_names():
    assert set(NAMES) >= {"tvm", "dct"}


@pytest.mark.parametrize("name", NAMES)
def test_spec_and_module(name):
    spec = get_purifier_spec(name)
    assert spec.name == name and spec.description
    # The module twin takes exactly the function's keyword parameters, with the same defaults.
    mod_params = {k: v.default for k, v in inspect.signature(spec.module.__init__).parameters.items()
                  if v.kind == v.KEYWORD_ONLY}
    assert mod_params == spec.defaults()
    module = create_purifier(name)
    x = torch.rand(2, 3, 16, 16)
    out = module(x)
    assert out.shape == x.shape and out.dtype == x.dtype and 0 <= out.min() and out.max() <= 1


@pytest.mark.parametrize("name", NAMES)
def test_metadata_is_truthful(name):
    spec = get_purifier_spec(name)
    x = torch.rand(1, 3, 16, 16)
    # randomized: two fresh draws differ; deterministic: equal.
    a, b = create_purifier(name)(x), create_purifier(name)(x)
    assert (not torch.equal(a, b)) == spec.randomized
    # differentiable: backward with default params gives a finite, non-zero gradient; else it raises.
    xg = x.clone().requires_grad_()
    if spec.differentiable:
        create_purifier(name)(xg).sum().backward()
        assert torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0
    else:
        with pytest.raises(RuntimeError):
            create_purifier(name)(xg).sum().backward()


def test_unknown_name_lists_known():
    with pytest.raises(UnknownNameError, match="known purifiers: 'tvm', 'dct'"):
        create_purifier("median")


def test_unknown_param_lists_accepted():
    with pytest.raises(UnknownNameError, match="'q'"):
        create_purifier("dct", quality=10)
