"""Command line: ``purify demo`` (the built-in default job) and ``purify image IN OUT``.

``purify demo`` purifies a few CIFAR-10 test images (from the data directory, or
generated images when there is none), prints what changed per image, and, when
the pretrained ResNet-56 checkpoint can be found, what the classifier predicts
before and after. ``purify image`` purifies one image file, or every image of a folder into
another folder under the same file names. (The ONNX export of a served model is ``purify-export``,
in the serving package.)

Every command takes ``--threads N`` (:func:`purify.tv.set_threads`: torch and the TV kernel) and the
method's own settings only: ``--weight`` / ``--drop-prob`` for tvm, ``--q`` for dct and gcln,
``--bits`` for bit_depth, ``--size`` for median_smooth; a setting of another method is refused, as
are settings that wash the image out (a drop rate of 1, a TV weight above 1) and bit depths and
window sizes out of range. Bad arguments exit with status 2 before any work, failures during it with 1.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from purify import __version__
from purify.api import purify
from purify.errors import DataNotFoundError, PurifyError
from purify.registry import get_purifier_spec, list_purifiers
from purify.squeeze import MAX_BITS
from purify.tv import set_threads

# The command's report goes through this logger; main() attaches its console handlers
# (INFO to stdout, warnings and errors to stderr) and removes them on exit.
console = logging.getLogger("purify.cli")


def _generated_images(n: int) -> tuple[np.ndarray, None]:
    """Smooth gradients with a bright square and mild noise: stand-ins when no data is around."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    imgs = []
    for i in range(n):
        base = np.stack([xx, yy, (xx + yy) / 2], axis=-1) * rng.uniform(0.3, 1.0, 3)
        r, c = rng.integers(4, 20, 2)
        base[r:r + 8, c:c + 8] = rng.uniform(0.5, 1.0, 3)
        imgs.append(np.clip(base + rng.normal(0, 0.05, base.shape), 0, 1))
    return (np.stack(imgs) * 255).round().astype(np.uint8), None


def _load_images(n: int, data_dir: str | None):
    from purify.data import load_dataset, resolve_data_dir

    try:
        ds = load_dataset("cifar10", "test", data_dir=data_dir)
    except DataNotFoundError as err:
        console.info(f"no CIFAR-10 found ({str(err).splitlines()[0]}); using {n} generated 32x32 images")
        return _generated_images(n) + (None,)
    console.info(f"{n} CIFAR-10 test images from {resolve_data_dir(data_dir)}")
    return ds.x[:n], ds.y[:n], ds.classes


def _classifier(data_dir: str | None):
    from purify.models import create_model

    try:
        return create_model("resnet56", pretrained=True, data_dir=data_dir)
    except (DataNotFoundError, OSError) as err:
        console.info(f"(no ResNet-56 checkpoint: {str(err).splitlines()[0]}; skipping predictions)")
        return None


def _predict(model, images: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        return model(x).argmax(1).numpy()


class UsageError(Exception):
    """A command line that cannot be run as given (exit status 2, before any work)."""


# Stage parameter -> its flag. A flag is accepted only with a method whose stage takes the parameter
# (the registry says which), so `--q 5 --method tvm` is refused instead of silently ignored.
_STAGE_FLAGS = {"weight": "--weight", "drop_prob": "--drop-prob", "q": "--q", "bits": "--bits", "size": "--size"}
# Which way each setting moves when the output comes out flat (the hint of _flat_warning).
_LESS_SMOOTHING = {"weight": "lower", "drop_prob": "lower", "q": "lower", "bits": "raise", "size": "lower"}
# Largest TV weight the command accepts. Above about 1 the minimizer of a CIFAR-sized image is nearly
# flat and the solver's 160 iterations no longer reach it (relative objective gap 12 % at weight 1,
# 4x at 10, against 1e-4 at the default 0.1); the step rule was tuned for 0.01-0.1 (tv_tuning.md).
_MAX_WEIGHT = 1.0


def stage_params(args: argparse.Namespace) -> dict[str, float]:
    """The method's settings given on the command line, checked; the stage's defaults fill the rest.

    Raises:
        UsageError: a flag of another method, a drop rate of 1 or more, a weight above 1.
    """
    spec = get_purifier_spec(args.method)
    given = {name: getattr(args, name) for name in _STAGE_FLAGS if hasattr(args, name)}
    foreign = [_STAGE_FLAGS[name] for name in given if name not in spec.params]
    if foreign:
        own = [_STAGE_FLAGS[name] for name in _STAGE_FLAGS if name in spec.params]
        raise UsageError(f"{', '.join(foreign)} does not apply to --method {args.method}; it takes "
                         f"{', '.join(own) or 'no settings'}")
    drop = given.get("drop_prob")
    if drop is not None and not 0.0 <= drop < 1.0:
        raise UsageError(f"--drop-prob must be in [0, 1), got {drop:g}: at 1 every pixel is dropped and each "
                         f"channel comes out flat (its mean); the default is {spec.defaults()['drop_prob']:g}")
    weight = given.get("weight")
    if weight is not None and not 0.0 <= weight <= _MAX_WEIGHT:
        raise UsageError(f"--weight must be in [0, {_MAX_WEIGHT:g}], got {weight:g}: larger TV weights flatten the "
                         "image (each channel towards its mean) and the solver's 160 iterations do not converge "
                         f"there; the default {spec.defaults()['weight']:g} was chosen on validation images")
    bits = given.get("bits")
    if bits is not None and not 1 <= bits <= MAX_BITS:
        raise UsageError(f"--bits must be in [1, {MAX_BITS}], got {bits}: the image keeps 2^bits grey levels per "
                         f"channel; the default is {spec.defaults()['bits']}")
    size = given.get("size")
    if size is not None and size < 1:
        raise UsageError(f"--size must be >= 1 (the median window's side; 1 leaves the image as it is), got {size}")
    return given


def _shown(args: argparse.Namespace, params: dict[str, float]) -> dict[str, object]:
    """The settings in effect (given, else the stage's defaults) for the report line."""
    defaults = get_purifier_spec(args.method).defaults()
    return {name: params.get(name, defaults[name]) for name in _STAGE_FLAGS
            if name in defaults and params.get(name, defaults[name]) is not None}


def demo(args: argparse.Namespace) -> int:
    params = stage_params(args)
    images, labels, classes = _load_images(args.n, args.data_dir)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    out = purify(images, args.method, device="cpu", generator=gen, **params)
    seconds = time.perf_counter() - t0
    setting = ", ".join(f"{k}={v}" for k, v in _shown(args, params).items())
    note = " (the first call also loads the compiled TV kernel)" if args.method == "tvm" else ""
    console.info(f"purified {len(images)} images with {args.method}({setting}) in {seconds * 1e3:.0f} ms{note}")
    model = _classifier(args.data_dir)
    before = after = None
    if model is not None:
        before, after = _predict(model, images), _predict(model, out)
    diff = out.astype(np.float64) - images.astype(np.float64)
    console.info(f"{'#':>2}  {'mean |change|':>13}  {'PSNR dB':>7}  {'pixels changed':>14}  prediction")
    for i in range(len(images)):
        mse = np.mean(diff[i] ** 2)
        psnr = float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)
        changed = np.mean(np.abs(diff[i]).max(-1) > 2)
        line = f"{i:>2}  {np.abs(diff[i]).mean():>10.2f}/255  {psnr:>7.2f}  {100 * changed:>13.1f}%"
        if before is not None:
            name = (lambda k: classes[k] if classes else str(k))
            truth = f" (true: {name(labels[i])})" if labels is not None else ""
            line += f"  {name(before[i])} -> {name(after[i])}{truth}"
        console.info(line)
    if before is not None and labels is not None:
        console.info(f"ResNet-56 accuracy on these {len(images)}: {np.mean(before == labels):.0%} before, "
              f"{np.mean(after == labels):.0%} after purification")
    return 0


def _read_image(path: str):
    """Open an image for ``purify image``, in a mode purify() takes, keeping 16-bit grayscale at 16 bits.

    16-bit grayscale PNGs open as ``I;16`` (``I`` in older Pillow, brought to ``I;16`` here, which PNG
    can store); purify() reads them as 0..65535, so the output is a 16-bit PNG too. Converting them to
    RGB, as every other mode is, would clip each value to 255: a white image. Pillow has no 16-bit
    colour mode and reads 16-bit RGB(A) PNGs at 8 bits per channel; a warning says so.
    """
    from PIL import Image

    img = Image.open(path)
    if img.mode == "I":
        lo, hi = img.getextrema()
        if 0 <= lo and hi <= 65535:
            img = img.convert("I;16")
        return img  # out of range: purify() refuses it and says how to scale it
    if img.mode.startswith("I;16"):
        return img
    depth = _png_depth(path) if img.format == "PNG" else None
    if depth is not None and depth[0] == 16:
        console.warning(f"{path}: a 16-bit colour PNG; Pillow reads it at 8 bits per channel, so {img.mode} "
                        "at 8 bits is purified and written")
    if img.mode not in ("L", "RGB", "RGBA"):
        img = img.convert("RGB")
    return img


def _png_depth(path: str) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR chunk, which the format puts first."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def _writable_format(path: Path) -> str:
    """The Pillow format that ``path``'s extension names, if Pillow can write it; else UsageError."""
    from PIL import Image

    Image.init()
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        known = sorted(e for e, f in Image.registered_extensions().items() if f in Image.SAVE)
        raise UsageError(f"cannot write {path}: {path.suffix or 'no extension'} is not an image format Pillow "
                         f"writes; use one of {', '.join(known)} (e.g. .png, lossless)")
    return fmt


def _check_mode_fits(img, path: Path, fmt: str) -> None:
    """Refuse, before purifying, an image whose mode ``fmt`` cannot store (RGBA or 16-bit as JPEG)."""
    from PIL import Image

    try:
        Image.new(img.mode, (1, 1)).save(io.BytesIO(), format=fmt)
    except (OSError, ValueError, KeyError) as err:
        raise OSError(f"cannot write a {img.mode} image as {fmt} ({path}): {err}; use .png, which stores "
                      "every mode purify returns") from None


def _image_jobs(src: Path, dst: Path) -> list[tuple[Path, Path]]:
    """(input, output) pairs: one file, or every image of a folder into a folder under the same names."""
    from PIL import Image

    if not src.is_dir():
        out = dst / src.name if dst.is_dir() else dst
        _writable_format(out)
        return [(src, out)]
    if dst.exists() and not dst.is_dir():
        raise UsageError(f"{src} is a folder, so the output must be a folder too; {dst} is a file")
    if dst.resolve() == src.resolve():
        raise UsageError(f"the output folder is the input folder ({src}): that would overwrite the originals")
    Image.init()
    readable = Image.registered_extensions()
    files = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in readable)
    if not files:
        raise UsageError(f"no image files in {src} (looked for {', '.join(sorted(set(readable))[:8])}, ...)")
    for p in files:
        _writable_format(dst / p.name)
    return [(p, dst / p.name) for p in files]


def _flat_warning(before, after, path: Path, method: str) -> None:
    """Warn when purification washed an image out (a channel keeps < 5 % of its spread)."""
    a = np.asarray(before, dtype=np.float64)
    b = np.asarray(after, dtype=np.float64)
    a, b = (a[..., None], b[..., None]) if a.ndim == 2 else (a, b)
    spread_in, spread_out = a.std(axis=(0, 1)), b.std(axis=(0, 1))
    live = spread_in > 1e-3 * max(float(a.max()), 1.0)
    if live.any() and np.all(spread_out[live] < 0.05 * spread_in[live]):
        console.warning(f"{path}: the output is nearly flat (its pixel spread is "
                        f"{100 * float((spread_out[live] / spread_in[live]).max()):.1f} % of the input's); "
                        f"{_less_smoothing(method)}")


def _less_smoothing(method: str) -> str:
    """``lower --weight or --drop-prob``: the method's own flags that make its output less flat."""
    params = get_purifier_spec(method).params
    by_way: dict[str, list[str]] = {}
    for name, flag in _STAGE_FLAGS.items():
        if name in params:
            by_way.setdefault(_LESS_SMOOTHING[name], []).append(flag)
    return "; ".join(f"{way} {' or '.join(flags)}" for way, flags in by_way.items())


def image(args: argparse.Namespace) -> int:
    params = stage_params(args)
    jobs = _image_jobs(Path(args.input), Path(args.output))   # every output checked before any work
    if Path(args.input).is_dir():
        Path(args.output).mkdir(parents=True, exist_ok=True)
        console.info(f"{len(jobs)} image(s) from {args.input} to {args.output}")
    for src, dst in jobs:
        img = _read_image(str(src))
        fmt = _writable_format(dst)
        _check_mode_fits(img, dst, fmt)
        out = purify(img, args.method, device=args.device, seed=args.seed, **params)
        _flat_warning(img, out, dst, args.method)
        out.save(dst, format=fmt)
        console.info(f"wrote {dst}")
    return 0


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each default, except None and suppressed ones (their help says what happens)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action)


def _common_flags() -> argparse.ArgumentParser:
    tvm, dct = get_purifier_spec("tvm").defaults(), get_purifier_spec("dct").defaults()
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--method", default="tvm", choices=list_purifiers(), help="purification stage")
    # Suppressed defaults: a flag is known to be given only if it is set, so another method's is refused.
    common.add_argument("--weight", type=float, default=argparse.SUPPRESS,
                        help=f"tvm: TV weight lambda in [0, {_MAX_WEIGHT:g}] (default: {tvm['weight']:g}, "
                             "chosen on validation images)")
    common.add_argument("--drop-prob", type=float, default=argparse.SUPPRESS,
                        help=f"tvm: pixel drop probability in [0, 1) (default: {tvm['drop_prob']:g})")
    common.add_argument("--q", type=float, default=argparse.SUPPRESS,
                        help=f"dct, gcln: quantization step on the 0..255 scale (default: dct {dct['q']:g}, "
                             "gcln the generator's own)")
    common.add_argument("--bits", type=int, default=argparse.SUPPRESS,
                        help=f"bit_depth: bits per channel in [1, {MAX_BITS}] (default: "
                             f"{get_purifier_spec('bit_depth').defaults()['bits']})")
    common.add_argument("--size", type=int, default=argparse.SUPPRESS,
                        help=f"median_smooth: side of the median window (default: "
                             f"{get_purifier_spec('median_smooth').defaults()['size']})")
    common.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch and the TV kernel (default: torch's, one per core; on a "
                             "machine busy with other jobs 1 is often much faster)")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="purify", description="Input purification for image classifiers.",
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    common = _common_flags()
    d = sub.add_parser("demo", parents=[common], formatter_class=_HelpFormatter,
                       help="purify a few CIFAR-10 test images and show what changed")
    d.add_argument("--n", type=int, default=8, help="number of images")
    d.add_argument("--data-dir", default=None, help="folder with cifar10_test.npz (default: $PURIFY_DATA_DIR)")
    d.add_argument("--seed", type=int, default=0, help="seed of the random drop masks")
    d.set_defaults(func=demo)
    i = sub.add_parser("image", parents=[common], formatter_class=_HelpFormatter,
                       help="purify an image file, or every image of a folder into another folder")
    i.add_argument("input", help="an image file, or a folder of them")
    i.add_argument("output", help="the image file to write (its extension picks the format), or a folder: the "
                                  "input's file names are kept")
    i.add_argument("--seed", type=int, default=None,
                   help="derive each image's randomness from this seed and the image itself: the same image, the "
                        "same output, alone or in a folder (default: fresh randomness)")
    i.add_argument("--device", default=None, help="cpu or cuda[:N] (default: CUDA when available)")
    i.set_defaults(func=image)
    return parser


@contextlib.contextmanager
def _console():
    """Attach stdout / stderr handlers to the CLI logger for the duration of one command."""
    to_stdout = logging.StreamHandler(sys.stdout)
    to_stdout.addFilter(lambda record: record.levelno < logging.WARNING)
    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setLevel(logging.WARNING)
    handlers = (to_stdout, to_stderr)
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(message)s"))
        console.addHandler(handler)
    console.setLevel(logging.INFO)
    console.propagate = False
    try:
        yield
    finally:
        for handler in handlers:
            console.removeHandler(handler)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with _console():
        if getattr(args, "n", 1) < 1:
            console.error("purify: --n must be >= 1")
            return 2
        if args.threads is not None and args.threads < 1:
            console.error(f"purify: --threads must be >= 1, got {args.threads}")
            return 2
        try:
            if args.threads is not None:
                set_threads(args.threads)
            return args.func(args)
        except UsageError as err:
            console.error(f"purify {args.command}: {err}")
            return 2
        except (PurifyError, OSError) as err:
            console.error(f"purify: error: {err}")
            return 1


if __name__ == "__main__":
    sys.exit(main())
