"""``purify-export``: a served model's config as one ONNX graph, verified against torch before success.

The config's defended classifier (the library's :class:`~purify.pipeline.DefendedClassifier`,
built exactly as the torch backend builds it) goes to :func:`serving.onnx_graph.export_onnx`,
which traces it (TVM's iteration unrolled, DCT quantization, the cleaning generator, the
classifier and the head), writes the graph only after ONNX Runtime and torch agree on real
CIFAR-10 test images, and documents the graph's inputs and the verification rule (a rounding
stage is compared where the comparison is well defined). The graph's metadata records the
config's stages and class names, and the ONNX backend refuses a config whose stages differ.

    purify-export -o cifar10_tvm.onnx --data-dir ../shared/data          # the built-in default
    purify-export --config model.toml -o model.onnx --data-dir ../shared/data --threads 1

It says what it is doing as it goes: one line per step (building the model, loading the
verification images, tracing and verifying, then what was written) and, while the trace and the
verification run (54 s for the default config with ``--threads 1`` on a 2-core machine running two
other jobs: TVM's 160 iterations are unrolled), a line every :data:`HEARTBEAT_S` seconds with the
time spent so far.

Example:
    >>> from serving.config import load_config, DEFAULT_CONFIG
    >>> report = export_config(load_config(DEFAULT_CONFIG), "/tmp/m.onnx", data_dir="../shared/data")  # doctest: +SKIP
    >>> report.max_abs_diff <= 1e-4  # doctest: +SKIP
    True
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from typing import Callable, Iterator

from torch import Tensor

from purify.errors import PurifyError
from purify.registry import get_purifier_spec
from purify.tv import set_threads
from .onnx_graph import ExportError, ExportReport, export_onnx
from .backends import build_defended_model
from .config import DEFAULT_CONFIG, ServeConfig, load_config
from .errors import ConfigError

__all__ = ["ExportError", "ExportReport", "export_config", "main", "HEARTBEAT_S"]

#: Seconds between the "still tracing and verifying" lines of a running export.
HEARTBEAT_S = 30.0


def _real_images(cfg: ServeConfig, data_dir: str | os.PathLike | None, n: int) -> Tensor:
    from purify.data import load_dataset

    if cfg.input.chw != (3, 32, 32):
        raise ConfigError(f"{cfg.source}: input.shape: verification uses CIFAR-10 images (3, 32, 32), "
                          f"the model takes {cfg.input.chw}")
    x, _ = load_dataset("cifar10", "test", data_dir=data_dir).tensors(slice(0, n))
    return x


@contextlib.contextmanager
def _heartbeat(say: Callable[[str], None], what: str, every: float) -> Iterator[None]:
    """Call ``say`` every ``every`` seconds with the time spent on ``what`` until the block ends."""
    done = threading.Event()
    t0 = time.perf_counter()

    def beat() -> None:
        while not done.wait(every):
            say(f"      ... still {what} ({time.perf_counter() - t0:.0f} s)")

    thread = threading.Thread(target=beat, name="purify-export-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def export_config(cfg: ServeConfig, path: str | os.PathLike, *, data_dir: str | os.PathLike | None = None,
                  n_images: int = 64, tol: float = 1e-4, opset: int = 17, seed: int = 0,
                  progress: Callable[[str], None] | None = None) -> ExportReport:
    """Export ``cfg``'s defended model to ``path`` and verify it on ``n_images`` CIFAR-10 test images.

    ``progress``: called with one line per step, and every :data:`HEARTBEAT_S` seconds during the
    trace and the verification (the long part); None is silent.

    Raises:
        ConfigError (the config cannot be exported: an ONNX classifier, a stage setting that cannot
        be traced, a rounding stage without a per-sample step ``q`` such as bit_depth), DataNotFoundError
        (no real images to verify on), ExportError (the graph disagrees with torch; nothing is left at
        ``path``).
    """
    say = progress or (lambda line: None)
    if cfg.onnx is not None:
        raise ConfigError(f"{cfg.source}: classifier: export needs a registry or factory classifier (it is already ONNX)")
    stages = " -> ".join(s.name for s in cfg.stages) or "no stages"
    say(f"[1/3] building the defended model ({stages} -> {cfg.registry or cfg.factory} -> {cfg.head.type})")
    model, classes = build_defended_model(cfg)
    say(f"[2/3] loading {n_images} CIFAR-10 test images to verify on")
    images = _real_images(cfg, data_dir, n_images)
    meta = {"purify_stages": json.dumps([{"name": s.name, "params": dict(s.params)} for s in cfg.stages]),
            "purify_classes": json.dumps(list(classes) if classes else []),
            "purify_classifier": cfg.registry or cfg.factory, "purify_head": cfg.head.type}
    rounds = any(get_purifier_spec(s.name).rounds for s in cfg.stages)
    passes = "in two passes (rounding made negligible, then as deployed)" if rounds else "in one pass"
    slow = " (minutes: TVM's iterations are unrolled)" if any(s.name == "tvm" for s in cfg.stages) else ""
    say(f"[3/3] tracing the model into ONNX and checking it against torch {passes} at batch sizes {len(images)} "
        f"and 1; the file is written only if they agree{slow}")
    try:
        with _heartbeat(say, "tracing and verifying", HEARTBEAT_S) if progress else contextlib.nullcontext():
            return export_onnx(model, path, images, tol=tol, opset=opset, seed=seed, metadata=meta)
    except ExportError as err:
        if "cannot be traced" in str(err) or "cannot be verified" in str(err):
            raise ConfigError(f"{cfg.source}: stages: {err}") from err
        raise


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="purify-export", description="Write a served model (stages, classifier, "
                                "head) as one ONNX graph, verified against torch on real images.")
    p.add_argument("--config", default=None, help=f"model config (.toml / .yaml; default: {DEFAULT_CONFIG.name})")
    p.add_argument("--output", "-o", default="purify_model.onnx", help="the .onnx file to write")
    p.add_argument("--data-dir", default=None, help="folder with cifar10_test.npz (default: $PURIFY_DATA_DIR)")
    p.add_argument("--n", type=int, default=64, help="real images to verify on (>= 2)")
    p.add_argument("--tol", type=float, default=1e-4,
                   help="largest accepted |onnxruntime - torch| where the comparison is well defined")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch and the TV kernel (purify.tv.set_threads; default: one per core; "
                        "on a machine busy with other jobs 1 is often much faster)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.n < 2:
        _say("purify-export: --n must be >= 2", error=True)
        return 2
    if args.threads is not None and args.threads < 1:
        _say(f"purify-export: --threads must be >= 1, got {args.threads}", error=True)
        return 2
    try:
        if args.threads is not None:
            set_threads(args.threads)
        cfg = load_config(args.config or DEFAULT_CONFIG)
        _say(f"exporting {cfg.name} ({cfg.source}) to {args.output}; verifying on {args.n} CIFAR-10 test images")
        t0 = time.perf_counter()
        report = export_config(cfg, args.output, data_dir=args.data_dir, n_images=args.n, tol=args.tol,
                               opset=args.opset, progress=lambda line: _say(line))
    except (PurifyError, OSError) as err:
        _say(f"purify-export: error: {err}", error=True)
        return 1
    flips = (f"; {report.rounding_flips} image(s) within rounding noise of a quantization boundary differ by up to "
             f"{report.flip_max_abs_diff:.2e}") if report.rounding_flips else ""
    _say(f"wrote {report.path} ({report.size_bytes / 1e6:.1f} MB) in {time.perf_counter() - t0:.0f} s: max "
         f"|onnxruntime - torch| = {report.max_abs_diff:.2e} <= {args.tol:g} on {report.images} real images (batch "
         f"sizes {', '.join(map(str, report.batch_sizes))}; {', '.join(report.providers)}){flips}")
    return 0


def _say(message: str, *, error: bool = False) -> None:
    """The command's report: a CLI's output, on stdout (errors on stderr)."""
    stream = sys.stderr if error else sys.stdout
    stream.write(message + "\n")
    stream.flush()


if __name__ == "__main__":
    sys.exit(main())
