"""Changes to a config's TOML document: ``extends``, ``--set KEY=VALUE`` options and the ``[quick]`` table.

``extends = "gcln_table"`` (a bundled config's name) or ``extends = "base.toml"`` (a path relative
to the extending file) makes a config the base's document with its own keys merged over it:
tables merge key by key, at any depth; everything else (numbers, strings, arrays, arrays of tables
such as ``[[attacks]]`` and ``[[paper.results]]``) is replaced whole. The base's ``name`` is not
inherited (a config is named by its own file). A base may extend another; a cycle is refused::

    extends = "gcln_table"
    description = "GCLN paper, Table 1 (q = 5): ..."
    [defense]
    stages = [{ name = "gcln", params = { weights = "gcln_cifar10_q5", q = 5.0 } }]

    >>> merge_documents({"data": {"count": 8, "seed": 0}, "attacks": [1, 2]}, {"data": {"count": 64}, "attacks": [3]})
    {'data': {'count': 64, 'seed': 0}, 'attacks': [3]}

``--set``: KEY is a dotted path into the document, an integer part indexing an array; VALUE is
read as a TOML value (``5``, ``5.0``, ``"8/255"``, ``true``, ``[1, 2]``, ``{ name = "tvm" }``), and
what does not read as one is taken as a plain string (``model.name=resnet56``, ``eps=8/255``)::

    python -m benchmarks run gcln_table --set defense.stages.0.params.q=5 --set data.count=200 \\
        --out benchmarks/results/gcln_q_sweep/q5

``extends`` is resolved first; every part of KEY but the last must exist; the last may add a key to a table
(``defense.stages.0.params.q`` when the stage sets no ``q`` yet) or replace an array entry.
Overrides apply in order to the file as written, before ``[quick]`` (so ``quick.data.count=16``
works too) and before every check of :func:`~benchmarks.harness.config.parse_config`. They
change the resolved config, hence the cells' cache keys; a run's report records them in its
command.

    >>> apply_overrides({"data": {"count": 8}}, ["data.count=200"], "x.toml")
    {'data': {'count': 200}}

``[quick]`` (applied by ``--quick``): scalars replace, tables merge, and ``quick.attacks.<id>``
(or ``quick.attacks.all``) merge into the attack entries.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .schema import ConfigError, Ctx, config_params
from purify.attacks.registry import get_attack_spec, list_attacks

__all__ = ["parse_value", "apply_overrides", "check_quick", "apply_quick", "read_document", "resolve_extends",
           "merge_documents", "BUNDLED_DIR"]

#: The bundled configs, which ``extends = "<name>"`` and ``load_config("<name>")`` look up.
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "configs"

_QUICK_KEYS = {"batch_size", "data", "attacks", "examples", "worst"}
_QUICK_ATTACK_KEYS = {"eps", "threat_models", "eot_samples", "params"}


def read_document(path: Path) -> dict[str, Any]:
    """The TOML document of ``path`` as written (``extends`` unresolved)."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config: {e.strerror or e}") from None


def merge_documents(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``child`` merged over it: tables merge recursively, anything else is replaced whole.

    Neither argument is changed. Example:
        >>> merge_documents({"quick": {"data": {"count": 4}, "batch_size": 4}}, {"quick": {"batch_size": 2}})
        {'quick': {'data': {'count': 4}, 'batch_size': 2}}
    """
    out = copy.deepcopy(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_documents(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_extends(doc: dict[str, Any], path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """``doc`` (read from ``path``) merged over the chain of configs it extends; ``doc`` itself if none.

    Raises:
        ConfigError: ``extends`` is not a string, names no bundled config (the message lists them)
            or no file, or the chain comes back to a config already in it.
    """
    if "extends" not in doc:
        return doc
    path = Path(path)
    ctx = Ctx(path)
    ref = doc["extends"]
    if not isinstance(ref, str) or not ref.strip():
        raise ctx.error("extends", f"expected a bundled config name such as \"gcln_table\" or a path relative to "
                        f"this file such as \"base.toml\", got {ref!r}")
    base_path = _base_path(ctx, path, ref)
    chain = _chain + (path.resolve(),)
    if base_path.resolve() in chain:
        names = " -> ".join(p.name for p in (*chain, base_path.resolve()))
        raise ctx.error("extends", f"cycle: {names}; a config cannot extend itself, directly or through others")
    base = resolve_extends(read_document(base_path), base_path, chain)
    base.pop("name", None)                       # a config is named by its own file, never by its base's
    return merge_documents(base, {k: v for k, v in doc.items() if k != "extends"})


def _base_path(ctx: Ctx, path: Path, ref: str) -> Path:
    """A bundled name (``gcln_table``), or a path relative to the extending file (``base.toml``, ``../x.toml``)."""
    if ref.endswith(".toml") or "/" in ref or "\\" in ref:
        base = (path.parent / ref) if not Path(ref).is_absolute() else Path(ref)
        if not base.is_file():
            raise ctx.error("extends", f"no config file {base} (a path is relative to {path.parent}); "
                            "a bundled config is named without .toml")
        return base
    base = BUNDLED_DIR / f"{ref}.toml"
    if not base.is_file():
        names = ", ".join(sorted(q.stem for q in BUNDLED_DIR.glob("*.toml")))
        raise ctx.error("extends", f"no bundled config {ref!r}; bundled: {names} (or give a path ending in .toml)")
    return base


def parse_value(text: str) -> Any:
    """``text`` as a TOML value, or ``text`` itself when it is not one.

    Example:
        >>> parse_value("5"), parse_value('"8/255"'), parse_value("8/255"), parse_value("[1, 2]")
        (5, '8/255', '8/255', [1, 2])
    """
    try:
        doc = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        return text
    return doc["v"] if list(doc) == ["v"] else text      # "1\nx = 2" is one string, not two keys


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str], path: str | Path) -> dict[str, Any]:
    """A copy of ``raw`` with every ``"KEY=VALUE"`` of ``overrides`` set, in order; ``raw`` is untouched.

    Raises:
        ConfigError: an override is not ``KEY=VALUE``, or its KEY does not lead into the document;
            the message names ``path`` and the ``--set`` option.
    """
    ctx = Ctx(Path(path))
    if isinstance(overrides, (str, bytes)) or not isinstance(overrides, Sequence):
        raise ctx.error("overrides", f"expected a list of 'KEY=VALUE' strings, got {overrides!r}")
    out = copy.deepcopy(raw)
    for text in overrides:
        if not isinstance(text, str) or "=" not in text:
            raise ctx.error(f"--set {text}", "expected KEY=VALUE, e.g. --set data.count=200")
        key, value = (s.strip() for s in text.split("=", 1))
        _assign(ctx, f"--set {text}", out, key, parse_value(value))
    return out


def _assign(ctx: Ctx, option: str, doc: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    if not all(parts):
        raise ctx.error(option, f"KEY {key!r} has an empty part; write a dotted path such as defense.stages.0.params.q")
    node: Any = doc
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth]) or "the top level"
        last = depth == len(parts) - 1
        if isinstance(node, dict):
            if last:
                node[part] = value
                return
            if part not in node:
                raise ctx.error(option, f"{where} has no key {part!r} (it has {', '.join(sorted(node)) or 'none'}); "
                                "only the last part of KEY may add a key")
            node = node[part]
        elif isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ctx.error(option, f"{where} is an array of {len(node)}; index {part!r} out of range "
                                f"(use 0..{len(node) - 1})" if node else f"{where} is an empty array")
            if last:
                node[int(part)] = value
                return
            node = node[int(part)]
        else:
            raise ctx.error(option, f"{where} is {node!r}, not a table or an array; cannot set "
                            f"{'.'.join(parts[depth:])!r} inside it")


def check_quick(ctx: Ctx, q: dict[str, Any], raw: dict[str, Any]) -> None:
    """Check a ``[quick]`` table against the document it belongs to, before it is applied."""
    ctx.keys(q, _QUICK_KEYS, "quick")
    if "attacks" in q:
        at = ctx.table(q["attacks"], "quick.attacks")
        ids = {a.get("id", a.get("name")) for a in raw.get("attacks", []) if isinstance(a, dict)} | {"all"}
        for aid, over in at.items():
            if aid not in ids:
                raise ctx.error(f"quick.attacks.{aid}", f"no attack entry with that id; ids: {', '.join(sorted(ids))}")
            ctx.keys(ctx.table(over, f"quick.attacks.{aid}"), _QUICK_ATTACK_KEYS, f"quick.attacks.{aid}")


def apply_quick(cfg: dict[str, Any], q: dict[str, Any]) -> dict[str, Any]:
    """Overrides: scalars replace, tables merge; quick.attacks.<id> (or .all) merge into entries."""
    out = dict(cfg)
    if "batch_size" in q:
        out["batch_size"] = q["batch_size"]
    for sec in ("data", "examples", "worst"):
        if sec in q:
            merged = {**out.get(sec, {}), **q[sec]}
            if sec == "data" and ("indices" in q[sec]) != ("count" in q[sec]):   # count replaces indices and back
                merged.pop("count" if "indices" in q[sec] else "indices", None)
                if "indices" in q[sec]:
                    merged.pop("seed", None)
            out[sec] = merged
    overs = q.get("attacks", {})
    entries = []
    for a in out.get("attacks", []):
        a = dict(a)
        for key in ("all", a.get("id", a.get("name"))):
            o = overs.get(key)
            if not o:
                continue
            for k, v in o.items():
                if k == "params":
                    if key == "all":              # shared overrides reach only the attacks that take them
                        takes = config_params(get_attack_spec(a["name"])) if a.get("name") in list_attacks() \
                            else set(v)
                        v = {pk: pv for pk, pv in v.items() if pk in takes}
                    a["params"] = {**a.get("params", {}), **v}
                elif k == "eps" and not a.get("eps"):
                    continue                      # budget-free attacks (cw_l2, deepfool) keep no eps
                else:
                    a[k] = v
        entries.append(a)
    out["attacks"] = entries
    return out
