"""Command line: ``purify demo`` (the built-in default job) and ``purify image IN OUT``.

``purify demo`` purifies a few CIFAR-10 test images (from the data directory, or
generated images when there is none), prints what changed per image, and, when
the pretrained ResNet-56 checkpoint can be found, what the classifier predicts
before and after. (The ONNX export of a served model is ``purify-export``, in the serving package.)
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time

import numpy as np
import torch

from purify.api import purify
from purify.errors import DataNotFoundError, PurifyError
from purify.registry import list_purifiers

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


def demo(args: argparse.Namespace) -> int:
    images, labels, classes = _load_images(args.n, args.data_dir)
    gen = torch.Generator().manual_seed(args.seed)
    params = {"weight": args.weight, "drop_prob": args.drop_prob} if args.method == "tvm" else {}
    if args.method == "dct":
        params = {"q": args.q}
    t0 = time.perf_counter()
    out = purify(images, args.method, device="cpu", generator=gen, **params)
    seconds = time.perf_counter() - t0
    setting = ", ".join(f"{k}={v}" for k, v in params.items())
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


def image(args: argparse.Namespace) -> int:
    img = _read_image(args.input)
    gen = None if args.seed is None else torch.Generator().manual_seed(args.seed)
    params = {"weight": args.weight, "drop_prob": args.drop_prob} if args.method == "tvm" else {"q": args.q}
    purify(img, args.method, device=args.device, generator=gen, **params).save(args.output)
    console.info(f"wrote {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="purify", description="Input purification for image classifiers.")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--method", default="tvm", choices=list_purifiers())
    common.add_argument("--weight", type=float, default=0.03, help="TV weight lambda (tvm)")
    common.add_argument("--drop-prob", type=float, default=0.5, help="pixel drop probability (tvm)")
    common.add_argument("--q", type=float, default=10.0, help="quantization step on the 0..255 scale (dct)")
    d = sub.add_parser("demo", parents=[common], help="purify a few CIFAR-10 test images and show what changed")
    d.add_argument("--n", type=int, default=8, help="number of images")
    d.add_argument("--data-dir", default=None, help="folder with cifar10_test.npz (default: $PURIFY_DATA_DIR)")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=demo)
    i = sub.add_parser("image", parents=[common], help="purify one image file")
    i.add_argument("input")
    i.add_argument("output")
    i.add_argument("--seed", type=int, default=None)
    i.add_argument("--device", default=None)
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
        try:
            return args.func(args)
        except (PurifyError, OSError) as err:
            console.error(f"purify: error: {err}")
            return 1


if __name__ == "__main__":
    sys.exit(main())
