"""benchmarks.reproduce: the re-training command never writes over the shipped files; noise verdicts."""

import json
from pathlib import Path

import pytest

from benchmarks import reproduce


def test_command_moves_output_and_checkpoint_and_resumes():
    shipped = json.loads((reproduce.WEIGHTS / "resnet56_wnll_e2e_tvm_data.json").read_text())
    cmd = reproduce.repro_command(shipped, Path("/tmp/w"))
    assert cmd[1:3] == ["-m", "purify.training.adversarial"]
    assert cmd[cmd.index("--out") + 1] == "/tmp/w/resnet56_wnll_e2e_tvm_data"
    assert cmd[cmd.index("--checkpoint") + 1] == "/tmp/w/resnet56_wnll_e2e_tvm_data.pt"
    assert cmd.count("--out") == 1 and cmd.count("--checkpoint") == 1 and cmd[-1] == "--resume"
    assert not any("purify/weights" in a for a in cmd)
    # every other flag is the shipped command's own
    assert cmd[cmd.index("--epochs") + 1] == "2" and cmd[cmd.index("--tvm-regime") + 1] == "tvm"


def test_a_command_that_is_not_a_module_run_is_refused():
    with pytest.raises(ValueError, match="not a 'python -m'"):
        reproduce.repro_command({"name": "m", "command": "bash train.sh"}, Path("w"))


def test_missing_reference_is_named_before_any_training(tmp_path, monkeypatch):
    weights = tmp_path / "weights"
    weights.mkdir()
    command = ("python -m purify.training.adversarial --dataset mnist --model lenet_mnist "
               f"--init-from {tmp_path}/runs/lenet_mnist --out purify/weights/m --epochs 1")
    (weights / "m.json").write_text(json.dumps({"name": "m", "command": command, "sha256": "0" * 64}))
    monkeypatch.setattr(reproduce, "WEIGHTS", weights)
    work = tmp_path / "work"
    with pytest.raises(FileNotFoundError, match="runs/lenet_mnist.*re-train that reference first"):
        reproduce.reproduce("m", work)
    assert not work.exists()
    with pytest.raises(FileNotFoundError, match="no shipped artifact"):
        reproduce.reproduce("nope", work)


def test_noise_verdict_uses_the_shipped_interval():
    shipped = {"data": {"test_count": 10000}, "test": {"clean": 86.44, "wnll": 87.16, "rho2": 19.8, "attack": None}}
    close = reproduce.compare(shipped, {"data": {"test_count": 10000}, "test": {"clean": 86.1, "wnll": 87.5}})
    assert close["within_noise"] and set(close["figures"]) == {"clean", "wnll"}    # rho2 is not an accuracy
    far = reproduce.compare(shipped, {"data": {"test_count": 10000}, "test": {"clean": 84.9, "wnll": 87.2}})
    assert not far["within_noise"] and not far["figures"]["clean"]["within_noise"]
    with pytest.raises(ValueError, match="different counts"):
        reproduce.compare(shipped, {"data": {"test_count": 2000}, "test": {"clean": 86.0}})


def test_page_names_files_relative_to_the_checkout():
    # A committed page must not carry this machine's absolute path (results written before the fix did).
    work = reproduce.ROOT / "runs" / "repro"
    row = {"name": "m", "command": f"python -m purify.training.adversarial --out {work}/m --checkpoint {work}/m.pt",
           "shipped_sha256": "a", "again_sha256": "a", "wall_s": 60, "machine": "cpu", "date": "2026-12-03",
           "figures": {"clean": {"shipped": 90.0, "again": 90.0, "diff": 0.0, "ci": [89.0, 91.0],
                                 "within_noise": True}}}
    page = reproduce.build_page([row])
    assert str(reproduce.ROOT) not in page and "--out runs/repro/m --checkpoint runs/repro/m.pt" in page
