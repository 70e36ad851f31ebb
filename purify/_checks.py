"""Checks every public entry point runs once, at the boundary, never inside loops.

Each helper raises a typed error whose message names the calling function and
argument, says what was expected and what came, and gives a hint.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from purify.errors import DeviceError, DTypeError, RangeError, ShapeError, UnknownNameError

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_image_batch(fn: str, x: object, *, name: str = "x", check_range: bool = True) -> torch.Tensor:
    """Check that ``x`` is a floating ``(B, C, H, W)`` tensor with finite values in [0, 1].

    B may be 0; C, H and W must be positive. Returns ``x`` unchanged.
    """
    if not isinstance(x, torch.Tensor):
        raise DTypeError(
            f"{fn}: expected {name} to be a torch.Tensor, got {type(x).__name__}; "
            "use purify.purify() for numpy arrays and PIL images"
        )
    if x.dim() != 4:
        hint = "add a batch dimension with x[None]" if x.dim() == 3 else "pass a batch of images (B, C, H, W)"
        raise ShapeError(f"{fn}: expected {name} of shape (B, C, H, W), got {tuple(x.shape)}; {hint}")
    if x.dtype not in _FLOAT_DTYPES:
        raise DTypeError(
            f"{fn}: expected {name} of a floating dtype with values in [0, 1], got {x.dtype}; "
            "convert with x.float() / 255 for uint8 images"
        )
    if x.shape[1] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
        raise ShapeError(f"{fn}: expected {name} with non-empty C, H and W, got {tuple(x.shape)}")
    if check_range and x.numel() > 0:
        check_finite_unit_range(fn, x, name=name)
    return x


def check_finite_unit_range(fn: str, x: torch.Tensor, *, name: str = "x") -> None:
    """Raise RangeError if ``x`` has NaN/Inf or values outside [0, 1]."""
    if x.numel() == 0:
        return
    # One pass and one device sync: min and max propagate NaN, and an Inf is an extreme.
    lo_t, hi_t = torch.aminmax(x.detach())
    lo, hi = float(lo_t), float(hi_t)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise RangeError(
            f"{fn}: {name} contains NaN or Inf values; replace them first, e.g. torch.nan_to_num(x).clamp(0, 1)"
        )
    if lo < 0.0 or hi > 1.0:
        raise RangeError(
            f"{fn}: expected {name} with values in [0, 1], got values in [{lo:.4g}, {hi:.4g}]; "
            "divide uint8 images by 255, undo any mean/std normalization, or clamp(0, 1)"
        )


def per_sample(fn: str, value: float | torch.Tensor, *, name: str, batch: int, like: torch.Tensor,
               low: float = 0.0, low_inclusive: bool = True, high: float | None = None) -> torch.Tensor:
    """Turn a float or a ``(B,)`` tensor hyper-parameter into a ``(B, 1, 1, 1)`` tensor like ``like``.

    Checks finiteness and the range [low, high] (low exclusive when ``low_inclusive`` is False).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, torch.Tensor)):
        raise DTypeError(f"{fn}: expected {name} to be a float or a (B,) tensor, got {type(value).__name__}")
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.dim() == 0:
        t = t.expand(batch)
    elif t.dim() != 1 or t.shape[0] != batch:
        raise ShapeError(
            f"{fn}: expected {name} to be a float or a tensor of shape ({batch},), got shape {tuple(t.shape)}; "
            "give one value per image in the batch"
        )
    if t.numel():
        tt = t.detach()
        if not bool(torch.isfinite(tt).all()):
            raise RangeError(f"{fn}: {name} contains NaN or Inf")
        bad_low = (tt < low) if low_inclusive else (tt <= low)
        if bool(bad_low.any()) or (high is not None and bool((tt > high).any())):
            bound = f"[{low}, {high}]" if high is not None else (f">= {low}" if low_inclusive else f"> {low}")
            raise RangeError(f"{fn}: expected {name} {bound}, got values in [{float(tt.min()):.4g}, {float(tt.max()):.4g}]")
    return t.reshape(batch, 1, 1, 1)


def check_int(fn: str, value: object, *, name: str, low: int = 1) -> int:
    """Check that ``value`` is an int >= low (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise DTypeError(f"{fn}: expected {name} to be an int, got {type(value).__name__}")
    if value < low:
        raise RangeError(f"{fn}: expected {name} >= {low}, got {value}")
    return value


def check_float(fn: str, value: object, *, name: str, low: float | None = None, high: float | None = None,
                low_inclusive: bool = True, high_inclusive: bool = True) -> float:
    """Check that ``value`` is a finite real number within the given bounds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DTypeError(f"{fn}: expected {name} to be a float, got {type(value).__name__}")
    v = float(value)
    ok = v == v and abs(v) != float("inf")
    if ok and low is not None:
        ok = v >= low if low_inclusive else v > low
    if ok and high is not None:
        ok = v <= high if high_inclusive else v < high
    if not ok:
        lo_b = "[" if low_inclusive else "("
        hi_b = "]" if high_inclusive else ")"
        raise RangeError(f"{fn}: expected {name} in {lo_b}{low}, {high}{hi_b}, got {value}")
    return v


def check_choice(fn: str, value: object, *, name: str, choices: Sequence[str]) -> str:
    """Check that ``value`` is one of ``choices``; the message lists them."""
    if value not in choices:
        raise UnknownNameError(f"{fn}: unknown {name} {value!r}; expected one of {', '.join(map(repr, choices))}")
    return value  # type: ignore[return-value]


def check_generator(fn: str, generator: object, device: torch.device) -> torch.Generator | None:
    """Check that ``generator`` is None or a torch.Generator on ``device``'s type."""
    if generator is None:
        return None
    if not isinstance(generator, torch.Generator):
        raise DTypeError(f"{fn}: expected generator to be a torch.Generator or None, got {type(generator).__name__}")
    if generator.device.type != device.type:
        raise DTypeError(
            f"{fn}: generator is on {generator.device.type} but x is on {device.type}; "
            f"create it with torch.Generator(device={device.type!r})"
        )
    return generator


# Device types purify runs on; each has an availability check in available_devices().
_DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def available_devices() -> list[str]:
    """The devices this process can run on, as strings: ``'cpu'``, then ``'cuda:N'``, ``'mps'``, ``'xpu:N'``.

    Example:
        >>> available_devices()[0]
        'cpu'
    """
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        found += [f"xpu:{i}" for i in range(xpu.device_count())]
    return found


def check_device(fn: str, device: object, *, name: str = "device") -> torch.device:
    """Parse ``device`` and check that this machine has it; raises DeviceError listing the ones it has.

    ``'cuda'`` (no index) is accepted when any GPU is present; ``'cuda:N'`` needs GPU N.
    """
    try:
        dev = torch.device(device)  # type: ignore[arg-type]
    except (RuntimeError, TypeError) as err:
        dev, error = None, err
    if dev is not None and dev.type == "cpu":
        return dev  # before listing the devices: a per-image transform calls this every time
    available = available_devices()
    listing = ", ".join(map(repr, available))
    if dev is None:
        raise DeviceError(f"{fn}: invalid {name} {device!r} ({error}); available on this machine: {listing}") from error
    if dev.type not in _DEVICE_TYPES:
        raise DeviceError(f"{fn}: unsupported {name} {device!r} (purify runs on {', '.join(_DEVICE_TYPES)}); "
                          f"available on this machine: {listing}")
    same_type = [a for a in available if a.split(":")[0] == dev.type]
    if dev.index is None or dev.type == "mps":
        present = bool(same_type) and (dev.index in (None, 0))
    else:
        present = f"{dev.type}:{dev.index}" in same_type
    if not present:
        if same_type:
            why = f"{dev} is not present"
        elif dev.type == "cuda":
            build = "was built without CUDA" if torch.version.cuda is None else "finds no usable GPU"
            why = f"CUDA is not available (torch {torch.__version__} {build})"
        elif dev.type == "mps":
            why = "MPS is not available (it needs Apple silicon and a torch build with MPS)"
        else:
            why = f"{dev.type.upper()} is not available"
        default = " (or leave it None to pick CUDA when present)" if name == "device" else ""
        raise DeviceError(f"{fn}: {name}={device!r} requested but {why}; available on this machine: {listing}; "
                          f"use {name}='cpu'{default}")
    return dev
