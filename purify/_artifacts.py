"""Every artifact purify ships or writes: ``<name>.safetensors`` (tensors only) + ``<name>.json`` (config, sha256).

This module is the one place that resolves, verifies and loads them; the cleaning generator
(:mod:`purify.gcln`), the WNLL heads and template sets (:mod:`purify.wnll`) and the small CNN
(:mod:`purify.models.small_cnn`) build their objects from what it returns, and the training
recipes write through :func:`save_artifact`.

- :data:`SHIPPED_DIR`: the package's ``purify/weights`` folder.
- :func:`resolve_artifact`: a shipped name (``"gcln_cifar10"`` → ``purify/weights/gcln_cifar10.json``)
  or a path (with or without ``.json`` / ``.safetensors``) → the json's path; when nothing matches,
  the error lists the shipped artifacts of the requested format.
- :func:`read_config`: the json alone, its format checked (no tensor is read).
- :func:`load_artifact`: tensors and config; the sha256 recorded in the json is checked before
  any tensor is parsed, and loading never executes code.
- :func:`save_artifact`: writes both files, the sha256 added to the json.
- :func:`list_artifacts`: names of the shipped artifacts of one format.

An artifact's format is its json's ``"format"`` field. The small CNN's shipped json predates that
field: a json without it whose ``arch.type`` is ``"SmallCNN"`` is of format ``"purify.small_cnn"``
(:data:`LEGACY_FORMATS`), so the shipped files stay byte for byte as they were recorded.

Example:
    >>> import tempfile, torch
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = save_artifact(f"{d}/a", {"w": torch.ones(2)}, {"format": "demo"})
    ...     tensors, cfg = load_artifact(f"{d}/a.json", expected_format="demo")
    >>> tensors["w"].tolist(), cfg["weights_file"]
    ([1.0, 1.0], 'a.safetensors')
    >>> list_artifacts("purify.gcln_generator")
    ['gcln_cifar10', 'gcln_cifar10_q5']
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from torch import Tensor

from purify._download import sha256_file
from purify.errors import ChecksumError, DataNotFoundError, DTypeError, PurifyError

__all__ = ["ArtifactError", "SHIPPED_DIR", "LEGACY_FORMATS", "artifact_format", "artifact_paths", "artifact_log_path",
           "resolve_artifact", "read_config", "load_artifact", "save_artifact", "list_artifacts"]

#: Folder of the shipped artifacts (``purify/weights``).
SHIPPED_DIR = Path(__file__).resolve().parent / "weights"

#: Formats recognized by the content of a json that has no ``"format"`` field.
LEGACY_FORMATS: dict[str, Callable[[Mapping[str, Any]], bool]] = {
    "purify.small_cnn": lambda cfg: isinstance(cfg.get("arch"), dict) and cfg["arch"].get("type") == "SmallCNN",
}


class ArtifactError(PurifyError, ValueError):
    """An artifact's json is unreadable or of another format."""


def artifact_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(<stem>.safetensors, <stem>.json)`` of a path given with or without either suffix.

    Example:
        >>> [p.name for p in artifact_paths("w/head.json")]
        ['head.safetensors', 'head.json']
    """
    p = Path(path)
    if p.suffix in (".json", ".safetensors"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def artifact_log_path(path: str | os.PathLike) -> Path:
    """``<stem>.log``, the training log beside :func:`artifact_paths`' files (a dot in the name is kept).

    Example:
        >>> artifact_log_path("runs/cnn_lr0.05").name
        'cnn_lr0.05.log'
    """
    st_path, _ = artifact_paths(path)
    return st_path.with_name(st_path.name[: -len(".safetensors")] + ".log")


def artifact_format(cfg: Mapping[str, Any]) -> str | None:
    """The format of a parsed json: its ``"format"`` field, or a :data:`LEGACY_FORMATS` match, or None."""
    fmt = cfg.get("format")
    if fmt is not None:
        return fmt if isinstance(fmt, str) else None
    return next((name for name, matches in LEGACY_FORMATS.items() if matches(cfg)), None)


def _parse(json_path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{json_path}: not valid JSON ({e}); re-create the artifact") from None
    if not isinstance(cfg, dict):
        raise ArtifactError(f"{json_path}: expected a JSON object, got {type(cfg).__name__}; re-create the artifact")
    return cfg


def list_artifacts(format: str) -> list[str]:
    """Sorted names of the shipped artifacts (in :data:`SHIPPED_DIR`) of ``format``.

    Example:
        >>> list_artifacts("purify.wnll_head")
        ['resnet56_wnll', 'resnet56_wnll_e2e_head', 'resnet56_wnll_e2e_tvm_aug_head', 'resnet56_wnll_e2e_tvm_data_head',
         'resnet56_wnll_plain']
    """
    names = []
    for json_path in SHIPPED_DIR.glob("*.json"):
        try:
            if artifact_format(_parse(json_path)) == format:
                names.append(json_path.stem)
        except (ArtifactError, OSError):
            continue
    return sorted(names)


def resolve_artifact(name_or_path: str | os.PathLike, *, format: str, what: str = "artifact", fn: str | None = None,
                     hint: str = "") -> Path:
    """The ``.json`` path of an artifact given as a shipped name or a path.

    A path (with or without ``.json`` / ``.safetensors``) whose json and safetensors both exist
    wins; otherwise a bare name (no folder) is looked up in :data:`SHIPPED_DIR`; otherwise a
    json that exists without its safetensors is returned (:func:`load_artifact` then says which
    file is missing). Nothing is read here: the format is checked on load.

    Args:
        name_or_path: a shipped name (``"gcln_cifar10"``) or a path.
        format: the format wanted; the error lists the shipped artifacts of that format.
        what: what the caller calls it in messages ("generator", "head", ...).
        fn: the public function to name in messages (default: ``resolve_artifact``).
        hint: appended to the not-found message (e.g. the command that makes the artifact).

    Raises:
        DTypeError (not a str or path), DataNotFoundError (nothing matches).
    Example:
        >>> resolve_artifact("resnet56_wnll", format="purify.wnll_head").relative_to(SHIPPED_DIR)
        PosixPath('resnet56_wnll.json')
    """
    fn = fn or "resolve_artifact"
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise DTypeError(f"{fn}: expected a shipped {what} name or a path, got {type(name_or_path).__name__}; "
                         f"shipped: {list_artifacts(format)}")
    st_path, local = artifact_paths(name_or_path)
    if local.is_file() and st_path.is_file():
        return local
    bare = not Path(name_or_path).parent.parts
    shipped = SHIPPED_DIR / local.name
    if bare and shipped.is_file():
        return shipped
    if local.is_file():
        return local
    looked = f"{local}" + (f" and {shipped}" if bare else "")
    plural = what + ("es" if what.endswith(("s", "x", "ch", "sh")) else "s")
    raise DataNotFoundError(f"{fn}: no {what} at {str(name_or_path)!r} (looked for {looked}); shipped {plural}: "
                            f"{list_artifacts(format) or 'none yet'}" + (f". {hint}" if hint else ""))


def read_config(path: str | os.PathLike, *, expected_format: str, fn: str | None = None) -> dict[str, Any]:
    """The parsed json of the artifact at ``path`` (a json or its stem), its format checked; no tensor is read.

    Raises:
        DataNotFoundError (no json), ArtifactError (not JSON, or another format).
    """
    fn = fn or "read_config"
    _, json_path = artifact_paths(path)
    if not json_path.is_file():
        raise DataNotFoundError(f"{fn}: {json_path} does not exist; pass the path of a saved artifact (with or "
                                "without .json / .safetensors)")
    cfg = _parse(json_path)
    fmt = artifact_format(cfg)
    if fmt != expected_format:
        raise ArtifactError(f"{fn}: {json_path}: expected an artifact of format {expected_format!r}, got {fmt!r}; "
                            f"shipped ones of that format: {list_artifacts(expected_format)}")
    return cfg


def load_artifact(path: str | os.PathLike, *, expected_format: str,
                  fn: str | None = None) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors and config of the artifact at ``path`` (see :func:`resolve_artifact` for shipped names).

    The json is read and its format checked first, then the safetensors file's sha256 is compared
    with the one recorded in the json, and only then are the tensors parsed (safetensors: no code runs).

    Raises:
        DataNotFoundError (a file is missing), ArtifactError (not JSON, another format),
        ChecksumError (the tensors file is not the one the json records).
    """
    from safetensors.torch import load_file

    fn = fn or "load_artifact"
    st_path, json_path = artifact_paths(path)
    for p in (json_path, st_path):
        if not p.is_file():
            raise DataNotFoundError(f"{fn}: {p} does not exist; pass the path of a saved artifact (with or without "
                                    ".json / .safetensors)")
    cfg = read_config(json_path, expected_format=expected_format, fn=fn)
    recorded = cfg.get("sha256")
    actual = sha256_file(st_path)
    if not isinstance(recorded, str) or actual != recorded.lower():
        raise ChecksumError(f"{fn}: sha256 mismatch for {st_path}: expected {recorded} (recorded in "
                            f"{json_path.name}), got {actual}; the file is damaged or was replaced; "
                            "re-create or re-download it")
    return load_file(str(st_path)), cfg


def save_artifact(path: str | os.PathLike, tensors: Mapping[str, Tensor], config: Mapping[str, Any]) -> Path:
    """Write ``<path>.safetensors`` with ``tensors`` and ``<path>.json`` with ``config`` plus the file's sha256.

    ``config`` must name its ``"format"``; ``weights_file`` and ``sha256`` are added (any given
    are replaced). Returns the json path.

    Raises:
        ArtifactError (no ``"format"`` in ``config``).
    """
    from safetensors.torch import save_file

    if not isinstance(config.get("format"), str):
        raise ArtifactError(f"save_artifact: expected config to name its 'format' (e.g. 'purify.wnll_head'), got "
                            f"{config.get('format')!r}; loaders check it")
    st_path, json_path = artifact_paths(path)
    st_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(dict(tensors), str(st_path))
    cfg = {k: v for k, v in config.items() if k not in ("weights_file", "sha256")}
    cfg.update(weights_file=st_path.name, sha256=sha256_file(st_path))
    json_path.write_text(json.dumps(cfg, indent=1) + "\n")
    return json_path
