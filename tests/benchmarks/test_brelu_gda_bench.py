"""``python -m benchmarks.brelu_gda`` on untrained networks and a handful of MNIST and CIFAR-10 images: parts,
pending rows, the page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import brelu_gda as bg
from benchmarks.brelu_gda_page import PAPER_TABLE1, PAPER_TABLE4, PAPER_TABLE5, build_page
from purify._artifacts import save_artifact
from purify.models.paper_nets import PaperCNN, PaperResNet

TRAINED = ("cnn_mnist", "cnn_mnist_brelu", "resnet_mnist", "resnet_mnist_brelu", "cnn_mnist_gda")   # the rest pending
TRAINED_CIFAR = ("cnn_cifar10", "cnn_cifar10_gda", "resnet_cifar10")
COMMITTED = Path(bg.__file__).resolve().parent / "results" / "brelu_gda"


def _artifact(folder, name: str, dataset: str = "mnist") -> None:
    torch.manual_seed(len(name))
    cls = PaperResNet if name.startswith("resnet") else PaperCNN
    activation = "brelu" if "brelu" in name else "relu"
    c, size = (3, 32) if dataset == "cifar10" else (1, 28)
    net = cls(in_channels=c, image_size=size, activation=activation)
    arch = {"type": cls.__name__, "in_channels": c, "image_size": [size, size], "num_classes": 10,
            "activation": activation}
    save_artifact(folder / name, net.state_dict(), {
        "format": "purify.trained_classifier", "name": name, "arch": arch, "dataset": dataset,
        "input_size": [c, size, size], "mean": [0.0] * c, "std": [1.0] * c, "classes": [str(k) for k in range(10)],
        "recipe": {"name": "standard"}, "test": {"clean": 10.0}})


def _tiny_budgets(monkeypatch, pgd: dict) -> None:
    for d, k, v in ((bg.JSMA, "max_iter", 4), (bg.CW, "steps", 5), (bg.CW, "binary_search_steps", 1),
                    (bg.DEEPFOOL, "max_iter", 5), (pgd, "iters", 3), (bg.WORST, "iters", 3), (bg.WORST, "queries", 10)):
        monkeypatch.setitem(d, k, v)


def test_mnist_settings_match_the_committed_stamps():
    # the committed MNIST results stay fresh: each part's stored settings are what _settings gives today
    stored = json.loads((COMMITTED / "cnn_mnist_fs.json").read_text())["parts"]
    assert set(stored) == {"whitebox", "minimal", "sensitivity", "blackbox", "honest"}
    for part, p in stored.items():
        assert bg._settings(part) == p["settings"], part
        assert bg._settings(part, bg.MNIST) == p["settings"], part
    table1 = json.loads((COMMITTED / "table1.json").read_text())["parts"]["table1"]
    assert bg._settings("table1") == table1["settings"]
    assert bg._settings("honest", bg.CIFAR10)["pgd"] == {"eps": 8 / 255, "step": 2 / 255, "iters": 20}
    assert bg._settings("blackbox", bg.CIFAR10)["table_eps"] == {"fgsm": 0.1, "rand_fgsm": 0.1}


@pytest.mark.parametrize("ds", list(bg.DATASETS.values()), ids=list(bg.DATASETS))
def test_dataset_settings_are_consistent(ds):
    assert ds.source in ds.entries and all(i in ds.entries for i in {**ds.archs, **ds.defenses})
    keys = [f"{e:g}" for e in ds.eps_grid]                      # the results' keys: distinct, in order
    assert list(ds.eps_grid) == sorted(ds.eps_grid) and len(set(keys)) == len(keys) and ds.eps_grid[0] > 0
    assert ds.eps_grid[-1] == {"mnist": 1.0, "cifar10": 0.3}[ds.name]          # the paper's ranges
    assert all(ds.table_eps[k] in ds.eps_grid for k in ("fgsm", "rand_fgsm"))
    assert 0 <= ds.honest_alpha <= ds.pgd["eps"]                 # rand_fgsm needs alpha <= eps
    fs = [e for e in ds.entries.values() if e.bits]
    assert len(fs) == 1 and fs[0].bits == {"mnist": 1, "cifar10": 3}[ds.name]     # the paper's FS per data set


def test_page_without_results_lists_every_row_as_pending():
    page = build_page({}, "python -m benchmarks.brelu_gda --report-only")
    assert page.count("pending: `cnn_mnist_vat` not trained yet") >= 5      # models, figure 4 panels, honest
    assert "| CNN + ReLU | pending (73.88) | pending (90.16) |" in page
    assert "| GDA + ReLU | pending (98.47) | pending (80.25) |" in page
    assert "## CIFAR-10: Figure 5, Table 5 and the honest columns" in page
    assert page.count("pending: `cnn_cifar10_vat` not trained yet (runs/issue16_cifar.sh)") >= 6
    assert "| CNN | pending (51.55) | pending (57.22) | pending (77.76) | pending (76.85) | pending (77.79) |" in page
    assert "## Reading" in page and "- (no results yet)" in page


def test_paper_table1_orientation_matches_the_text():
    # columns are the targets: the CNN columns stay above 90 % off the diagonal, and Table 4's
    # undefended CNN under FGSM (crafted on ResNet + ReLU) is row ResNet + ReLU, column CNN + ReLU
    archs = list(bg.MNIST.archs)
    for j in (0, 1):
        assert all(PAPER_TABLE1[src][j] > 90 for src in archs if src != archs[j])
    assert PAPER_TABLE1["resnet_mnist"][0] == PAPER_TABLE4["cnn_mnist"][0]


@pytest.mark.slow
def test_small_run_end_to_end(tmp_path, data_dir, monkeypatch, one_thread):
    weights = tmp_path / "weights"
    weights.mkdir()
    for name in TRAINED:
        _artifact(weights, name)
    _tiny_budgets(monkeypatch, bg.MNIST.pgd)
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
    assert not (out / "cifar10").exists() and "pending: `cnn_cifar10` not trained yet" in page

    before = {p.name: p.read_text() for p in out.glob("*.json")}
    monkeypatch.setattr(bg, "part_whitebox", lambda *a: pytest.fail("a finished part was recomputed"))
    assert bg.main(args) == 0                                   # nothing recomputed, nothing rewritten
    assert {p.name: p.read_text() for p in out.glob("*.json")} == before
    assert bg.main(["--models", "nope", "--out", str(out)]) == 2


@pytest.mark.slow
def test_small_cifar_run_end_to_end(tmp_path, data_dir, monkeypatch, one_thread):
    weights = tmp_path / "weights"
    weights.mkdir()
    for name in TRAINED_CIFAR:
        _artifact(weights, name, "cifar10")
    _tiny_budgets(monkeypatch, bg.CIFAR10.pgd)
    out = tmp_path / "brelu_gda"
    args = ["--dataset", "cifar10", "--data-dir", str(data_dir), "--threads", "1", "--weights-dir", str(weights),
            "--out", str(out), "--count", "4", "--honest-count", "3", "--slow-count", "2", "--no-cache", "--models",
            "cnn_cifar10,cnn_cifar10_fs,cnn_cifar10_gda,resnet_cifar10,cnn_cifar10_vat"]
    assert bg.main(args) == 0
    res = out / "cifar10"
    assert sorted(p.name for p in out.glob("*.json")) == []                  # nothing in the MNIST folder
    assert not (res / "cnn_cifar10_vat.json").exists()
    r = {i: json.loads((res / f"{i}.json").read_text()) for i in ("cnn_cifar10", "cnn_cifar10_fs", "cnn_cifar10_gda")}
    for i in r:
        assert set(r[i]["parts"]) == {"whitebox", "sensitivity", "blackbox", "honest"}    # no minimal on CIFAR-10
        assert r[i]["parts"]["honest"]["settings"] == bg._settings("honest", bg.CIFAR10)
        assert set(r[i]["parts"]["whitebox"]["result"]["fgsm"]) == {f"{e:g}" for e in bg.CIFAR10.eps_grid}
        assert ("apgd_ce_smooth" in r[i]["parts"]["honest"]["result"]) == (i == "cnn_cifar10_fs")
    assert "parts" not in json.loads((res / "resnet_cifar10.json").read_text())    # the source: a models row only

    from purify.attacks import fgsm, rand_fgsm
    from purify.data import load_dataset
    from purify.models.trained import load_trained
    from purify.squeeze import BitDepthReduce

    x, y = load_dataset("cifar10", "test", data_dir=data_dir).tensors(slice(0, 4))
    cnn, resnet = (load_trained(n, weights_dir=weights) for n in ("cnn_cifar10", "resnet_cifar10"))
    fs = bg.load_entry(bg.CIFAR10.entries["cnn_cifar10_fs"], weights)[0]
    with torch.no_grad():                                           # feature squeezing is 3-bit on CIFAR-10
        torch.testing.assert_close(fs(x), cnn(BitDepthReduce(bits=3)(x)))
        assert not torch.allclose(fs(x), cnn(BitDepthReduce(bits=1)(x)))
        bb = r["cnn_cifar10"]["parts"]["blackbox"]["result"]["table5"]
        acc = lambda adv: 100 * float((cnn(adv).argmax(1) == y).double().mean())     # noqa: E731
        assert bb["fgsm"] == pytest.approx(acc(fgsm(resnet, x, y, eps=0.1)))
        adv = rand_fgsm(resnet, x, y, eps=0.1, alpha=0.05, generator=torch.Generator().manual_seed(bg.SEED))
        assert bb["rand_fgsm"] == pytest.approx(acc(adv))
    assert r["cnn_cifar10_fs"]["bits"] == 3 and r["cnn_cifar10_fs"]["sha256"] == r["cnn_cifar10"]["sha256"]

    page = (tmp_path / "brelu_gda.md").read_text()
    cifar = page[page.index("## CIFAR-10"):page.index("## Commands and times")]
    assert "pending: `cnn_cifar10_vat` not trained yet (runs/issue16_cifar.sh)" in cifar
    assert f"| CNN | **{bb['fgsm']:.2f}** (51.55) | **{bb['rand_fgsm']:.2f}** (57.22) |" in cifar
    assert "### The honest columns (L∞ 8/255)" in cifar and "3-bit squeezer" in cifar
    assert "- Feature squeezing: clean" in cifar and "| 0.25 | 0.3 | paper |" in cifar
    assert "pending: `cnn_mnist` not trained yet (runs/issue16_mnist.sh)" in page        # MNIST still pending
    assert (out / "figure5.png").stat().st_size > 0
    assert PAPER_TABLE5["cnn_cifar10"][0] == 51.55

    before = {p.name: p.read_text() for p in res.glob("*.json")}
    monkeypatch.setattr(bg, "part_whitebox", lambda *a, **k: pytest.fail("a finished part was recomputed"))
    assert bg.main(args) == 0                                   # nothing recomputed, nothing rewritten
    assert {p.name: p.read_text() for p in res.glob("*.json")} == before
    assert bg.main(["--dataset", "cifar10", "--models", "cnn_mnist", "--out", str(out)]) == 2
