"""Generative cleaning network (GCLN): a CNN with the quantized DCT layer inside, and its detector.

Wang et al., "generative cleaning" (``../shared/papers/gcln-generative-cleaning.txt`` §3): the
generator Gθ takes an (attacked) image, a small stem maps it back to a 3-channel image, the
quantized nonlinear transform (blockwise DCT → ``round(X / q) · q`` → inverse DCT,
:func:`~purify.dct.dct_quantize`) destroys the fine pattern of the attack noise, and a
restoration network of residual blocks rebuilds the image content from the quantized image.
Nothing bypasses the quantizer: the restoration network sees only its output. The detector Dφ
is a binary CNN (clean vs. attacked) that G is trained against (:mod:`purify.training.gcln`).

Everything is fully convolutional (3×3 convolutions with zero padding, global pooling in the
detector), so a generator trained on 32×32 CIFAR-10 runs on any H×W; the quantizer pads to
whole blocks and crops back.

The shipped generator is an artifact in ``purify/weights/`` (``<name>.safetensors`` plus
``<name>.json`` with q, block size, architecture, training data, the training command and the
sha256 checked on load), resolved and verified by :mod:`purify._artifacts`. :class:`GCLN` loads
its own copy at construction, as its submodule ``net``; the functional :func:`gcln_purify` with a
name or path reads it through :func:`load_generator`'s small cache (once per file and device).

Example:
    >>> g = CleaningGenerator(q=10.0)
    >>> g(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 3, 32, 32])
    >>> out = gcln_purify(torch.rand(2, 3, 32, 32))   # needs the trained weights  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from purify._artifacts import (SHIPPED_DIR, artifact_paths, list_artifacts, load_artifact, resolve_artifact,
                               save_artifact)
from purify._checks import check_device, check_float, check_image_batch, check_int, per_sample
from purify.dct import _dct_core, dct_quantize, rounding_margin  # noqa: F401 - dct_quantize: the doctests use it
from purify.errors import DTypeError, ShapeError, UnknownNameError

__all__ = ["CleaningGenerator", "AttackDetector", "count_parameters", "count_flops", "gcln_purify", "GCLN",
           "load_generator", "save_generator", "resolve_generator", "ARTIFACT_FORMAT", "DEFAULT_WEIGHTS",
           "TRAIN_COMMAND", "RUN_OVERRIDES"]

ARTIFACT_FORMAT = "purify.gcln_generator"
DEFAULT_WEIGHTS = "gcln_cifar10"
WEIGHTS_DIR = SHIPPED_DIR      # kept for callers of the old name; artifacts resolve in purify._artifacts
#: The command that made the shipped artifact (41 minutes on 2 CPU cores, attack generation included).
TRAIN_COMMAND = ("python -m purify.training.gcln --data-dir ../shared/data --out purify/weights/gcln_cifar10 "
                 "--train-count 15000 --threads 2")


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1)


class _ResidualBlock(nn.Module):
    """``x + conv(relu(conv(x)))``; no normalization, so eval and training behave alike per image."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = _conv(width, width)
        self.conv2 = _conv(width, width)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class CleaningGenerator(nn.Module):
    """Gθ: stem → 3-channel image → quantized DCT layer → residual restoration network → [0, 1].

    ``stem``: two 3×3 convolutions (``stem_width`` channels, ReLU) and one back to 3 channels,
    added to the input and clipped to [0, 1]; ``quantize``: :func:`~purify.dct.dct_quantize` with
    step ``q`` (0..255 scale) and ``block_size``; ``restore``: a 3×3 convolution to ``width``
    channels, ``blocks`` residual blocks, a 3×3 convolution back to 3 channels added to the
    quantized image and clipped to [0, 1]. The last convolution of the stem and of the
    restoration network start at zero, so an untrained G is exactly ``dct_quantize(x, q=q)``
    and training starts from the quantizer alone.

    Cost at the defaults (``count_parameters`` / ``count_flops``; FLOPs = 2 × multiply-adds of
    the convolutions and of the DCT / inverse DCT, per 32×32×3 image): 179,926 parameters,
    367.7 MFLOPs.

    Args:
        q: quantization step > 0 on the 0..255 scale (the paper: 5 or 10).
        block_size: DCT block side (the paper: 8).
        width: channels of the restoration network.
        stem_width: channels of the stem.
        blocks: residual blocks in the restoration network.

    Shape:
        x: (B, 3, H, W), floating, values in [0, 1], any H and W; output: same shape and dtype.
    Raises:
        NonDifferentiableError on backward with ``ste=False`` (the rounding has no gradient).
    Example:
        >>> g = CleaningGenerator(q=10.0, width=16, blocks=1)
        >>> x = torch.rand(1, 3, 40, 24)
        >>> torch.equal(g(x), dct_quantize(x, q=10.0))   # untrained: the quantizer alone
        True
    """

    def __init__(self, *, q: float = 10.0, block_size: int = 8, width: int = 48, stem_width: int = 32,
                 blocks: int = 4) -> None:
        super().__init__()
        fn = "CleaningGenerator"
        self.q = check_float(fn, q, name="q", low=0.0, low_inclusive=False)
        self.block_size = check_int(fn, block_size, name="block_size")
        self.width = check_int(fn, width, name="width")
        self.stem_width = check_int(fn, stem_width, name="stem_width")
        self.blocks = check_int(fn, blocks, name="blocks", low=0)
        self.stem = nn.Sequential(_conv(3, stem_width), nn.ReLU(), _conv(stem_width, stem_width), nn.ReLU(),
                                  _conv(stem_width, 3))
        self.head = _conv(3, width)
        self.body = nn.Sequential(*[_ResidualBlock(width) for _ in range(blocks)])
        self.tail = _conv(width, 3)
        for last in (self.stem[-1], self.tail):
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def config(self) -> dict[str, Any]:
        """The constructor's arguments, as stored in an artifact's json."""
        return {"q": self.q, "block_size": self.block_size, "width": self.width, "stem_width": self.stem_width,
                "blocks": self.blocks}

    def quantizer_macs(self, h: int, w: int) -> int:
        """Multiply-adds of the DCT and inverse DCT on one (3, h, w) image (after padding to whole blocks).

        Each transform applies an m×m matrix along W, then along H: 2·m multiply-adds per pixel.
        """
        m = self.block_size
        return 2 * 3 * (-(-h // m) * m) * (-(-w // m) * m) * 2 * m

    def quantizer_input(self, x: Tensor) -> Tensor:
        """What the quantization layer sees: the stem's output, ``(x + stem(x)).clamp(0, 1)``."""
        return (x + self.stem(x)).clamp(0.0, 1.0)

    def forward(self, x: Tensor, *, ste: bool = False, q: float | Tensor | None = None) -> Tensor:
        """Clean ``x``; ``ste`` gives the rounding an identity gradient, ``q`` overrides the trained step.

        The quantizer is :func:`~purify.dct.dct_quantize`'s unchecked core: ``q`` (a float or a
        ``(B,)`` tensor) is not checked here; :func:`gcln_purify` checks it once.
        """
        z = _dct_core(self.quantizer_input(x), q=self.q if q is None else q, block_size=self.block_size, ste=ste)
        h = self.body(F.relu(self.head(z)))
        return (z + self.tail(h)).clamp(0.0, 1.0)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items())


class AttackDetector(nn.Module):
    """Dφ: a binary CNN whose output is the logit of "clean" (vs. "attacked").

    Four 3×3 convolutions (``width``, 2·``width``, 4·``width``, 4·``width`` channels; the last
    three with stride 2; LeakyReLU 0.2), global average pooling and a linear layer. Fully
    convolutional, no normalization.

    Shape:
        x: (B, 3, H, W) in [0, 1]; output: (B,) logits, > 0 meaning "clean".
    Example:
        >>> AttackDetector()(torch.rand(4, 3, 32, 32)).shape
        torch.Size([4])
    """

    def __init__(self, *, width: int = 32) -> None:
        super().__init__()
        self.width = check_int("AttackDetector", width, name="width")
        w = width
        layers: list[nn.Module] = []
        for c_in, c_out, stride in ((3, w, 1), (w, 2 * w, 2), (2 * w, 4 * w, 2), (4 * w, 4 * w, 2)):
            layers += [_conv(c_in, c_out, stride), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        self.linear = nn.Linear(4 * w, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.linear(h).squeeze(1)


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters of ``module``.

    Example:
        >>> count_parameters(nn.Conv2d(3, 8, 3))
        224
    """
    return sum(p.numel() for p in module.parameters())


def count_flops(module: nn.Module, shape: tuple[int, int, int] = (3, 32, 32)) -> int:
    """FLOPs of one forward pass on one image of ``shape`` (C, H, W): 2 × multiply-adds.

    Counts the multiply-adds of every ``nn.Conv2d`` and ``nn.Linear`` (measured with forward
    hooks on a real forward pass) plus, for a :class:`CleaningGenerator`, those of its DCT and
    inverse DCT; biases, activations and clipping are not counted.

    Example:
        >>> count_flops(nn.Conv2d(3, 8, 3, padding=1), (3, 4, 4))   # 16 pixels x 8 outputs x 27 taps x 2
        6912
    """
    macs = 0

    def hook(m: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal macs
        if isinstance(m, nn.Conv2d):
            macs += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            macs += out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        p = next(module.parameters(), None)
        with torch.no_grad():
            module(torch.rand(1, *shape, device=None if p is None else p.device))
    finally:
        for h in handles:
            h.remove()
    if isinstance(module, CleaningGenerator):
        macs += module.quantizer_macs(shape[1], shape[2])
    return 2 * macs


# ----------------------------------------------------------------------------------------------
# The shipped artifact
# ----------------------------------------------------------------------------------------------

_MISSING_HINT = (f"Train the default one with `{TRAIN_COMMAND}` (41 minutes on 2 CPU cores; add --device cuda on a "
                 "GPU), or pass weights=<path of a trained artifact>")


def _resolve(weights: str | os.PathLike, fn: str) -> Path:
    return resolve_artifact(weights, format=ARTIFACT_FORMAT, what="generator", fn=fn, hint=_MISSING_HINT)


def resolve_generator(weights: str | os.PathLike = DEFAULT_WEIGHTS) -> Path:
    """The ``.json`` of a generator artifact: a shipped name (``"gcln_cifar10"``) or a path.

    Resolution is :func:`purify._artifacts.resolve_artifact`'s (the same for every shipped artifact).

    Raises:
        DTypeError (not a name or path), DataNotFoundError: the artifact does not exist; the
        message lists the shipped generators and gives the training command.
    Example:
        >>> resolve_generator("gcln_cifar10").name
        'gcln_cifar10.json'
    """
    return _resolve(weights, "resolve_generator")


def save_generator(path: str | os.PathLike, generator: CleaningGenerator, meta: Mapping[str, Any]) -> Path:
    """Write ``<path>.safetensors`` and ``<path>.json`` (architecture, ``meta``, sha256); returns the json path."""
    state = {k: v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}
    config = {"format": ARTIFACT_FORMAT, "architecture": generator.config(), "q": generator.q,
              "block_size": generator.block_size, "parameters": count_parameters(generator),
              "flops_32x32": count_flops(generator), **meta}
    return save_artifact(path, state, config)


def _read_generator(json_path: Path, fn: str) -> CleaningGenerator:
    """A new generator built from an artifact (sha256 checked), in eval mode with frozen parameters, on the CPU."""
    tensors, cfg = load_artifact(json_path, expected_format=ARTIFACT_FORMAT, fn=fn)
    generator = CleaningGenerator(**cfg["architecture"])
    generator.load_state_dict(tensors, strict=True)
    generator.artifact = cfg          # the json (q, training data, command, sha256, validation figures)
    return generator.eval().requires_grad_(False)


@functools.lru_cache(maxsize=8)
def _load_cached(json_path: str, stamp: tuple[int, int], device: str) -> CleaningGenerator:
    # The functional form's cache (load_generator, gcln_purify with a name or path); GCLN never reads it.
    return _read_generator(Path(json_path), "load_generator").to(device)


def _load_shared(weights: str | os.PathLike, device: str | torch.device, fn: str) -> CleaningGenerator:
    path = _resolve(weights, fn)
    st = artifact_paths(path)[0].stat()
    return _load_cached(str(path.resolve()), (st.st_mtime_ns, st.st_size), str(check_device(fn, device)))


def load_generator(weights: str | os.PathLike = DEFAULT_WEIGHTS, *,
                   device: str | torch.device = "cpu") -> CleaningGenerator:
    """The trained generator of an artifact, in eval mode with frozen parameters, on ``device``.

    This is the functional form's loader: the sha256 recorded in the json is checked on the first
    load, and the module is then kept in a small cache (8 entries) keyed by the json's resolved
    path, the weights file's modification time and size, and the device, so repeated calls are
    free and a retrained file is reloaded. Treat the returned module as read-only: it is shared
    between callers. :class:`GCLN` does not use this cache; it loads its own copy.

    Raises:
        DataNotFoundError (no artifact; the message says how to train it), ChecksumError, ArtifactError.
    Example:
        >>> g = load_generator("gcln_cifar10")
        >>> g.artifact["q"], g is load_generator("gcln_cifar10")
        (10.0, True)
    """
    return _load_shared(weights, device, "load_generator")


# ----------------------------------------------------------------------------------------------
# The purifier: checked function, unchecked core, module twin
# ----------------------------------------------------------------------------------------------

#: What :meth:`GCLN.run` accepts as per-call overrides.
RUN_OVERRIDES = ("q", "ste")


def _check_q(fn: str, q: object, x: Tensor | None) -> None:
    if q is None:
        return
    if isinstance(q, Tensor) and x is None:           # at construction the batch size is not known yet
        if q.dim() != 1:
            raise ShapeError(f"{fn}: expected q to be a float or a (B,) tensor, got shape {tuple(q.shape)}; "
                             "give one value per image")
        per_sample(fn, q, name="q", batch=q.shape[0], like=q.float(), low=0.0, low_inclusive=False)
    elif isinstance(q, Tensor):
        per_sample(fn, q, name="q", batch=x.shape[0], like=x, low=0.0, low_inclusive=False)
    else:
        check_float(fn, q, name="q", low=0.0, low_inclusive=False)


def _check_ste(fn: str, ste: object) -> None:
    if not isinstance(ste, bool):
        raise DTypeError(f"{fn}: expected ste to be a bool, got {type(ste).__name__}; pass ste=True or ste=False")


def _gcln_core(x: Tensor, generator: CleaningGenerator, *, ste: bool, q: float | Tensor | None) -> Tensor:
    """Unchecked core of :func:`gcln_purify`: run ``generator`` on ``x`` in the generator's dtype, cast back.

    No input checks, no file access: callers check at their boundary (:func:`gcln_purify`) or
    own a checked module (:meth:`GCLN.run`). Traceable (ONNX export).
    """
    p = next(generator.parameters(), None)
    dtype = torch.float32 if p is None else p.dtype
    out = generator(x if x.dtype == dtype else x.to(dtype), ste=ste, q=q)
    return out.to(x.dtype)


def _generator_for(fn: str, weights: object, device: torch.device) -> CleaningGenerator:
    if isinstance(weights, CleaningGenerator):
        p = next(weights.parameters(), None)
        if p is not None and p.device != device:
            raise DTypeError(f"{fn}: the generator is on {p.device} but x is on {device}; move the module "
                             "(GCLN(...).to(x.device)) or the input")
        return weights
    if isinstance(weights, (str, os.PathLike)):
        return _load_shared(weights, device, fn)
    raise DTypeError(f"{fn}: expected weights to be a shipped name, a path or a CleaningGenerator, got "
                     f"{type(weights).__name__}; shipped: {list_artifacts(ARTIFACT_FORMAT)}")


def gcln_purify(x: Tensor, /, *, weights: str | os.PathLike | CleaningGenerator = DEFAULT_WEIGHTS, ste: bool = False,
                q: float | Tensor | None = None) -> Tensor:
    """Clean a batch with a trained generative cleaning network.

    Runs the generator of ``weights`` on ``x``: a shipped name or an artifact path (loaded onto
    ``x``'s device through :func:`load_generator`'s cache), or a :class:`CleaningGenerator`
    instance (used as it is; it must be on ``x``'s device). Deterministic and batch-consistent.
    Inputs of another dtype than the generator's (float32 when loaded) are computed in the
    generator's dtype and cast back.

    Gradients: with ``ste=False`` a backward pass raises
    :class:`~purify.errors.NonDifferentiableError` (the rounding inside G has no gradient);
    with ``ste=True`` the rounding passes the gradient straight through and every other layer
    gives its exact gradient (the ``full`` threat model).

    Args:
        x: image batch with values in [0, 1].
        weights: shipped generator name (``purify/weights/<name>.json``), artifact path, or generator.
        ste: straight-through gradient through the quantization layer.
        q: quantization step overriding the trained one (a float or one per image); None keeps it.

    Shape:
        x: (B, 3, H, W), floating, values in [0, 1]; q: float or (B,); output: same shape, dtype
        and device as x.
    Raises:
        ShapeError, RangeError, DTypeError, DataNotFoundError (no weights; the message says how
        to train them), ChecksumError; NonDifferentiableError on backward with ``ste=False``.
    Example:
        >>> gcln_purify(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 3, 32, 32])
        >>> gcln_purify(torch.rand(1, 3, 37, 31), ste=True, q=torch.tensor([5.0])).shape
        torch.Size([1, 3, 37, 31])
    """
    fn = "gcln_purify"
    x = check_image_batch(fn, x)
    if x.shape[1] != 3:
        raise ShapeError(f"{fn}: expected x with 3 channels, got shape {tuple(x.shape)}; "
                         "convert grayscale with x.expand(-1, 3, -1, -1)")
    _check_ste(fn, ste)
    _check_q(fn, q, x)
    return _gcln_core(x, _generator_for(fn, weights, x.device), ste=ste, q=q)


class GCLN(nn.Module):
    """Module twin of :func:`gcln_purify`; it owns its generator as the submodule ``net``.

    ``weights`` (a shipped name or an artifact path) is loaded at construction, sha256 checked,
    into a generator of this module's own (eval mode, parameters frozen; unfreeze with
    ``gcln.net.requires_grad_(True)`` to fine-tune), so ``parameters()``, ``state_dict()``,
    ``load_state_dict()`` and ``.to()`` act on the weights it computes with. A
    :class:`CleaningGenerator` passed as ``weights`` becomes ``net`` as it is. The attribute ``q``
    holds the effective step (the generator's trained one when ``q=None``); a tensor ``q`` is a
    non-persistent buffer (moves with ``.to()``, not in ``state_dict``).

    ``forward(x)`` only calls :func:`gcln_purify` (checked); ``run(x, generator=None, **overrides)``
    calls the unchecked core with this module's ``ste`` / ``q`` replaced by ``overrides`` (the
    pipeline protocol; ``generator`` is accepted and ignored, the stage being deterministic);
    ``rounding_margin(x, **overrides)`` gives each image's distance to a rounding boundary of the
    quantizer inside. None of them reads a file, so they trace (ONNX export).

    Shape:
        x: (B, 3, H, W), floating, values in [0, 1]; output: same shape, dtype and device.
    Raises:
        At construction: DataNotFoundError, ChecksumError, ArtifactError, DTypeError, RangeError.
    Example:
        >>> m = GCLN(weights="gcln_cifar10")
        >>> m.weights, m.q, sum(p.numel() for p in m.parameters())
        ('gcln_cifar10', 10.0, 179926)
        >>> x = torch.rand(2, 3, 32, 32)
        >>> torch.equal(m(x), m.run(x)), m.run(x, q=5.0).shape
        (True, torch.Size([2, 3, 32, 32]))
    """

    def __init__(self, *, weights: str | os.PathLike | CleaningGenerator = DEFAULT_WEIGHTS, ste: bool = False,
                 q: float | Tensor | None = None) -> None:
        super().__init__()
        fn = "GCLN"
        _check_ste(fn, ste)
        _check_q(fn, q, None)
        if isinstance(weights, CleaningGenerator):
            net, source = weights, None
        elif isinstance(weights, (str, os.PathLike)):
            net, source = _read_generator(_resolve(weights, fn), fn), weights    # its own copy, never the cache
        else:
            raise DTypeError(f"{fn}: expected weights to be a shipped name, a path or a CleaningGenerator, got "
                             f"{type(weights).__name__}; shipped: {list_artifacts(ARTIFACT_FORMAT)}")
        self.net = net
        #: The name or path the generator was loaded from (None when a module was passed).
        self.weights = source
        #: sha256 of the generator's weights file when it came from an artifact (None for a module passed
        #: in): what identifies this stage's weights, e.g. in the harness's cell keys.
        self.artifact_sha256 = (getattr(net, "artifact", None) or {}).get("sha256")
        self.ste = ste
        # q: the step in use, its effective value (the generator's trained q when None was given).
        if isinstance(q, Tensor):
            self.register_buffer("q", q.detach().clone(), persistent=False)
        else:
            self.q = float(net.q) if q is None else float(q)

    def forward(self, x: Tensor) -> Tensor:
        return gcln_purify(x, weights=self.net, ste=self.ste, q=self.q)

    def _merged(self, fn: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(overrides) - set(RUN_OVERRIDES))
        if unknown:
            raise UnknownNameError(f"{fn}: unknown override(s) {', '.join(map(repr, unknown))}; it takes "
                                   f"{', '.join(map(repr, RUN_OVERRIDES))} (weights load at construction: build "
                                   "another GCLN)")
        return {"ste": self.ste, "q": self.q, **overrides}

    def run(self, x: Tensor, *, generator: torch.Generator | None = None, **overrides: Any) -> Tensor:
        """Unchecked call: this module's ``ste`` / ``q`` with ``overrides`` applied; ``generator`` is ignored.

        ``x`` and the overrides' values are not checked (the caller checked them at its boundary).
        ``q`` may be a float or a ``(B,)`` tensor.

        Raises:
            UnknownNameError: an override other than ``q`` / ``ste``.
        """
        p = self._merged("GCLN.run", overrides)
        return _gcln_core(x, self.net, ste=p["ste"], q=p["q"])

    def rounding_margin(self, x: Tensor, **overrides: Any) -> Tensor:
        """Per image, the distance (in quantization steps) of the generator's closest DCT coefficient
        to a rounding boundary (:func:`purify.dct.rounding_margin` of what its quantizer sees); (B,).

        Unchecked, like :meth:`run`; ``ste`` is accepted and changes nothing.
        """
        p = self._merged("GCLN.rounding_margin", overrides)
        dtype = next(self.net.parameters()).dtype
        z = self.net.quantizer_input(x if x.dtype == dtype else x.to(dtype))
        return rounding_margin(z, q=self.net.q if p["q"] is None else p["q"], block_size=self.net.block_size)

    def extra_repr(self) -> str:
        q = f"tensor{tuple(self.q.shape)}" if isinstance(self.q, Tensor) else repr(self.q)
        w = "<module>" if self.weights is None else repr(str(self.weights))
        return f"weights={w}, ste={self.ste}, q={q}"
