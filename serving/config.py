"""Model-repository config: one TOML (or YAML, when pyyaml is installed) file per served model.

Every field is checked when the server starts; a bad file raises :class:`ConfigError` naming
the file and the field (``model.toml: batching.max_batch_size: expected an int >= 1, got 0``).
Unknown keys are refused too, so a typo never silently falls back to a default.

A complete file (``serving/default.toml`` is the built-in default)::

    name = "cifar10_tvm"                 # the model's name in URLs
    version = "1"

    [classifier]                         # exactly one of registry / factory / onnx
    registry = "small_cnn_cifar10"       # purify.models name (built in, or added by register_model)
    # weights = "resnet20.th"            # explicit checkpoint (registry), or a state dict (factory)
    # data_dir = "../shared/data"        # where registry checkpoints are looked for
    # factory = "mynets:build"           # your torch module: module:function, imported from the
    #                                    # config's folder or sys.path, called with no arguments
    # onnx = "defended.onnx"             # a graph written by `purify-export` (whole defended model)
    # weights_sha256 = "<64 hex>"        # optional pins, checked before loading (serving/integrity.py)
    # onnx_sha256 = "<64 hex>"
    # retrofit = { activation = "jumprelu", kappa = 0.1 }   # replace the classifier's ReLUs (registry /
    #                                    # factory; purify.activations: jumprelu, random_jumprelu, bounded_relu)

    [input]
    name = "images"
    shape = [3, 32, 32]                  # per image, in `layout` order
    datatype = "FP32"                    # FP32 (values in `range`) or UINT8
    layout = "NCHW"                      # or NHWC
    range = [0.0, 1.0]                   # mapped to [0, 1] for the model

    [[stages]]                           # purification, in order (purify.list_purifiers())
    name = "tvm"
    params = { drop_prob = 0.3, weight = 0.1 }

    [request_parameters]                 # what a request's `parameters` object may set, per sample
    tv_weight = { stage = "tvm", param = "weight", min = 0.0, max = 1.0 }

    [head]
    type = "softmax"                     # or "wnll" with templates = "<file or shipped head name>"

    [outputs]
    probabilities = "probabilities"      # output names
    labels = "labels"
    top_k = 3
    # classes = [...]                    # default: the classifier's class names

    [batching]
    max_batch_size = 64
    max_queue_delay_ms = 5.0
    max_queue_size = 256
    timeout_ms = 10000

    [backend]
    type = "torch"                       # or "onnxruntime" (needs classifier.onnx)
    device = "auto"                      # auto | cpu | cuda
    threads = 1                          # torch / onnxruntime intra-op threads
    memory_format = "auto"               # torch: auto | channels_last | contiguous (see serving.backends)
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError

__all__ = ["ServeConfig", "InputSpec", "StageConfig", "RequestParam", "HeadConfig", "OutputSpec",
           "BatchingConfig", "BackendConfig", "load_config", "parse_config", "DEFAULT_CONFIG"]

#: The built-in default served by ``purify-serve`` without arguments.
DEFAULT_CONFIG = Path(__file__).resolve().parent / "default.toml"

_INPUT_DATATYPES = ("FP32", "UINT8")
_FACTORY_PATTERN = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
_SHA256_PATTERN = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True)
class InputSpec:
    name: str = "images"
    shape: tuple[int, int, int] = (3, 32, 32)
    datatype: str = "FP32"
    layout: str = "NCHW"
    range: tuple[float, float] = (0.0, 1.0)

    @property
    def chw(self) -> tuple[int, int, int]:
        """The per-image shape in (C, H, W) order."""
        return self.shape if self.layout == "NCHW" else (self.shape[2], self.shape[0], self.shape[1])


@dataclass(frozen=True)
class StageConfig:
    name: str
    params: Mapping[str, Any]


@dataclass(frozen=True)
class RequestParam:
    """A request parameter bound to one stage's per-sample parameter, with its allowed range."""

    name: str
    stage: int                 # index into ServeConfig.stages
    param: str
    low: float
    high: float


@dataclass(frozen=True)
class HeadConfig:
    type: str = "softmax"
    templates: Path | None = None


@dataclass(frozen=True)
class OutputSpec:
    probabilities: str = "probabilities"
    labels: str = "labels"
    top_k: int = 3
    classes: tuple[str, ...] | None = None


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = 64
    max_queue_delay_ms: float = 5.0
    max_queue_size: int = 256
    timeout_ms: float = 10_000.0


@dataclass(frozen=True)
class BackendConfig:
    type: str = "torch"
    device: str = "auto"
    threads: int = 1
    memory_format: str = "auto"


@dataclass(frozen=True)
class ServeConfig:
    """A validated model config (see the module docstring for the file format)."""

    name: str
    version: str
    source: str                                 # the file it came from, for messages
    registry: str | None = None
    factory: str | None = None                  # "module:function" building the classifier
    weights: Path | None = None
    data_dir: Path | None = None
    onnx: Path | None = None
    weights_sha256: str | None = None           # lower-case hex; checked before loading
    onnx_sha256: str | None = None
    retrofit: Mapping[str, Any] | None = None   # {"activation": ..., its parameters}: purify.activations.retrofit
    input: InputSpec = field(default_factory=InputSpec)
    stages: tuple[StageConfig, ...] = ()
    request_params: Mapping[str, RequestParam] = field(default_factory=dict)
    head: HeadConfig = field(default_factory=HeadConfig)
    outputs: OutputSpec = field(default_factory=OutputSpec)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)


class _Table:
    """One table of the file: typed getters that name ``<file>: <path>.<key>`` in their errors."""

    def __init__(self, source: str, path: str, data: object, allowed: tuple[str, ...]) -> None:
        self.source, self.path = source, path
        if not isinstance(data, Mapping):
            self.fail("", f"expected a table, got {type(data).__name__}")
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            self.fail(unknown[0], f"unknown key; expected one of {', '.join(allowed)}")
        self.data = data

    def where(self, key: str) -> str:
        return ".".join(p for p in (self.path, key) if p) or "(top level)"

    def fail(self, key: str, message: str) -> None:
        raise ConfigError(f"{self.source}: {self.where(key)}: {message}")

    def str(self, key: str, default: str | None = None, *, choices: tuple[str, ...] | None = None) -> str | None:
        value = self.data.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            self.fail(key, f"expected a non-empty string, got {value!r}")
        if choices is not None and value not in choices:
            self.fail(key, f"expected one of {', '.join(map(repr, choices))}, got {value!r}")
        return value

    def int(self, key: str, default: int, *, low: int) -> int:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            self.fail(key, f"expected an int >= {low}, got {value!r}")
        return value

    def float(self, key: str, default: float | None, *, low: float = 0.0) -> float:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < low:
            self.fail(key, f"expected a finite number >= {low}, got {value!r}")
        return float(value)

    def numbers(self, key: str, default: tuple, *, length: int, integer: bool) -> tuple:
        value = self.data.get(key, default)
        kind = int if integer else (int, float)
        if (not isinstance(value, (list, tuple)) or len(value) != length
                or any(isinstance(v, bool) or not isinstance(v, kind) for v in value)):
            self.fail(key, f"expected a list of {length} {'ints' if integer else 'numbers'}, got {value!r}")
        return tuple(value)

    def path_(self, key: str, base: Path) -> Path | None:
        value = self.str(key)
        if value is None:
            return None
        p = Path(os.path.expandvars(value)).expanduser()
        return p if p.is_absolute() else base / p


def _read_file(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file; pass the path of a .toml or .yaml model config")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as err:
            raise ConfigError(f"{path}: YAML configs need pyyaml (pip install pyyaml), or write TOML") from err
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
    else:
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: not valid TOML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table of settings at the top level, got {type(data).__name__}")
    return data


def load_config(path: str | os.PathLike) -> ServeConfig:
    """Read and validate one model config; relative paths in it are relative to the file.

    Raises:
        ConfigError: the message names the file and the field.
    Example:
        >>> load_config(DEFAULT_CONFIG).batching.max_batch_size
        64
    """
    p = Path(path).expanduser()
    return parse_config(_read_file(p), source=str(p), base=p.resolve().parent)


def parse_config(data: Mapping[str, Any], *, source: str = "<config>", base: Path | None = None) -> ServeConfig:
    """Validate an already-parsed config mapping (see :func:`load_config`).

    Example:
        >>> parse_config({"name": "m", "classifier": {"registry": "resnet20"}}).backend.type
        'torch'
    """
    base = base or Path.cwd()
    top = _Table(source, "", data, ("name", "version", "classifier", "input", "stages", "request_parameters",
                                    "head", "outputs", "batching", "backend"))
    name = top.str("name")
    if name is None or not all(ch.isalnum() or ch in "-_." for ch in name):
        top.fail("name", f"expected a model name of letters, digits, '-', '_' or '.', got {name!r}")
    version = top.str("version", "1")

    clf = _Table(source, "classifier", data.get("classifier", {}),
                 ("registry", "factory", "weights", "data_dir", "onnx", "weights_sha256", "onnx_sha256", "retrofit"))
    registry, factory, onnx = clf.str("registry"), clf.str("factory"), clf.path_("onnx", base)
    if sum(v is not None for v in (registry, factory, onnx)) != 1:
        clf.fail("", "expected exactly one of registry = '<purify model name>', factory = '<module:function>' "
                     "or onnx = '<file>'")
    if registry is not None:
        from purify.models import list_models

        clf.str("registry", choices=tuple(list_models()))
    if factory is not None and not _FACTORY_PATTERN.fullmatch(factory):
        clf.fail("factory", f"expected 'package.module:function', got {factory!r}")
    if clf.data.get("weights") is not None and onnx is not None:
        clf.fail("weights", "applies to a registry or factory classifier only")
    if clf.data.get("data_dir") is not None and registry is None:
        clf.fail("data_dir", "applies to a registry classifier only")
    retrofit = _retrofit(clf, onnx is not None)
    pins = {}
    for key, pinned in (("weights_sha256", "weights"), ("onnx_sha256", "onnx")):
        value = clf.str(key)
        if value is not None and not _SHA256_PATTERN.fullmatch(value):
            clf.fail(key, f"expected 64 hex digits (sha256sum of the file), got {value!r}")
        if value is not None and clf.data.get(pinned) is None:
            clf.fail(key, f"pins the {pinned} file, so it needs classifier.{pinned}")
        pins[key] = value.lower() if value is not None else None

    inp = _Table(source, "input", data.get("input", {}), ("name", "shape", "datatype", "layout", "range"))
    layout = inp.str("layout", "NCHW", choices=("NCHW", "NHWC"))
    shape = inp.numbers("shape", (3, 32, 32) if layout == "NCHW" else (32, 32, 3), length=3, integer=True)
    if min(shape) < 1:
        inp.fail("shape", f"expected positive sizes, got {list(shape)}")
    datatype = inp.str("datatype", "FP32", choices=_INPUT_DATATYPES)
    value_range = inp.numbers("range", (0.0, 1.0) if datatype == "FP32" else (0, 255), length=2, integer=False)
    if not value_range[0] < value_range[1]:
        inp.fail("range", f"expected [low, high] with low < high, got {list(value_range)}")
    input_spec = InputSpec(inp.str("name", "images"), shape, datatype, layout, tuple(map(float, value_range)))

    stages = _stages(source, data.get("stages", []))
    request_params = _request_params(source, data.get("request_parameters", {}), stages)
    head = _head(source, data.get("head", {}), base)

    out = _Table(source, "outputs", data.get("outputs", {}), ("probabilities", "labels", "top_k", "classes"))
    classes = out.data.get("classes")
    if classes is not None and (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)):
        out.fail("classes", f"expected a list of class names, got {classes!r}")
    outputs = OutputSpec(out.str("probabilities", "probabilities"), out.str("labels", "labels"),
                         out.int("top_k", 3, low=1), tuple(classes) if classes is not None else None)
    if outputs.probabilities == outputs.labels:
        out.fail("labels", "expected output names different from outputs.probabilities")

    bat = _Table(source, "batching", data.get("batching", {}),
                 ("max_batch_size", "max_queue_delay_ms", "max_queue_size", "timeout_ms"))
    batching = BatchingConfig(bat.int("max_batch_size", 64, low=1), bat.float("max_queue_delay_ms", 5.0),
                              bat.int("max_queue_size", 256, low=1), bat.float("timeout_ms", 10_000.0, low=1.0))

    be = _Table(source, "backend", data.get("backend", {}), ("type", "device", "threads", "memory_format"))
    backend = BackendConfig(be.str("type", "torch", choices=("torch", "onnxruntime")),
                            be.str("device", "auto", choices=("auto", "cpu", "cuda")), be.int("threads", 1, low=0),
                            be.str("memory_format", "auto", choices=("auto", "channels_last", "contiguous")))
    if backend.type == "onnxruntime" and onnx is None:
        be.fail("type", "onnxruntime runs an exported graph: set classifier.onnx (make one with `purify-export`)")
    if backend.type == "onnxruntime" and backend.memory_format != "auto":
        be.fail("memory_format", "applies to the torch backend only (ONNX Runtime picks its own layouts)")
    if backend.type == "torch" and onnx is not None:
        be.fail("type", "an onnx classifier needs type = 'onnxruntime'")
    return ServeConfig(name=name, version=version, source=source, registry=registry, factory=factory,
                       weights=clf.path_("weights", base), data_dir=clf.path_("data_dir", base), onnx=onnx, **pins,
                       retrofit=retrofit,
                       input=input_spec, stages=stages, request_params=request_params, head=head,
                       outputs=outputs, batching=batching, backend=backend)


def _retrofit(clf: "_Table", is_onnx: bool) -> dict[str, Any] | None:
    """``classifier.retrofit``: an activation name and its parameters, checked by building the activation."""
    raw = clf.data.get("retrofit")
    if raw is None:
        return None
    if is_onnx:
        clf.fail("retrofit", "applies to a registry or factory classifier (an ONNX graph is already built)")
    if not isinstance(raw, Mapping) or "activation" not in raw:
        clf.fail("retrofit", f"expected {{ activation = 'jumprelu', kappa = ... }}, got {raw!r}")
    from purify.activations import make_activation
    from purify.errors import PurifyError

    params = {k: v for k, v in raw.items() if k != "activation"}
    try:
        make_activation(raw["activation"], **params)
    except PurifyError as err:
        clf.fail("retrofit", str(err))
    return dict(raw)


def _stages(source: str, raw: object) -> tuple[StageConfig, ...]:
    from purify.registry import check_stage_params, get_purifier_spec, list_purifiers
    from purify.errors import PurifyError

    if not isinstance(raw, list):
        raise ConfigError(f"{source}: stages: expected a list of tables ([[stages]]), got {type(raw).__name__}")
    out = []
    for i, item in enumerate(raw):
        t = _Table(source, f"stages[{i}]", item, ("name", "params"))
        name = t.str("name", choices=tuple(list_purifiers()))
        if name is None:
            t.fail("name", f"missing; expected one of {', '.join(list_purifiers())}")
        params = t.data.get("params", {})
        if not isinstance(params, Mapping):
            t.fail("params", f"expected a table, got {type(params).__name__}")
        try:
            check_stage_params(get_purifier_spec(name), dict(params))
        except PurifyError as err:
            t.fail("params", str(err))
        if "generator" in params or "mask" in params:
            t.fail("params", "generator and mask are per request, not config values")
        out.append(StageConfig(name, dict(params)))
    return tuple(out)


def _request_params(source: str, raw: object, stages: tuple[StageConfig, ...]) -> dict[str, RequestParam]:
    from purify.registry import get_purifier_spec

    table = _Table(source, "request_parameters", raw, tuple(raw) if isinstance(raw, Mapping) else ())
    out = {}
    for key, item in table.data.items():
        t = _Table(source, f"request_parameters.{key}", item, ("stage", "param", "min", "max"))
        stage_name, param = t.str("stage"), t.str("param")
        matches = [i for i, s in enumerate(stages) if s.name == stage_name]
        if not matches:
            t.fail("stage", f"expected the name of a configured stage ({', '.join(s.name for s in stages) or 'none'}), "
                            f"got {stage_name!r}")
        # The registry says what may vary per sample (only that lets requests with different values
        # share a batch) and its legal values; random inputs (TVM's mask) are drawn by the server.
        spec = get_purifier_spec(stage_name)
        allowed = tuple(n for n in spec.per_sample if spec.per_sample_range(n) is not None)
        if param not in allowed:
            t.fail("param", f"expected a per-sample parameter of {stage_name!r} ({', '.join(allowed) or 'none'}), "
                            f"got {param!r}")
        low, high = t.float("min", 0.0, low=-math.inf), t.float("max", None, low=-math.inf)
        if not low <= high:
            t.fail("max", f"expected max >= min, got [{low}, {high}]")
        legal = spec.per_sample_range(param)
        if not legal.contains(low, high):
            t.fail("min" if not legal.contains(low, low) else "max",
                   f"[{low:g}, {high:g}] goes beyond the legal values of {stage_name}.{param}, {legal.describe()}")
        out[key] = RequestParam(key, matches[0], param, low, high)
    return out


def _head(source: str, raw: object, base: Path) -> HeadConfig:
    t = _Table(source, "head", raw, ("type", "templates"))
    kind = t.str("type", "softmax", choices=("softmax", "wnll"))
    value = t.str("templates")
    if kind == "wnll" and value is None:
        t.fail("templates", "the wnll head needs templates = '<file>' or the name of a shipped head "
                            "(e.g. 'resnet56_wnll'; made by purify.training.wnll)")
    if kind == "softmax" and value is not None:
        t.fail("templates", "only the wnll head takes templates")
    templates = None
    if value is not None:
        # A file relative to the config when one is there; else a shipped artifact's name or stem,
        # which WNLLHead.load resolves (and names in its error) when the model loads.
        candidate = t.path_("templates", base)
        templates = candidate if candidate.exists() else Path(value)
    return HeadConfig(kind, templates)
