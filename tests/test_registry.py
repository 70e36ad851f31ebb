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


# ---------------------------------------------------------------------------------------------- one source of truth
# What the spec declares (per-sample parameters, random inputs, graph inputs, trace settings,
# rounding) is what the server, the export and the pipeline act on; each declaration is checked here.

@pytest.mark.parametrize("name", NAMES)
def test_declared_names_are_parameters(name):
    spec = get_purifier_spec(name)
    assert set(spec.per_sample) <= set(spec.params)
    assert set(spec.random_inputs) <= set(spec.per_sample)
    assert set(spec.graph_inputs) <= set(spec.per_sample)
    assert set(spec.trace_params) <= set(spec.params)
    assert bool(spec.random_inputs) == spec.randomized   # randomness always becomes an explicit input


@pytest.mark.parametrize("name", NAMES)
def test_run_is_forward_without_checks(name):
    module = create_purifier(name)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    if get_purifier_spec(name).randomized:
        module.generator = None
        a = module.run(x, generator=torch.Generator().manual_seed(1))
        module.generator = torch.Generator().manual_seed(1)
        b = module(x)
    else:
        a, b = module.run(x), module(x)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    with pytest.raises(UnknownNameError):
        module.run(x, not_a_parameter=1.0)


@pytest.mark.parametrize("name", NAMES)
def test_per_sample_values_act_per_image(name):
    """A (B,) override gives each image what a scalar setting gives it alone."""
    spec = get_purifier_spec(name)
    module = create_purifier(name)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    fixed = module.draw_inputs(x, generator=torch.Generator().manual_seed(2)) if spec.randomized else {}
    for param, check in spec.per_sample.items():
        if param in spec.random_inputs or spec.per_sample_range(param) is None:
            continue
        legal = spec.per_sample_range(param)
        if spec.randomized and param not in spec.graph_inputs:
            # It only shapes the draw (TVM's drop_prob): the extremes of its range, per image.
            drawn = module.draw_inputs(x, generator=torch.Generator().manual_seed(2),
                                       **{param: torch.tensor([legal.low, legal.high])})
            for value in drawn.values():
                assert bool((value[0] == 0).all()) and bool((value[1] == 1).all())
            continue
        values = torch.tensor([max(legal.low, 0.0) + 0.05, min(legal.high, 20.0)])
        both = module.run(x, **fixed, **{param: values})
        for i in range(2):
            alone = module.run(x[i:i + 1], **{k: v[i:i + 1] for k, v in fixed.items()}, **{param: float(values[i])})
            torch.testing.assert_close(both[i:i + 1], alone, rtol=0, atol=1e-5)
        assert not torch.allclose(both[0], module.run(x[:1], **{k: v[:1] for k, v in fixed.items()},
                                                      **{param: float(values[1])})[0])


@pytest.mark.parametrize("name", [n for n in NAMES if get_purifier_spec(n).randomized])
def test_drawn_inputs_make_the_stage_deterministic(name):
    spec = get_purifier_spec(name)
    module = create_purifier(name)
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    drawn = module.draw_inputs(x, generator=torch.Generator().manual_seed(5))
    assert set(drawn) == set(spec.random_inputs)
    # The draw is the one the stage makes itself from a generator in the same state.
    torch.testing.assert_close(module.run(x, **drawn), module.run(x, generator=torch.Generator().manual_seed(5)),
                               rtol=0, atol=0)
    torch.testing.assert_close(module.run(x, **drawn), module.run(x, **drawn), rtol=0, atol=0)


@pytest.mark.parametrize("name", [n for n in NAMES if get_purifier_spec(n).rounds])
def test_rounding_margin_finds_a_value_on_a_boundary(name):
    module = create_purifier(name)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    margin = module.rounding_margin(x)
    assert margin.shape == (2,) and bool(((0 <= margin) & (margin <= 0.5 * 10.0 / 255)).all())


def test_dct_rounding_margin_is_exact_on_a_constructed_boundary():
    from purify.dct import rounding_margin

    # A constant 8x8 block of value v has one non-zero coefficient, the DC term 8 v; with q = 10
    # its scaled value is 8 v * 255 / 10. v = 2.5 * 10 / (8 * 255) puts it at 2.5, on a boundary;
    # adding 0.1 * 10 / (8 * 255) moves the coefficient 0.1 * 10 / 255 away from it.
    v = 2.5 * 10 / (8 * 255)
    x = torch.full((1, 1, 8, 8), v, dtype=torch.float64)
    assert float(rounding_margin(x, q=10.0)) < 1e-12
    assert float(rounding_margin(x + 0.1 * 10 / (8 * 255), q=10.0)) == pytest.approx(0.1 * 10 / 255, abs=1e-12)


def test_spec_survives_copy_and_pickle():
    import copy
    import pickle

    spec = get_purifier_spec("tvm")
    assert copy.deepcopy(spec) is spec and pickle.loads(pickle.dumps(spec)) is spec
