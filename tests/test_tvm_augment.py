"""TVM-augmented training (the WNLL/TVM paper's data regimes): fresh masks per batch, reproducible under a seed."""

from __future__ import annotations

import pytest
import torch

from purify.errors import RangeError, UnknownNameError
from purify.training.recipes import Standard, TVMAugment
from purify.tv import tv_minimize


class Seen(torch.nn.Module):
    """Records the batches it is trained on."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3 * 8 * 8, 10)
        self.batches: list[torch.Tensor] = []

    def forward(self, x):
        self.batches.append(x.detach().clone())
        return self.lin(x.flatten(1))


def test_regimes_see_the_purified_batch():
    x, y = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.arange(4)
    for regime, n in (("tvm", 4), ("both", 8)):
        net = Seen()
        loss, stats = TVMAugment(Standard(), regime=regime)(net, x, y, generator=torch.Generator().manual_seed(0))
        seen = net.batches[0]
        assert seen.shape[0] == n and loss.requires_grad
        want = tv_minimize(x, weight=0.1, drop_prob=0.3, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(seen[-4:], want, rtol=0, atol=0)         # the same draw, the same kernel
        if regime == "both":
            assert torch.equal(seen[:4], x)


def test_masks_are_fresh_per_call_and_reproducible_under_a_seed():
    x, y = torch.rand(4, 3, 8, 8), torch.arange(4)
    aug = TVMAugment(Standard(), regime="tvm", drop_prob=0.5)

    def two_epochs(seed):
        net, g = Seen(), torch.Generator().manual_seed(seed)
        aug(net, x, y, generator=g)
        aug(net, x, y, generator=g)
        return net.batches

    a, b = two_epochs(0), two_epochs(0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])            # reproducible
    assert not torch.allclose(a[0], a[1])                                 # new masks every call (epoch)
    assert not torch.allclose(a[0], two_epochs(1)[0])


def test_config_and_bad_settings():
    aug = TVMAugment(Standard(), regime="both", weight=0.05, drop_prob=0.4)
    assert aug.config() == {"name": "standard+tvm_both",
                            "tvm": {"regime": "both", "weight": 0.05, "drop_prob": 0.4, "iters": 160}}
    assert not aug.adversarial
    with pytest.raises(UnknownNameError):
        TVMAugment(Standard(), regime="original")
    with pytest.raises(RangeError):
        TVMAugment(Standard(), drop_prob=1.0)


def test_validation_behind_tvm_and_the_selection_score():
    from purify.training.trainer import recipe_validation
    from purify.training.wnll import WNLLAlternating

    net = Seen()
    x, y = torch.rand(20, 3, 8, 8), torch.arange(20) % 10
    aug = TVMAugment(Standard(), regime="tvm")
    got = recipe_validation(net, aug, x, y, seed=3)
    xt = tv_minimize(x, weight=0.1, drop_prob=0.3, generator=torch.Generator().manual_seed(3))
    assert set(got) == {"purified"}
    assert got["purified"] == 100.0 * float((net(xt).argmax(1) == y).sum()) / 20        # fixed masks from the seed
    assert recipe_validation(net, Standard(), x, y, seed=3) == {}
    row = {"val_clean": 80.0, "val_purified": 60.0}
    assert aug.validation_score(row) == 60.0
    assert TVMAugment(Standard(), regime="both").validation_score(row) == 70.0
    # with the WNLL recipe underneath: its WNLL accuracy without and with TVM in front
    both = TVMAugment(WNLLAlternating(), regime="both")
    assert both.validation_score({"val_clean": 0.0, "val_wnll": 90.0, "val_wnll_purified": 70.0}) == 80.0
    both.start_epoch(1)
    assert both.base.phase == "wnll"
