"""``python -m benchmarks.brelu_gda`` on untrained networks and a handful of MNIST images: parts, pending rows, the page."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import brelu_gda as bg
from benchmarks.brelu_gda_page import PAPER_TABLE1, PAPER_TABLE4, build_page
from purify._artifacts import save_artifact
from purify.models.paper_nets import PaperCNN, PaperResNet

TRAINED = ("cnn_mnist", "cnn_mnist_brelu", "resnet_mnist", "resnet_mnist_brelu", "cnn_mnist_gda")   # the rest pending


def _artifact(folder, name: str) -> None:
    torch.manual_seed(len(name))
    cls = PaperResNet if name.startswith("resnet") else PaperCNN
    activation = "brelu" if "brelu" in name else "relu"
    net = cls(in_channels=1, image_size=28, activation=activation)
    arch = {"type": cls.__name__, "in_channels": 1, "image_size": [28, 28], "num_classes": 10, "activation": activation}
    save_artifact(folder / name, net.state_dict(), {
        "format": "purify.trained_classifier", "name": name, "arch": arch, "dataset": "mnist", "input_size": [1, 28, 28],
        "mean": [0.0], "std": [1.0], "classes": [str(k) for k in range(10)], "recipe": {"name": "standard"},
        "test": {"clean": 10.0}})


def test_page_without_results_lists_every_row_as_pending():
    page = build_page({}, "python -m benchmarks.brelu_gda --report-only")
    assert page.count("pending: `cnn_mnist_vat` not trained yet") >= 5      # models, figure 4 panels, honest
    assert "| CNN + ReLU | pending (73.88) | pending (90.16) |" in page
    assert "| GDA + ReLU | pending (98.47) | pending (80.25) |" in page
    assert "## Figure 5 and Table 5: CIFAR-10 (pending)" in page and "--dataset cifar10 --model cnn_cifar10" in page
    assert "## Reading" in page and "- (no results yet)" in page


def test_paper_table1_orientation_matches_the_text():
    # columns are the targets: the CNN columns stay above 90 % off the diagonal, and Table 4's
    # undefended CNN under FGSM (crafted on ResNet + ReLU) is row ResNet + ReLU, column CNN + ReLU
    archs = list(bg.ARCHS)
    for j in (0, 1):
        assert all(PAPER_TABLE1[src][j] > 90 for src in archs if src != archs[j])
    assert PAPER_TABLE1["resnet_mnist"][0] == PAPER_TABLE4["cnn_mnist"][0]


@pytest.mark.slow
def test_small_run_end_to_end(tmp_path, data_dir, monkeypatch, one_thread):
    weights = tmp_path / "weights"
    weights.mkdir()
    for name in TRAINED:
        _artifact(weights, name)
    for d, k, v in ((bg.JSMA, "max_iter", 4), (bg.CW, "steps", 5), (bg.CW, "binary_search_steps", 1),
                    (bg.DEEPFOOL, "max_iter", 5), (bg.PGD, "iters", 3), (bg.WORST, "iters", 3), (bg.WORST, "queries", 10)):
        monkeypatch.setitem(d, k, v)
    out = tmp_path / "brelu_gda"
    args = ["--data-dir", str(data_dir), "--threads", "1", "--weights-dir", str(weights), "--out", str(out), "--count", "6",
            "--honest-count", "4", "--slow-count", "3", "--no-cache", "--models", "cnn_mnist,cnn_mnist_fs,cnn_mnist_gda,"
            "cnn_mnist_brelu,resnet_mnist,resnet_mnist_brelu,cnn_mnist_vat"]
    assert bg.main(args) == 0
    assert not (out / "cnn_mnist_vat.json").exists()
    r = {i: json.loads((out / f"{i}.json").read_text()) for i in ("cnn_mnist", "cnn_mnist_fs", "cnn_mnist_gda")}
    assert set(r["cnn_mnist"]["parts"]) == {"whitebox", "minimal", "sensitivity", "blackbox", "honest"}
    assert set(json.loads((out / "resnet_mnist.json").read_text())["parts"]) == {"whitebox"}

    from purify.attacks import fgsm
    from purify.data import load_dataset
    from purify.metrics import loss_sensitivity
    from purify.models.trained import load_trained

    x, y = load_dataset("mnist", "test", data_dir=data_dir).tensors(slice(0, 6))
    cnn, resnet = (load_trained(n, weights_dir=weights) for n in ("cnn_mnist", "resnet_mnist"))
    t1 = json.loads((out / "table1.json").read_text())["parts"]["table1"]["result"]
    with torch.no_grad():
        direct = 100 * float((resnet(fgsm(cnn, x, y, eps=0.1)).argmax(1) == y).double().mean())
        transfer = 100 * float((cnn(fgsm(resnet, x, y, eps=0.1)).argmax(1) == y).double().mean())
    assert t1["cnn_mnist"]["resnet_mnist"] == pytest.approx(direct)
    assert r["cnn_mnist"]["parts"]["blackbox"]["result"]["table4"]["fgsm"] == pytest.approx(transfer)
    assert t1["resnet_mnist"]["cnn_mnist"] == pytest.approx(transfer)     # Table 1 and Table 4 share that cell
    gda = load_trained("cnn_mnist_gda", weights_dir=weights)
    assert r["cnn_mnist_gda"]["parts"]["sensitivity"]["result"]["sensitivity"] == pytest.approx(
        float(loss_sensitivity(gda, x, y)), rel=1e-5)
    for i in r:
        h = r[i]["parts"]["honest"]["result"]
        steps = ("clean", "fgsm", "rand_fgsm", "pgd", "apgd_ce", "apgd_t", "apgd_ce_smooth", "square")
        assert ("apgd_ce_smooth" in h) == (i == "cnn_mnist_fs")     # the smooth BPDA only where a squeezer is
        chain = [h[k] for k in steps if k in h]
        assert chain == sorted(chain, reverse=True) and h["worst"]["accuracy"] == pytest.approx(chain[-1])
        assert r[i]["parts"]["blackbox"]["slow_count"] == 3
    assert r["cnn_mnist_fs"]["bits"] == 1 and r["cnn_mnist_fs"]["sha256"] == r["cnn_mnist"]["sha256"]

    page = (tmp_path / "brelu_gda.md").read_text()
    assert "pending: `cnn_mnist_vat` not trained yet" in page and "pending: `cnn_mnist_ls` not trained yet" in page
    assert f"| CNN + ReLU | **{t1['cnn_mnist']['cnn_mnist']:.2f}** (73.88) |" in page
    assert "## Reading" in page and "- Feature squeezing: clean" in page
    assert (out / "figure3.png").stat().st_size > 0 and (out / "figure4.png").stat().st_size > 0

    before = {p.name: p.read_text() for p in out.glob("*.json")}
    monkeypatch.setattr(bg, "part_whitebox", lambda *a: pytest.fail("a finished part was recomputed"))
    assert bg.main(args) == 0                                   # nothing recomputed, nothing rewritten
    assert {p.name: p.read_text() for p in out.glob("*.json")} == before
    assert bg.main(["--models", "nope", "--out", str(out)]) == 2
