"""``purify-export``: a served model's config as one ONNX graph, verified against torch before success.

The config's defended classifier (the library's :class:`~purify.pipeline.DefendedClassifier`,
built exactly as the torch backend builds it) goes to :func:`serving.onnx_graph.export_onnx`,
which traces it (TVM's iteration unrolled, DCT quantization, the cleaning generator, the
classifier and the head), writes the graph only after ONNX Runtime and torch agree on real
CIFAR-10 test images, and documents the graph's inputs and the verification rule (a rounding
stage is compared where the comparison is well defined). The graph's metadata records the
config's stages and class names, and the ONNX backend refuses a config whose stages differ.

    purify-export -o cifar10_tvm.onnx --data-dir ../shared/data          # the built-in default
    purify-export --config model.toml -o model.onnx --data-dir ../shared/data

Example:
    >>> from serving.config import load_config, DEFAULT_CONFIG
    >>> report = export_config(load_config(DEFAULT_CONFIG), "/tmp/m.onnx", data_dir="../shared/data")  # doctest: +SKIP
    >>> report.max_abs_diff <= 1e-4  # doctest: +SKIP
    True
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from torch import Tensor

from purify.errors import PurifyError
from serving.onnx_graph import ExportError, ExportReport, export_onnx
from serving.backends import build_defended_model
from serving.config import DEFAULT_CONFIG, ServeConfig, load_config
from serving.errors import ConfigError

__all__ = ["ExportError", "ExportReport", "export_config", "main"]


def _real_images(cfg: ServeConfig, data_dir: str | os.PathLike | None, n: int) -> Tensor:
    from purify.data import load_dataset

    if cfg.input.chw != (3, 32, 32):
        raise ConfigError(f"{cfg.source}: input.shape: verification uses CIFAR-10 images (3, 32, 32), "
                          f"the model takes {cfg.input.chw}")
    x, _ = load_dataset("cifar10", "test", data_dir=data_dir).tensors(slice(0, n))
    return x


def export_config(cfg: ServeConfig, path: str | os.PathLike, *, data_dir: str | os.PathLike | None = None,
                  n_images: int = 64, tol: float = 1e-4, opset: int = 17, seed: int = 0) -> ExportReport:
    """Export ``cfg``'s defended model to ``path`` and verify it on ``n_images`` CIFAR-10 test images.

    Raises:
        ConfigError (the config cannot be exported: an ONNX classifier, a stage setting that cannot
        be traced), DataNotFoundError (no real images to verify on), ExportError (the graph disagrees
        with torch; nothing is left at ``path``).
    """
    if cfg.onnx is not None:
        raise ConfigError(f"{cfg.source}: classifier: export needs a registry or factory classifier (it is already ONNX)")
    model, classes = build_defended_model(cfg)
    images = _real_images(cfg, data_dir, n_images)
    meta = {"purify_stages": json.dumps([{"name": s.name, "params": dict(s.params)} for s in cfg.stages]),
            "purify_classes": json.dumps(list(classes) if classes else []),
            "purify_classifier": cfg.registry or cfg.factory, "purify_head": cfg.head.type}
    try:
        return export_onnx(model, path, images, tol=tol, opset=opset, seed=seed, metadata=meta)
    except ExportError as err:
        if "cannot be traced" in str(err):
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.n < 2:
        _say("purify-export: --n must be >= 2", error=True)
        return 2
    try:
        cfg = load_config(args.config or DEFAULT_CONFIG)
        _say(f"exporting {cfg.name} ({cfg.source}) to {args.output}; verifying on {args.n} CIFAR-10 test images")
        t0 = time.perf_counter()
        report = export_config(cfg, args.output, data_dir=args.data_dir, n_images=args.n, tol=args.tol,
                               opset=args.opset)
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
