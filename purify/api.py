"""``purify()``: one call from an image (numpy, torch or PIL) to its purified twin.

The function converts the input to a float ``(B, C, H, W)`` tensor in [0, 1],
runs a :class:`~purify.pipeline.Pipeline`, and converts back to the caller's
kind, layout and dtype:

=====================  =======================================  ==================================
input                  layout                                   values
=====================  =======================================  ==================================
``torch.Tensor``       ``(B, C, H, W)`` or ``(C, H, W)``        float in [0, 1], or uint8 0..255
``numpy.ndarray``      ``(H, W)``, ``(H, W, C)``, ``(N, H, W, C)``  float in [0, 1], or uint8 0..255
``PIL.Image.Image``    modes L, RGB, RGBA (alpha kept as is)     0..255
=====================  =======================================  ==================================

numpy arrays are channels-last with C in 1..4 (a 3-D array is one ``(H, W, C)``
image; a batch of grayscale images is ``(N, H, W, 1)``); torch tensors are
channels-first. uint8 results are rounded to the nearest integer.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch
from torch import Tensor

from purify._checks import check_finite_unit_range, check_generator
from purify.errors import DTypeError, ShapeError
from purify.pipeline import Pipeline, StageSpec

__all__ = ["purify"]

_FN = "purify"
_NUMPY_FLOATS = (np.float16, np.float32, np.float64)
_PIL_MODES = ("L", "RGB", "RGBA")


def purify(x: Any, /, method: StageSpec | Iterable[StageSpec] | Pipeline = "tvm", *,
           device: str | torch.device | None = None, generator: torch.Generator | None = None,
           **params: Any) -> Any:
    """Purify an image or a batch of images; returns the same kind, layout and dtype.

    Args:
        x: a torch tensor, numpy array or PIL image (see the module docstring for layouts).
        method: a registered purifier name (see :func:`purify.list_purifiers`), a list of
            stages such as ``["tvm", ("dct", {"q": 10})]``, or a :class:`Pipeline`.
        device: where to run; default CUDA when available, else CPU. torch results come
            back on the input's device.
        generator: randomness for randomized stages (e.g. the TVM drop mask), on ``device``.
        **params: the stage's keyword parameters when ``method`` is a single name,
            e.g. ``purify(x, "tvm", weight=0.05)``.

    Raises:
        ShapeError, RangeError, DTypeError, UnknownNameError
    Example:
        >>> import numpy as np
        >>> img = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
        >>> out = purify(img, "tvm", weight=0.05, device="cpu")
        >>> out.shape, out.dtype
        ((32, 32, 3), dtype('uint8'))
    """
    pipeline = _as_pipeline(method, params)
    run_device = _run_device(pipeline, user_pipeline=isinstance(method, Pipeline), device=device)
    batch, restore = _to_batch(x)
    if batch.shape[0] == 0:
        return restore(batch)
    # The one check of the call (one device sync); the stages then run their unchecked cores.
    check_finite_unit_range(_FN, batch)
    batch = batch.to(run_device)
    check_generator(_FN, generator, batch.device)
    return restore(pipeline.run(batch, generator=generator))


def _as_pipeline(method: Any, params: dict[str, Any]) -> Pipeline:
    if isinstance(method, Pipeline):
        if params:
            raise DTypeError(f"{_FN}: parameters {sorted(params)} cannot be applied to a ready-made Pipeline")
        return method
    if isinstance(method, str):
        return Pipeline.from_spec([(method, params)])
    if params:
        raise DTypeError(
            f"{_FN}: keyword parameters {sorted(params)} are ambiguous with a list of stages; "
            "give them per stage, e.g. ['tvm', ('dct', {'q': 10})]"
        )
    if isinstance(method, (list, tuple)):
        return Pipeline.from_spec(method)
    raise DTypeError(f"{_FN}: expected method to be a name, a list of stages or a Pipeline, got {type(method).__name__}")


def _run_device(pipeline: Pipeline, *, user_pipeline: bool, device: str | torch.device | None) -> torch.device:
    """Where to run: a pipeline with weights (e.g. the cleaning generator) runs where its weights are.

    A pipeline built here is moved to the device; a caller's own Pipeline is never moved behind
    its back: without ``device=`` it runs where its weights live, and a different ``device=`` is refused.
    """
    weights_on = next((t.device for t in (*pipeline.parameters(), *pipeline.buffers())), None)
    if not user_pipeline:
        run_device = _resolve_device(device)
        return run_device if weights_on is None or _same(weights_on, run_device) else _moved(pipeline, run_device)
    if weights_on is None:
        return _resolve_device(device)
    if device is not None and not _same(_resolve_device(device), weights_on):
        raise DTypeError(f"{_FN}: the Pipeline's weights are on {weights_on}, but device={device!r} was asked for; "
                         f"move it first with pipeline.to({str(_resolve_device(device))!r})")
    return weights_on


def _same(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def _moved(pipeline: Pipeline, device: torch.device) -> torch.device:
    pipeline.to(device)
    return device


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise DTypeError(f"{_FN}: invalid device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DTypeError(f"{_FN}: device {device!r} requested but CUDA is not available; use device='cpu'")
    return dev


def _to_batch(x: Any):
    """Convert to a float (B, C, H, W) tensor and return it with a function that converts back."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        Image = None
    if isinstance(x, Tensor):
        return _torch_to_batch(x)
    if isinstance(x, np.ndarray):
        return _numpy_to_batch(x)
    if Image is not None and isinstance(x, Image.Image):
        return _pil_to_batch(x)
    raise DTypeError(f"{_FN}: expected a torch.Tensor, numpy.ndarray or PIL.Image, got {type(x).__name__}; "
                     "convert lists with numpy.asarray(x)")


def _check_spatial(shape: tuple[int, ...], h: int, w: int, c: int, layout: str) -> None:
    if h == 0 or w == 0 or c == 0:
        raise ShapeError(f"{_FN}: expected non-empty images, got shape {shape} ({layout}); H, W and C must be >= 1")


def _torch_to_batch(x: Tensor):
    if x.dim() not in (3, 4):
        raise ShapeError(f"{_FN}: expected a tensor of shape (B, C, H, W) or (C, H, W), got {tuple(x.shape)}")
    squeeze = x.dim() == 3
    xb = x[None] if squeeze else x
    _check_spatial(tuple(x.shape), xb.shape[2], xb.shape[3], xb.shape[1], "torch layout is channels-first")
    if x.dtype == torch.uint8:
        batch = xb.float() / 255.0
    elif x.is_floating_point():
        batch = xb
    else:
        raise DTypeError(f"{_FN}: expected a float tensor in [0, 1] or a uint8 tensor, got {x.dtype}")
    in_dtype, in_device = x.dtype, x.device

    def restore(out: Tensor) -> Tensor:
        out = out.to(in_device)
        out = _float_to_uint8_t(out) if in_dtype == torch.uint8 else out.to(in_dtype)
        return out[0] if squeeze else out

    return batch, restore


def _float_to_uint8_t(out: Tensor) -> Tensor:
    return (out.float() * 255.0).round_().clamp_(0, 255).to(torch.uint8)


def _numpy_to_batch(x: np.ndarray):
    if x.dtype != np.uint8 and x.dtype.type not in _NUMPY_FLOATS:
        hint = "scale to uint8 0..255 or float 0..1"
        if x.dtype == np.bool_:
            hint = "convert with x.astype(np.float32)"
        raise DTypeError(f"{_FN}: expected a uint8 (0..255) or float (0..1) array, got dtype {x.dtype}; {hint}")
    if x.ndim == 2:
        nhwc = x[None, :, :, None]
    elif x.ndim == 3:
        nhwc = x[None]
    elif x.ndim == 4:
        nhwc = x
    else:
        raise ShapeError(f"{_FN}: expected an array of shape (H, W), (H, W, C) or (N, H, W, C), got {x.shape}")
    n, h, w, c = nhwc.shape
    _check_spatial(x.shape, h, w, c, "numpy layout is channels-last")
    if c > 4:
        raise ShapeError(
            f"{_FN}: expected channels-last images with C <= 4, got shape {x.shape}; a 3-D array is one "
            "(H, W, C) image: pass a batch of grayscale images as (N, H, W, 1)"
        )
    work = np.float64 if x.dtype == np.float64 else np.float32
    arr = np.ascontiguousarray(nhwc).astype(work, copy=False)
    if x.dtype == np.uint8:
        arr = arr / work(255.0)
    batch = torch.from_numpy(np.array(arr.transpose(0, 3, 1, 2), order="C"))  # a copy: the input stays untouched
    in_dtype, in_ndim = x.dtype, x.ndim

    def restore(out: Tensor) -> np.ndarray:
        res = out.detach().cpu().permute(0, 2, 3, 1).numpy()
        if in_dtype == np.uint8:
            res = np.clip(np.rint(res * 255.0), 0, 255).astype(np.uint8)
        else:
            res = res.astype(in_dtype, copy=False)
        if in_ndim == 2:
            return res[0, :, :, 0]
        return res[0] if in_ndim == 3 else res

    return batch, restore


def _pil_to_batch(img):
    from PIL import Image

    if img.mode not in _PIL_MODES:
        raise DTypeError(f"{_FN}: unsupported PIL mode {img.mode!r}; expected one of {_PIL_MODES}; "
                         "convert with img.convert('RGB')")
    if img.width == 0 or img.height == 0:
        raise ShapeError(f"{_FN}: expected a non-empty image, got size {img.size}")
    arr = np.asarray(img)
    alpha = None
    if img.mode == "RGBA":
        arr, alpha = arr[..., :3], arr[..., 3]
    batch, restore_np = _numpy_to_batch(np.ascontiguousarray(arr))
    mode = img.mode

    def restore(out: Tensor):
        res = restore_np(out)
        if alpha is not None:
            res = np.concatenate([res, alpha[..., None]], axis=-1)
        return Image.fromarray(res, mode=mode)

    return batch, restore
