"""A classifier exported to ONNX, run by ONNX Runtime behind the ``nn.Module`` interface the harness uses.

An ONNX graph has no gradients here: attacks that differentiate the model cannot attack it. The
config checks refuse those cells before any work (:func:`benchmarks.harness.inputs.check_onnx_attacks`);
what remains sound is a score-based attack (``square``, which only reads the scores), under any
threat model, and transfer from a torch ``[substitute]`` (``substitute`` / ``blackbox``). Should a
gradient still be asked for, :meth:`OnnxClassifier.forward` raises instead of returning zeros.

The graph is the classifier alone: images ``(B, C, H, W)`` float32 in, scores ``(B, K)`` out (its
first output). A graph written by ``purify-export`` holds the whole defended model and is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from purify.errors import DTypeError, NonDifferentiableError, ShapeError

__all__ = ["OnnxClassifier"]


class OnnxClassifier(nn.Module):
    """``model(x)`` = the ONNX graph's first output on ``x``, computed by ONNX Runtime on the CPU.

    Args:
        path: the ``.onnx`` file: one float input ``(B, C, H, W)`` (B may be fixed: batches are then
            run in chunks of that size), scores ``(B, K)`` as its first output.
        threads: ONNX Runtime's intra-op threads (default: torch's current thread count).

    Shape:
        x: (B, C, H, W) float in [0, 1] (or normalized, behind :class:`~purify.models.Normalized`);
        output: (B, K) float32 on x's device.
    Raises:
        DTypeError: the file is not a loadable graph, or it is a ``purify-export`` defended model.
        NonDifferentiableError: ``x`` requires a gradient (ONNX Runtime cannot give one).
    Example:
        >>> model = OnnxClassifier("mynet.onnx")  # doctest: +SKIP
        >>> model(torch.rand(2, 3, 224, 224)).shape  # doctest: +SKIP
        torch.Size([2, 1000])
    """

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        super().__init__()
        fn = "OnnxClassifier"
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise DTypeError(f"{fn}: an ONNX model needs onnxruntime ({e}); pip install -e \".[serve]\"") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise DTypeError(f"{fn}: {path} cannot be loaded by onnxruntime: {e}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if "purify_stages" in meta:
            raise DTypeError(f"{fn}: {path} was written by purify-export and holds the defended model (stages "
                             f"{json.loads(meta['purify_stages'])}); give the classifier alone: the harness adds "
                             "the defense itself")
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ShapeError(f"{fn}: expected a graph with one input (the images), {path} has "
                             f"{[i.name for i in inputs]}")
        self.input_name = inputs[0].name
        batch = inputs[0].shape[0] if inputs[0].shape else None
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
        self.path = str(path)

    def forward(self, x: Tensor) -> Tensor:
        if x.requires_grad and torch.is_grad_enabled():
            raise NonDifferentiableError(
                f"OnnxClassifier: {self.path} is an ONNX graph and has no gradients; attack it with a "
                "score-based attack (square) or by transfer from a torch [substitute]")
        a = x.detach().to("cpu", torch.float32).numpy()
        step = self.fixed_batch or max(len(a), 1)
        outs = []
        for start in range(0, len(a), step):
            chunk = a[start:start + step]
            n = len(chunk)
            if n < step and self.fixed_batch:          # a fixed-batch graph: pad the last chunk, drop the padding
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - n, axis=0)])
            outs.append(self.session.run(None, {self.input_name: np.ascontiguousarray(chunk)})[0][:n])
        out = np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(x.device)

    def extra_repr(self) -> str:
        return f"path={self.path!r}"
