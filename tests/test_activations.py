"""JumpReLU, randomized JumpReLU, bounded ReLU, and ``retrofit`` on the shipped models and a user's module."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from purify.activations import (BoundedReLU, JumpReLU, RandomJumpReLU, Retrofitted, bounded_relu, jump_relu,
                                retrofit)
from purify.errors import DTypeError, RangeError, RetrofitError, UnknownNameError
from purify.models import create_model


def test_jump_relu_values_and_kappa_zero_is_relu():
    z = torch.linspace(-2, 2, 41, dtype=torch.float64)
    assert torch.equal(jump_relu(z, 0.0), F.relu(z))
    out = jump_relu(z, 0.5)
    assert torch.equal(out, torch.where(z > 0.5, z, torch.zeros_like(z)))
    assert jump_relu(torch.tensor([0.5]), 0.5).item() == 0.0 and not torch.signbit(out).any()   # no -0.0
    assert torch.equal(bounded_relu(z, 1.0), z.clamp(0, 1))
    assert torch.equal(JumpReLU(0.5)(z), out) and torch.equal(BoundedReLU(1.0)(z), z.clamp(0, 1))


def test_exact_and_relu_backward():
    z = torch.tensor([-1.0, 0.2, 0.7], requires_grad=True)
    jump_relu(z, 0.5).sum().backward()
    assert z.grad.tolist() == [0.0, 0.0, 1.0]            # exact: the units at or below kappa are off
    z.grad = None
    out = jump_relu(z, 0.5, backward="relu")
    out.sum().backward()
    assert z.grad.tolist() == [0.0, 1.0, 1.0]            # BPDA: ReLU's gradient ...
    assert out.tolist() == pytest.approx([0.0, 0.0, 0.7])  # ... and JumpReLU's value


@pytest.mark.parametrize("bad, err", [(lambda: JumpReLU(-0.1), RangeError), (lambda: BoundedReLU(0.0), RangeError),
                                      (lambda: RandomJumpReLU(0.5, 0.2), RangeError),
                                      (lambda: JumpReLU(0.1, backward="nope"), UnknownNameError),
                                      (lambda: jump_relu(torch.tensor([1, 2]), 0.1), DTypeError),
                                      (lambda: jump_relu([1.0], 0.1), DTypeError)])
def test_bad_parameters_are_typed_errors(bad, err):
    with pytest.raises(err):
        bad()


def test_random_jump_relu_draws_reproducibly_in_its_range():
    a = RandomJumpReLU(0.2, 0.6, generator=torch.Generator().manual_seed(3))
    b = RandomJumpReLU(0.2, 0.6, generator=torch.Generator().manual_seed(3))
    kappas = [a.draw_kappa() for _ in range(200)]
    assert kappas == [b.draw_kappa() for _ in range(200)]
    assert 0.2 <= min(kappas) and max(kappas) <= 0.6 and max(kappas) - min(kappas) > 0.3


class UserNet(nn.Module):
    """A user's network mixing every spelling of ReLU: a module, F.relu, torch.relu, Tensor.relu, in place."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c, self.d = (nn.Linear(8, 8) for _ in range(4))
        self.act = nn.ReLU()
        self.head = nn.Linear(8, 3)

    def features(self, x):
        x = self.act(self.a(x))
        x = F.relu(self.b(x))
        x = torch.relu(self.c(x)).relu()
        y = self.d(x)
        F.relu_(y)                     # in place, result unused: the write-back must happen
        return y

    def forward(self, x):
        return self.head(self.features(x))


def _manual(net: UserNet, x: torch.Tensor, kappa: float) -> torch.Tensor:
    j = lambda z: jump_relu(z, kappa)   # noqa: E731
    x = j(net.a(x))
    x = j(net.b(x))
    x = j(j(net.c(x)))
    return net.head(j(net.d(x)))


def test_retrofit_replaces_module_and_functional_relus_and_leaves_the_original():
    torch.manual_seed(0)
    net = UserNet()
    before = copy.deepcopy(net.state_dict())
    x = torch.randn(16, 8)
    reference = net(x)
    jumpy = retrofit(net, "jumprelu", kappa=0.3, example_input=x)
    assert isinstance(jumpy, Retrofitted) and isinstance(jumpy.model.act, JumpReLU)
    torch.testing.assert_close(jumpy(x), _manual(net, x, 0.3), rtol=0, atol=1e-6)
    assert not torch.allclose(jumpy(x), reference)
    # the original: same modules, same weights, same outputs, and its ReLUs are plain again outside the copy
    assert type(net.act) is nn.ReLU and all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    torch.testing.assert_close(net(x), reference, rtol=0, atol=0)
    # kappa = 0 reproduces the original network
    torch.testing.assert_close(retrofit(net, "jumprelu", kappa=0.0)(x), reference, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["resnet20", "lenet5_mnist", "small_cnn_cifar10"])
def test_retrofit_shipped_models(name, data_dir):
    model = create_model(name, pretrained=True, data_dir=data_dir).eval()
    c, h, w = model.pretrained_cfg.input_size
    x = torch.rand(4, c, h, w, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(x)
        same = retrofit(model, "jumprelu", kappa=0.0)
        torch.testing.assert_close(same(x), reference, rtol=0, atol=0)
        jumpy = retrofit(model, "jumprelu", kappa=0.5)
        assert (jumpy(x) - reference).abs().max() > 1e-3       # the functional ReLUs were reached
        if hasattr(model, "features"):
            assert jumpy.features(x).shape == model.features(x).shape
            assert not torch.allclose(jumpy.features(x), model.features(x))
    assert jumpy.pretrained_cfg == model.pretrained_cfg       # attributes are the network's
    torch.testing.assert_close(model(x), reference, rtol=0, atol=0)


def test_randomized_retrofit_is_reproducible_under_a_generator():
    model = create_model("resnet20", pretrained=False).eval()
    x = torch.rand(2, 3, 32, 32)
    runs = []
    for _ in range(2):
        net = retrofit(model, "random_jumprelu", low=0.0, high=0.5, generator=torch.Generator().manual_seed(7))
        assert net.randomized
        with torch.no_grad():
            runs.append(torch.stack([net(x) for _ in range(3)]))
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    assert not torch.allclose(runs[0][0], runs[0][1])            # each forward draws anew


def test_relu_backward_context_is_bpda():
    net = retrofit(nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1)), "jumprelu", kappa=100.0)
    x = torch.randn(5, 3, requires_grad=True)
    net(x).sum().backward()
    assert x.grad.abs().max() == 0                                  # every unit below kappa: no gradient
    with net.relu_backward():
        net(x).sum().backward()
    assert x.grad.abs().max() > 0 and net.activation.backward == "exact"


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_retrofit_refuses_what_it_cannot_rewrite():
    with pytest.raises(RetrofitError, match="TorchScript"):
        retrofit(torch.jit.script(nn.Sequential(nn.Linear(2, 2), nn.ReLU())), "jumprelu", kappa=0.1)
    with pytest.raises(RetrofitError, match="without a ReLU"):
        retrofit(nn.Sequential(nn.Linear(2, 2), nn.Tanh()), "jumprelu", kappa=0.1, example_input=torch.rand(1, 2))
    with pytest.raises(RetrofitError, match="its parameters are"):
        retrofit(nn.Sequential(nn.ReLU()), "jumprelu", kapa=0.1)
    with pytest.raises(UnknownNameError, match="jumprelu"):
        retrofit(nn.Sequential(nn.ReLU()), "swish")
    with pytest.raises(DTypeError):
        retrofit(lambda x: x, "jumprelu")


def test_retrofitted_pickles_and_retrofits_again():
    net = retrofit(UserNet(), "bounded_relu", t=0.5, example_input=torch.rand(1, 8))
    x = torch.randn(3, 8)
    clone = pickle.loads(pickle.dumps(net))
    torch.testing.assert_close(clone(x), net(x), rtol=0, atol=0)
    again = retrofit(net, "jumprelu", kappa=0.0)                   # replaces, does not stack
    assert isinstance(again.model.act, JumpReLU)


def test_retrofit_a_registered_user_model_by_name():
    """A user's registered model: DefendedClassifier builds it by name and retrofits it."""
    from purify.models import register_model, unregister_model
    from purify.pipeline import DefendedClassifier

    register_model("user_net_for_retrofit", UserNet)
    try:
        torch.manual_seed(0)
        model = DefendedClassifier(None, "user_net_for_retrofit", retrofit={"activation": "jumprelu", "kappa": 0.2})
        assert isinstance(model.classifier, Retrofitted) and model.classifier.activation.kappa == 0.2
        x = torch.randn(4, 8)
        torch.testing.assert_close(model.classifier(x), _manual(model.classifier.model, x, 0.2), rtol=0, atol=1e-6)
    finally:
        unregister_model("user_net_for_retrofit")
