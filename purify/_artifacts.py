"""Shipped and user-made artifacts: ``<name>.safetensors`` (tensors only) + ``<name>.json`` (config, sha256).

Loading checks the file's sha256 against the json before any tensor is parsed, and never
executes code. Used by the WNLL heads and template sets (:mod:`purify.wnll`) and the cleaning
generator (:mod:`purify.gcln`).

Example:
    >>> import tempfile, torch
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = save_artifact(f"{d}/a", {"w": torch.ones(2)}, {"format": "demo"})
    ...     tensors, cfg = load_artifact(f"{d}/a.json", expected_format="demo")
    >>> tensors["w"].tolist(), cfg["weights_file"]
    ([1.0, 1.0], 'a.safetensors')
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from torch import Tensor

from purify._download import sha256_file
from purify.errors import ChecksumError, DataNotFoundError, PurifyError

__all__ = ["ArtifactError", "artifact_paths", "save_artifact", "load_artifact"]


class ArtifactError(PurifyError, ValueError):
    """An artifact's json is unreadable or of another format."""


def artifact_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix in (".json", ".safetensors"):
        p = p.with_suffix("")
    return p.with_suffix(".safetensors"), p.with_suffix(".json")


def save_artifact(path: str | os.PathLike, tensors: Mapping[str, Tensor], config: Mapping[str, Any]) -> Path:
    """``<path>.safetensors`` with ``tensors`` and ``<path>.json`` with ``config`` plus the file's sha256."""
    from safetensors.torch import save_file

    st_path, json_path = artifact_paths(path)
    st_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(dict(tensors), str(st_path))
    cfg = {**config, "weights_file": st_path.name, "sha256": sha256_file(st_path)}
    json_path.write_text(json.dumps(cfg, indent=1) + "\n")
    return json_path


def load_artifact(path: str | os.PathLike, *, expected_format: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read an artifact written by :func:`save_artifact`, verifying its sha256 before parsing tensors."""
    from safetensors.torch import load_file

    st_path, json_path = artifact_paths(path)
    for p in (json_path, st_path):
        if not p.is_file():
            raise DataNotFoundError(f"{p} does not exist; pass the path of a saved artifact (with or without "
                                    ".json / .safetensors)")
    try:
        cfg = json.loads(json_path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{json_path}: not valid JSON ({e})") from None
    fmt = cfg.get("format")
    if fmt != expected_format:
        raise ArtifactError(f"{json_path}: expected an artifact of format {expected_format!r}, got {fmt!r}")
    actual = sha256_file(st_path)
    if actual != cfg.get("sha256"):
        raise ChecksumError(f"{st_path}: sha256 {actual} does not match {cfg.get('sha256')} recorded in "
                            f"{json_path.name}; the file is damaged or was replaced; re-create or re-download it")
    return load_file(str(st_path)), cfg
