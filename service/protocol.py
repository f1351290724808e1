"""KServe V2 inference requests and responses: JSON and Triton's binary tensor extension.

The wire format is the one ``tritonclient.http`` writes and reads::

    body = JSON header  [+ raw little-endian tensor bytes, one block per binary tensor, in order]

With binary blocks, the HTTP header ``Inference-Header-Content-Length`` gives the JSON header's byte
length (absent: the whole body is JSON). A binary input says ``parameters.binary_data_size``; an output
is returned as bytes when asked per output (``parameters.binary_data``) or for the whole request
(``parameters.binary_data_output``), with ``parameters.binary_data_size`` in place of ``data``.

Parsing validates everything against the model's :class:`~service.signature.ModelSignature` and raises
:class:`~service.errors.InvalidInput` (400) or :class:`~service.errors.PayloadTooLarge` (413) with a
message saying what was expected and what came. Tensors are built with ``np.frombuffer`` /
``np.asarray``; nothing is sized from a client's claim before the bytes or values are there.

This runs on the event loop for every request, so the common case takes the shortest path: lookups by
name are plain loops, checks over empty lists are skipped, and JSON numbers are converted (and their
types checked) by ``array.array`` in C when the body holds no ``true``/``false`` literal, falling back
to the per-leaf type check (for the exact error message) when the conversion refuses.
"""

from __future__ import annotations

import array as pyarray
import math
import zlib
from dataclasses import dataclass
from itertools import chain
from typing import Any, NamedTuple

import numpy as np
import orjson

from service.errors import InvalidInput, PayloadTooLarge, UnsupportedMedia
from service.signature import ModelSignature, TensorSpec

#: HTTP header carrying the JSON header's byte length when binary tensors follow it.
HEADER_LENGTH = "Inference-Header-Content-Length"

_MAX_DIM = 2**31
_MAX_TIMEOUT_US = 2**63 - 1
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
# Python types a JSON ``data`` leaf may have, by numpy kind of the tensor's datatype.
_LEAF_TYPES: dict[str, set[type]] = {"f": {int, float}, "i": {int}, "u": {int}, "b": {bool}}
# array.array typecodes that accept exactly those types (and bool, an int subclass), by numpy dtype;
# other datatypes convert through float64 ("d") or int64 ("q").
_ARRAY_CODES = {"float32": "f", "float64": "d", "int64": "q"}


class RequestedOutput(NamedTuple):
    """An output the client asked for, and whether it is returned as raw bytes."""

    name: str
    binary: bool


@dataclass
class InferenceRequest:
    """A validated infer request.

    ``inputs`` holds one read-only, C-contiguous array per model input, in the model's dtype and shape
    ``(rows, *dims)`` (binary tensors may be views of the request body: never write to them).
    ``outputs`` is ``None`` for "every model output"; each entry's ``binary`` is already resolved
    against ``binary_output``. ``timeout_us`` is Triton's ``parameters.timeout`` in microseconds.
    """

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[RequestedOutput] | None
    binary_output: bool
    timeout_us: int | None
    rows: int


def decode_body(body: bytes, content_encoding: str | None, *, max_bytes: int) -> bytes:
    """Undo ``Content-Encoding`` (identity, gzip, deflate), never producing more than ``max_bytes``.

    Inflation is bounded by zlib's ``max_length``, so a compression bomb allocates at most
    ``max_bytes + 1`` bytes before it is refused with 413.
    """
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        if len(body) > max_bytes:
            raise PayloadTooLarge(f"body exceeds {max_bytes} bytes")
        return body
    if encoding in ("gzip", "x-gzip"):
        return _inflate(body, 16 + zlib.MAX_WBITS, max_bytes, "gzip")
    if encoding == "deflate":
        # HTTP "deflate" is meant to be zlib-wrapped, but raw deflate is common; zlib's two header
        # bytes (CM = 8, check bits) tell them apart.
        wrapped = len(body) >= 2 and body[0] & 0x0F == 8 and (body[0] << 8 | body[1]) % 31 == 0
        return _inflate(body, zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS, max_bytes, "deflate")
    raise UnsupportedMedia(
        f"unsupported Content-Encoding {content_encoding!r}; use gzip, deflate or identity"
    )


def _inflate(body: bytes, wbits: int, max_bytes: int, name: str) -> bytes:
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise InvalidInput(f"invalid {name} body: {exc}") from None
    if len(out) > max_bytes:
        raise PayloadTooLarge(f"decompressed body exceeds {max_bytes} bytes")
    if not inflater.eof:
        raise InvalidInput(f"invalid {name} body: truncated stream")
    if inflater.unused_data:
        raise InvalidInput(f"invalid {name} body: trailing bytes after the compressed stream")
    return out


def parse_infer_request(
    body: bytes, *, header_length: int | str | None, signature: ModelSignature, max_rows: int
) -> InferenceRequest:
    """Parse and validate a V2 infer request body (after :func:`decode_body`).

    ``header_length`` is the ``Inference-Header-Content-Length`` value, as an int or the raw header
    string; ``None`` means the whole body is JSON. Raises :class:`InvalidInput` for anything that does
    not match ``signature`` and :class:`PayloadTooLarge` for more than ``max_rows`` rows.
    """
    json_len = _header_length(header_length, len(body))
    try:
        header = orjson.loads(body if json_len is None else memoryview(body)[:json_len])
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"invalid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise InvalidInput("invalid JSON: the request must be a JSON object")

    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput(f"'id' must be a string, got {_show(request_id)}")
    params = _object(header.get("parameters"), "'parameters'")
    binary_output = _flag(params, "binary_data_output", False, "parameters.binary_data_output")
    timeout = params.get("timeout")
    if timeout is not None and not (type(timeout) is int and 0 < timeout <= _MAX_TIMEOUT_US):
        raise InvalidInput(
            f"parameters.timeout must be a positive integer (microseconds), got {_show(timeout)}"
        )

    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("'inputs' must be a non-empty list of tensors")
    # First pass: names, datatypes, shapes and sizes only, so no data is touched before the request
    # is known to be well-formed and within limits.
    plans: list[_Plan] = []
    binary_total = 0
    for index, tensor in enumerate(raw_inputs):
        plan = _plan_input(index, tensor, signature, plans, binary_total)
        binary_total += plan.size
        plans.append(plan)
    if len(plans) != len(signature.inputs):
        missing = next(t.name for t in signature.inputs if all(p.spec is not t for p in plans))
        raise InvalidInput(f"missing input {missing!r}; the model's inputs are {_names(signature.inputs)}")
    rows = plans[0].shape[0] if plans[0].shape else 1
    if rows > max_rows:
        raise PayloadTooLarge(f"request has {rows} rows; the limit is {max_rows}")
    if binary_total and json_len is None:
        raise InvalidInput(f"binary tensor data needs the {HEADER_LENGTH} header")
    start = len(body) if json_len is None else json_len
    if binary_total != len(body) - start:
        raise InvalidInput(
            f"the body has {len(body) - start} bytes after the JSON header but the inputs' "
            f"parameters.binary_data_size add up to {binary_total}"
        )
    outputs = _requested_outputs(header.get("outputs"), signature, binary_output)

    inputs: dict[str, np.ndarray] = {}
    end = len(body) if json_len is None else json_len
    maybe_bools = body.find(b"true", 0, end) >= 0 or body.find(b"false", 0, end) >= 0
    for plan in plans:
        spec, wire = plan.spec, plan.wire
        if plan.offset < 0:
            array = _from_json(spec.name, plan.data, wire, plan.shape, maybe_bools)
        else:
            array = np.frombuffer(body, wire.newbyteorder("<"), plan.values, start + plan.offset)
            if not array.flags.aligned:
                array = array.copy()
            array = array.reshape(plan.shape)
        if wire.kind == "f" and not np.isfinite(array).all():
            raise InvalidInput(f"input {spec.name!r}: data holds non-finite values (NaN or infinity)")
        if array.dtype != spec.dtype:
            array = array.astype(spec.dtype)
        array.flags.writeable = False
        inputs[spec.name] = array
    return InferenceRequest(request_id, inputs, outputs, binary_output, timeout, rows)


def encode_infer_response(
    *,
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: dict[str, np.ndarray],
    request: InferenceRequest,
    signature: ModelSignature,
) -> tuple[bytes, dict[str, str]]:
    """Build the response body and its headers (``Content-Type``, and the header length if binary).

    Outputs come in signature order, only those requested; binary ones are appended after the JSON
    header in that order.
    """
    if request.outputs is None:
        wanted = [(spec, request.binary_output) for spec in signature.outputs]
    elif len(request.outputs) == 1:
        name, binary = request.outputs[0]
        wanted = [(spec, binary) for spec in signature.outputs if spec.name == name]
    else:
        binary_by_name = {o.name: o.binary for o in request.outputs}
        wanted = [
            (spec, binary_by_name[spec.name]) for spec in signature.outputs if spec.name in binary_by_name
        ]
    entries: list[dict[str, Any]] = []
    blocks: list[memoryview] = []
    for spec, binary in wanted:
        array = np.ascontiguousarray(outputs[spec.name], dtype=spec.dtype.newbyteorder("<"))
        entry: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype, "shape": array.shape}
        if binary:
            entry["parameters"] = {"binary_data_size": array.nbytes}
            blocks.append(array.data)
        else:
            entry["data"] = array.ravel()
        entries.append(entry)
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        response["id"] = request_id
    response["outputs"] = entries
    head = orjson.dumps(response, option=_JSON_OPTIONS)
    if not blocks:
        return head, {"Content-Type": "application/json"}
    body = b"".join([head, *blocks])
    return body, {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}


def _header_length(value: int | str | None, body_len: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value)
    if type(value) is not int or not 0 <= value <= body_len:
        raise InvalidInput(
            f"{HEADER_LENGTH} must be an integer from 0 to the body length {body_len}, got {value!r}"
        )
    return value


class _Plan(NamedTuple):
    spec: TensorSpec
    wire: np.dtype[Any]  # datatype on the wire; differs from spec.dtype only for UINT8 -> FP32
    shape: list[int]
    values: int
    data: Any  # JSON data, or None for binary
    offset: int  # start in the binary section, -1 for JSON
    size: int  # bytes in the binary section


def _plan_input(index: int, tensor: Any, signature: ModelSignature, plans: list[_Plan], offset: int) -> _Plan:
    """Check one input's name, datatype, shape and data size (not the data itself)."""
    if not isinstance(tensor, dict):
        raise InvalidInput(f"inputs[{index}] must be a JSON object")
    name = tensor.get("name")
    if not isinstance(name, str):
        raise InvalidInput(f"inputs[{index}]: 'name' must be a string, got {_show(name)}")
    spec = _find(signature.inputs, name)
    if spec is None:
        raise InvalidInput(f"unknown input {name!r}; the model's inputs are {_names(signature.inputs)}")
    if plans and any(p.spec is spec for p in plans):
        raise InvalidInput(f"input {name!r} is given twice")
    datatype = tensor.get("datatype")
    if datatype == spec.datatype:
        wire = spec.dtype
    elif datatype == "UINT8" and spec.datatype == "FP32":
        wire = np.dtype(np.uint8)
    else:
        accepted = "FP32 (or UINT8)" if spec.datatype == "FP32" else spec.datatype
        got = datatype if isinstance(datatype, str) else _show(datatype)
        raise InvalidInput(f"input {name!r}: expected datatype {accepted}, got {got}")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise InvalidInput(
            f"input {name!r}: shape must be a list of non-negative integers, got {_show(shape)}"
        )
    if len(shape) != len(spec.shape) or any(m not in (-1, d) for m, d in zip(spec.shape, shape, strict=True)):
        raise InvalidInput(f"input {name!r}: expected shape {_fmt(spec.shape)}, got {_fmt(shape)}")
    if shape and shape[0] < 1:
        raise InvalidInput(f"input {name!r}: the batch dimension must be at least 1, got {_fmt(shape)}")
    if any(d > _MAX_DIM for d in shape[1:]):
        raise InvalidInput(f"input {name!r}: shape {_fmt(shape)} has a dimension above 2**31")
    if plans and shape and plans[0].shape and shape[0] != plans[0].shape[0]:
        first = plans[0]
        raise InvalidInput(
            f"inputs disagree on the batch size: {first.spec.name!r} has {first.shape[0]} rows, "
            f"{name!r} has {shape[0]}"
        )
    params = _object(tensor.get("parameters"), f"input {name!r}: 'parameters'")
    if "shared_memory_region" in params:
        raise InvalidInput(f"input {name!r}: shared memory is not supported; send the data in the body")
    size, data, count = params.get("binary_data_size"), tensor.get("data"), math.prod(shape)
    if (data is None) == (size is None):
        raise InvalidInput(f"input {name!r}: give exactly one of 'data' and parameters.binary_data_size")
    if data is not None:
        return _Plan(spec, wire, shape, count, data, -1, 0)
    if type(size) is not int or size != count * wire.itemsize:
        raise InvalidInput(
            f"input {name!r}: parameters.binary_data_size must be {count * wire.itemsize} "
            f"(shape {_fmt(shape)} of {datatype}), got {_show(size)}"
        )
    return _Plan(spec, wire, shape, count, None, offset, size)


def _find(specs: tuple[TensorSpec, ...], name: str) -> TensorSpec | None:
    for spec in specs:
        if spec.name == name:
            return spec
    return None


def _numbers(leaves: list[Any], wire: np.dtype[Any]) -> np.ndarray | None:
    """``leaves`` as a flat array of ``wire``, if ``array.array`` takes every one of them (numbers of the
    kind ``wire`` allows, or bools, which the caller has ruled out); None if it refuses."""
    if wire.kind not in "fiu":
        return None
    code = _ARRAY_CODES.get(wire.name, "d" if wire.kind == "f" else "q")
    try:
        # "f" rounds each value to float32 as numpy does, and makes infinity of what is out of range
        # (refused by the finiteness check), so float32 needs no conversion step.
        values = np.frombuffer(pyarray.array(code, leaves), np.dtype(code))
    except (TypeError, OverflowError):
        return None
    if values.dtype == wire:
        return values
    if wire.kind in "iu":
        info = np.iinfo(wire)
        if values.size and (values.min() < info.min or values.max() > info.max):
            return None  # the checked path below names the range
        return values.astype(wire)
    with np.errstate(over="ignore"):  # past float16's range: infinity, refused by the finiteness check
        return values.astype(wire)


def _from_json(
    name: str, data: Any, wire: np.dtype[Any], shape: list[int], maybe_bools: bool = True
) -> np.ndarray:
    """Turn JSON ``data`` (flat or nested lists) into an array of ``wire`` dtype and ``shape``.

    ``maybe_bools`` False says the body holds no JSON boolean, so a conversion that accepts every leaf
    has also type-checked it."""
    if not isinstance(data, list):
        raise InvalidInput(f"input {name!r}: 'data' must be a list of numbers, got {_show(data)}")
    leaves = data
    # Flatten nested lists one level at a time with C-level iteration; every list on a level must have
    # the same length, else the nesting is ragged.
    while leaves and type(leaves[0]) is list:
        try:
            if len(set(map(len, leaves))) != 1:
                raise TypeError
            leaves = list(chain.from_iterable(leaves))
        except TypeError:
            raise InvalidInput(f"input {name!r}: 'data' is a ragged nested list") from None
    count = math.prod(shape)
    if not maybe_bools and (fast := _numbers(leaves, wire)) is not None:
        if len(leaves) != count:
            raise InvalidInput(f"input {name!r}: shape {_fmt(shape)} needs {count} values, got {len(leaves)}")
        return fast.reshape(shape)
    kinds = set(map(type, leaves))
    if not kinds <= _LEAF_TYPES[wire.kind]:
        if list in kinds:
            raise InvalidInput(f"input {name!r}: 'data' is a ragged nested list")
        raise InvalidInput(f"input {name!r}: {_leaf_rule(wire)}")
    if len(leaves) != math.prod(shape):
        raise InvalidInput(
            f"input {name!r}: shape {_fmt(shape)} needs {math.prod(shape)} values, got {len(leaves)}"
        )
    try:
        if wire.kind in "iu":
            wide = np.asarray(leaves, dtype=np.int64)
            info = np.iinfo(wire)
            if wide.size and (wide.min() < info.min or wide.max() > info.max):
                raise OverflowError
            return wide.astype(wire).reshape(shape)
        with np.errstate(over="ignore"):
            return np.asarray(leaves, dtype=wire).reshape(shape)
    except OverflowError:
        if wire.kind == "f":
            raise InvalidInput(f"input {name!r}: data holds non-finite values (NaN or infinity)") from None
        raise InvalidInput(f"input {name!r}: {_leaf_rule(wire)}") from None


def _leaf_rule(wire: np.dtype[Any]) -> str:
    if wire.kind == "f":
        return "'data' must hold only numbers (no booleans, strings, nulls or objects)"
    if wire.kind == "b":
        return "'data' must hold only true or false"
    info = np.iinfo(wire)
    return f"{wire.name.upper()} data must be integers in {info.min}..{info.max}"


def _requested_outputs(
    raw: Any, signature: ModelSignature, binary_default: bool
) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InvalidInput(f"'outputs' must be a list of objects with a 'name', got {_show(raw)}")
    requested: list[RequestedOutput] = []
    for index, item in enumerate(raw):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            raise InvalidInput(f"outputs[{index}] must be an object with a string 'name'")
        if _find(signature.outputs, name) is None:
            raise InvalidInput(
                f"unknown output {name!r}; the model's outputs are {_names(signature.outputs)}"
            )
        if requested and any(o.name == name for o in requested):
            raise InvalidInput(f"output {name!r} is requested twice")
        params = _object(item.get("parameters"), f"output {name!r}: 'parameters'")
        if params.get("classification") or "shared_memory_region" in params:
            raise InvalidInput(
                f"output {name!r}: the classification and shared-memory extensions are not supported"
            )
        binary = _flag(params, "binary_data", binary_default, f"output {name!r}: parameters.binary_data")
        requested.append(RequestedOutput(name, binary))
    return requested or None


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object, got {_show(value)}")
    return value


def _flag(params: dict[str, Any], key: str, default: bool, what: str) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise InvalidInput(f"{what} must be true or false, got {_show(value)}")
    return value


def _fmt(shape: Any) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


def _names(specs: tuple[TensorSpec, ...]) -> str:
    return "[" + ", ".join(repr(t.name) for t in specs) + "]"


def _show(value: Any) -> str:
    """A client value in JSON notation, cut short: for messages only."""
    try:
        text = orjson.dumps(value).decode()
    except TypeError:  # orjson writes at most 254 levels; the parser accepted up to 1024
        return f"a {type(value).__name__} nested too deeply to show"
    return text if len(text) <= 60 else text[:57] + "..."
