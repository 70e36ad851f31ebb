"""The harness's ``[metrics]``: rho2 over the fooled images, training set distance, loss sensitivity.

Also home of :func:`linear_net`, the classifier the runs here name as a factory: a linear model,
whose cross-entropy gradient is known in closed form. It computes in float64 (the images stay
float32), so the run's gradients and logits carry float64 noise only, and the hand computations
below repeat the run's batches (``batch_size = 4``): the attack's sign and argmax steps then see
the same numbers here and there (tests/README.md, "Rounding stages").
"""

from __future__ import annotations

import csv
import json
import math
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.harness import ConfigError, load_config, run
from benchmarks.harness.cells import base_key, expand_cells
from benchmarks.harness.config import parse_config
from benchmarks.harness.metrics import TrainingSet, load_training_set
from benchmarks.harness.report import COLUMNS
from purify.attacks import fgsm_minimal
from purify.pipeline import Pipeline
from tests.benchmarks.test_user_data import write_config

HERE = Path(__file__).resolve().parent
FACTORY = "tests.benchmarks.test_metrics:linear_net"
SHAPE = (3, 5, 7)          # odd, non-square images
EPS_STEP, EPS_MAX = 0.01, 0.04      # small enough that some images are never fooled
BATCH = 4


class _Float64(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.double()


def linear_net() -> nn.Module:
    """A user's classifier: Flatten + Linear(3*5*7, 3) in float64, seeded weights; float32 images in."""
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(int(np.prod(SHAPE)), 3).double()
    with torch.no_grad():
        lin.weight.copy_(0.5 * torch.randn(lin.weight.shape, generator=g))
        lin.bias.copy_(0.1 * torch.randn(3, generator=g))
    return nn.Sequential(nn.Flatten(), _Float64(), lin).eval().requires_grad_(False)


def _weights() -> tuple[torch.Tensor, torch.Tensor]:
    lin = linear_net()[2]
    return lin.weight.detach(), lin.bias.detach()


def _margins(v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y - max_{j != y} z_j of the linear model, in float64 (> 0: right)."""
    w, b = _weights()
    z = v.double().flatten(1) @ w.T + b
    return z.gather(1, y[:, None])[:, 0] - z.masked_fill(F.one_hot(y, 3).bool(), -math.inf).amax(1)


def _by_batch(fn, *tensors):
    """``fn`` applied to the run's batches of ``BATCH`` images, concatenated."""
    return torch.cat([fn(*(t[i:i + BATCH] for t in tensors)) for i in range(0, len(tensors[0]), BATCH)])


def _write_data(folder: Path, n_eval: int = 10, n_train: int = 17) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """data.npz (the evaluated images, labelled by the model so most are right) and train.npz, uint8 NHWC."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n_eval, SHAPE[1], SHAPE[2], SHAPE[0]), dtype=np.uint8)
    with torch.no_grad():
        y = linear_net()(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255).argmax(1).numpy()
    y = y.astype(np.int64)
    y[:2] = (y[:2] + 1) % 3                                            # two wrong when clean: never "fooled"
    train = rng.integers(0, 256, (n_train, SHAPE[1], SHAPE[2], SHAPE[0]), dtype=np.uint8)
    train[3] = x[4]                                                    # one training image equals a test image
    np.savez(folder / "data.npz", x=x, y=y)
    np.savez(folder / "train.npz", x=train, y=np.zeros(n_train, dtype=np.int64))
    return x, y, train


def _config(metrics: str = "", name: str = "metrics_run") -> str:
    return f"""
name = "{name}"
description = "minimal FGSM and PGD on a linear model, with the metrics beyond accuracy"
batch_size = 4                # BATCH
device = "cpu"
[data]
path = "data.npz"
[model]
factory = "{FACTORY}"
[defense]
stages = [{{ name = "dct", params = {{ q = 40 }} }}]
[[attacks]]
name = "fgsm_minimal"
threat_models = ["none", "transfer"]
params = {{ eps_step = {EPS_STEP}, eps_max = {EPS_MAX} }}
[[attacks]]
name = "pgd"
eps = ["8/255"]
threat_models = ["bpda"]
params = {{ iters = 2, step_ratio = 0.5 }}
{metrics}
"""


METRICS = """
[metrics]
training_set_distance = true
training_path = "train.npz"
loss_sensitivity = true
"""


def _nchw(a: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float64 NCHW holding the float32 values the run reads from an .npz (Dataset.tensors);
    your training images are read the same way (built-in ones stay uint8, read as value / 255 in float64)."""
    return (torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255).double()


def _rows(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(path) as f:
        return {(r["attack"], r["threat_model"]): r for r in csv.DictReader(f)}


# ----------------------------------------------------------------------------- parsing, and cell keys unchanged

BAD = [
    ("[metrics]\nloss_sensitivty = true", r"metrics\.loss_sensitivty: unknown key"),
    ("[metrics]\nloss_sensitivity = 1", r"metrics\.loss_sensitivity: expected true or false, got 1"),
    ("[metrics]\ntraining_path = \"train.npz\"", r"metrics\.training_path: only used with training_set_distance"),
    ("[metrics]\ntraining_set_distance = true", r"metrics\.training_path: missing required key"),
    ("[metrics]\ntraining_set_distance = true\ntraining_split = \"train\"",
     r"metrics\.training_split: only used with data\.dataset"),
]


@pytest.mark.parametrize("table, match", BAD)
def test_exception_bad_metrics_table(tmp_path, table, match):
    with pytest.raises(ConfigError, match=match):
        load_config(write_config(tmp_path, _config(table)))


def test_exception_metrics_against_builtin_data_and_onnx(tmp_path):
    raw = tomllib.loads((HERE / "tiny.toml").read_text())
    with pytest.raises(ConfigError, match=r"metrics\.training_path: data\.dataset = 'cifar10' has its own"):
        parse_config({**raw, "metrics": {"training_set_distance": True, "training_path": "x.npz"}}, tmp_path / "t.toml")
    with pytest.raises(ConfigError, match=r"metrics\.training_split: unknown value 'test'"):
        parse_config({**raw, "metrics": {"training_set_distance": True, "training_split": "test"}}, tmp_path / "t.toml")
    onnx = {**{k: v for k, v in raw.items() if k != "examples"}, "model": {"onnx": "net.onnx"},
            "attacks": [{"name": "square", "eps": [0.03], "threat_models": ["none"], "params": {"queries": 5}}]}
    with pytest.raises(ConfigError, match=r"metrics\.loss_sensitivity: an ONNX graph has no gradients"):
        parse_config({**onnx, "metrics": {"loss_sensitivity": True}}, tmp_path / "t.toml")


def test_metrics_table_changes_no_cell_key(tmp_path):
    """Every golden config parses with and without [metrics] to the cells (labels, hashes) it had before."""
    from tests.benchmarks.test_extends import GOLDEN

    golden = json.loads(GOLDEN.read_text())
    raw = tomllib.loads((HERE / "tiny.toml").read_text())
    assert parse_config(raw, HERE / "tiny.toml").metrics is None
    for name, entry in golden.items():
        cfg = load_config(name.removesuffix("-quick"), quick=name.endswith("-quick"))
        assert cfg.metrics is None
        with_metrics = parse_config({**cfg.raw, "metrics": {"training_set_distance": True, "loss_sensitivity": True}},
                                    cfg.path, quick=cfg.is_quick)
        assert with_metrics.metrics.training_split == "train"
        cells = [[c.label, c.hash] for c in expand_cells(with_metrics, base_key(with_metrics, np.arange(8)))]
        assert cells == entry["cells"]
    off = parse_config({**raw, "metrics": {"training_set_distance": False}}, HERE / "tiny.toml")
    assert off.metrics is None                                          # asks for nothing: as without the table
    added = load_config(HERE / "tiny.toml", overrides=["metrics={ loss_sensitivity = true }"])   # README's --set
    assert added.metrics.loss_sensitivity and not added.metrics.training_set_distance


def test_builtin_training_split_is_read_as_uint8(data_dir, tmp_path):
    raw = tomllib.loads((HERE / "tiny.toml").read_text())
    metrics = {"training_set_distance": True, "training_split": "val"}
    cfg = parse_config({**raw, "metrics": metrics}, tmp_path / "t.toml")
    ts = load_training_set(cfg, data_dir, (3, 32, 32))
    assert len(ts) == 5000 and ts.images.dtype == torch.uint8 and ts.images.shape == (5000, 3, 32, 32)
    assert ts.identity == {"dataset": "cifar10", "split": "val", "n": 5000}
    from purify.data import load_dataset
    x, _ = load_dataset("cifar10", "val", data_dir=data_dir).tensors([10, 4000])
    # training images are their own neighbours (up to the float32 rounding of x = uint8 / 255)
    assert float(ts.distances(x).max()) < 1e-5
    with pytest.raises(ConfigError, match=r"metrics\.training_split: .* shape \(3, 32, 32\), the evaluated images"):
        load_training_set(cfg, data_dir, (3, 16, 16))


def test_training_set_chunked_equals_unchunked():
    g = torch.Generator().manual_seed(3)
    train = torch.randint(0, 256, (50, *SHAPE), generator=g, dtype=torch.uint8)
    x = torch.rand(6, *SHAPE, generator=g)
    pairs = (x.double().flatten(1)[:, None] - train.double().flatten(1)[None] / 255).norm(dim=2)
    two = pairs.topk(2, dim=1, largest=False).values
    # No near-tie between the nearest and the next: every chunking picks the same image, whose distance
    # is then recomputed by the same code, so the chunkings agree exactly (tests/README.md).
    assert float((two[:, 1] - two[:, 0]).min()) > 1e-6
    one = TrainingSet(train, {}, "", chunk_size=50).distances(x)
    for chunk in (1, 7, 49):
        assert torch.equal(TrainingSet(train, {}, "", chunk_size=chunk).distances(x), one)
    torch.testing.assert_close(one, two[:, 0], atol=1e-12, rtol=0)        # the same float64 norm


# ----------------------------------------------------------------------------- a run, checked by hand

@pytest.fixture(scope="module")
def metrics_run(tmp_path_factory, one_thread):
    folder = tmp_path_factory.mktemp("metrics")
    x8, y, train8 = _write_data(folder)
    path = write_config(folder, _config(METRICS), "metrics_run.toml")
    result = run(path, out=folder / "out", progress=False, cache_dir=folder / "cache")
    return folder, result, _nchw(x8), torch.from_numpy(y).long(), _nchw(train8)


def test_rho2_success_and_train_dist_of_minimal_fgsm_by_hand(metrics_run):
    """The minimal FGSM cell against a hand computation: the attack again, the fooled images, brute force."""
    folder, result, x, y, train = metrics_run
    model = linear_net()
    adv = _by_batch(lambda v, t: fgsm_minimal(model, v, t, eps_step=EPS_STEP, eps_max=EPS_MAX), x.float(), y).double()
    # No label decision of the attack or of the evaluation sits within float noise of a tie: every grid
    # point's margin is far from 0 (float64 logits, float32 inputs: noise ~1e-13), so any batching agrees.
    s = (adv - x).sign()
    grid = torch.stack([_margins((x + k * EPS_STEP * s).clamp(0, 1), y) for k in range(5)])
    assert float(grid.abs().min()) > 1e-6
    clean_ok, adv_ok = _margins(x, y) > 0, _margins(adv, y) > 0
    fooled = clean_ok & ~adv_ok
    assert not bool(fooled[:2].any())                                  # the two wrong when clean never count
    never = clean_ok & adv_ok                                          # not fooled up to eps_max: left out
    assert int(fooled.sum()) > 1 and int(never.sum()) > 0
    torch.testing.assert_close((adv - x)[never].flatten(1).abs().amax(1), torch.full((int(never.sum()),), EPS_MAX,
                               dtype=torch.float64), atol=1e-6, rtol=0)
    delta = (adv - x).flatten(1).norm(dim=1)
    rho = delta / x.flatten(1).norm(dim=1)
    rho_inf = (adv - x).flatten(1).abs().amax(1) / x.flatten(1).amax(1)    # ART's ratio for an L-inf attack
    nearest = (adv.flatten(1)[:, None] - train.flatten(1)[None]).norm(dim=2).amin(1)
    row = next(r for r in result.rows if r["attack"] == "fgsm_minimal" and r["threat_model"] == "none")
    # the same float32 images on both sides, norms in float64: the sums differ only by float64 rounding
    assert row["rho2_success"] == pytest.approx(float(rho[fooled].mean()), rel=1e-9)
    assert row["rhoinf_success"] == pytest.approx(float(rho_inf[fooled].mean()), rel=1e-9)
    assert row["rho2"] == pytest.approx(float(rho.mean()), rel=1e-9)             # all images, as before
    assert row["train_dist"] == pytest.approx(float(nearest[fooled].mean()), rel=1e-9)
    assert row["accuracy"] == pytest.approx(float(adv_ok.double().mean()))
    # transfer: the same examples, the images the defended model got right clean and wrong after
    pipe = Pipeline.from_spec([("dct", {"q": 40})])                 # quantizes: the run's batches again
    d_clean = _margins(_by_batch(pipe, x.float()), y) > 0
    d_adv = _margins(_by_batch(pipe, adv.float()), y) > 0
    t_row = next(r for r in result.rows if r["attack"] == "fgsm_minimal" and r["threat_model"] == "transfer")
    t_fooled = d_clean & ~d_adv
    assert bool(t_fooled.any()) and not torch.equal(t_fooled, fooled)     # another set of fooled images
    assert t_row["train_dist"] == pytest.approx(float(nearest[t_fooled].mean()), rel=1e-9)
    assert t_row["rho2_success"] == pytest.approx(float(rho[t_fooled].mean()), rel=1e-9)
    assert t_row["rho2"] == row["rho2"]                                  # the same examples


def test_loss_sensitivity_by_hand(metrics_run):
    """W^T (softmax - onehot) at the clean images, and at the DCT-purified ones for the BPDA number."""
    folder, result, x, y, _ = metrics_run
    w, b = _weights()

    def norms(v):
        z = v.double().flatten(1) @ w.T + b
        return ((torch.softmax(z, 1) - F.one_hot(y, 3).double()) @ w).norm(dim=1)

    purified = _by_batch(Pipeline.from_spec([("dct", {"q": 40})]), x.float())    # the run's purified images
    ls = result.metrics["loss_sensitivity"]
    # The run's gradient is float64 until autograd casts it to the float32 images' dtype (relative 6e-8).
    assert ls["undefended"] == pytest.approx(float(norms(x).mean()), rel=1e-6)
    assert ls["defended_bpda"] == pytest.approx(float(norms(purified).mean()), rel=1e-6)
    assert ls["defended_bpda"] != pytest.approx(ls["undefended"], rel=1e-3)   # the purified images' gradient
    assert ls["n_images"] == 10
    saved = json.loads((folder / "out" / "metrics.json").read_text())
    assert saved["loss_sensitivity"]["undefended"] == ls["undefended"]
    clean = (x.flatten(1)[:, None] - metrics_run[4].flatten(1)[None]).norm(dim=2).amin(1)
    assert saved["train_dist_clean"]["mean"] == pytest.approx(float(clean.mean()), rel=1e-9)
    assert float(clean[4]) == 0.0                                     # x[4] is a training image


def test_report_and_csv_show_the_metrics(metrics_run):
    folder, result, *_ = metrics_run
    rows = _rows(folder / "out" / "cells.csv")
    assert COLUMNS[-3:] == ("rho2_success", "rhoinf_success", "train_dist")
    assert all(r["train_dist"] != "" for r in rows.values())
    report = (folder / "out" / "report.md").read_text()
    assert "| mean L0 | rho2 | rho2 success | rho∞ success | train dist | wall s |" in report
    ls = result.metrics["loss_sensitivity"]
    assert f"- Loss sensitivity (mean ‖∂CE/∂x‖₂ over the 10 images, true labels): undefended {ls['undefended']:.4g}, " \
           f"defended (BPDA through the defense) {ls['defended_bpda']:.4g}" in report
    assert "Distance to the nearest training image (train.npz, 17 images)" in report
    minimal = next(line for line in report.splitlines() if line.startswith("| fgsm_minimal | – | none |"))
    r = next(r for r in result.rows if r["attack"] == "fgsm_minimal" and r["threat_model"] == "none")
    assert f"| {r['rho2']:.4f} | {r['rho2_success']:.4f} | {r['rhoinf_success']:.4f} | {r['train_dist']:.3f} |" \
        in minimal
    assert "`metrics.json`" in report and "train dist = mean Euclidean distance" in report


def test_cached_cells_without_the_new_columns(metrics_run, tmp_path):
    """Without [metrics], a cell cached without train_dist (or rho2_success) is read and shown as –; with it,
    a cell cached without train_dist over this training set is computed again."""
    import shutil

    folder, result, *_ = metrics_run
    for f in ("data.npz", "train.npz"):
        shutil.copy(folder / f, tmp_path / f)
    cache = tmp_path / "cache"
    shutil.copytree(folder / "cache", cache)
    victim = next((cache / "metrics_run").glob("fgsm_minimal_noeps_none-*.json"))
    cell = json.loads(victim.read_text())
    del cell["row"]["train_dist"], cell["row"]["rho2_success"], cell["row"]["rhoinf_success"], cell["train_set"]
    victim.write_text(json.dumps(cell))

    plain = write_config(tmp_path, _config(), "metrics_run.toml")        # the same cells, no [metrics]
    again = run(plain, out=tmp_path / "plain", progress=False, cache_dir=cache)
    assert again.computed == [] and len(again.cached) == 3 and again.metrics is None
    rows = _rows(tmp_path / "plain" / "cells.csv")
    assert rows[("fgsm_minimal", "none")]["train_dist"] == rows[("fgsm_minimal", "none")]["rho2_success"] == ""
    assert rows[("pgd", "bpda")]["train_dist"] == "" and rows[("pgd", "bpda")]["rho2_success"] != ""
    every = (tmp_path / "plain" / "report.md").read_text().split("## Every cell")[1]
    header = next(line for line in every.splitlines() if line.startswith("| attack |"))
    line = next(line for line in every.splitlines() if line.startswith("| fgsm_minimal | – | none |"))
    cols, vals = [c.strip() for c in header.split("|")], [c.strip() for c in line.split("|")]
    assert vals[cols.index("train dist")] == vals[cols.index("rho2 success")] == vals[cols.index("rho∞ success")] == "–"
    assert not (tmp_path / "plain" / "metrics.json").exists()

    write_config(tmp_path, _config(METRICS), "metrics_run.toml")
    asked = run(plain, out=tmp_path / "asked", progress=False, cache_dir=cache)
    assert asked.computed == ["fgsm_minimal [none]"]                    # only the cell without train_dist
    old = {r["cell"]: r for r in result.rows}
    for r in asked.rows:                                                 # recomputed numbers are the same
        assert {k: v for k, v in r.items() if k != "wall_s"} == {k: v for k, v in old[r["cell"]].items()
                                                                 if k != "wall_s"}
