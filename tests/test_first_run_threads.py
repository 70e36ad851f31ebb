"""First run: one thread setting (purify.tv.set_threads) for torch and numba, and --threads on every command."""

from __future__ import annotations

import pytest
import torch

from purify import DTypeError, RangeError
from purify.tv import set_threads


@pytest.fixture
def numba_threads():
    numba = pytest.importorskip("numba")
    before = numba.get_num_threads()
    yield numba
    numba.set_num_threads(before)


def test_set_threads_sets_torch_and_numba(numba_threads):
    set_threads(1)
    assert torch.get_num_threads() == 1 and numba_threads.get_num_threads() == 1
    if numba_threads.config.NUMBA_NUM_THREADS >= 2:
        set_threads(2)
        assert torch.get_num_threads() == 2 and numba_threads.get_num_threads() == 2


def test_set_threads_caps_numba_at_its_pool(numba_threads):
    n = numba_threads.config.NUMBA_NUM_THREADS + 1
    set_threads(n)
    assert torch.get_num_threads() == n and numba_threads.get_num_threads() == n - 1


@pytest.mark.parametrize("bad, error", [(0, RangeError), (-1, RangeError), (True, DTypeError), (1.0, DTypeError)])
def test_set_threads_exception(bad, error):
    with pytest.raises(error, match="set_threads"):
        set_threads(bad)


def test_purify_command_applies_threads(tmp_path, monkeypatch):
    from purify.__main__ import main

    monkeypatch.setenv("PURIFY_CACHE_DIR", str(tmp_path / "cache"))
    torch.set_num_threads(2)
    assert main(["demo", "--n", "1", "--method", "dct", "--threads", "1", "--data-dir", str(tmp_path)]) == 0
    assert torch.get_num_threads() == 1
    assert main(["demo", "--n", "1", "--threads", "0", "--data-dir", str(tmp_path)]) == 2


@pytest.mark.parametrize("command", ["demo", "image"])
def test_purify_subcommands_take_threads(command):
    from purify.__main__ import build_parser

    extra = ["in.png", "out.png"] if command == "image" else []
    assert build_parser().parse_args([command, *extra, "--threads", "3"]).threads == 3


def test_purify_serve_takes_threads_and_applies_them_to_every_model():
    from serving.cli import build_parser, main, with_threads
    from serving.config import DEFAULT_CONFIG, load_config

    assert build_parser().parse_args(["--threads", "2"]).threads == 2
    cfg = load_config(DEFAULT_CONFIG)
    assert with_threads(cfg, 3).backend.threads == 3 and with_threads(cfg, None) is cfg
    assert main(["--threads", "0"]) == 2            # refused before any model is loaded


def test_purify_export_applies_threads(tmp_path, monkeypatch):
    import serving.export as export

    seen = {}

    def fake_export(cfg, path, **kwargs):
        seen["threads"] = torch.get_num_threads()
        raise OSError("stop here")

    monkeypatch.setattr(export, "export_config", fake_export)
    torch.set_num_threads(2)
    assert export.main(["-o", str(tmp_path / "m.onnx"), "--threads", "1"]) == 1
    assert seen == {"threads": 1}
    assert export.main(["--threads", "0"]) == 2


def test_benchmark_commands_take_threads(capsys):
    from benchmarks.__main__ import main

    for argv in (["run", "--help"], ["leaderboard", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        assert "--threads" in capsys.readouterr().out, argv


def test_harness_threads_set_numba_too(monkeypatch, numba_threads):
    import benchmarks.harness as harness

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(harness, "prepare", stop)
    with pytest.raises(Stop):
        harness.run("quick_demo", threads=1)
    assert torch.get_num_threads() == 1 and numba_threads.get_num_threads() == 1
