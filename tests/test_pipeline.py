"""Pipeline and DefendedClassifier."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from purify import (DTypeError, DefendedClassifier, Pipeline, PurifyError, RangeError, ShapeError, UnknownNameError,
                    dct_quantize, tv_minimize)


def test_stages_in_order_with_generator(rng):
    x = torch.rand(2, 3, 16, 16, generator=rng)
    pipe = Pipeline.from_spec([("tvm", {"weight": 0.05}), ("dct", {"q": 12})])
    out = pipe(x, generator=torch.Generator().manual_seed(3))
    ref = dct_quantize(tv_minimize(x, weight=0.05, generator=torch.Generator().manual_seed(3)), q=12)
    assert torch.equal(out, ref)


def test_metadata():
    assert Pipeline.from_spec("dct").differentiable is False
    assert Pipeline.from_spec(("dct", {"ste": True})).differentiable is True
    assert Pipeline.from_spec(["tvm", "dct"]).randomized is True
    assert Pipeline.from_spec("dct").randomized is False
    assert "dct(q=10)" in repr(Pipeline.from_spec([("dct", {"q": 10})]))


@pytest.mark.parametrize("spec, err", [
    ([], PurifyError), (["nope"], UnknownNameError), ([("dct", 10)], DTypeError),
    ([("tvm", {"generator": torch.Generator()})], DTypeError), ([("dct", {"qq": 1})], UnknownNameError),
])
def test_bad_specs(spec, err):
    with pytest.raises(err):
        Pipeline.from_spec(spec)


def test_batch_consistency_deterministic(rng):
    x = torch.rand(3, 3, 16, 16, generator=rng)
    pipe = Pipeline.from_spec([("tvm", {"mask": torch.zeros(16, 16)}), "dct"])
    full = pipe(x)
    for i in range(3):
        assert torch.allclose(full[i], pipe(x[i:i + 1])[0], atol=1e-6)


def test_defended_classifier(rng):
    clf = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    model = DefendedClassifier(Pipeline.from_spec(("dct", {"ste": True})), clf)
    x = torch.rand(2, 3, 8, 8, generator=rng, requires_grad=True)
    logits = model(x)
    assert logits.shape == (2, 10)
    logits.sum().backward()
    assert x.grad is not None


def test_per_sample_overrides_equal_separate_runs(rng):
    x = torch.rand(2, 3, 16, 16, generator=rng)
    pipe = Pipeline.from_spec([("tvm", {"drop_prob": 0.0}), "dct"])
    both = pipe(x, overrides=[{"weight": torch.tensor([0.02, 0.2])}, {"q": torch.tensor([4.0, 16.0])}])
    first = Pipeline.from_spec([("tvm", {"drop_prob": 0.0, "weight": 0.02}), ("dct", {"q": 4.0})])(x[:1])
    second = Pipeline.from_spec([("tvm", {"drop_prob": 0.0, "weight": 0.2}), ("dct", {"q": 16.0})])(x[1:])
    torch.testing.assert_close(both, torch.cat([first, second]), rtol=0, atol=1e-5)


def test_drawn_inputs_reproduce_the_random_run(rng):
    x = torch.rand(3, 3, 16, 16, generator=rng)
    pipe = Pipeline.from_spec(["tvm", ("dct", {"q": 8})])
    drawn = pipe.draw_inputs(x, generator=torch.Generator().manual_seed(4))
    assert drawn[0]["mask"].shape == (3, 1, 16, 16) and drawn[1] == {}
    torch.testing.assert_close(pipe.run(x, overrides=drawn), pipe(x, generator=torch.Generator().manual_seed(4)),
                               rtol=0, atol=0)


@pytest.mark.parametrize("overrides, err, match", [
    ([{"weight": 0.1}], ShapeError, "one per stage"),
    ([{"iters": 3}, {}], UnknownNameError, "cannot vary 'iters' per sample"),
    ([{"weight": -1.0}, {}], RangeError, "weight"),
    ([{"drop_prob": torch.tensor([0.1, 0.2, 0.3])}, {}], ShapeError, r"\(2,\)"),
    ([{}, {"q": 0.0}], RangeError, "q"),
    ([{"mask": torch.full((2, 1, 8, 8), 0.5)}, {}], RangeError, "mask"),
])
def test_bad_overrides(overrides, err, match):
    pipe = Pipeline.from_spec(["tvm", "dct"])
    with pytest.raises(err, match=match):
        pipe(torch.rand(2, 3, 8, 8), overrides=overrides)


def test_checks_run_once_per_call(monkeypatch):
    """purify() and Pipeline.forward check the batch's range once, whatever the number of stages."""
    import purify._checks as checks
    import purify.api as api
    from purify import purify

    calls = []
    real = checks.check_finite_unit_range

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(checks, "check_finite_unit_range", counting)
    monkeypatch.setattr(api, "check_finite_unit_range", counting)
    x = torch.rand(2, 3, 16, 16)
    purify(x, ["tvm", "dct", ("dct", {"q": 4})])
    assert calls == ["purify"]
    calls.clear()
    Pipeline.from_spec(["tvm", "dct", "dct"])(x)
    assert calls == ["Pipeline"]
    calls.clear()
    clf = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10))
    model = DefendedClassifier(Pipeline.from_spec(["tvm", "dct"]), clf)
    model(x)
    assert calls == ["DefendedClassifier"]
    calls.clear()
    model.run(x)          # the unchecked path attack loops take
    assert calls == []


def test_pipeline_carries_the_generator_weights():
    pipe = Pipeline.from_spec(["tvm", "gcln"])
    names = list(pipe.state_dict())
    assert names and all(n.startswith("purifiers.1.") for n in names)
    assert sum(p.numel() for p in pipe.parameters()) > 100_000
