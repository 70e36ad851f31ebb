"""Finding and loading pretrained weights without executing code.

Resolution order for a registered model's weights (:func:`resolve_weights`):

1. an explicit ``weights_path``;
2. ``<data dir>/<config.weights_file>`` (the project's shared data folder, see
   :func:`purify.data.resolve_data_dir`);
3. the cache, ``~/.cache/purify/weights/<upstream file name>`` (``$PURIFY_CACHE_DIR`` moves it);
4. a download of ``config.url`` into the cache, only when ``download=True``.

Whichever file is found, its sha256 is compared with the config's before ``torch.load`` sees
it, and ``torch.load`` runs with ``weights_only=True``, so a checkpoint can only hold tensors
and plain containers.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import torch
from torch import nn

from purify._download import cache_root, download_file, verify_sha256
from purify.data import DATA_DIR_ENV, resolve_data_dir
from purify.errors import DataNotFoundError, DTypeError, ShapeError

if TYPE_CHECKING:
    from purify.models.factory import ModelConfig

__all__ = ["resolve_weights", "load_checkpoint", "weights_cache_dir"]

logger = logging.getLogger(__name__)

_PREFIX = "module."


def weights_cache_dir() -> Path:
    """``<cache root>/weights``: where downloaded checkpoints are kept (not created here)."""
    return cache_root() / "weights"


def resolve_weights(config: "ModelConfig", *, weights_path: str | os.PathLike | None = None,
                    data_dir: str | os.PathLike | None = None, download: bool = False,
                    progress: bool = True) -> Path:
    """Find (or fetch) the checkpoint of ``config``; see the module docstring for the order.

    The sha256 is checked by :func:`load_checkpoint`, except for a fresh download, which
    :func:`purify._download.download_file` checks before the file appears in the cache.

    Raises:
        DataNotFoundError: ``weights_path`` does not exist, or nothing was found and ``download`` is False.
        ChecksumError: a download had the wrong sha256 (nothing is written).

    Example:
        >>> from purify.models import get_model_config
        >>> resolve_weights(get_model_config("resnet20")).name  # doctest: +SKIP
        'resnet20_cifar10.th'
    """
    fn = "create_model"
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise DataNotFoundError(f"{fn}: weights_path {path} does not exist; pass the path of a .th checkpoint")
        return path
    folder = resolve_data_dir(data_dir)
    candidates = [folder / config.weights_file, weights_cache_dir() / config.upstream_file]
    for path in candidates:
        if path.is_file():
            logger.debug("%s: using %s for %s", fn, path, config.name)
            return path
    if not download:
        looked = " and ".join(str(p) for p in candidates)
        raise DataNotFoundError(
            f"{fn}: no pretrained weights for {config.name!r} (looked at {looked}); pass data_dir=... "
            f"(--data-dir) or set {DATA_DIR_ENV} to the folder holding {config.weights_file}, pass weights_path=..., "
            f"or use download=True to fetch {config.url} (sha256 checked)"
        )
    return download_file(config.url, candidates[-1], sha256=config.sha256, progress=progress)


def _state_dict_of(fn: str, obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise DTypeError(f"{fn}: expected {path} to hold a state dict (or a dict with 'state_dict'), "
                         f"got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise DTypeError(f"{fn}: expected {path} to map parameter names to tensors; offending keys: {bad[:5]}")
    return {(k[len(_PREFIX):] if k.startswith(_PREFIX) else k): v for k, v in obj.items()}


def _check_structure(fn: str, model: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    optional = {k for k in expected if k.endswith("num_batches_tracked")}  # absent in pre-0.4.1 checkpoints
    missing = sorted(set(expected) - set(state) - optional)
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: expected {tuple(expected[k].shape)}, got {tuple(v.shape)}"
             for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches (e.g. {wrong[:2]})")
        raise ShapeError(f"{fn}: checkpoint {path} does not fit {type(model).__name__}: {'; '.join(parts)}; "
                         "is it the checkpoint of a different architecture or depth?")


def load_checkpoint(model: nn.Module, path: str | os.PathLike, *, sha256: str | None,
                    map_location: str | torch.device = "cpu") -> nn.Module:
    """Load a ``.th`` / ``.pt`` state dict into ``model`` (in place, ``strict=True``) and return it.

    Accepts a plain state dict or a dict with a ``state_dict`` entry (extra entries such as
    ``best_prec1`` are ignored); a ``module.`` prefix left by ``DataParallel`` is stripped.

    Args:
        model: the bare network (for a :class:`~purify.models.Normalized` wrapper pass ``wrapper.model``).
        path: checkpoint file.
        sha256: expected hex digest, checked before the file is unpickled; ``None`` skips the check
            (only for your own files).
        map_location: passed to ``torch.load``; the tensors are then copied into ``model``'s parameters,
            so the model stays on its device.

    Raises:
        ChecksumError (sha256 mismatch, naming both hashes), DTypeError (not a state dict, or it holds
        objects that ``weights_only`` loading refuses), ShapeError (keys or shapes do not fit).

    Example:
        >>> from purify.models import CifarResNet
        >>> net = load_checkpoint(CifarResNet(20), "resnet20_cifar10.th", sha256=None)  # doctest: +SKIP
    """
    fn = "load_checkpoint"
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"{fn}: checkpoint {path} does not exist")
    if sha256 is not None:
        verify_sha256(fn, path, sha256)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(e))
        detail = found.group(1) if found else str(e).splitlines()[0]
        raise DTypeError(
            f"{fn}: {path} cannot be loaded with weights_only=True ({detail}): it is not a torch checkpoint, or it "
            "holds objects other than tensors and plain containers, which are refused because unpickling them "
            "could run code; re-save it with torch.save(model.state_dict(), path)"
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise DTypeError(f"{fn}: {path} is not a readable torch checkpoint ({type(e).__name__}: {e})") from e
    state = _state_dict_of(fn, obj, path)
    _check_structure(fn, model, state, path)
    model.load_state_dict(state, strict=True)
    return model


def upstream_file_name(url: str) -> str:
    """Last path component of ``url`` (``.../resnet56-4bfd9763.th`` -> ``resnet56-4bfd9763.th``)."""
    return Path(urlparse(url).path).name
