"""The WNLL training recipe (on synthetic features) and the shipped WNLL heads (on real images)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from purify.training import wnll as training
from purify.wnll import WNLLHead, make_buffer

WEIGHTS = Path(training.__file__).resolve().parents[1] / "weights"


def _blobs(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    centers = 2.0 * torch.eye(4, 8)
    return centers[labels] + 0.6 * torch.randn(n, 8, generator=g), labels


def test_train_buffer_learns_and_records_history():
    x, y = _blobs(800, 0)
    vx, vy = _blobs(200, 1)
    buffer, linear, history = training.train_buffer(x, y, vx, vy, dim=16, epochs=4, batch_size=64, wnll_batch=200,
                                                    wnll_templates=40, lr=0.05, seed=0, progress=False)
    assert [h["phase"] for h in history] == ["linear", "wnll", "linear", "wnll"]
    assert history[-1]["val_linear"] > 0.9 and history[-1]["val_wnll_500"] > 0.9, history
    assert isinstance(buffer[0], torch.nn.Linear) and linear.out_features == 4


def test_wnll_phase_trains_the_buffer_not_the_linear_branch():
    x, y = _blobs(400, 2)
    torch.manual_seed(0)                   # train_buffer's own seeding: the buffer first, then the linear branch
    buffer0, linear0 = make_buffer(8, 8), torch.nn.Linear(8, 4)
    buffer, linear, _ = training.train_buffer(x, y, x[:100], y[:100], dim=8, epochs=1, batch_size=64, wnll_batch=200,
                                              wnll_templates=40, lr=0.1, seed=0, schedule=("wnll",), progress=False)
    assert torch.equal(linear.weight, linear0.weight) and torch.equal(linear.bias, linear0.bias)
    assert not torch.equal(buffer[0].weight, buffer0[0].weight)


def test_build_head_balanced_and_saved(tmp_path):
    x, y = _blobs(400, 3)
    head = training.build_head(make_buffer(8, 6), x, y, per_class=5, seed=0, classes=["a", "b", "c", "d"],
                               meta={"backbone": "toy"}, surrogate=torch.nn.Linear(6, 4))
    assert torch.bincount(head.template_labels).tolist() == [5, 5, 5, 5]
    back = WNLLHead.load(head.save(tmp_path / "h"))
    torch.testing.assert_close(back.surrogate_logits(x[:3]), head.surrogate_logits(x[:3]))
    assert back.template_meta["class_names"] == ["a", "b", "c", "d"]


def test_cached_features_reuses_only_a_cache_of_the_same_weights(tmp_path, monkeypatch):
    from purify.models import get_model_config

    sha = get_model_config("resnet20").sha256
    path = tmp_path / "resnet20_cifar10_val.pt"
    torch.save({"features": torch.ones(3, 64), "labels": torch.arange(3), "weights_sha256": sha}, path)
    f, y = training.cached_features("resnet20", "val", data_dir=None, cache_dir=tmp_path)
    assert torch.equal(f, torch.ones(3, 64)) and y.tolist() == [0, 1, 2]

    class Recomputed(Exception):
        pass

    def boom(*a, **k):
        raise Recomputed

    monkeypatch.setattr("purify.models.create_model", boom)
    torch.save({"features": torch.ones(3, 64), "labels": torch.arange(3), "weights_sha256": "0" * 64}, path)
    with pytest.raises(Recomputed):
        training.cached_features("resnet20", "val", data_dir=None, cache_dir=tmp_path)


# min_acc on 64 test images: ~3 standard deviations (0.12 at n = 64) below each head's full-test-set accuracy,
# 92-93 % for those trained on original images, 87.2 % for the one that saw TVM images only.
@pytest.mark.parametrize("name, backbone, min_acc", [("resnet56_wnll", "resnet56", 0.85),
                                                     ("resnet56_wnll_plain", "resnet56", 0.85),
                                                     ("resnet56_wnll_e2e_head", "resnet56_wnll_e2e", 0.85),
                                                     ("resnet56_wnll_e2e_tvm_aug_head", "resnet56_wnll_e2e_tvm_aug", 0.85),
                                                     ("resnet56_wnll_e2e_tvm_data_head", "resnet56_wnll_e2e_tvm_data",
                                                      0.75)])
def test_shipped_head_loads_and_classifies_real_images(name, backbone, min_acc, data_dir):
    from purify.data import load_dataset
    from purify.models import create_model
    from purify.pipeline import DefendedClassifier

    cfg = json.loads((WEIGHTS / f"{name}.json").read_text())
    assert cfg["backbone"] == backbone and cfg["templates"]["per_class"] == 50
    head = WNLLHead.load(name)
    assert len(head.template_labels) == 500 and head.mode == "inductive"
    assert (head.buffer is None) == (name != "resnet56_wnll")
    model = create_model(backbone, pretrained=True, data_dir=data_dir)
    x, y = load_dataset("cifar10", "test", data_dir=data_dir).tensors(slice(0, 64))
    with torch.no_grad():
        wnll = DefendedClassifier(None, model, head=head)(x).argmax(1)
        softmax = model(x).argmax(1)
    assert (wnll == y).float().mean() >= min_acc
    assert (wnll == softmax).float().mean() >= 0.9


# ----------------------------------------------------------------------------- end-to-end WNLL (whole network)

class _BlobNet(torch.nn.Module):
    """A two-layer network with features() and a linear classifier, as the recipe expects of a ResNet."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 6))
        self.linear = torch.nn.Linear(6, 4)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.linear(self.features(x))


def test_e2e_wnll_step_reaches_every_layer_but_the_linear_branch_with_the_straight_through_gradient():
    from purify.training.wnll import WNLLAlternating, balanced_split
    from purify.wnll import TemplateSet, wnll_interpolate

    x, y = _blobs(80, 3)
    net, recipe = _BlobNet(), WNLLAlternating(templates_per_class=5, num_classes=4)
    recipe.start_epoch(1)
    assert recipe.phase == "wnll"
    loss, stats = recipe(net, x, y, generator=torch.Generator().manual_seed(7))
    loss.backward()
    assert net.linear.weight.grad is None                         # the linear branch is held fixed
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.body.parameters())
    # the gradient at the features is (u - onehot(y)) / Q through the linear weights, on the queries only
    h = net.features(x).detach().requires_grad_(True)
    t_idx, q_idx = balanced_split(y, 5, 4, torch.Generator().manual_seed(7))
    u = wnll_interpolate(h[q_idx].detach(), TemplateSet(h[t_idx].detach(), y[t_idx]), mode="transductive")
    want = torch.zeros_like(h)
    want[q_idx] = (u - torch.nn.functional.one_hot(y[q_idx], 4)) @ net.linear.weight.detach() / len(q_idx)
    loss2, _ = recipe(net, x, y, generator=torch.Generator().manual_seed(7))   # same split from the same seed
    (got,) = torch.autograd.grad(training.wnll_straight_through(h, y, net.linear, per_class=5, num_classes=4,
                                                                generator=torch.Generator().manual_seed(7))[0], h)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    # the loss's value is WNLL's cross-entropy on the queries
    torch.testing.assert_close(loss2.detach(), torch.nn.functional.nll_loss(u.clamp_min(1e-12).log(), y[q_idx]))
    assert 0.0 <= stats["acc"] <= 100.0


def test_e2e_wnll_alternates_per_epoch_in_the_trainer_and_learns(tmp_path):
    from purify.training.trainer import TrainConfig, fit
    from purify.training.wnll import WNLLAlternating

    x, y = _blobs(400, 4)
    vx, vy = _blobs(200, 5)
    seen = []

    class Spy(WNLLAlternating):
        def __call__(self, model, xb, yb, *, generator):
            seen.append(self.phase)
            return super().__call__(model, xb, yb, generator=generator)

    cfg = TrainConfig(epochs=4, batch_size=100, lr=0.05, augment="none", val_count=200, schedule="cosine")
    net = _BlobNet()
    before = WNLLAlternating(num_classes=4).validate(net, vx, vy, seed=0)["wnll"]
    result = fit(net, Spy(templates_per_class=5, num_classes=4), (x, y), (vx, vy), config=cfg, progress=False,
                 checkpoint=tmp_path / "ck.pt")
    assert seen == ["linear"] * 4 + ["wnll"] * 4 + ["linear"] * 4 + ["wnll"] * 4
    assert all("val_wnll" in r for r in result.history)
    assert result.best["val_wnll"] == max(r["val_wnll"] for r in result.history)    # selected on WNLL accuracy
    assert result.best["val_wnll"] > max(before, 90.0), (before, result.history)
    # a resumed run starts its epoch in the right phase (the trainer tells the recipe after a resume too)
    seen.clear()
    net2 = _BlobNet()
    fit(net2, Spy(templates_per_class=5, num_classes=4), (x, y), (vx, vy), config=cfg, progress=False,
        checkpoint=tmp_path / "ck2.pt", stop_after_steps=6)
    seen.clear()
    fit(net2, Spy(templates_per_class=5, num_classes=4), (x, y), (vx, vy), config=cfg, progress=False,
        checkpoint=tmp_path / "ck2.pt", resume=True)
    assert seen == ["wnll"] * 2 + ["linear"] * 4 + ["wnll"] * 4


def test_e2e_wnll_recipe_checks_its_settings_and_the_model():
    from purify.errors import RangeError, UnknownNameError
    from purify.training.wnll import WNLLAlternating
    from purify.wnll import WNLLError

    with pytest.raises(UnknownNameError):
        WNLLAlternating(schedule=("linear", "softmax"))
    with pytest.raises(RangeError):
        WNLLAlternating(schedule=())
    with pytest.raises(RangeError):
        WNLLAlternating(templates_per_class=0)
    recipe = WNLLAlternating(num_classes=4)
    recipe.start_epoch(1)
    body = torch.nn.Sequential(torch.nn.Linear(8, 4))
    body.features = lambda v: v                               # features but no linear branch
    with pytest.raises(WNLLError, match="no nn.Linear 'linear' or 'fc'"):
        recipe(body, *_blobs(40, 0), generator=torch.Generator().manual_seed(0))
