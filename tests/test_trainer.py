"""The one training loop (purify.training.trainer), its recipes, the LeNet-5 and the shipped robust references."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from purify._artifacts import SHIPPED_DIR
from purify.errors import ChecksumError, PurifyError, RangeError, UnknownNameError
from purify.models import create_model, get_model_config, list_models
from purify.models.lenet import LeNet5, lenet5_mnist
from purify.models.trained import load_trained
from purify.training import adversarial
from purify.training.recipes import FGSMRS, PGDAT, Standard, make_recipe, parse_fraction
from purify.training.trainer import TrainConfig, catastrophic_overfitting, crop_flip, evaluate, fit, lr_at


def _tiny_net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(16, 3))


def _tiny_data(n: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = (torch.rand(n, 1, 6, 5, generator=g) * 0.5 + 0.25 * y[:, None, None, None]).clamp(0, 1)   # learnable
    return x, y


# ----------------------------------------------------------------------------- recipes

def test_fgsm_rs_perturbation_within_eps_and_random():
    net, (x, y) = _tiny_net(), _tiny_data(8)
    recipe = FGSMRS(eps=0.1)
    assert recipe.alpha == pytest.approx(0.125)
    a = recipe.perturb(net, x, y, generator=torch.Generator().manual_seed(0))
    b = recipe.perturb(net, x, y, generator=torch.Generator().manual_seed(1))
    assert (a - x).abs().max() <= 0.1 + 1e-6 and a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a, b)           # the random start matters
    # alpha > eps: after the step most coordinates sit on the boundary of the ball (where not clipped to [0, 1])
    inside = (x > 0.1) & (x < 0.9)
    assert ((a - x).abs()[inside] > 0.1 - 1e-6).float().mean() > 0.5


def test_pgd_at_raises_the_loss_and_trains_through_it():
    net, (x, y) = _tiny_net(), _tiny_data(16)
    net.eval()
    recipe = PGDAT(eps=0.2, step=0.05, iters=5)
    adv = recipe.perturb(net, x, y, generator=torch.Generator().manual_seed(0))
    assert (adv - x).abs().max() <= 0.2 + 1e-6
    assert F.cross_entropy(net(adv), y) > F.cross_entropy(net(x), y) + 1e-3
    loss, stats = recipe(net, x, y, generator=torch.Generator().manual_seed(0))
    assert loss.requires_grad and stats["loss"] == pytest.approx(float(F.cross_entropy(net(adv), y).detach()), rel=1e-5)
    assert all(p.grad is None for p in net.parameters())      # the attack leaves the parameters' grads alone


def test_standard_is_cross_entropy_and_make_recipe():
    net, (x, y) = _tiny_net(), _tiny_data(8)
    loss, stats = Standard()(net, x, y, generator=None)
    assert float(loss.detach()) == pytest.approx(float(F.cross_entropy(net(x), y).detach()))
    assert make_recipe("pgd_at", eps=0.3, iters=40, step=0.01) == PGDAT(eps=0.3, step=0.01, iters=40)
    assert make_recipe("fgsm_rs", eps=8 / 255).alpha == pytest.approx(10 / 255)
    with pytest.raises(UnknownNameError, match="fgsm_rs"):
        make_recipe("fgsm", eps=0.1)
    with pytest.raises(RangeError):
        make_recipe("pgd_at", eps=0.0)
    assert parse_fraction("8/255") == 8 / 255 and parse_fraction("0.3") == 0.3
    with pytest.raises(ValueError):
        parse_fraction("8/0")


# ----------------------------------------------------------------------------- schedule, augmentation, detection

def test_lr_schedules_shape():
    total = 100
    cyc = [lr_at(s, total, lr=0.2, schedule="cyclic", peak=0.4) for s in range(total)]
    top = int(np.argmax(cyc))
    assert 38 <= top <= 40 and max(cyc) <= 0.2 and cyc[0] < 0.01 and cyc[-1] < 0.01
    assert all(a < b for a, b in zip(cyc[:top], cyc[1:top + 1]))                    # linear up
    assert all(a > b for a, b in zip(cyc[top:-1], cyc[top + 1:]))                   # linear down
    assert np.allclose(np.diff(cyc[:top]), 0.2 / 40 / total * 100, rtol=1e-6)
    pw = [lr_at(s, total, lr=0.1, schedule="piecewise") for s in range(total)]
    assert pw[0] == pw[49] == 0.1 and pw[50] == pytest.approx(0.01) and pw[99] == pytest.approx(0.001)
    cos = [lr_at(s, total, lr=1.0, schedule="cosine") for s in range(total)]
    assert all(a > b for a, b in zip(cos, cos[1:])) and cos[49] == pytest.approx(0.5 + 0.5 * math.cos(math.pi * 0.495))
    with pytest.raises(UnknownNameError):
        lr_at(0, 10, lr=0.1, schedule="step")


def test_crop_flip_is_a_shifted_window_of_the_zero_padded_image():
    x = torch.rand(6, 3, 8, 7)
    out = crop_flip(x, torch.Generator().manual_seed(3))
    padded = F.pad(x, (4, 4, 4, 4))
    for i in range(6):
        windows = [padded[i, :, dy:dy + 8, dx:dx + 7] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2)) for w in windows)


def test_catastrophic_overfitting_detection_on_a_synthetic_curve():
    # Wong et al.'s picture: PGD accuracy climbs, then collapses within an epoch
    curve = [18.0, 29.0, 35.5, 38.0, 37.1, 0.4, 0.0]
    assert catastrophic_overfitting(curve, threshold=20.0) == 5
    assert catastrophic_overfitting(curve[:5], threshold=20.0) is None     # noise below the threshold
    assert catastrophic_overfitting([40.0, 25.0], threshold=10.0) == 1
    assert catastrophic_overfitting([], threshold=10.0) is None


# ----------------------------------------------------------------------------- the loop

def _cfg(**kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=16, lr=0.1, augment="none", val_count=12, val_eps=0.1, val_step=0.05,
                val_iters=3, checkpoint_every_s=0.0, seed=5, co_threshold=100.0)
    return TrainConfig(**{**base, **kw})


def test_resume_follows_the_same_path_bit_for_bit(tmp_path):
    train, val = _tiny_data(40), _tiny_data(12, seed=1)
    recipe = FGSMRS(eps=0.1)
    straight = _tiny_net()
    r1 = fit(straight, recipe, train, val, config=_cfg(), progress=False)
    net = _tiny_net()
    ck = tmp_path / "run.pt"
    # interrupted mid-epoch 1 (step 2 of 3), then at an epoch boundary (step 6), then resumed to the end
    assert fit(net, recipe, train, val, config=_cfg(), checkpoint=ck, stop_after_steps=2, progress=False).interrupted
    resumed = _tiny_net(seed=99)             # another process: fresh weights, everything comes from the checkpoint
    fit(resumed, recipe, train, val, config=_cfg(), checkpoint=ck, resume=True, stop_after_steps=6, progress=False)
    last = _tiny_net(seed=7)
    r2 = fit(last, recipe, train, val, config=_cfg(), checkpoint=ck, resume=True, progress=False)
    assert [r["val_pgd"] for r in r1.history] == [r["val_pgd"] for r in r2.history]
    assert [r["train_loss"] for r in r1.history] == [r["train_loss"] for r in r2.history]
    assert r1.best_epoch == r2.best_epoch
    for (k, a), b in zip(straight.state_dict().items(), last.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(PurifyError, match="other settings"):
        fit(_tiny_net(), recipe, train, val, config=_cfg(lr=0.2), checkpoint=ck, resume=True, progress=False)


def test_catastrophic_overfitting_stops_and_keeps_the_best_epoch(monkeypatch):
    import purify.training.trainer as trainer

    scores = iter([30.0, 40.0, 5.0, 50.0])
    snapshots = []      # the weights at each epoch's validation

    def fake_evaluate(model, *a, **k):
        snapshots.append({n: v.clone() for n, v in model.state_dict().items()})
        return {"clean": 50.0, "pgd3": next(scores)}

    monkeypatch.setattr(trainer, "evaluate", fake_evaluate)
    net = _tiny_net()
    result = fit(net, FGSMRS(eps=0.1), _tiny_data(32), _tiny_data(12, 1), config=_cfg(epochs=4, co_threshold=20.0),
                 progress=False)
    assert result.stopped == "catastrophic overfitting at epoch 3" and len(result.history) == 3
    assert result.best_epoch == 2 and result.best["val_pgd"] == 40.0
    assert all(torch.equal(v, snapshots[1][k]) for k, v in net.state_dict().items())
    assert not all(torch.equal(v, snapshots[2][k]) for k, v in net.state_dict().items())


def test_training_learns_and_evaluate_counts():
    train, val = _tiny_data(60), _tiny_data(30, seed=1)
    net = _tiny_net()
    before = evaluate(net, *val)["clean"]
    fit(net, Standard(), train, val, config=_cfg(epochs=8, val_eps=0.0, lr=0.2), progress=False)
    after = evaluate(net, *val, eps=0.1, step=0.05, iters=(2,))
    assert after["clean"] > max(before, 60.0) and after["pgd2"] <= after["clean"]


def test_cli_never_trains_on_the_validation_split(monkeypatch, tmp_path):
    """The images fit() trains on are the 'train' split's; none of the 'val' split's indices is among them."""
    import purify.data as data

    n, val_size = 5_200, data.VAL_SIZE
    rng = np.random.default_rng(0)
    x = np.zeros((n, 28, 28, 1), np.uint8)
    x[:, 0, 0, 0], x[:, 0, 1, 0] = np.arange(n) // 256, np.arange(n) % 256      # the index, written in the pixels
    arrays = {"train": (x, rng.integers(0, 10, n)), "test": (x[:50], rng.integers(0, 10, 50))}
    for split, (xs, ys) in arrays.items():
        np.savez(tmp_path / f"mnist_{split}.npz", x=xs[..., 0], y=ys.astype(np.uint8))
    seen = {}

    def spy(model, recipe, train, val, **kw):
        seen["train"], seen["val"] = train[0], val[0]
        raise KeyboardInterrupt

    monkeypatch.setattr(adversarial, "fit", spy)
    with pytest.raises(KeyboardInterrupt):
        adversarial.main(["--data-dir", str(tmp_path), "--dataset", "mnist", "--model", "lenet5", "--recipe",
                          "standard", "--epochs", "1", "--out", str(tmp_path / "m"), "--no-progress"])
    index = lambda t: set((t[:, 0, 0, 0].long() * 256 + t[:, 0, 0, 1].long()).tolist())   # noqa: E731
    assert index(seen["train"]) == set(range(n - val_size))
    assert index(seen["val"]) <= set(range(n - val_size, n)) and index(seen["train"]).isdisjoint(index(seen["val"]))


def test_cli_keep_last_ships_the_last_epoch_and_says_so(tmp_path):
    """--keep last: the artifact holds the weights at the end of the run (the checkpoint's), not the best epoch's."""
    import json
    from safetensors.torch import load_file

    n = 5_400                                   # 400 training images, the last 5,000 are the val split
    rng = np.random.default_rng(1)
    y = rng.integers(0, 10, n)
    x = (rng.random((n, 28, 28)) * 60 + (y * 20)[:, None, None]).astype(np.uint8)   # learnable: brightness
    np.savez(tmp_path / "mnist_train.npz", x=x, y=y.astype(np.uint8))
    np.savez(tmp_path / "mnist_test.npz", x=x[:64], y=y[:64].astype(np.uint8))
    common = ["--data-dir", str(tmp_path), "--dataset", "mnist", "--model", "lenet5", "--recipe", "standard",
              "--epochs", "3", "--val-count", "64", "--test-count", "64", "--no-progress", "--threads", "1"]
    ck = tmp_path / "ck.pt"
    assert adversarial.main([*common, "--out", str(tmp_path / "last"), "--keep", "last", "--checkpoint", str(ck)]) == 0
    meta = json.loads((tmp_path / "last.json").read_text())
    assert meta["training"]["kept_epoch"] == 3 and meta["training"]["selection"].startswith("the last epoch")
    assert "--keep last" in meta["command"]
    last = torch.load(ck, weights_only=True)["model"]
    shipped = load_file(tmp_path / "last.safetensors")
    assert all(torch.equal(shipped[k], last["model." + k]) for k in shipped)     # the same tensors, saved
    # resuming the finished run with --keep best re-does only the artifact, with the best epoch's weights
    assert adversarial.main([*common, "--out", str(tmp_path / "last"), "--checkpoint", str(ck), "--resume"]) == 0
    meta = json.loads((tmp_path / "last.json").read_text())
    assert meta["training"]["kept_epoch"] == meta["training"]["best_epoch"]


# ----------------------------------------------------------------------------- models

def test_lenet5_shapes_and_parameters():
    net = LeNet5()
    assert sum(p.numel() for p in net.parameters()) == 61_706
    model = lenet5_mnist()
    for b in (0, 1, 3):
        x = torch.rand(b, 1, 28, 28)
        assert model(x).shape == (b, 10) and model.features(x).shape == (b, 84)


@pytest.mark.parametrize("name", ["cnn_cifar10_gda", "cnn_cifar10_gda_brelu", "cnn_mnist_gda", "cnn_mnist_gda_brelu",
                                  "convnet_cifar10_dd", "lenet5_mnist", "lenet5_mnist_at",
                                  "lenet5_mnist_fgsm_rs", "lenet_mnist_dd", "mlp_mnist_dd", "resnet20_cifar10_at",
                                  "resnet56_tvm_aug", "resnet56_tvm_data", "resnet56_wnll_e2e",
                                  "resnet56_wnll_e2e_tvm_aug", "resnet56_wnll_e2e_tvm_data"])
def test_registered_reference_loads_and_checks_its_sha256(name, tmp_path):
    if not (SHIPPED_DIR / f"{name}.json").is_file():
        pytest.skip(f"{name} is still being trained (see the README's 'Robust reference models')")
    assert name in list_models()
    model = create_model(name, pretrained=True)
    cfg = get_model_config(name)
    assert model.pretrained_cfg is cfg or model.pretrained_cfg.sha256 == cfg.sha256
    c, h, w = cfg.input_size
    assert model(torch.rand(2, c, h, w)).shape == (2, 10) and not model.training
    raw = cfg.raw
    assert raw["command"].startswith("python -m purify.training.adversarial") and raw["test"]["clean"] > 50
    assert raw["training"]["best_epoch"] in [r["epoch"] for r in raw["training"]["history"]]
    assert (SHIPPED_DIR / f"{name}.log").is_file()
    fresh = create_model(name)
    last = [k for k, v in model.state_dict().items() if v.is_floating_point()][-1]   # the classifier's last tensor
    assert (fresh.state_dict()[last] - model.state_dict()[last]).abs().max() > 1e-3   # trained, not the random init
    for suffix in (".json", ".safetensors"):
        shutil.copy(SHIPPED_DIR / f"{name}{suffix}", tmp_path / f"{name}{suffix}")
    blob = bytearray((tmp_path / f"{name}.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (tmp_path / f"{name}.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ChecksumError, match="sha256 mismatch"):
        load_trained(name, weights_dir=tmp_path)
    assert json.loads((tmp_path / f"{name}.json").read_text())["format"] == "purify.trained_classifier"
