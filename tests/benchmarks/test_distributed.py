"""The harness on a local two-worker Ray (loopback only) gives the rows of a serial run."""

from __future__ import annotations

import pytest

pytest.importorskip("ray")

from benchmarks.harness import run  # noqa: E402

CONFIG = '''description = "ray equivalence"
batch_size = 4
seed = 3
[data]
dataset = "cifar10"
count = 8
[model]
name = "resnet20"
[defense]
stages = [{ name = "tvm", params = { weight = 0.1, drop_prob = 0.3, iters = 20 } }]
[[attacks]]
name = "pgd"
eps = ["4/255", "8/255"]
threat_models = ["transfer", "bpda", "bpda+eot"]
eot_samples = [2]
params = { step_ratio = 0.25, iters = 3, random_start = true }
[[attacks]]
name = "fgsm"
eps = ["8/255"]
threat_models = ["bpda"]
'''
# Equal to the serial run: same cells, same seeds per (cell, batch), one thread per process. Accuracies
# and per-image results are counts, compared exactly; perturbation norms are float sums made in another
# process with the same kernels, compared to 1e-6.
EXACT = ("cell", "attack", "threat_model", "eps_label", "n_images", "accuracy", "adv_correct", "n_clean_correct")


def test_ray_run_equals_serial_run(tmp_path, data_dir):
    path = tmp_path / "ray_eq.toml"
    path.write_text(CONFIG)
    serial = run(path, data_dir=data_dir, out=tmp_path / "serial", cache_dir=tmp_path / "c1", progress=False,
                 threads=1)
    remote = run(path, data_dir=data_dir, out=tmp_path / "ray", cache_dir=tmp_path / "c2", progress=False,
                 threads=1, ray="local", ray_workers=2)
    assert len(remote.computed) == len(serial.computed) == len(serial.rows) == 7
    for a, b in zip(serial.rows, remote.rows):
        assert {k: a[k] for k in EXACT} == {k: b[k] for k in EXACT}
        assert a["mean_l2"] == pytest.approx(b["mean_l2"], abs=1e-6)
    assert (tmp_path / "ray" / "examples.png").is_file()
    # Resume: a second distributed run reads every cell from its cache.
    again = run(path, data_dir=data_dir, out=tmp_path / "ray", cache_dir=tmp_path / "c2", progress=False,
                threads=1, ray="local", ray_workers=2)
    assert again.computed == [] and len(again.cached) == 7
