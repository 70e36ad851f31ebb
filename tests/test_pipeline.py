"""Pipeline and DefendedClassifier."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from purify import DTypeError, DefendedClassifier, Pipeline, PurifyError, UnknownNameError, dct_quantize, tv_minimize


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
