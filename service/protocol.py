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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import orjson

from service.errors import InvalidInput, PayloadTooLarge, echo
from service.signature import ModelSignature, TensorSpec
from service.tensordata import fmt, from_json, show

#: HTTP header carrying the JSON header's byte length when binary tensors follow it.
HEADER_LENGTH = "Inference-Header-Content-Length"

_MAX_DIM = 2**31
_MAX_TIMEOUT_US = 2**63 - 1
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


@dataclass(frozen=True)
class RequestedOutput:
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


def parse_infer_request(
    body: bytes, *, header_length: int | str | None, signature: ModelSignature, max_rows: int
) -> InferenceRequest:
    """Parse and validate a V2 infer request body (after :func:`service.http.body.decode_body`).

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
        raise InvalidInput(f"'id' must be a string, got {show(request_id)}")
    params = _object(header.get("parameters"), "'parameters'")
    binary_output = _flag(params, "binary_data_output", False, "parameters.binary_data_output")
    timeout = params.get("timeout")
    if timeout is not None and not (type(timeout) is int and 0 < timeout <= _MAX_TIMEOUT_US):
        raise InvalidInput(
            f"parameters.timeout must be a positive integer (microseconds), got {show(timeout)}"
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
    for plan in plans:
        spec, wire = plan.spec, plan.wire
        if plan.offset < 0:
            array = from_json(spec.name, plan.data, wire, plan.shape)
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
        raise InvalidInput(f"inputs[{index}]: 'name' must be a string, got {show(name)}")
    spec = signature.input(name)
    if spec is None:
        raise InvalidInput(f"unknown input {echo(name)}; the model's inputs are {_names(signature.inputs)}")
    if any(p.spec is spec for p in plans):
        raise InvalidInput(f"input {name!r} is given twice")
    datatype = tensor.get("datatype")
    if datatype == spec.datatype:
        wire = spec.dtype
    elif datatype == "UINT8" and spec.datatype == "FP32":
        wire = np.dtype(np.uint8)
    else:
        accepted = "FP32 (or UINT8)" if spec.datatype == "FP32" else spec.datatype
        got = datatype if isinstance(datatype, str) else show(datatype)
        raise InvalidInput(f"input {name!r}: expected datatype {accepted}, got {got}")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise InvalidInput(
            f"input {name!r}: shape must be a list of non-negative integers, got {show(shape)}"
        )
    if len(shape) != len(spec.shape) or any(m not in (-1, d) for m, d in zip(spec.shape, shape, strict=True)):
        raise InvalidInput(f"input {name!r}: expected shape {fmt(spec.shape)}, got {fmt(shape)}")
    if shape and shape[0] < 1:
        raise InvalidInput(f"input {name!r}: the batch dimension must be at least 1, got {fmt(shape)}")
    if any(d > _MAX_DIM for d in shape[1:]):
        raise InvalidInput(f"input {name!r}: shape {fmt(shape)} has a dimension above 2**31")
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
            f"(shape {fmt(shape)} of {datatype}), got {show(size)}"
        )
    return _Plan(spec, wire, shape, count, None, offset, size)


def _requested_outputs(
    raw: Any, signature: ModelSignature, binary_default: bool
) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InvalidInput(f"'outputs' must be a list of objects with a 'name', got {show(raw)}")
    requested: list[RequestedOutput] = []
    for index, item in enumerate(raw):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            raise InvalidInput(f"outputs[{index}] must be an object with a string 'name'")
        if signature.output(name) is None:
            raise InvalidInput(
                f"unknown output {echo(name)}; the model's outputs are {_names(signature.outputs)}"
            )
        if any(o.name == name for o in requested):
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
        raise InvalidInput(f"{what} must be a JSON object, got {show(value)}")
    return value


def _flag(params: dict[str, Any], key: str, default: bool, what: str) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise InvalidInput(f"{what} must be true or false, got {show(value)}")
    return value


def _names(specs: tuple[TensorSpec, ...]) -> str:
    return "[" + ", ".join(repr(t.name) for t in specs) + "]"
