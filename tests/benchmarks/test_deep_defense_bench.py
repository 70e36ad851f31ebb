"""``python -m benchmarks.deep_defense``: ε_ref's bisection, the FGS direction, and a tiny run that builds the page."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks.deep_defense import METHODS, eps_ref_bisect, fgs_direction, main
from purify._artifacts import save_artifact
from purify.attacks import fgsm
from purify.models.trained import ARTIFACT_FORMAT, build_network
from purify.training.adversarial import MODELS


def test_eps_ref_is_the_smallest_eps_at_which_half_the_images_are_misclassified():
    """Ten images, each misclassified from its own threshold on: 50 % is reached at the fifth smallest."""
    thresholds = torch.tensor([0.71, 0.05, 0.33, 0.9, 0.12, 0.48, 0.27, 0.6, 0.05, 0.99])
    calls = []

    def error_at(eps: float) -> float:
        calls.append(eps)
        return float((thresholds <= eps).float().mean())

    got = eps_ref_bisect(error_at, tol=1e-6)
    assert 0.33 <= got <= 0.33 + 1e-6                 # sorted: 0.05, 0.05, 0.12, 0.27, 0.33 -> 5 of 10 at 0.33
    assert error_at(got) >= 0.5 and error_at(got - 2e-6) < 0.5
    assert len(calls) < 30                            # bisection, not a scan: log2(1 / 1e-6) ≈ 20 steps
    assert eps_ref_bisect(error_at, target=0.3, tol=1e-6) == pytest.approx(0.12, abs=1e-6)
    assert eps_ref_bisect(lambda e: 0.6) == 0.0        # already misclassified at ε = 0
    assert math.isnan(eps_ref_bisect(lambda e: 0.4))   # never reaches 50 % up to hi


def test_fgs_direction_gives_the_librarys_fgsm_at_every_eps():
    torch.manual_seed(0)
    net = build_network(MODELS["mlp_mnist"][0]).double().eval()
    x = torch.rand(5, 1, 28, 28, dtype=torch.float64)
    y = torch.tensor([0, 3, 5, 7, 9])
    d = fgs_direction(net, x, y)
    for eps in (0.0, 0.05, 0.3):
        torch.testing.assert_close((x + eps * d).clamp(0, 1), fgsm(net, x, y, eps=eps), rtol=0, atol=0)


def _artifact(folder, name: str) -> None:
    """An untrained MLP saved as the trainer saves it (pixel input: mean 0, std 1)."""
    arch = MODELS["mlp_mnist"][0]
    state = {k: v.contiguous() for k, v in build_network(arch).state_dict().items()}
    save_artifact(folder / name, state, {"format": ARTIFACT_FORMAT, "arch": arch, "input_size": [1, 28, 28],
                                         "mean": [0.0], "std": [1.0], "classes": [str(i) for i in range(10)],
                                         "dataset": "mnist", "test": {"clean": 0.0}, "command": f"made for {name}"})


def test_tiny_run_builds_the_page_with_pending_rows(tmp_path, data_dir):
    torch.manual_seed(0)
    weights = tmp_path / "weights"
    for name in ("mlp_mnist", "mlp_mnist_dd"):
        _artifact(weights, name)
    out = tmp_path / "deep_defense"
    args = ["--nets", "mlp,lenet,convnet", "--count", "6", "--honest-count", "4", "--cw-steps", "2", "--cw-search", "1",
            "--weights-dir", str(weights), "--data-dir", str(data_dir), "--threads", "1", "--out", str(out)]
    assert main(args) == 0
    ref, dd = (json.loads((out / f"{n}.json").read_text()) for n in ("mlp_mnist", "mlp_mnist_dd"))
    assert ref["count"] == 6 and ref["honest"]["count"] == 4 and ref["method"] == "Reference"
    assert dd["method"] == "Deep Defense" and 0.0 <= dd["eps_ref"] <= 1.0
    for r in (ref, dd):
        assert r["fgs_ref"]["eps_ref"] == dd["eps_ref"] and len(r["fgs_ref"]["accuracy"]) == 3
        if dd["eps_ref"] == 0.0:                       # an untrained net misses half the images unattacked
            assert r["fgs_ref"]["accuracy"] == [r["clean"]] * 3
        h = r["honest"]
        chain = [h["clean"], h["apgd_ce"], h["apgd_t"], h["square"]]
        assert chain == sorted(chain, reverse=True) and h["worst"]["accuracy"] == chain[-1]
        assert r["deepfool"]["fooled"] > 0 and r["deepfool"]["rho2"] > 0 and r["deepfool"]["l2"] > 0
        assert r["artifact"]["training_command"].startswith("made for")
    assert json.loads((out / "lenet5_mnist_at.json").read_text())["honest"]["count"] == 4   # the shipped PGD-AT one
    from purify._artifacts import SHIPPED_DIR
    cifar_shipped = sum((SHIPPED_DIR / f"convnet_cifar10{sfx}.json").is_file() for sfx, _ in METHODS)
    # the CIFAR-10 reference is evaluated exactly when a ConvNet model is found (in the registry: shipped ones)
    assert (out / "resnet20_cifar10_at.json").exists() == (cifar_shipped > 0)
    page = (tmp_path / "deep_defense.md").read_text()
    for heading in ("## Table 1", "## Table 2 (supplement)", "## The honest columns", "## Reading", "## Commands"):
        assert heading in page
    for sfx, _ in METHODS:                              # every row is there: results or pending
        assert f"`lenet_mnist{sfx}`" in page and f"`convnet_cifar10{sfx}`" in page and f"`mlp_mnist{sfx}`" in page
    shipped = sum((SHIPPED_DIR / f"lenet_mnist{sfx}.json").is_file() for sfx, _ in METHODS)   # found in the registry
    assert page.count(f"pending: not in `{weights}` nor the registry (runs/issue17_mnist.sh") == 3 * (
        3 + len(METHODS) - shipped)
    assert page.count("nor the registry (runs/issue17_cifar10.sh makes it)") == 3 * (len(METHODS) - cifar_shipped)
    assert "98.31 / 0.111 / 72.76 / 29.08 / 3.31" in page     # the paper's MLP reference beside ours
    mtime = (out / "mlp_mnist.json").stat().st_mtime_ns
    assert main(args) == 0                                  # fresh results are not recomputed
    assert (out / "mlp_mnist.json").stat().st_mtime_ns == mtime
    assert main(["--report-only", "--out", str(out), "--weights-dir", str(weights)]) == 0
    assert main(["--nets", "nope", "--out", str(out)]) == 2
