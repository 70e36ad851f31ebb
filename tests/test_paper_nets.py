"""The paper networks of purify.models.paper_nets, and smoke runs of the trainer on them.

The BReLU/GDA paper's CNN and ResNet; the Deep Defense paper's MLP, LeNet and CIFAR-10 ConvNet (its
Table 4), with its unrolled DeepFool run through them and a reference / fine-tune pair of trainer runs.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from purify.activations import BoundedReLU
from purify.errors import RangeError, ShapeError, UnknownNameError
from purify.attacks import deepfool
from purify.models.paper_nets import PaperCNN, PaperConvNet, PaperLeNet, PaperMLP, PaperResNet
from purify.models.trained import build_network, load_trained
from purify.training import adversarial
from purify.training.deep_defense import DeepDefense, deepfool_unrolled

SIZES = [(1, 28, 128), (3, 32, 512)]          # (channels, H = W, features): MNIST and CIFAR-10


def _acts(net: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for name, m in net.named_children() if name.startswith("act")]


@pytest.mark.parametrize("cls", [PaperCNN, PaperResNet])
@pytest.mark.parametrize("c, size, dim", SIZES)
@pytest.mark.parametrize("activation", ["relu", "brelu"])
def test_smoke_shapes(cls, c, size, dim, activation):
    net = cls(in_channels=c, image_size=size, activation=activation)
    assert net.feature_dim == dim
    for b in (0, 1, 3):
        x = torch.rand(b, c, size, size)
        assert net(x).shape == (b, 10) and net.features(x).shape == (b, dim)
    torch.testing.assert_close(net(torch.ones(3, c, size, size))[1], net(torch.ones(1, c, size, size))[0])


@pytest.mark.parametrize("c, size, dim", SIZES)
def test_parameter_counts(c, size, dim):
    """Written out per layer: conv k x k from c_in to c_out has c_out (c_in k^2 + 1) parameters."""
    conv = lambda c_in, c_out, k: c_out * (c_in * k * k + 1)        # noqa: E731
    stem = conv(c, 64, 8) + conv(64, 128, 6)
    head = dim * 10 + 10
    assert sum(p.numel() for p in PaperCNN(in_channels=c, image_size=size).parameters()) == \
        stem + conv(128, 128, 5) + head                               # 710,218 MNIST, 722,250 CIFAR-10
    assert sum(p.numel() for p in PaperResNet(in_channels=c, image_size=size).parameters()) == \
        stem + 2 * conv(128, 128, 1) + head                           # 333,514 MNIST, 345,546 CIFAR-10
    assert sum(p.numel() for p in PaperCNN(in_channels=1, image_size=28).parameters()) == 710_218


def test_cnn_is_the_written_out_cleverhans_layers():
    """28x28: 'same' 8x8 stride 2 pads 3 on each side (TF: total (14 - 1) 2 + 8 - 28 = 6); then 'valid'."""
    net = PaperCNN(in_channels=1, image_size=28)
    x = torch.rand(2, 1, 28, 28)
    h = F.relu(F.conv2d(x, net.conv1.weight, net.conv1.bias, stride=2, padding=3))
    h = F.relu(F.conv2d(h, net.conv2.weight, net.conv2.bias, stride=2))
    h = F.relu(F.conv2d(h, net.conv3.weight, net.conv3.bias))
    assert h.shape == (2, 128, 1, 1)
    # the same sums; nn.Conv2d's padding vs F.pad may order them differently: float32 tolerances
    torch.testing.assert_close(net.features(x), h.flatten(1))
    torch.testing.assert_close(net(x), net.linear(h.flatten(1)))


def test_same_padding_puts_the_odd_pixel_after_as_tensorflow():
    """37x31: TF pads 7 rows (3 before, 4 after) and 7 columns (3, 4). With ones everywhere the first
    output of conv1 covers 5x5 real pixels, the last 4x4; padding 4 before would swap them."""
    net = PaperCNN(in_channels=1, image_size=(37, 31))
    with torch.no_grad():
        net.conv1.weight.fill_(1.0)
        net.conv1.bias.zero_()
    seen = {}
    net.conv1.register_forward_hook(lambda m, i, o: seen.update(out=o))
    assert net(torch.ones(1, 1, 37, 31)).shape == (1, 10)
    out = seen["out"]
    assert out.shape == (1, 64, 19, 16)                               # ceil(37 / 2), ceil(31 / 2)
    assert out[0, 0, 0, 0] == 25 and out[0, 0, -1, -1] == 16


def test_resnet_shortcut_is_the_identity_around_the_1x1_convolutions():
    net = PaperResNet(in_channels=3, image_size=32)
    seen = {}
    net.act2.register_forward_hook(lambda m, i, o: seen.update(s=o))
    with torch.no_grad():
        for conv in (net.conv3, net.conv4):
            conv.weight.zero_()
            conv.bias.zero_()
    x = torch.rand(2, 3, 32, 32)
    f = net.features(x)                       # branch 0: act(0 + s) = s, since s >= 0 already
    assert seen["s"].shape == (2, 128, 6, 6)
    assert torch.equal(f, F.max_pool2d(seen["s"], 3, stride=3).flatten(1))


@pytest.mark.parametrize("cls", [PaperCNN, PaperResNet])
def test_brelu_bounds_every_activation(cls):
    """Hooks on every activation: brelu's outputs lie in [0, t] and reach t (the weights are scaled up so
    pre-activations exceed 1); the same weights with relu exceed 1, so the bound is the activation's."""
    torch.manual_seed(0)
    nets = {a: cls(in_channels=1, image_size=28, activation=a) for a in ("relu", "brelu")}
    nets["half"] = cls(in_channels=1, image_size=28, activation="brelu", t=0.5)
    for net in nets.values():
        net.load_state_dict(nets["relu"].state_dict())
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(10.0)
    x = torch.rand(4, 1, 28, 28)
    for name, net in nets.items():
        outs = []
        for act in _acts(net):
            act.register_forward_hook(lambda m, i, o: outs.append(o.detach()))
        net(x)
        assert len(outs) == (3 if cls is PaperCNN else 4)
        top = {"relu": None, "brelu": 1.0, "half": 0.5}[name]
        for o in outs:
            assert float(o.min()) == 0.0
            if top is None:
                assert float(o.max()) > 1.0
            else:
                assert float(o.max()) == top
    assert all(isinstance(a, BoundedReLU) and a.t == 1.0 for a in _acts(nets["brelu"]))
    assert all(type(a) is torch.nn.ReLU for a in _acts(nets["relu"]))


def test_bad_arguments_are_typed_errors():
    with pytest.raises(UnknownNameError, match="brelu"):
        PaperCNN(activation="tanh")
    with pytest.raises(ShapeError, match="at least 27"):
        PaperCNN(image_size=26)
    with pytest.raises(ShapeError, match="at least 19"):
        PaperResNet(image_size=18)
    assert PaperResNet(image_size=19)(torch.rand(1, 1, 19, 19)).shape == (1, 10)
    with pytest.raises(RangeError):
        PaperCNN(activation="brelu", t=0.0)
    with pytest.raises(RangeError):
        PaperCNN(in_channels=0)


def test_build_network_reads_the_architecture_record():
    arch = {"type": "PaperResNet", "in_channels": 3, "image_size": [32, 32], "num_classes": 10,
            "activation": "brelu", "t": 1.0}
    a, b = build_network(arch), build_network(json.loads(json.dumps(arch)))
    assert isinstance(a, PaperResNet) and a.activation == "brelu" and a.image_size == (32, 32)
    b.load_state_dict(a.state_dict())
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(a(x), b(x))   # same weights: equal up to float32 rounding
    assert build_network({"type": "PaperCNN", "in_channels": 1, "image_size": [28, 28]}).activation == "relu"


def test_trainer_smoke_run_writes_an_artifact_that_loads_back(data_dir, tmp_path, monkeypatch):
    """One epoch of gda on 256 MNIST images with the bounded-ReLU CNN, through the command line."""
    trained = {}
    real_fit = adversarial.fit

    def keep_model(model, *args, **kw):
        trained["model"] = model
        return real_fit(model, *args, **kw)

    monkeypatch.setattr(adversarial, "fit", keep_model)
    out = tmp_path / "cnn_mnist_gda_brelu"
    assert adversarial.main(["--data-dir", str(data_dir), "--dataset", "mnist", "--model", "cnn_mnist",
                             "--activation", "brelu", "--recipe", "gda", "--gda-copies", "2", "--epochs", "1",
                             "--train-count", "256", "--val-count", "64", "--test-count", "64", "--out", str(out),
                             "--checkpoint", str(tmp_path / "ck.pt"), "--no-progress"]) == 0
    raw = json.loads(out.with_suffix(".json").read_text())
    assert raw["arch"] == {"type": "PaperCNN", "in_channels": 1, "image_size": [28, 28], "num_classes": 10,
                           "activation": "brelu", "t": 1.0}
    assert raw["mean"] == [0.0] and raw["std"] == [1.0]                # the paper's [0, 1] pixels, unnormalized
    assert raw["recipe"]["name"] == "gda" and raw["recipe"]["sigma"] == 0.3 and raw["recipe"]["copies"] == 2
    assert "instead of the paper's 10" in raw["recipe"]["note"]
    assert raw["data"]["train_count"] == 256 and raw["data"]["test_count"] == 64 and raw["training"]["epochs_run"] == 1
    loaded = load_trained(out.name, weights_dir=tmp_path)
    assert isinstance(loaded.model, PaperCNN) and loaded.model.activation == "brelu" and not loaded.training
    x = torch.rand(5, 1, 28, 28)
    assert torch.equal(loaded(x), trained["model"].eval()(x))


def test_activation_flag_is_refused_for_other_models(tmp_path):
    with pytest.raises(SystemExit):
        adversarial.main(["--dataset", "mnist", "--model", "lenet5", "--activation", "brelu", "--recipe", "standard",
                          "--epochs", "1", "--out", str(tmp_path / "m")])


# ----------------------------------------------------------------------------- Deep Defense's networks

#: (class, --model name, channels, (H, W), feature_dim)
DD_NETS = [(PaperMLP, "mlp_mnist", 1, (28, 28), 150), (PaperLeNet, "lenet_mnist", 1, (28, 28), 500),
           (PaperConvNet, "convnet_cifar10", 3, (32, 32), 64)]


@pytest.mark.parametrize("cls, name, c, size, dim", DD_NETS)
def test_dd_smoke_shapes_and_batch_consistency(cls, name, c, size, dim):
    torch.manual_seed(0)
    net = cls()
    assert net.feature_dim == dim and net.pixel_input and (net.in_channels, net.image_size) == (c, size)
    for b in (0, 1, 3):
        x = torch.rand(b, c, *size)
        assert net(x).shape == (b, 10) and net.features(x).shape == (b, dim)
    x = torch.rand(3, c, *size)
    whole = net(x)
    for i in range(3):      # another batch size may take another kernel path: float32 rounding, not a bug
        torch.testing.assert_close(whole[i:i + 1], net(x[i:i + 1]), rtol=1e-5, atol=1e-6)


def test_dd_parameter_counts():
    """Per layer: FC n -> m has m (n + 1) parameters, conv k x k from c_in to c_out c_out (c_in k^2 + 1)."""
    fc = lambda n, m: m * (n + 1)                                   # noqa: E731
    conv = lambda c_in, c_out, k: c_out * (c_in * k * k + 1)       # noqa: E731
    count = lambda net: sum(p.numel() for p in net.parameters())   # noqa: E731
    assert count(PaperMLP()) == fc(784, 500) + fc(500, 150) + fc(150, 10) == 469_160
    # 28 -> conv 24 -> pool 12 -> conv 8 -> pool 4: 50 * 4 * 4 = 800 features into FC-500 (Caffe's LeNet)
    assert count(PaperLeNet()) == conv(1, 20, 5) + conv(20, 50, 5) + fc(800, 500) + fc(500, 10) == 431_080
    assert count(PaperConvNet()) == (conv(3, 32, 5) + conv(32, 32, 5) + conv(32, 64, 5) + conv(64, 64, 4)
                                     + conv(64, 10, 1)) == 145_578
    assert count(PaperMLP(image_size=(37, 31), num_classes=4)) == fc(37 * 31, 500) + fc(500, 150) + fc(150, 4)


def test_dd_lenet_and_convnet_are_the_written_out_layers():
    """The table's order: LeNet has no activation before FC-500; ConvNet pools before its first ReLU."""
    torch.manual_seed(0)
    lenet, x = PaperLeNet(), torch.rand(2, 1, 28, 28)
    h = F.max_pool2d(F.conv2d(x, lenet.conv1.weight, lenet.conv1.bias), 2, stride=2)
    h = F.max_pool2d(F.conv2d(h, lenet.conv2.weight, lenet.conv2.bias), 2, stride=2)
    assert h.shape == (2, 50, 4, 4)
    h = F.relu(F.linear(h.flatten(1), lenet.fc1.weight, lenet.fc1.bias))
    torch.testing.assert_close(lenet(x), F.linear(h, lenet.fc2.weight, lenet.fc2.bias))
    net, x = PaperConvNet(), torch.rand(2, 3, 32, 32)
    h = F.relu(F.max_pool2d(F.conv2d(x, net.conv1.weight, net.conv1.bias, padding=2), 2))
    h = F.avg_pool2d(F.relu(F.conv2d(h, net.conv2.weight, net.conv2.bias, padding=2)), 2)
    h = F.avg_pool2d(F.relu(F.conv2d(h, net.conv3.weight, net.conv3.bias, padding=2)), 2)
    assert h.shape == (2, 64, 4, 4)
    h = F.relu(F.conv2d(h, net.conv4.weight, net.conv4.bias))
    assert h.shape == (2, 64, 1, 1)
    torch.testing.assert_close(net(x), F.conv2d(h, net.conv5.weight, net.conv5.bias).flatten(1))


@pytest.mark.parametrize("cls, name, c, size, dim", DD_NETS)
def test_dd_every_relu_is_its_own_module(cls, name, c, size, dim):
    """The table's ReLUs, one nn.ReLU each (retrofit and hooks find them); a hook sees each one fire once."""
    net = cls()
    acts = _acts(net)
    assert len(acts) == {PaperMLP: 2, PaperLeNet: 1, PaperConvNet: 4}[cls]
    assert all(type(a) is torch.nn.ReLU for a in acts)
    seen = []
    for a in acts:
        a.register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    net(torch.rand(2, c, *size))
    assert seen == [2] * len(acts)


def test_dd_odd_sizes_and_bad_arguments():
    lenet = PaperLeNet(image_size=(37, 31))             # (37 - 4) // 2 = 16 -> 12 // 2 = 6; (31 - 4) // 2 = 13 -> 4
    assert lenet.fc1.in_features == 50 * 6 * 4 and lenet(torch.rand(2, 1, 37, 31)).shape == (2, 10)
    assert PaperLeNet(image_size=16)(torch.rand(1, 1, 16, 16)).shape == (1, 10)     # 16 -> 12 -> 6 -> 2 -> 1
    with pytest.raises(ShapeError, match="at least 16x16"):
        PaperLeNet(image_size=(28, 15))                                                # 15 -> 11 -> 5 -> 1 -> 0
    assert PaperConvNet(image_size=(39, 33))(torch.rand(2, 3, 39, 33)).shape == (2, 10)
    for bad in (31, 40, (32, 28)):
        with pytest.raises(ShapeError, match="32..39"):
            PaperConvNet(image_size=bad)
    with pytest.raises(RangeError):
        PaperMLP(num_classes=0)
    with pytest.raises(RangeError):
        PaperConvNet(in_channels=0)


@pytest.mark.parametrize("cls, name, c, size, dim", DD_NETS)
def test_dd_build_network_and_the_trainers_model_names(cls, name, c, size, dim):
    arch, dataset = adversarial.MODELS[name]
    assert dataset == ("cifar10" if c == 3 else "mnist") and "activation" not in arch
    a, b = build_network(arch), build_network(json.loads(json.dumps(arch)))
    assert type(a) is cls and (a.in_channels, a.image_size) == (c, size)
    b.load_state_dict(a.state_dict())
    x = torch.rand(2, c, *size)
    torch.testing.assert_close(a(x), b(x))   # same weights: equal up to float32 rounding


@pytest.mark.parametrize("cls, name, c, size, dim", DD_NETS)
def test_dd_unrolled_deepfool_runs_through_them(cls, name, c, size, dim):
    """The unrolled DeepFool's forward pass is the library's deepfool on these networks, and the penalty
    reaches every parameter (float64: the two ways of forming w_k differ only by rounding)."""
    torch.manual_seed(0)
    net = cls().double()
    x = 0.2 + 0.6 * torch.rand(3, c, *size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        y = net(x).argmax(1)
    y[1] = (y[1] + 1) % 10                               # one misclassified image
    out = deepfool_unrolled(net, x, y, iters=2, num_classes=4)
    torch.testing.assert_close(out.x_adv.detach(), deepfool(net, x, y, max_iter=2, num_classes=4), rtol=0, atol=1e-10)
    assert out.correct.tolist() == [True, False, True] and float(out.delta[0].detach().norm()) > 0
    loss, stats = DeepDefense(iters=2, num_classes=4)(net, x, y, generator=None)
    loss.backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in net.parameters())
    assert stats["penalty"] > 0 and stats["rho"] > 0


def test_dd_reference_then_fine_tune_from_an_artifact_path(data_dir, tmp_path):
    """A standard reference of the MLP, then a deep_defense fine-tune given --init-from <path> and --keep last."""
    common = ["--data-dir", str(data_dir), "--dataset", "mnist", "--model", "mlp_mnist", "--epochs", "1",
              "--train-count", "200", "--val-count", "32", "--test-count", "32", "--batch-size", "100", "--no-progress"]
    ref = tmp_path / "ref" / "mlp_mnist"
    assert adversarial.main([*common, "--recipe", "standard", "--out", str(ref),
                             "--checkpoint", str(tmp_path / "a.pt")]) == 0
    out = tmp_path / "dd" / "mlp_mnist_dd"
    assert adversarial.main([*common, "--recipe", "deep_defense", "--dd-iters", "2", "--lr", "5e-4",
                             "--schedule", "cosine", "--keep", "last", "--init-from", str(ref) + ".json",
                             "--out", str(out), "--checkpoint", str(tmp_path / "b.pt")]) == 0
    raw_ref = json.loads(ref.with_suffix(".json").read_text())
    raw = json.loads(out.with_suffix(".json").read_text())
    assert raw["arch"]["type"] == "PaperMLP" and raw["mean"] == [0.0] and raw["std"] == [1.0]
    assert raw["training"]["init_from"]["sha256"] == raw_ref["sha256"]
    assert raw["training"]["init_from"]["recipe"]["name"] == "standard"
    assert raw["recipe"]["name"] == "deep_defense" and raw["training"]["kept_epoch"] == 1
    # a fine-tune: moved from the reference, but not far (5e-4 for two steps)
    a = load_trained("mlp_mnist", weights_dir=ref.parent).model.fc1.weight
    b = load_trained("mlp_mnist_dd", weights_dir=out.parent).model.fc1.weight
    assert 0 < float((a - b).detach().abs().max()) < 0.05
