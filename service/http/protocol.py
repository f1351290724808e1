"""KServe V2 inference requests and responses: JSON and Triton's binary tensor extension.

The wire format is the one ``tritonclient.http`` writes and reads::

    body = JSON header  [+ raw little-endian tensor bytes, one block per binary tensor, in order]

With binary blocks, the HTTP header ``Inference-Header-Content-Length`` gives the JSON header's byte
length (absent: the whole body is JSON). A binary input says ``parameters.binary_data_size``; an output
is returned as bytes when asked per output (``parameters.binary_data``) or for the whole request
(``parameters.binary_data_output``), with ``parameters.binary_data_size`` in place of ``data``.

Parsing validates everything against the model's :class:`~service.core.signature.ModelSignature` and raises
:class:`~service.errors.InvalidInput` (400) or :class:`~service.errors.PayloadTooLarge` (413) with a
message saying what was expected and what came. Tensors are built with ``np.frombuffer`` /
``np.asarray``; nothing is sized from a client's claim before the bytes or values are there.
"""

from __future__ import annotations

import math
import sys
from typing import Any, NamedTuple

import numpy as np
import orjson

from service.core.signature import ModelSignature, RequestCheck, TensorSpec, reject_extensions
from service.core.types import InferRequest, InferResponse
from service.errors import InvalidInput
from service.http.jsontensors import fmt, from_json, show

#: HTTP header carrying the JSON header's byte length when binary tensors follow it.
HEADER_LENGTH = "Inference-Header-Content-Length"

_MAX_TIMEOUT_US = 2**63 - 1
_NONE: frozenset[str] = frozenset()
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
#: The wire is little-endian; on such a host the model's own dtypes read and write it as they are.
_LITTLE_ENDIAN = sys.byteorder == "little"


def parse_infer_request(
    body: bytes, *, header_length: int | str | None, signature: ModelSignature, max_rows: int
) -> InferRequest:
    """Parse and validate a V2 infer request body (after :func:`service.http.body.decode_body`) into
    the core's request, ``checked`` against ``signature``.

    ``header_length`` is the ``Inference-Header-Content-Length`` value, as an int or the raw header
    string; ``None`` means the whole body is JSON. Raises :class:`InvalidInput` for anything that does
    not match ``signature`` and :class:`PayloadTooLarge` for more than ``max_rows`` rows. Input arrays
    are read-only, C-contiguous and may be views of ``body`` (binary tensors): never write to them.
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
    check = RequestCheck(signature, max_rows)
    plans: list[_Plan] = []
    binary_total = 0
    for index, tensor in enumerate(raw_inputs):
        plan = _plan_input(index, tensor, check, binary_total)
        binary_total += plan.size
        plans.append(plan)
    check.done()
    if binary_total and json_len is None:
        raise InvalidInput(f"binary tensor data needs the {HEADER_LENGTH} header")
    start = len(body) if json_len is None else json_len
    if binary_total != len(body) - start:
        raise InvalidInput(
            f"the body has {len(body) - start} bytes after the JSON header but the inputs' "
            f"parameters.binary_data_size add up to {binary_total}"
        )
    outputs, binary = _requested_outputs(header.get("outputs"), check, binary_output)

    inputs: dict[str, np.ndarray] = {}
    for plan in plans:
        spec, wire = plan.spec, plan.wire
        if plan.offset < 0:
            array = from_json(spec.name, plan.data, wire, plan.shape)
        else:
            little = wire if _LITTLE_ENDIAN else wire.newbyteorder("<")
            array = np.frombuffer(body, little, plan.values, start + plan.offset)
            if not array.flags.aligned:
                array = array.copy()
            array = array.reshape(plan.shape)
        array = check.values(spec, array)
        array.flags.writeable = False
        inputs[spec.name] = array
    return InferRequest(
        inputs,
        request_id,
        outputs,
        checked=True,
        timeout=None if timeout is None else timeout / 1e6,
        binary=binary,
    )


def encode_infer_response(response: InferResponse) -> tuple[bytes, dict[str, str]]:
    """Build the response body and its headers (``Content-Type``, and the header length if binary).

    Outputs are the response's (the core selected them, in signature order); those in
    ``response.binary`` are appended as raw bytes after the JSON header, in that order.
    """
    entries: list[dict[str, Any]] = []
    blocks: list[memoryview] = []
    binary = response.binary
    for spec in response.specs:
        dtype = spec.dtype if _LITTLE_ENDIAN else spec.dtype.newbyteorder("<")
        array = np.ascontiguousarray(response.outputs[spec.name], dtype=dtype)
        entry: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype, "shape": array.shape}
        if spec.name in binary:
            entry["parameters"] = {"binary_data_size": array.nbytes}
            blocks.append(array.data)
        else:
            entry["data"] = array.ravel()
        entries.append(entry)
    answer: dict[str, Any] = {"model_name": response.model, "model_version": str(response.version)}
    if response.id is not None:
        answer["id"] = response.id
    answer["outputs"] = entries
    head = orjson.dumps(answer, option=_JSON_OPTIONS)
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


def _plan_input(index: int, tensor: Any, check: RequestCheck, offset: int) -> _Plan:
    """One input's JSON types, then its name, datatype and shape (:class:`RequestCheck`), then the size
    of its data; not the data itself."""
    if not isinstance(tensor, dict):
        raise InvalidInput(f"inputs[{index}] must be a JSON object")
    name = tensor.get("name")
    if not isinstance(name, str):
        raise InvalidInput(f"inputs[{index}]: 'name' must be a string, got {show(name)}")
    shape = tensor.get("shape")
    # JSON numbers only as ints (not 28.0, not true), none negative: C-level, no per-dim Python loop.
    if not isinstance(shape, list) or not set(map(type, shape)) <= {int} or (shape and min(shape) < 0):
        if check.signature.input(name) is not None:
            raise InvalidInput(
                f"input {name!r}: shape must be a list of non-negative integers, got {show(shape)}"
            )
        shape = []  # the unknown name is the error to report
    datatype = tensor.get("datatype")
    spec, wire = check.input(name, datatype, shape)
    params = _object(tensor.get("parameters"), f"input {name!r}: 'parameters'")
    reject_extensions(f"input {name!r}", params)
    size, data, count = params.get("binary_data_size"), tensor.get("data"), math.prod(shape)
    if (data is None) == (size is None):
        raise InvalidInput(f"input {name!r}: give exactly one of 'data' and parameters.binary_data_size")
    if data is not None:
        return _Plan(spec, wire, shape, count, data, -1, 0)
    # Exactly the tensor's bytes: an over- or under-declared size is refused here, before any byte is
    # read, and the sizes must then add up to the bytes that follow the JSON header.
    if type(size) is not int or size != count * wire.itemsize:
        raise InvalidInput(
            f"input {name!r}: parameters.binary_data_size must be {count * wire.itemsize} "
            f"(shape {fmt(shape)} of {datatype}), got {show(size)}"
        )
    return _Plan(spec, wire, shape, count, None, offset, size)


def _requested_outputs(
    raw: Any, check: RequestCheck, binary_default: bool
) -> tuple[list[str] | None, frozenset[str]]:
    """The outputs asked for (None: all) and those of the answer to send as raw bytes."""
    every = check.signature.output_names if binary_default else _NONE
    if raw is None:
        return None, every
    if not isinstance(raw, list):
        raise InvalidInput(f"'outputs' must be a list of objects with a 'name', got {show(raw)}")
    names: list[str] = []
    for index, item in enumerate(raw):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            raise InvalidInput(f"outputs[{index}] must be an object with a string 'name'")
        names.append(name)
    wanted = check.outputs(names)
    if wanted is None:  # an empty list: every output
        return None, every
    binary: set[str] = set()
    for name, item in zip(names, raw, strict=True):
        params = item.get("parameters")
        if params is None:  # the common case of a bare name
            if binary_default:
                binary.add(name)
            continue
        params = _object(params, f"output {name!r}: 'parameters'")
        if "shared_memory_region" in params or params.get("classification"):
            reject_extensions(f"output {name!r}", ("shared_memory_region", "classification"), output=True)
        if _flag(params, "binary_data", binary_default, f"output {name!r}: parameters.binary_data"):
            binary.add(name)
    return wanted, frozenset(binary)


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
