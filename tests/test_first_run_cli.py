"""First run of ``purify image``: checks before work, the method's own flags, folders, --version, --help defaults."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import purify
import purify.__main__ as cli
from purify.__main__ import build_parser, main


def _png(path, size=(13, 11), mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}[mode]
    Image.fromarray((rng.random((size[1], size[0], channels)) * 255).astype(np.uint8), mode=mode).save(path)
    return path


@pytest.fixture
def no_work(monkeypatch):
    """purify() must not be reached: the command has to refuse before any work."""
    def fail(*args, **kwargs):
        raise AssertionError("purify() was called")

    monkeypatch.setattr(cli, "purify", fail)


def test_unknown_output_extension_is_refused_before_reading_the_input(tmp_path, capsys, no_work):
    assert main(["image", str(tmp_path / "missing.png"), str(tmp_path / "out.xyz")]) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and ".xyz" in err and ".png" in err


def test_mode_the_format_cannot_store_is_refused_before_purifying(tmp_path, capsys, no_work):
    src = _png(tmp_path / "rgba.png", mode="RGBA")
    assert main(["image", str(src), str(tmp_path / "out.jpg")]) == 1
    assert "cannot write a RGBA image as JPEG" in capsys.readouterr().err
    assert not (tmp_path / "out.jpg").exists()


@pytest.mark.parametrize("argv, match", [
    (["--q", "5"], "--q does not apply to --method tvm; it takes --weight, --drop-prob"),
    (["--method", "dct", "--weight", "0.2"], "--weight does not apply to --method dct; it takes --q"),
    (["--method", "gcln", "--drop-prob", "0.2"], "--drop-prob does not apply to --method gcln"),
    (["--drop-prob", "1.0"], "--drop-prob must be in [0, 1), got 1: at 1 every pixel is dropped"),
    (["--weight", "1e9"], "--weight must be in [0, 1], got 1e+09: larger TV weights flatten the image"),
    (["--weight", "-0.1"], "--weight must be in [0, 1]"),
    (["--bits", "3"], "--bits does not apply to --method tvm; it takes --weight, --drop-prob"),
    (["--method", "median_smooth", "--q", "3"], "--q does not apply to --method median_smooth; it takes --size"),
    (["--method", "bit_depth", "--bits", "0"], "--bits must be in [1, 24], got 0"),
    (["--method", "median_smooth", "--size", "0"], "--size must be >= 1"),
])
def test_flags_that_do_not_belong_or_wash_out_the_image_are_refused(tmp_path, capsys, no_work, argv, match):
    src = _png(tmp_path / "in.png")
    assert main(["image", str(src), str(tmp_path / "out.png"), *argv]) == 2
    assert match in capsys.readouterr().err
    assert main(["demo", "--n", "1", *argv]) == 2


def test_a_folder_goes_to_a_folder_under_the_same_names(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    _png(src / "a.png", seed=1)
    _png(src / "b.bmp", size=(9, 14), seed=2)
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert main(["image", str(src), str(out), "--seed", "3", "--device", "cpu", "--method", "dct"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.bmp"]
    for name in ("a.png", "b.bmp"):
        with Image.open(src / name) as a, Image.open(out / name) as b:
            assert a.size == b.size and a.format == b.format and a.mode == b.mode
    assert "2 image(s) from" in capsys.readouterr().out


def test_a_folder_of_one_image_into_a_new_nested_folder(tmp_path):
    (tmp_path / "in").mkdir()
    _png(tmp_path / "in" / "only.png")
    out = tmp_path / "new" / "out"
    assert main(["image", str(tmp_path / "in"), str(out), "--method", "dct", "--device", "cpu"]) == 0
    assert [p.name for p in out.iterdir()] == ["only.png"]


def test_a_file_into_an_existing_folder_keeps_its_name(tmp_path):
    src = _png(tmp_path / "cat.png")
    (tmp_path / "out").mkdir()
    assert main(["image", str(src), str(tmp_path / "out"), "--method", "dct", "--device", "cpu"]) == 0
    assert (tmp_path / "out" / "cat.png").is_file()


def test_folder_and_file_give_the_same_output_with_a_seed(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _png(src / "a.png", seed=1)
    _png(src / "b.png", seed=2)
    assert main(["image", str(src), str(tmp_path / "out"), "--seed", "7", "--device", "cpu"]) == 0
    assert main(["image", str(src / "b.png"), str(tmp_path / "b_alone.png"), "--seed", "7", "--device", "cpu"]) == 0
    # Same computation on the same pixels in one process (the mask comes from the seed and the image): exact.
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "b.png")),
                          np.asarray(Image.open(tmp_path / "b_alone.png")))


def test_folder_into_itself_is_refused(tmp_path, capsys, no_work):
    _png(tmp_path / "a.png")
    assert main(["image", str(tmp_path), str(tmp_path)]) == 2
    assert "would overwrite the originals" in capsys.readouterr().err


def test_folder_without_images_is_refused(tmp_path, capsys, no_work):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "readme.txt").write_text("x")
    assert main(["image", str(tmp_path / "in"), str(tmp_path / "out")]) == 2
    assert "no image files" in capsys.readouterr().err


def test_a_flat_output_is_reported(tmp_path, caplog):
    src = _png(tmp_path / "in.png")
    # q on the 0..255 scale far above any 8x8 DCT coefficient: every coefficient rounds to 0.
    assert main(["image", str(src), str(tmp_path / "out.png"), "--method", "dct", "--q", "1e6"]) == 0
    assert "the output is nearly flat" in caplog.text and "lower --q" in caplog.text


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"purify {purify.__version__}"


def test_help_shows_defaults(capsys):
    for argv in (["image", "--help"], ["demo", "--help"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(argv)
        text = " ".join(capsys.readouterr().out.split())
        assert "(default: tvm)" in text and "(default: 0.1," in text and "(default: 0.3)" in text
        assert "(default: dct 10," in text and "default: None" not in text
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--help"])
    assert "(default: 8)" in " ".join(capsys.readouterr().out.split())
