"""The command line (purify demo / purify image) and the README commands CI relies on."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest
from PIL import Image

from purify.__main__ import main
from tests.conftest import REPO_ROOT


def test_demo_with_data(data_dir, capsys):
    assert main(["demo", "--n", "3", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "3 CIFAR-10 test images" in out
    assert re.search(r"ResNet-56 accuracy on these 3: \d+% before, \d+% after", out)


def test_demo_without_data_uses_generated_images(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PURIFY_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["demo", "--n", "2", "--data-dir", str(tmp_path), "--method", "dct", "--q", "20"]) == 0
    out = capsys.readouterr().out
    assert "using 2 generated" in out and "skipping predictions" in out
    assert len(re.findall(r"^\s+\d\s+\d+\.\d+/255", out, flags=re.M)) == 2


def test_image_with_a_feature_squeezing_stage(tmp_path, capsys):
    from scipy import ndimage

    src, dst = tmp_path / "in.png", tmp_path / "out.png"
    arr = (np.random.default_rng(1).random((20, 24, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(src)
    assert main(["image", str(src), str(dst), "--method", "median_smooth", "--size", "3", "--device", "cpu"]) == 0
    # The median selects pixel values, so the PNG round trip is exact.
    assert np.array_equal(np.asarray(Image.open(dst)), ndimage.median_filter(arr, size=(3, 3, 1), mode="reflect"))
    assert main(["image", str(src), str(dst), "--method", "bit_depth", "--bits", "2", "--device", "cpu"]) == 0
    assert sorted(np.unique(np.asarray(Image.open(dst)))) == [0, 85, 170, 255]


def test_demo_rejects_bad_n(capsys):
    assert main(["demo", "--n", "0"]) == 2


def test_image_round_trip(tmp_path):
    src, dst = tmp_path / "in.png", tmp_path / "out.png"
    arr = (np.random.default_rng(0).random((20, 24, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(src)
    assert main(["image", str(src), str(dst), "--seed", "1", "--weight", "0.05", "--device", "cpu"]) == 0
    out = np.asarray(Image.open(dst))
    assert out.shape == arr.shape and out.dtype == np.uint8 and not np.array_equal(out, arr)


def test_image_missing_file_is_an_error(tmp_path, capsys):
    assert main(["image", str(tmp_path / "nope.png"), str(tmp_path / "o.png")]) == 1
    assert "error" in capsys.readouterr().err


def _readme_command(marker: str) -> str:
    lines = (REPO_ROOT / "README.md").read_text().splitlines()
    i = lines.index(f"<!-- {marker} -->")
    assert lines[i + 1].startswith("```")
    return lines[i + 2]


@pytest.mark.parametrize("marker", ["setup-command", "main-command", "test-command"])
def test_readme_has_the_three_commands(marker):
    assert _readme_command(marker).strip()


def test_ci_reads_the_readme_commands():
    script = (REPO_ROOT / ".ci" / "run").read_text()
    assert "extract setup-command" in script and "extract test-command" in script
    awk = subprocess.run(["awk", '-v', 'marker=<!-- test-command -->', '$0 == marker {getline; getline; print; exit}',
                          str(REPO_ROOT / "README.md")], capture_output=True, text=True, check=True)
    assert awk.stdout.strip() == _readme_command("test-command")
