"""What a run evaluates, as a config names it: the ``[data]`` images, the ``[model]`` classifier, the attacks.

``[data]``, one of::

    dataset = "cifar10"            # a built-in data set (purify.data.DATASETS), with split = "test" (default)
    path = "my_images"             # your own images: an .npz or a class-per-subfolder folder
                                   # (purify.user_data), relative to the config file; for a folder:
    resize = [224, 224]            #   (H, W) every image is resized to (needed when sizes differ)
    mode = "RGB"                   #   or "L" (one channel)

and ``count = N`` (with ``seed``) or ``indices = [...]``; with ``path``, neither means every image.

``[model]``, what ``purify-serve``'s ``[classifier]`` takes (the factory is imported and its weights
loaded by the server's own code when the run starts, :mod:`benchmarks.harness.loading`), one of::

    name = "resnet56"              # a purify.models name: built in, or added by register_model()
    pretrained = true              #   built-in names: load the sha256-checked checkpoint
    factory = "mynets:build"       # your torch module: module:function, imported with the config's folder
                                   #   first on sys.path, called with no arguments
    onnx = "mynet.onnx"            # your classifier as an ONNX graph: no gradients, see check_onnx_attacks

with, optionally::

    weights = "mynet.pt"           # a state dict loaded strictly into the factory's module
    weights_sha256 = "<64 hex>"    # pins, checked before the file is read (serving/integrity.py)
    onnx_sha256 = "<64 hex>"
    mean = [0.485, 0.456, 0.406]   # the model expects (x - mean) / std: it is wrapped in
    std = [0.229, 0.224, 0.225]    #   purify.models.Normalized, so attacks and defenses work on [0, 1] pixels
    retrofit = { activation = "jumprelu", kappa = 0.2 }   # its ReLUs replaced (purify.activations.retrofit);
                                   #   backward = "relu" makes every gradient attack BPDA through JumpReLU

``[substitute]`` takes a ``name`` (built in, or registered with ``register_model``) and ``pretrained``.

Attacks: an ``[[attacks]]`` ``name`` is a registered attack (:func:`purify.attacks.registry.list_attacks`)
or ``"module:attribute"``, an :class:`~purify.attacks.registry.AttackSpec` in your module (imported like
a factory), which :func:`resolve_attack` registers under the spec's name.

Budgets: images are in [0, 1], so an L∞ ``eps`` above 1 and an L2 ``eps`` above ``sqrt(C·H·W)``
(the distance from an all-black to an all-white image) allow any image; they are refused with the
``"8/255"`` hint (:func:`check_eps_scale`).
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from pathlib import Path
from typing import Any

from .schema import SUBSTITUTE_SOURCE, AttackEntry, Ctx
from purify.errors import PurifyError
from .. import _serving   # the server's modules, under their name beside this package

__all__ = ["DATA_KEYS", "MODEL_KEYS", "parse_data", "parse_model", "parse_registered", "resolve_attack",
           "attack_keys", "check_eps_scale", "check_onnx_attacks"]

DATA_KEYS = {"dataset", "split", "count", "seed", "indices", "path", "resize", "mode"}
MODEL_KEYS = {"name", "pretrained", "factory", "onnx", "weights", "weights_sha256", "onnx_sha256", "mean", "std",
              "retrofit"}
_REGISTERED_KEYS = {"name", "pretrained"}


def _path(ctx: Ctx, value: Any, key: str) -> str:
    """A file named in the config: ``~`` and ``$VARS`` expanded, relative to the config file's folder."""
    p = Path(os.path.expandvars(ctx.string(value, key))).expanduser()
    return str(p if p.is_absolute() else (ctx.path.parent / p).resolve())


# ------------------------------------------------------------------------------------------------ parsing

def parse_data(ctx: Ctx, t: dict[str, Any]) -> dict[str, Any]:
    """``[data]``: a built-in ``dataset`` (the dict is as before user data existed) or your ``path``."""
    ctx.keys(t, DATA_KEYS, "data")
    if "dataset" in t and "path" in t:
        raise ctx.error("data.path", "give data.dataset (a built-in data set) or data.path (your images), not both")
    if "path" not in t:
        if "dataset" not in t:
            raise ctx.error("data.dataset", "missing required key; or give path = \"...\" (your own images: an "
                            ".npz file or a folder with one subfolder per class)")
        for key in ("resize", "mode"):
            if key in t:
                raise ctx.error(f"data.{key}", "only used with data.path (a folder of your images)")
        from purify.data import DATASETS, SPLITS
        out = {"dataset": ctx.string(t["dataset"], "data.dataset", tuple(DATASETS)),
               "split": ctx.string(t.get("split", "test"), "data.split", SPLITS)}
    else:
        if "split" in t:
            raise ctx.error("data.split", "a data.path set is used whole (one split); remove data.split")
        from purify.user_data import MODES
        out = {"path": _path(ctx, t["path"], "data.path"), "resize": None,
               "mode": ctx.string(t.get("mode", "RGB"), "data.mode", MODES)}
        if "resize" in t:
            size = t["resize"]
            if not isinstance(size, list) or len(size) != 2:
                raise ctx.error("data.resize", f"expected [H, W], got {size!r}")
            out["resize"] = [ctx.integer(v, "data.resize", low=1) for v in size]
    if "count" in t and "indices" in t or ("path" not in t and "count" not in t and "indices" not in t):
        raise ctx.error("data.count", "give exactly one of data.count (with data.seed) or data.indices")
    if "indices" in t:
        idx = t["indices"]
        if not isinstance(idx, list) or not idx:
            raise ctx.error("data.indices", f"expected a non-empty array of image indices, got {idx!r}")
        out["indices"] = [ctx.integer(v, "data.indices") for v in idx]
        if len(set(out["indices"])) != len(out["indices"]):
            raise ctx.error("data.indices", "contains duplicates")
        if "seed" in t:
            raise ctx.error("data.seed", "only used with data.count; remove it")
    elif "count" in t:
        out["count"] = ctx.integer(t["count"], "data.count", low=1)
        out["seed"] = ctx.integer(t.get("seed", 0), "data.seed")
    elif "seed" in t:
        raise ctx.error("data.seed", "only used with data.count; remove it (without count every image is used)")
    return out


def parse_registered(ctx: Ctx, t: dict[str, Any], section: str) -> dict[str, Any]:
    """A registered model: ``name`` (built in or :func:`~purify.models.register_model`) and ``pretrained``."""
    ctx.keys(t, _REGISTERED_KEYS, section, ("name",))
    from purify.models import list_models
    name = ctx.string(t["name"], f"{section}.name", tuple(list_models()))
    pretrained = t.get("pretrained", True)
    if not isinstance(pretrained, bool):
        raise ctx.error(f"{section}.pretrained", f"expected true or false, got {pretrained!r}")
    return {"name": name, "pretrained": pretrained}


def parse_model(ctx: Ctx, t: dict[str, Any]) -> dict[str, Any]:
    """``[model]``: a registered name, a factory or an ONNX file, with pins and normalization (module docstring)."""
    server_config = _serving.module("config")
    _FACTORY_PATTERN, _SHA256_PATTERN = server_config._FACTORY_PATTERN, server_config._SHA256_PATTERN

    ctx.keys(t, MODEL_KEYS, "model")
    forms = [k for k in ("name", "factory", "onnx") if k in t]
    if not forms:
        raise ctx.error("model.name", "missing required key; or give factory = \"module:function\" (your torch "
                        "module) or onnx = \"file.onnx\"")
    if len(forms) > 1:
        raise ctx.error(f"model.{forms[1]}", f"give exactly one of model.name, model.factory or model.onnx, got "
                        f"{' and '.join(forms)}")
    if "name" in t:
        out = parse_registered(ctx, {k: t[k] for k in _REGISTERED_KEYS if k in t}, "model")
    elif "pretrained" in t:
        raise ctx.error("model.pretrained", "only used with model.name; a factory or ONNX model brings its weights")
    else:
        out = {}
    if "factory" in t:
        out["factory"] = ctx.string(t["factory"], "model.factory")
        if not _FACTORY_PATTERN.fullmatch(out["factory"]):
            raise ctx.error("model.factory", f"expected 'package.module:function', got {out['factory']!r}")
    if "onnx" in t:
        out["onnx"] = _path(ctx, t["onnx"], "model.onnx")
    if "weights" in t:
        if "onnx" in t:
            raise ctx.error("model.weights", "applies to a name or factory model; an ONNX graph holds its weights")
        out["weights"] = _path(ctx, t["weights"], "model.weights")
    for pin, file in (("weights_sha256", "weights"), ("onnx_sha256", "onnx")):
        if pin in t:
            value = ctx.string(t[pin], f"model.{pin}")
            if not _SHA256_PATTERN.fullmatch(value):
                raise ctx.error(f"model.{pin}", f"expected 64 hex digits (sha256sum of the file), got {value!r}")
            if file not in t:
                raise ctx.error(f"model.{pin}", f"pins the {file} file, so it needs model.{file}")
            out[pin] = value.lower()
    if ("mean" in t) != ("std" in t):
        raise ctx.error(f"model.{'std' if 'mean' in t else 'mean'}", "missing: model.mean and model.std go together")
    if "mean" in t:
        _parse_normalization(ctx, t, out)
    if "retrofit" in t:
        out["retrofit"] = _parse_retrofit(ctx, t["retrofit"], onnx="onnx" in t)
    return out


def _parse_retrofit(ctx: Ctx, raw: Any, *, onnx: bool) -> dict[str, Any]:
    """``model.retrofit``: an activation of :mod:`purify.activations` and its parameters, checked by building it."""
    from purify.activations import make_activation
    from purify.errors import PurifyError

    if onnx:
        raise ctx.error("model.retrofit", "applies to a name or factory model (an ONNX graph is already built)")
    if not isinstance(raw, dict) or "activation" not in raw:
        raise ctx.error("model.retrofit", f"expected {{ activation = \"jumprelu\", kappa = ... }}, got {raw!r}")
    try:
        make_activation(raw["activation"], **{k: v for k, v in raw.items() if k != "activation"})
    except PurifyError as e:
        raise ctx.error("model.retrofit", str(e)) from None
    if raw["activation"] == "random_jumprelu":
        raise ctx.error("model.retrofit", "a randomized classifier is not evaluated by the harness (its draws would "
                        "need EOT on the model itself); benchmarks/jumprelu.py measures random_jumprelu")
    return dict(raw)


def _parse_normalization(ctx: Ctx, t: dict[str, Any], out: dict[str, Any]) -> None:
    for key in ("mean", "std"):
        v = t[key]
        if not isinstance(v, list) or not v:
            raise ctx.error(f"model.{key}", f"expected one number per channel, e.g. [0.485, 0.456, 0.406], got {v!r}")
        out[key] = [ctx.number(x, f"model.{key}").value for x in v]
    if len(out["mean"]) != len(out["std"]):
        raise ctx.error("model.std", f"expected as many values as model.mean ({len(out['mean'])}), got "
                        f"{len(out['std'])}")
    if min(out["std"]) <= 0:
        raise ctx.error("model.std", f"expected every value > 0, got {out['std']}")
    if "name" in out:
        from purify.models import UserModel, get_model_config
        if not isinstance(get_model_config(out["name"]), UserModel):
            raise ctx.error("model.mean", f"{out['name']} normalizes its input itself (it takes [0, 1] images); "
                            "remove model.mean and model.std")


def _import(target: str, folder: Path) -> Any:
    """``module:attribute`` imported with ``folder`` (the config's) first on ``sys.path``, as the server does."""
    module_name, attr = target.split(":")
    added = str(folder) not in sys.path
    if added:
        sys.path.insert(0, str(folder))
    try:
        return getattr(importlib.import_module(module_name), attr)
    finally:
        if added:
            sys.path.remove(str(folder))


def resolve_attack(ctx: Ctx, name: Any, key: str) -> str:
    """An ``[[attacks]]`` name: a registered attack, or ``"module:attribute"`` naming an ``AttackSpec``,
    which is imported and registered (again each time the config is parsed: a no-op for the same spec)."""
    _FACTORY_PATTERN = _serving.module("config")._FACTORY_PATTERN
    from purify.attacks.registry import AttackSpec, list_attacks, register_attack

    name = ctx.string(name, key)
    if ":" not in name:
        return ctx.string(name, key, tuple(list_attacks()))
    if not _FACTORY_PATTERN.fullmatch(name):
        raise ctx.error(key, f"expected a registered attack or 'package.module:attribute', got {name!r}")
    try:
        spec = _import(name, ctx.path.resolve().parent)
    except Exception as e:  # noqa: BLE001 - any failure of the user's import is a config error
        raise ctx.error(key, f"cannot import {name!r}: {type(e).__name__}: {e}") from None
    if not isinstance(spec, AttackSpec):
        raise ctx.error(key, f"{name!r} is a {type(spec).__name__}, expected an AttackSpec: wrap your function as "
                        "AttackSpec(\"myattack\", function, \"bounded\", (\"linf\",), gradients, \"description\")")
    try:
        register_attack(spec)
    except (PurifyError, ValueError) as e:
        raise ctx.error(key, str(e)) from None
    return spec.name


def attack_keys(cfg_attacks: tuple[AttackEntry, ...], n_own: int) -> list[str]:
    """The config key of each entry: ``attacks[i]`` for the config's own, ``worst`` for the ``[worst]`` expansion."""
    return [f"attacks[{i}]" if i < n_own else "worst" for i in range(len(cfg_attacks))]


def check_eps_scale(error, attacks: tuple[AttackEntry, ...], keys: list[str], numel: int | None) -> None:
    """Refuse budgets on the 0..255 scale: L∞ ``eps > 1``; L2 ``eps > sqrt(numel)`` when the image size is known.

    ``error(key, message)`` makes the exception; ``numel`` = C·H·W. The sanity cell at a large eps
    (``[worst]``'s ``sanity_eps``) is meant to be huge and is not checked.

    Example:
        >>> from benchmarks.harness.schema import Eps
        >>> entry = AttackEntry("pgd", "pgd", (Eps(8.0, "8"),), ("bpda",), (10,), {"iters": 10, "step_ratio": 0.25})
        >>> check_eps_scale(lambda key, msg: ValueError(f"{key}: {msg}"), (entry,), ["attacks[0]"], 3 * 32 * 32)
        Traceback (most recent call last):
        ...
        ValueError: attacks[0].eps: 8 is above 1 (an L-inf budget of 1 allows any image): images are in [0, 1], not 0..255; did you mean "8/255"?
    """
    for entry, key in zip(attacks, keys):
        if entry.id == "sanity-large-eps":
            continue
        norm = entry.norm
        if norm == "l0":       # a count of changed values, not a pixel scale: no 0..255 budget to catch
            continue
        bound = 1.0 if norm == "linf" else (math.sqrt(numel) if numel else None)
        for e in entry.eps:
            if bound is not None and e.value > bound:
                what = ("1 (an L-inf budget of 1 allows any image)" if norm == "linf" else
                        f"sqrt(C*H*W) = {bound:.1f} (the L2 distance from an all-black to an all-white image)")
                raise error(f"{key}.eps", f"{e.label} is above {what}: images are in [0, 1], not 0..255; "
                            f"did you mean \"{e.label}/255\"?")


def check_onnx_attacks(ctx: Ctx, model: dict[str, Any], head: str, attacks: tuple[AttackEntry, ...],
                       keys: list[str]) -> None:
    """An ONNX model has no gradients: refuse every cell that would differentiate it, before any work.

    Sound with an ONNX ``[model]``: attacks with ``gradients=False`` (``square``) under any threat
    model, and any attack under ``substitute`` / ``blackbox`` (it differentiates the torch substitute).
    """
    if "onnx" not in model:
        return
    if head != "softmax":
        raise ctx.error("defense.head", "the WNLL head labels by the classifier's features, which an ONNX model "
                        "does not expose; use head = \"softmax\"")
    for entry, key in zip(attacks, keys):
        needs = [t for t in entry.threat_models if t not in SUBSTITUTE_SOURCE]
        if entry.spec.gradients and needs:
            raise ctx.error(key if key == "worst" else f"{key}.name",
                            f"{entry.name} differentiates the model it attacks (threat model {needs[0]!r}), and "
                            "model.onnx is an ONNX graph without gradients; use a score-based attack (square), or "
                            "transfer from a torch model: threat models 'substitute' / 'blackbox' with [substitute]")
