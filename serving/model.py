"""One served model: request tensors in, batched execution, response tensors out, v2 metadata.

:class:`ServedModel` checks a parsed request against the config (input name, datatype, shape,
value range, per-request parameters, requested outputs), hands a payload to its
:class:`~serving.batcher.DynamicBatcher`, and turns the batch's class scores into the outputs:
``probabilities`` (FP32, ``(B, K)``) and ``labels`` (BYTES, ``(B, top_k)``, Triton's
classification format ``"score:index:class name"``).

Example:
    >>> from serving.config import load_config, DEFAULT_CONFIG
    >>> model = ServedModel(load_config(DEFAULT_CONFIG))  # doctest: +SKIP
    >>> model.metadata()["inputs"]  # doctest: +SKIP
    [{'name': 'images', 'datatype': 'FP32', 'shape': [-1, 3, 32, 32]}]
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from purify.registry import get_purifier_spec
from .backends import create_backend
from .batcher import DynamicBatcher
from .config import ServeConfig
from .errors import BadRequest, ConfigError
from .protocol import InferRequest

__all__ = ["ServedModel", "topk_labels"]

# Request parameters of the protocol itself (Triton's reserved names) that this server honours;
# sequence_* and priority would need a sequence / priority scheduler, so they are refused.
_PROTOCOL_PARAMS = ("timeout",)


def topk_labels(scores: np.ndarray, k: int, classes: Sequence[str] | None) -> np.ndarray:
    """Triton classification strings ``"score:index:label"`` of the top ``k`` classes per row.

    Shape:
        scores: (B, K); output: (B, min(k, K)) object array of bytes.
    Example:
        >>> topk_labels(np.array([[0.1, 0.7, 0.2]]), 2, ["a", "b", "c"]).tolist()
        [[b'0.700000:1:b', b'0.200000:2:c']]
    """
    k = min(k, scores.shape[1])
    idx = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    out = np.empty(idx.shape, dtype=object)
    for (i, j), c in np.ndenumerate(idx):
        label = f":{classes[c]}" if classes is not None else ""
        out[i, j] = f"{scores[i, c]:.6f}:{c}{label}".encode()
    return out


class ServedModel:
    """A config's backend behind a dynamic batcher (see the module docstring)."""

    def __init__(self, cfg: ServeConfig, *, metrics: Any = None) -> None:
        self.cfg = cfg
        self.backend = create_backend(cfg)
        self.classes = cfg.outputs.classes or self.backend.classes
        self.metrics = metrics
        self.num_classes = self._probe_classes()
        if self.classes is not None and len(self.classes) != self.num_classes:
            raise ConfigError(f"{cfg.source}: outputs.classes: {len(self.classes)} names for a model with "
                              f"{self.num_classes} classes")
        # Which (stage, parameter) pairs vary per sample: those a request parameter can set.
        self._per_sample = sorted({(p.stage, p.param) for p in cfg.request_params.values()})
        self._defaults = [{**get_purifier_spec(s.name).defaults(), **s.params} for s in cfg.stages]
        b = cfg.batching
        on_batch = metrics.batch_size.labels(cfg.name).observe if metrics is not None else None
        self.batcher = DynamicBatcher(self._run_batch, max_batch_size=b.max_batch_size,
                                      max_queue_delay_ms=b.max_queue_delay_ms, max_queue_size=b.max_queue_size,
                                      timeout_ms=b.timeout_ms, on_batch=on_batch)
        self.ready = False

    def _probe_classes(self) -> int:
        c, h, w = self.cfg.input.chw
        probe = np.full((1, c, h, w), 0.5, np.float32)
        try:
            scores = self.backend.run(probe, [{} for _ in self.cfg.stages])
        except Exception as err:  # noqa: BLE001 - a user's classifier may raise anything; fail at start-up
            raise ConfigError(f"{self.cfg.source}: classifier: the model fails on a probe batch of shape "
                              f"{probe.shape} (input.shape {list(self.cfg.input.shape)}): "
                              f"{type(err).__name__}: {err}") from err
        if scores.ndim != 2 or scores.shape[0] != 1:
            raise ConfigError(f"{self.cfg.source}: classifier: expected scores of shape (1, K) for one probe "
                              f"image, got {tuple(scores.shape)}")
        return int(scores.shape[1])

    async def start(self) -> None:
        await self.batcher.start()
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        await self.batcher.close()

    # ------------------------------------------------------------------------------------------ requests

    def _images(self, req: InferRequest) -> np.ndarray:
        spec = self.cfg.input
        if spec.name not in req.inputs or len(req.inputs) != 1:
            raise BadRequest(f"expected exactly one input named {spec.name!r}, got {sorted(req.inputs)}")
        t = req.inputs[spec.name]
        if t.datatype != spec.datatype:
            raise BadRequest(f"input {spec.name!r}: expected datatype {spec.datatype}, got {t.datatype}")
        if len(t.shape) != 4 or tuple(t.shape[1:]) != spec.shape:
            raise BadRequest(f"input {spec.name!r}: expected shape [-1, {', '.join(map(str, spec.shape))}] "
                             f"({spec.layout}, batch first), got {list(t.shape)}")
        if t.shape[0] == 0:
            raise BadRequest(f"input {spec.name!r}: expected at least one image, got a batch of 0")
        x = t.array.astype(np.float32)
        if spec.datatype == "FP32" and not np.isfinite(x).all():
            raise BadRequest(f"input {spec.name!r}: contains NaN or Inf values")
        lo, hi = spec.range
        if x.min() < lo or x.max() > hi:
            raise BadRequest(f"input {spec.name!r}: expected values in [{lo:g}, {hi:g}], got values in "
                             f"[{x.min():.4g}, {x.max():.4g}]")
        if spec.layout == "NHWC":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray((x - lo) / (hi - lo), dtype=np.float32)

    def _overrides(self, req: InferRequest) -> tuple[dict[str, float], float | None]:
        allowed = list(self.cfg.request_params) + list(_PROTOCOL_PARAMS)
        unknown = sorted(set(req.parameters) - set(allowed))
        if unknown:
            raise BadRequest(f"unknown request parameter(s) {', '.join(map(repr, unknown))}; this model "
                             f"accepts {', '.join(map(repr, allowed))}")
        out = {}
        for name, spec in self.cfg.request_params.items():
            if name not in req.parameters:
                continue
            v = req.parameters[name]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not spec.low <= v <= spec.high:
                raise BadRequest(f"parameter {name!r}: expected a number in [{spec.low:g}, {spec.high:g}], got {v!r}")
            out[name] = float(v)
        timeout = req.parameters.get("timeout")
        # Triton's timeout is a uint64 of microseconds; a larger int would overflow the float conversion.
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int)
                                    or not 0 < timeout < 2**64):
            huge = isinstance(timeout, int) and timeout >= 2**64
            shown = f"an int of {len(str(timeout))} digits" if huge else repr(timeout)
            raise BadRequest(f"parameter 'timeout': expected a positive int (microseconds) below 2**64, got {shown}")
        return out, (timeout / 1000.0 if timeout is not None else None)

    def _outputs(self, req: InferRequest) -> list[tuple[str, bool, int]]:
        names = (self.cfg.outputs.probabilities, self.cfg.outputs.labels)
        if req.outputs is None:
            return [(n, req.binary_output, 0) for n in names]
        for o in req.outputs:
            if o.name not in names:
                raise BadRequest(f"unknown output {o.name!r}; this model has {', '.join(map(repr, names))}")
        return [(o.name, o.binary or req.binary_output, o.classification) for o in req.outputs]

    async def infer(self, req: InferRequest) -> list[tuple[str, str, np.ndarray, bool]]:
        """Validate, queue, and build ``(name, datatype, array, binary)`` outputs for one request."""
        x = self._images(req)
        overrides, timeout_ms = self._overrides(req)
        wanted = self._outputs(req)
        scores = await self.batcher.submit((x, overrides), size=x.shape[0], timeout_ms=timeout_ms)
        out = []
        for name, binary, k in wanted:
            if k or name == self.cfg.outputs.labels:
                out.append((name, "BYTES", topk_labels(scores, k or self.cfg.outputs.top_k, self.classes), binary))
            else:
                out.append((name, "FP32", scores, binary))
        return out

    def _run_batch(self, payloads: Sequence[tuple[np.ndarray, dict[str, float]]]) -> list[np.ndarray]:
        """Worker thread: one backend call for the whole batch, split back per request."""
        x = np.concatenate([p[0] for p in payloads]) if len(payloads) > 1 else payloads[0][0]
        stage_params: list[dict[str, np.ndarray]] = [{} for _ in self.cfg.stages]
        for stage, param in self._per_sample:
            values = []
            for images, overrides in payloads:
                v = next((overrides[n] for n, s in self.cfg.request_params.items()
                          if s.stage == stage and s.param == param and n in overrides), self._defaults[stage][param])
                values.append(np.full(images.shape[0], v, np.float32))
            stage_params[stage][param] = np.concatenate(values)
        scores = self.backend.run(x, stage_params)
        bounds = np.cumsum([0] + [p[0].shape[0] for p in payloads])
        return [scores[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    # ------------------------------------------------------------------------------------------ metadata

    def metadata(self) -> dict[str, Any]:
        """v2 model metadata; ``parameters`` says which backend, device and providers actually run it."""
        c = self.cfg
        k = self.num_classes
        return {
            "name": c.name, "versions": [c.version], "platform": self.backend.platform,
            "inputs": [{"name": c.input.name, "datatype": c.input.datatype, "shape": [-1, *c.input.shape]}],
            "outputs": [{"name": c.outputs.probabilities, "datatype": "FP32", "shape": [-1, k]},
                        {"name": c.outputs.labels, "datatype": "BYTES", "shape": [-1, min(c.outputs.top_k, k)]}],
            "parameters": {**{key: (", ".join(v) if isinstance(v, list) else v)
                              for key, v in self.backend.info.items()},
                           "stages": ", ".join(s.name for s in c.stages) or "none", "head": c.head.type,
                           "request_parameters": ", ".join(c.request_params) or "none"},
        }

    def model_config(self) -> dict[str, Any]:
        """Triton-style model configuration, with the batching settings."""
        c, b = self.cfg, self.cfg.batching
        return {
            "name": c.name, "platform": self.backend.platform, "backend": self.backend.info["backend"],
            "version_policy": {"specific": {"versions": [c.version]}},
            "max_batch_size": b.max_batch_size,
            "input": [{"name": c.input.name, "data_type": f"TYPE_{c.input.datatype}", "dims": list(c.input.shape),
                       "format": "FORMAT_NCHW" if c.input.layout == "NCHW" else "FORMAT_NHWC"}],
            "output": [{"name": c.outputs.probabilities, "data_type": "TYPE_FP32", "dims": [self.num_classes]},
                       {"name": c.outputs.labels, "data_type": "TYPE_STRING",
                        "dims": [min(c.outputs.top_k, self.num_classes)]}],
            "dynamic_batching": {
                "max_queue_delay_microseconds": int(round(b.max_queue_delay_ms * 1000)),
                "default_queue_policy": {"max_queue_size": b.max_queue_size,
                                         "default_timeout_microseconds": int(round(b.timeout_ms * 1000)),
                                         "timeout_action": "REJECT"},
            },
            "parameters": {name: {"string_value": f"{c.stages[p.stage].name}.{p.param} in [{p.low:g}, {p.high:g}]"}
                           for name, p in c.request_params.items()},
        }

