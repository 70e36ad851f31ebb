"""Open Inference Protocol (KServe v2) bodies: JSON tensors, Triton's binary-tensor extension, compression.

A request body is a JSON header, optionally followed by raw tensor bytes. When binary data
follows, the header's length is in the ``Inference-Header-Content-Length`` HTTP header and each
binary input declares ``parameters.binary_data_size``; the inputs' bytes follow in input order.
Responses mirror that: outputs asked for with ``binary_data`` (or the request-level
``binary_data_output``) are appended as bytes after the JSON header.

Example:
    >>> body = json.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [0.5, 1]}]})
    >>> req = parse_request(body.encode(), header_length=None)
    >>> req.inputs["x"].array
    array([[0.5, 1. ]], dtype=float32)
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import BadRequest, PayloadTooLarge

__all__ = ["DTYPES", "InferRequest", "RequestedOutput", "Tensor", "decode_body", "encode_body",
           "load_json", "parse_request", "encode_response"]

# v2 datatype name -> numpy dtype (BYTES is handled on its own).
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"), "INT8": np.dtype(np.int8),
    "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray


@dataclass
class RequestedOutput:
    name: str
    binary: bool
    classification: int = 0      # Triton's classification extension: top-k as "score:index:label"


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, Tensor]
    parameters: dict[str, Any]
    outputs: list[RequestedOutput] | None       # None: every output
    binary_output: bool                          # request-level binary_data_output
    extra: dict[str, Any] = field(default_factory=dict)


def decode_body(body: bytes, encoding: str | None, *, limit: int) -> bytes:
    """Undo ``Content-Encoding`` gzip / deflate (zlib stream, as Triton and its client use), bounded by ``limit``.

    Codings are case-insensitive (RFC 9110). One gzip member only: bytes after the end of the
    compressed stream are refused, not ignored (a second member would be an unchecked payload).

    Example:
        >>> decode_body(gzip.compress(b"abc"), "GZIP", limit=10)
        b'abc'
        >>> decode_body(gzip.compress(b"abc") + b"junk", "gzip", limit=10)
        Traceback (most recent call last):
        ...
        serving.errors.BadRequest: request body has 4 bytes after the end of the gzip data
    """
    coding = (encoding or "").strip().lower()
    if not coding or coding == "identity":
        return body
    if coding not in ("gzip", "x-gzip", "deflate"):
        raise BadRequest(f"unsupported Content-Encoding {encoding!r}; use gzip, deflate or none")
    coding = "gzip" if coding == "x-gzip" else coding
    # wbits: 31 = gzip container, 15 = zlib container; max_length bounds a decompression bomb.
    d = zlib.decompressobj(31 if coding == "gzip" else 15)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as err:
        raise BadRequest(f"request body is not valid {coding} data: {err}") from err
    if len(out) > limit:
        raise PayloadTooLarge(f"decompressed request body is over the limit of {limit} bytes")
    if not d.eof:
        raise BadRequest(f"request body is truncated {coding} data")
    if d.unused_data:
        raise BadRequest(f"request body has {len(d.unused_data)} bytes after the end of the {coding} data")
    return out


def _python_float(text: str) -> float:
    return float(text)


def _python_int(text: str) -> int:
    return int(text)


# json's C scanner holds the GIL for a whole document (~20 ms per MiB of numbers), so parsing in a
# worker thread alone still stalls the event loop for that long. With number hooks written in
# Python the scanner re-enters the interpreter for every number, which hands the GIL over every
# switch interval (5 ms): the loop keeps running, for ~10 % more parse time. Used off the loop only.
_COOPERATIVE_JSON = json.JSONDecoder(parse_float=_python_float, parse_int=_python_int)


def load_json(text: bytes | memoryview, *, cooperative: bool = False, what: str = "request") -> Any:
    """``json.loads`` with every failure as BadRequest: malformed, not UTF-8, or nested too deeply.

    ``cooperative``: let other threads (the event loop) run during the parse; for worker threads.

    Example:
        >>> load_json(b'{"a": [1, 2.5]}', cooperative=True)
        {'a': [1, 2.5]}
        >>> load_json(b'[' * 100_000)
        Traceback (most recent call last):
        ...
        serving.errors.BadRequest: malformed JSON in the request: nested too deeply
    """
    try:
        if cooperative:
            return _COOPERATIVE_JSON.decode(bytes(text).decode("utf-8"))
        return json.loads(bytes(text))
    except RecursionError:
        # json's scanner recurses once per nesting level; the interpreter's limit stops it first.
        raise BadRequest(f"malformed JSON in the {what}: nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as err:  # JSONDecodeError, and int() past 4300 digits
        raise BadRequest(f"malformed JSON in the {what}: {err}") from None


#: Response bodies shorter than this go uncompressed even when the client accepts gzip / deflate.
#: A one-image answer is ~350 bytes: compressing it saves next to nothing on the wire and costs the
#: event loop ~14 us per answer (benchmarks/results/serving_profile.md). Starlette's GZipMiddleware
#: has the same rule, at 500 bytes.
MIN_COMPRESS_BYTES = 1024


def encode_body(body: bytes, accept: str | None) -> tuple[bytes, str | None]:
    """Compress a response body when ``Accept-Encoding`` asks for gzip or deflate and it is worth it.

    ``Accept-Encoding`` permits an encoding, it does not require one: bodies under
    :data:`MIN_COMPRESS_BYTES` are sent as they are (``Content-Encoding`` absent).

    Example:
        >>> encode_body(b"{}", "gzip")
        (b'{}', None)
        >>> encode_body(bytes(4096), "gzip, deflate")[1]
        'gzip'
    """
    if len(body) < MIN_COMPRESS_BYTES:
        return body, None
    accepted = {p.split(";")[0].strip() for p in (accept or "").split(",")}
    if "gzip" in accepted:
        return gzip.compress(body, compresslevel=1), "gzip"
    if "deflate" in accepted:
        return zlib.compress(body, 1), "deflate"
    return body, None


def _header_length(value: str | None, total: int) -> int:
    if value is None:
        return total
    try:
        n = int(value)
    except ValueError:
        raise BadRequest(f"Inference-Header-Content-Length must be an integer, got {value!r}") from None
    if not 0 < n <= total:
        raise BadRequest(f"Inference-Header-Content-Length {n} does not fit a body of {total} bytes")
    return n


def parse_request(body: bytes, *, header_length: str | None, cooperative: bool = False) -> InferRequest:
    """Parse an infer request body (JSON, or JSON + binary tensors); raises BadRequest with the reason.

    ``cooperative``: parse so that other threads keep running (see :func:`load_json`); the server
    sets it for large bodies, which it parses in a worker thread.
    """
    n = _header_length(header_length, len(body))
    header = load_json(memoryview(body)[:n], cooperative=cooperative, what="request header")
    if not isinstance(header, dict):
        raise BadRequest(f"expected the request to be a JSON object, got {type(header).__name__}")
    inputs_raw = header.get("inputs")
    if not isinstance(inputs_raw, list) or not inputs_raw:
        raise BadRequest("expected 'inputs' to be a non-empty list of tensors")
    params = header.get("parameters", {})
    if not isinstance(params, dict):
        raise BadRequest(f"expected 'parameters' to be an object, got {type(params).__name__}")
    req_id = header.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise BadRequest(f"expected 'id' to be a string, got {type(req_id).__name__}")
    binary = memoryview(body)[n:]
    offset = 0
    inputs: dict[str, Tensor] = {}
    for item in inputs_raw:
        tensor, used = _parse_input(item, binary, offset)
        if tensor.name in inputs:
            raise BadRequest(f"input {tensor.name!r} given twice")
        inputs[tensor.name] = tensor
        offset += used
    if offset != len(binary):
        raise BadRequest(f"binary data is {len(binary)} bytes but the inputs declare {offset} "
                         "(binary_data_size); the payload is longer than declared")
    params = dict(params)
    binary_output = params.pop("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise BadRequest("expected parameters.binary_data_output to be a boolean")
    return InferRequest(req_id, inputs, params, _parse_outputs(header.get("outputs")), binary_output)


def _parse_input(item: object, binary: memoryview, offset: int) -> tuple[Tensor, int]:
    if not isinstance(item, dict):
        raise BadRequest(f"expected each input to be an object, got {type(item).__name__}")
    name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
    if not isinstance(name, str):
        raise BadRequest("expected each input to have a string 'name'")
    if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                              for s in shape):
        raise BadRequest(f"input {name!r}: expected 'shape' to be a list of non-negative ints, got {shape!r}")
    if datatype not in DTYPES:
        raise BadRequest(f"input {name!r}: unsupported datatype {datatype!r}; expected one of {', '.join(DTYPES)}")
    dtype = DTYPES[datatype]
    count = math.prod(shape)
    params = item.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BadRequest(f"input {name!r}: binary_data_size must be a non-negative int, got {size!r}")
        if size != count * dtype.itemsize:
            raise BadRequest(f"input {name!r}: binary_data_size {size} does not match shape {shape} of "
                             f"{datatype} ({count * dtype.itemsize} bytes)")
        if offset + size > len(binary):
            raise BadRequest(f"input {name!r}: declares {size} bytes of binary data but only "
                             f"{len(binary) - offset} remain; the payload is shorter than declared")
        array = np.frombuffer(binary[offset:offset + size], dtype=dtype).reshape(shape)
        return Tensor(name, datatype, tuple(shape), array), size
    data = item.get("data")
    if data is None:
        raise BadRequest(f"input {name!r}: no 'data' and no binary_data_size")
    return Tensor(name, datatype, tuple(shape), _json_array(name, data, datatype, shape).reshape(shape)), 0


# JSON value types each datatype accepts: numpy would turn "0.5" and true into 0.5 and 1.0, and
# 0.7 into the int 0, so a wrong value would be answered as if it were data.
_JSON_TYPES = {"BOOL": (bool,), **{k: (int,) for k in DTYPES if k[0] in "IU"},
               **{k: (int, float) for k in DTYPES if k.startswith("FP")}}


def _json_array(name: str, data: object, datatype: str, shape: list[int]) -> np.ndarray:
    """A JSON ``data`` list (flat or nested) as a flat array of ``datatype``, every value type-checked."""
    expected = f"a list of {datatype} values ({' or '.join(t.__name__ for t in _JSON_TYPES[datatype])})"
    if not isinstance(data, list):
        raise BadRequest(f"input {name!r}: expected 'data' to be {expected}, got {type(data).__name__}")
    try:
        # object dtype keeps each JSON value as it came; a ragged or over-deep list leaves lists inside.
        values = np.asarray(data, dtype=object).reshape(-1)
    except ValueError as err:
        raise BadRequest(f"input {name!r}: 'data' is not {expected} ({err})") from None
    found = set(map(type, values.tolist()))
    wrong = found - set(_JSON_TYPES[datatype])
    if wrong:
        raise BadRequest(f"input {name!r}: expected 'data' to be {expected}, found "
                         f"{', '.join(sorted(t.__name__ for t in wrong))}")
    if values.size != math.prod(shape):
        raise BadRequest(f"input {name!r}: 'data' has {values.size} values, shape {shape} needs {math.prod(shape)}")
    try:
        with np.errstate(over="ignore"):  # 1e300 as FP32 is inf: the model's range check answers it
            return values.astype(DTYPES[datatype])
    except OverflowError as err:
        raise BadRequest(f"input {name!r}: a value of 'data' does not fit {datatype} ({err})") from None


def _parse_outputs(raw: object) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise BadRequest("expected 'outputs' to be a list of objects")
    out = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequest("expected each requested output to be an object with a string 'name'")
        params = item.get("parameters") or {}
        if not isinstance(params, dict):
            raise BadRequest(f"output {item['name']!r}: expected 'parameters' to be an object")
        unknown = sorted(set(params) - {"binary_data", "classification"})
        if unknown:
            raise BadRequest(f"output {item['name']!r}: unknown parameter(s) {unknown}; "
                             "supported: binary_data, classification")
        binary, k = params.get("binary_data", False), params.get("classification", 0)
        if not isinstance(binary, bool) or isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise BadRequest(f"output {item['name']!r}: binary_data must be a boolean and classification an int >= 0")
        out.append(RequestedOutput(item["name"], binary, k))
    return out


def _bytes_payload(array: np.ndarray) -> bytes:
    """Triton's BYTES serialization: each element as a 4-byte little-endian length and its bytes."""
    parts = []
    for item in array.reshape(-1):
        raw = item if isinstance(item, bytes) else str(item).encode()
        parts.append(len(raw).to_bytes(4, "little") + raw)
    return b"".join(parts)


def encode_response(model: str, version: str, request_id: str | None,
                    outputs: list[tuple[str, str, np.ndarray, bool]]) -> tuple[bytes, int | None]:
    """Build a response body from ``(name, datatype, array, binary)`` tuples.

    Returns the body and the JSON header's length (None when nothing is binary).
    """
    tensors, chunks = [], []
    for name, datatype, array, binary in outputs:
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            raw = _bytes_payload(array) if datatype == "BYTES" else np.ascontiguousarray(
                array, dtype=DTYPES[datatype]).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif datatype == "BYTES":
            entry["data"] = [v.decode() if isinstance(v, bytes) else str(v) for v in array.reshape(-1)]
        else:
            entry["data"] = array.reshape(-1).tolist()
        tensors.append(entry)
    head: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": tensors}
    if request_id is not None:
        head["id"] = request_id
    header = json.dumps(head, separators=(",", ":")).encode()
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)
