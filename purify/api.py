"""``purify()``: one call from an image (numpy, torch or PIL) to its purified twin.

The function converts the input to a float ``(B, C, H, W)`` tensor in [0, 1],
runs a :class:`~purify.pipeline.Pipeline`, and converts back to the caller's
kind, layout and dtype:

=====================  ===========================================  ====================================
input                  layout                                       values
=====================  ===========================================  ====================================
``torch.Tensor``       ``(B, C, H, W)`` or ``(C, H, W)``            float in [0, 1], or uint8 0..255
``numpy.ndarray``      ``(H, W)``, ``(H, W, C)``, ``(N, H, W, C)``  float in [0, 1], uint8 0..255, or
                                                                    uint16 0..65535
``PIL.Image.Image``    modes L, RGB, RGBA (alpha kept as is);       0..255;
                       16-bit I;16, I;16B, I;16L, I (16-bit PNGs)   0..65535
=====================  ===========================================  ====================================

Every layout has C in 1..4. numpy arrays are channels-last (a 3-D array is one ``(H, W, C)``
image; a batch of grayscale images is ``(N, H, W, 1)``); torch tensors are channels-first, and
one whose channel axis is longer than 4 is refused with a ShapeError (a channels-last
``(B, H, W, C)`` tensor would otherwise be read as H channels); use ``x.permute(0, 3, 1, 2)``, or
call the stage itself (``tv_minimize``, a ``Pipeline``) for other channel counts. Integer
results are rounded to the nearest integer.

Randomness: from ``generator=`` (a stream consumed call after call), else torch's global RNG;
or, with ``seed=``, from each image itself: image i's random inputs (TVM's drop mask) come from
a generator seeded with a hash of ``seed`` and the image's [0, 1] values, so the same image gives
the same output whatever its batch, its position in it, the call order or the process (a
DataLoader worker, say); masks are drawn on the CPU, so the device does not change them either.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable

import numpy as np
import torch
from torch import Tensor, nn

from purify._checks import check_device, check_finite_unit_range, check_generator
from purify.errors import DeviceError, DTypeError, RangeError, ShapeError
from purify.pipeline import Pipeline, StageLike, as_pipeline

__all__ = ["purify"]

_FN = "purify"
_NUMPY_FLOATS = (np.float16, np.float32, np.float64)
_MAX_CHANNELS = 4
_PIL_MODES = ("L", "RGB", "RGBA")
# 16-bit PIL modes (16-bit PNGs open as I;16, or as I in older Pillow) and their numpy byte order.
_PIL_16BIT = {"I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2", "I;16N": "=u2", "I": "=i4"}


def purify(x: Any, /, method: StageLike | Iterable[StageLike] | Pipeline = "tvm", *,
           device: str | torch.device | None = None, generator: torch.Generator | None = None,
           seed: int | None = None, **params: Any) -> Any:
    """Purify an image or a batch of images; returns the same kind, layout and dtype.

    Args:
        x: a torch tensor, numpy array or PIL image (see the module docstring for layouts).
        method: a registered purifier name (see :func:`purify.list_purifiers`), a list of
            stages such as ``["tvm", ("dct", {"q": 10})]``, a registered stage's module
            (``TVMinimize(weight=0.1)``), or a :class:`Pipeline`.
        device: where to run; default CUDA when available, else CPU. torch results come
            back on the input's device.
        generator: randomness for randomized stages (e.g. the TVM drop mask), on ``device``.
        seed: instead of ``generator``: derive each image's randomness from ``seed`` and the
            image itself (the module docstring says how), so equal images give equal outputs.
        **params: the stage's keyword parameters when ``method`` is a single name,
            e.g. ``purify(x, "tvm", weight=0.05)``; the rest keep the stage's defaults (TVM: weight
            0.1, drop_prob 0.3, chosen on validation images: :data:`purify.tv.DEFAULT_TV_WEIGHT`).

    Raises:
        ShapeError, RangeError, DTypeError, UnknownNameError, DeviceError
    Example:
        >>> import numpy as np
        >>> img = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
        >>> out = purify(img, "tvm", weight=0.05, device="cpu")
        >>> out.shape, out.dtype
        ((32, 32, 3), dtype('uint8'))
        >>> np.array_equal(purify(img, seed=7, device="cpu"), purify(img, seed=7, device="cpu"))
        True
    """
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise DTypeError(f"{_FN}: expected seed to be an int or None, got {type(seed).__name__}")
    if seed is not None and generator is not None:
        raise DTypeError(f"{_FN}: give generator or seed, not both; seed derives each image's own generator")
    pipeline = _as_pipeline(method, params)
    run_device = _run_device(pipeline, user_pipeline=not _built_from_names(method), device=device)
    batch, restore = _to_batch(x)
    if batch.shape[0] == 0:
        return restore(batch)
    # The one check of the call (one device sync); the stages then run their unchecked cores.
    check_finite_unit_range(_FN, batch)
    drawn = _seeded_inputs(pipeline, batch, seed) if seed is not None and pipeline.randomized else None
    batch = batch.to(run_device)
    check_generator(_FN, generator, batch.device)
    if drawn is not None:
        drawn = [{k: v.to(run_device) if isinstance(v, Tensor) else v for k, v in d.items()} for d in drawn]
    return restore(pipeline.run(batch, generator=generator, overrides=drawn))


def _as_pipeline(method: Any, params: dict[str, Any]) -> Pipeline:
    if isinstance(method, str):
        return Pipeline.from_spec([(method, params)])
    if params:
        kind = "a ready-made stage or Pipeline" if isinstance(method, nn.Module) else "a list of stages"
        raise DTypeError(f"{_FN}: keyword parameters {sorted(params)} cannot be applied to {kind}; give them per "
                         "stage, e.g. ['tvm', ('dct', {'q': 10})], or to the module you build")
    return as_pipeline(method, fn=_FN)


def _built_from_names(method: Any) -> bool:
    """True when purify() built every stage itself (so it may move them); a caller's modules stay put."""
    if isinstance(method, (str, tuple)):
        return True
    return isinstance(method, list) and all(isinstance(m, (str, tuple)) for m in method)


def _seeded_inputs(pipeline: Pipeline, batch: Tensor, seed: int) -> list[dict[str, Any]]:
    """The pipeline's random inputs, image i's drawn from a CPU generator seeded by (seed, image i).

    Image by image, so that an image's draw never depends on its batch-mates; drawn on the CPU,
    so it does not depend on the device either.
    """
    cpu = batch.detach().cpu()
    per_image = []
    for i in range(cpu.shape[0]):
        one = cpu[i:i + 1].contiguous()
        digest = hashlib.blake2b(f"{seed}|{tuple(one.shape)}|{one.dtype}|".encode(), digest_size=8,
                                 person=b"purify.seed.v1")
        digest.update(one.view(torch.uint8).numpy().tobytes())
        gen = torch.Generator().manual_seed(int.from_bytes(digest.digest(), "little") >> 1)
        per_image.append(pipeline.draw_inputs(one, generator=gen))
    merged = []
    for stage in range(len(pipeline.stages)):
        inputs = {}
        for key in per_image[0][stage]:
            values = [d[stage][key] for d in per_image]
            # A fixed input (a mask given at construction) comes back as the same object for every image.
            same = all(v is values[0] for v in values)
            inputs[key] = values[0] if same else torch.cat(values)
        merged.append(inputs)
    return merged


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
        raise DeviceError(f"{_FN}: the stages' weights are on {weights_on}, but device={device!r} was asked for; "
                          f"move the Pipeline or module first with .to({str(_resolve_device(device))!r})")
    return weights_on


def _same(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def _moved(pipeline: Pipeline, device: torch.device) -> torch.device:
    pipeline.to(device)
    return device


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return check_device(_FN, device)


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
    if xb.shape[1] > _MAX_CHANNELS:
        _refuse_channels(tuple(x.shape))
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


def _refuse_channels(shape: tuple[int, ...]) -> None:
    """A channels-first tensor with more than 4 channels: most likely a channels-last image, refused."""
    layout = "(B, C, H, W)" if len(shape) == 4 else "(C, H, W)"
    if shape[-1] <= _MAX_CHANNELS:
        perm = "x.permute(0, 3, 1, 2)" if len(shape) == 4 else "x.permute(2, 0, 1)"
        back = ".permute(0, 2, 3, 1)" if len(shape) == 4 else ".permute(1, 2, 0)"
        hint = (f"it looks channels-last, {'(B, H, W, C)' if len(shape) == 4 else '(H, W, C)'}: pass {perm} "
                f"(and turn the result back with {back}), or the numpy array itself")
    else:
        hint = "for images with other channel counts call the stage itself, e.g. tv_minimize(x) or a Pipeline"
    raise ShapeError(f"{_FN}: expected a channels-first tensor {layout} with C in 1..{_MAX_CHANNELS}, "
                     f"got shape {shape}; {hint}")


def _float_to_uint8_t(out: Tensor) -> Tensor:
    return (out.float() * 255.0).round_().clamp_(0, 255).to(torch.uint8)


def _numpy_to_batch(x: np.ndarray):
    # uint8 images are 0..255 and uint16 ones 0..65535 (16-bit PNGs, TIFFs, cv2.IMREAD_UNCHANGED).
    scale = {1: 255.0, 2: 65535.0}.get(x.dtype.itemsize) if x.dtype.kind == "u" else None
    if scale is None and x.dtype.type not in _NUMPY_FLOATS:
        hint = "scale to uint8 0..255 or float 0..1"
        if x.dtype == np.bool_:
            hint = "convert with x.astype(np.float32)"
        raise DTypeError(f"{_FN}: expected a uint8 (0..255), uint16 (0..65535) or float (0..1) array, "
                         f"got dtype {x.dtype}; {hint}")
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
    if scale is not None:
        arr = arr / work(scale)
    batch = torch.from_numpy(np.array(arr.transpose(0, 3, 1, 2), order="C"))  # a copy: the input stays untouched
    in_dtype, in_ndim = x.dtype, x.ndim

    def restore(out: Tensor) -> np.ndarray:
        res = out.detach().cpu().permute(0, 2, 3, 1).numpy()
        if scale is not None:
            res = np.clip(np.rint(res * scale), 0, scale).astype(in_dtype)
        else:
            res = res.astype(in_dtype, copy=False)
        if in_ndim == 2:
            return res[0, :, :, 0]
        return res[0] if in_ndim == 3 else res

    return batch, restore


def _pil_to_batch(img):
    from PIL import Image

    if img.mode in _PIL_16BIT:
        return _pil16_to_batch(img)
    if img.mode not in _PIL_MODES:
        # What works: palette, CMYK, 1-bit and colour spaces convert losslessly enough to RGB(A);
        # float images have no fixed range, so only the caller can scale them.
        hint = ("scale it to [0, 1] yourself: purify(np.asarray(img) / peak)" if img.mode == "F"
                else f"convert with img.convert({'RGBA' if 'A' in img.mode else 'RGB'!r})")
        raise DTypeError(f"{_FN}: unsupported PIL mode {img.mode!r}; expected one of "
                         f"{_PIL_MODES + tuple(_PIL_16BIT)}; {hint}")
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


def _pil16_to_batch(img):
    """A 16-bit grayscale PIL image (I;16*, or I holding 0..65535) through the uint16 numpy path, same mode back."""
    from PIL import Image

    if img.width == 0 or img.height == 0:
        raise ShapeError(f"{_FN}: expected a non-empty image, got size {img.size}")
    arr = np.asarray(img)
    if img.mode == "I":
        # Mode I is 32-bit; from a 16-bit PNG (older Pillow) it holds 0..65535, which is what we read.
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise RangeError(f"{_FN}: a mode 'I' image is read as 16-bit (0..65535), got values in [{lo}, {hi}]; "
                             "scale it to [0, 1] yourself: purify(np.asarray(img) / peak)")
    batch, restore_np = _numpy_to_batch(arr.astype(np.uint16))
    mode, size, layout = img.mode, img.size, _PIL_16BIT[img.mode]

    def restore(out: Tensor):
        return Image.frombytes(mode, size, restore_np(out).astype(layout).tobytes())

    return batch, restore
