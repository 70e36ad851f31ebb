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
sha256 checked on load). :func:`gcln_purify` loads it once per (file, device).

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

from purify._checks import check_float, check_image_batch, check_int
from purify.dct import dct_quantize
from purify.errors import DataNotFoundError, DTypeError, ShapeError
from purify._artifacts import load_artifact, save_artifact

__all__ = ["CleaningGenerator", "AttackDetector", "count_parameters", "count_flops", "gcln_purify", "GCLN",
           "load_generator", "save_generator", "resolve_generator", "ARTIFACT_FORMAT", "DEFAULT_WEIGHTS",
           "TRAIN_COMMAND"]

ARTIFACT_FORMAT = "purify.gcln_generator"
DEFAULT_WEIGHTS = "gcln_cifar10"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
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

    def forward(self, x: Tensor, *, ste: bool = False, q: float | Tensor | None = None) -> Tensor:
        """Clean ``x``; ``ste`` gives the rounding an identity gradient, ``q`` overrides the trained step."""
        z = (x + self.stem(x)).clamp(0.0, 1.0)
        z = dct_quantize(z, q=self.q if q is None else q, block_size=self.block_size, ste=ste)
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


def resolve_generator(weights: str | os.PathLike = DEFAULT_WEIGHTS) -> Path:
    """The ``.json`` of a generator artifact: a shipped name (``"gcln_cifar10"``) or a path.

    Raises:
        DataNotFoundError: the artifact does not exist; the message gives the training command.
    Example:
        >>> resolve_generator("purify/weights/gcln_cifar10").name   # doctest: +SKIP
        'gcln_cifar10.json'
    """
    if not isinstance(weights, (str, os.PathLike)):
        raise DTypeError(f"gcln: expected weights to be a shipped name or a path, got {type(weights).__name__}")
    p = Path(weights)
    if p.suffix in (".json", ".safetensors"):
        p = p.with_suffix("")
    local = p.with_suffix(".json")
    shipped = WEIGHTS_DIR / f"{p.name}.json"
    if local.is_file() and p.with_suffix(".safetensors").is_file():
        return local
    if not p.parent.parts and shipped.is_file():
        return shipped
    names = sorted(f.stem for f in WEIGHTS_DIR.glob("gcln*.json"))
    raise DataNotFoundError(
        f"gcln: no generator weights at {weights!r} (looked for {local}{'' if p.parent.parts else f' and {shipped}'}); "
        f"shipped generators: {names or 'none yet'}. Train the default one with `{TRAIN_COMMAND}` "
        "(41 minutes on 2 CPU cores; add --device cuda on a GPU), or pass weights=<path of a trained artifact>"
    )


def save_generator(path: str | os.PathLike, generator: CleaningGenerator, meta: Mapping[str, Any]) -> Path:
    """Write ``<path>.safetensors`` and ``<path>.json`` (architecture, ``meta``, sha256); returns the json path."""
    state = {k: v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}
    config = {"format": ARTIFACT_FORMAT, "architecture": generator.config(), "q": generator.q,
              "block_size": generator.block_size, "parameters": count_parameters(generator),
              "flops_32x32": count_flops(generator), **meta}
    return save_artifact(path, state, config)


@functools.lru_cache(maxsize=8)
def _load_cached(json_path: str, stamp: tuple[int, int], device: str) -> CleaningGenerator:
    tensors, cfg = load_artifact(json_path, expected_format=ARTIFACT_FORMAT)
    generator = CleaningGenerator(**cfg["architecture"])
    generator.load_state_dict(tensors, strict=True)
    generator.artifact = cfg          # the json (q, training data, command, sha256, validation figures)
    return generator.eval().requires_grad_(False).to(device)


def load_generator(weights: str | os.PathLike = DEFAULT_WEIGHTS, *,
                   device: str | torch.device = "cpu") -> CleaningGenerator:
    """The trained generator of an artifact, in eval mode with frozen parameters, on ``device``.

    The sha256 recorded in the json is checked on the first load; the module is then cached per
    (file, modification time, device), so repeated calls are free and a retrained file is
    reloaded. Treat the returned module as read-only: it is shared between callers.

    Raises:
        DataNotFoundError (no artifact; the message says how to train it), ChecksumError.
    Example:
        >>> g = load_generator("gcln_cifar10")           # doctest: +SKIP
        >>> g.artifact["q"], g.artifact["sha256"][:8]    # doctest: +SKIP
    """
    path = resolve_generator(weights)
    st = (path.with_suffix(".safetensors")).stat()
    return _load_cached(str(path.resolve()), (st.st_mtime_ns, st.st_size), str(torch.device(device)))


def gcln_purify(x: Tensor, /, *, weights: str | os.PathLike = DEFAULT_WEIGHTS, ste: bool = False,
                q: float | Tensor | None = None) -> Tensor:
    """Clean a batch with a trained generative cleaning network.

    Runs the generator of ``weights`` (a shipped name or an artifact path) on ``x``'s device.
    Deterministic and batch-consistent. float16 / bfloat16 / float64 inputs are computed in
    float32 and cast back.

    Gradients: with ``ste=False`` a backward pass raises
    :class:`~purify.errors.NonDifferentiableError` (the rounding inside G has no gradient);
    with ``ste=True`` the rounding passes the gradient straight through and every other layer
    gives its exact gradient (the ``full`` threat model).

    Args:
        x: image batch with values in [0, 1].
        weights: shipped generator name (``purify/weights/<name>.json``) or artifact path.
        ste: straight-through gradient through the quantization layer.
        q: quantization step overriding the trained one (a float or one per image); None keeps it.

    Shape:
        x: (B, 3, H, W), floating, values in [0, 1]; output: same shape, dtype and device.
    Raises:
        ShapeError, RangeError, DTypeError, DataNotFoundError (no weights; the message says how
        to train them), ChecksumError; NonDifferentiableError on backward with ``ste=False``.
    Example:
        >>> gcln_purify(torch.rand(2, 3, 32, 32)).shape               # doctest: +SKIP
        torch.Size([2, 3, 32, 32])
        >>> gcln_purify(torch.rand(1, 3, 64, 48), ste=True).shape      # doctest: +SKIP
        torch.Size([1, 3, 64, 48])
    """
    fn = "gcln_purify"
    x = check_image_batch(fn, x)
    if not isinstance(ste, bool):
        raise DTypeError(f"{fn}: expected ste to be a bool, got {type(ste).__name__}; pass ste=True or ste=False")
    if x.shape[1] != 3:
        raise ShapeError(f"{fn}: expected x with 3 channels, got shape {tuple(x.shape)}; "
                         "convert grayscale with x.expand(-1, 3, -1, -1)")
    generator = load_generator(weights, device=x.device)
    out = generator(x if x.dtype == torch.float32 else x.float(), ste=ste, q=q)
    return out.to(x.dtype)


class GCLN(nn.Module):
    """Module twin of :func:`gcln_purify`; ``forward`` only calls the function.

    The weights are loaded on the first forward (and cached), not at construction.

    Shape:
        x: (B, 3, H, W), floating, values in [0, 1]; output: same shape, dtype and device.
    Example:
        >>> GCLN(weights="gcln_cifar10")
        GCLN(weights='gcln_cifar10', ste=False, q=None)
    """

    def __init__(self, *, weights: str | os.PathLike = DEFAULT_WEIGHTS, ste: bool = False,
                 q: float | Tensor | None = None) -> None:
        super().__init__()
        self.weights = weights
        self.ste = ste
        self.q = q

    def forward(self, x: Tensor) -> Tensor:
        return gcln_purify(x, weights=self.weights, ste=self.ste, q=self.q)

    def extra_repr(self) -> str:
        return f"weights={str(self.weights)!r}, ste={self.ste}, q={self.q!r}"
