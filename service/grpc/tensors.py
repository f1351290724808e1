"""KServe V2 gRPC tensors and numpy: ``ModelInferRequest`` in, ``ModelInferResponse`` out.

A tensor's values travel in one of two places, never both:

- raw: ``raw_input_contents[i]`` / ``raw_output_contents[i]`` hold the i-th tensor's bytes, little-endian,
  row-major; a BYTES element is a 4-byte little-endian length followed by its bytes. In a request either
  every input is raw or none is (what tritonclient and Triton do).
- typed: the tensor's ``contents``, in the repeated field its datatype selects::

      BOOL        bool_contents      INT8, INT16, INT32     int_contents     INT64   int64_contents
      UINT8..32   uint_contents      UINT64                 uint64_contents  FP32    fp32_contents
      FP64        fp64_contents      BYTES                  bytes_contents   FP16    (raw only)

:func:`parse_infer_request` checks a request against the model's signature with the rules and messages of
the HTTP parser (:mod:`service.protocol`): names, datatypes (UINT8 accepted for FP32 inputs), shapes, the
row limit, then sizes, then values; nothing is allocated from a client's claim before the bytes or values
are there. Responses are always raw, as Triton answers and as ``tritonclient.grpc`` reads them. The
client-side helpers (:func:`build_infer_request`, :func:`response_arrays`) serve the tests and the
benchmark's load generator.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from service.errors import InvalidInput, PayloadTooLarge
from service.grpc.generated import grpc_service_pb2 as pb
from service.protocol import InferenceRequest, RequestedOutput
from service.signature import DATATYPES, ModelSignature, TensorSpec

#: Every V2 datatype this module reads and writes: the numeric ones, and BYTES as an object array.
WIRE_DTYPES: dict[str, np.dtype[Any]] = {**DATATYPES, "BYTES": np.dtype(object)}
#: The ``InferTensorContents`` field of each datatype (FP16 has none).
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_FIELDS = tuple(sorted(set(CONTENTS_FIELD.values())))
_MAX_DIM = 2**31
_MAX_TIMEOUT_US = 2**63 - 1
_LENGTH = struct.Struct("<I")


# ---- one tensor ------------------------------------------------------------------------------------


def to_raw(array: np.ndarray, datatype: str) -> bytes:
    """The raw wire bytes of ``array`` as ``datatype``."""
    if datatype == "BYTES":
        parts: list[bytes] = []
        for item in np.asarray(array, dtype=object).ravel():
            data = item.encode() if isinstance(item, str) else bytes(item)
            parts += (_LENGTH.pack(len(data)), data)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=WIRE_DTYPES[datatype].newbyteorder("<")).tobytes()


def from_raw(raw: bytes, datatype: str, shape: list[int], what: str) -> np.ndarray:
    """``raw`` as an array of ``datatype`` and ``shape``; InvalidInput when the size does not match."""
    count = math.prod(shape)
    if datatype == "BYTES":
        return _bytes_from_raw(raw, count, what).reshape(shape)
    dtype = WIRE_DTYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(
            f"{what}: raw_input_contents holds {len(raw)} bytes; shape {_fmt(shape)} of {datatype} "
            f"needs {count * dtype.itemsize}"
        )
    array = np.frombuffer(raw, dtype.newbyteorder("<"), count)
    if datatype == "BOOL" and count and raw.translate(None, b"\x00\x01"):
        raise InvalidInput(f"{what}: BOOL raw bytes must each be 0 or 1")
    if not array.flags.aligned:
        array = array.copy()
    return array.reshape(shape)


def _bytes_from_raw(raw: bytes, count: int, what: str) -> np.ndarray:
    items: list[bytes] = []
    offset = 0
    view = memoryview(raw)
    while offset < len(raw):
        if len(items) == count or offset + 4 > len(raw):
            raise InvalidInput(f"{what}: BYTES raw data does not hold exactly {count} length-prefixed items")
        (size,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise InvalidInput(f"{what}: BYTES item {len(items)} claims {size} bytes past the data's end")
        items.append(bytes(view[offset : offset + size]))
        offset += size
    if len(items) != count:
        raise InvalidInput(f"{what}: BYTES raw data holds {len(items)} items; the shape needs {count}")
    out = np.empty(count, dtype=object)
    out[:] = items
    return out


def fill_contents(contents: pb.InferTensorContents, array: np.ndarray, datatype: str) -> None:
    """Put ``array`` into the typed field of ``contents`` that ``datatype`` selects."""
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise ValueError(f"{datatype} has no typed contents field; send it raw")
    values = np.asarray(array).ravel()
    if datatype == "BYTES":
        getattr(contents, field).extend(v.encode() if isinstance(v, str) else bytes(v) for v in values)
    else:
        getattr(contents, field).extend(values.tolist())


def from_contents(contents: pb.InferTensorContents, datatype: str, shape: list[int], what: str) -> np.ndarray:
    """The typed contents as an array of ``datatype`` and ``shape``; InvalidInput when the field, the
    count or a value's range is wrong."""
    field = CONTENTS_FIELD.get(datatype)
    used = [f for f in _FIELDS if len(getattr(contents, f))]
    if field is None:
        raise InvalidInput(f"{what}: {datatype} has no typed contents field; send it in raw_input_contents")
    if any(f != field for f in used):
        raise InvalidInput(f"{what}: {datatype} data goes in contents.{field}, got {', '.join(used)}")
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidInput(
            f"{what}: shape {_fmt(shape)} needs {count} values, got {len(values)} in contents.{field}"
        )
    dtype = WIRE_DTYPES[datatype]
    if datatype == "BYTES":
        out = np.empty(count, dtype=object)
        out[:] = list(values)
        return out.reshape(shape)
    if dtype.kind in "iu" and dtype.itemsize < 4:
        wide = np.fromiter(values, np.int64, count)
        info = np.iinfo(dtype)
        if count and (wide.min() < info.min or wide.max() > info.max):
            raise InvalidInput(f"{what}: {datatype} data must be integers in {info.min}..{info.max}")
        return wide.astype(dtype).reshape(shape)
    return np.fromiter(values, dtype, count).reshape(shape)


# ---- requests and responses ------------------------------------------------------------------------


def parse_infer_request(
    request: pb.ModelInferRequest, *, signature: ModelSignature, max_rows: int
) -> InferenceRequest:
    """Validate ``request`` against ``signature``: InvalidInput, or PayloadTooLarge past ``max_rows``."""
    timeout = _timeout(request.parameters)
    if not request.inputs:
        raise InvalidInput("the request has no inputs")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
            "send every input raw, or none"
        )
    specs: list[TensorSpec] = []
    shapes: list[list[int]] = []
    for tensor in request.inputs:
        spec, shape = _check_input(tensor, signature, specs, shapes)
        if raw and _has_contents(tensor.contents):
            raise InvalidInput(
                f"input {spec.name!r}: give its data in contents or raw_input_contents, not both"
            )
        specs.append(spec)
        shapes.append(shape)
    if len(specs) != len(signature.inputs):
        missing = next(t.name for t in signature.inputs if t not in specs)
        raise InvalidInput(f"missing input {missing!r}; the model's inputs are {_names(signature.inputs)}")
    rows = shapes[0][0] if shapes[0] else 1
    if rows > max_rows:
        raise PayloadTooLarge(f"request has {rows} rows; the limit is {max_rows}")
    outputs = _requested_outputs(request.outputs, signature)

    inputs: dict[str, np.ndarray] = {}
    for i, (tensor, spec, shape) in enumerate(zip(request.inputs, specs, shapes, strict=True)):
        what = f"input {spec.name!r}"
        if raw:
            array = from_raw(raw[i], tensor.datatype, shape, what)
        elif math.prod(shape) and not _has_contents(tensor.contents):
            raise InvalidInput(f"{what}: no data; send it in raw_input_contents or contents")
        else:
            array = from_contents(tensor.contents, tensor.datatype, shape, what)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise InvalidInput(f"{what}: data holds non-finite values (NaN or infinity)")
        if array.dtype != spec.dtype:
            array = array.astype(spec.dtype)
        array.flags.writeable = False
        inputs[spec.name] = array
    return InferenceRequest(request.id or None, inputs, outputs, True, timeout, rows)


def encode_infer_response(
    *,
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: Mapping[str, np.ndarray],
    request: InferenceRequest,
    signature: ModelSignature,
) -> pb.ModelInferResponse:
    """The response, outputs in signature order (only those requested), values raw."""
    wanted = None if request.outputs is None else {o.name for o in request.outputs}
    response = pb.ModelInferResponse(model_name=model_name, model_version=model_version, id=request_id or "")
    for spec in signature.outputs:
        if wanted is None or spec.name in wanted:
            array = np.asarray(outputs[spec.name])
            response.outputs.add(name=spec.name, datatype=spec.datatype, shape=array.shape)
            response.raw_output_contents.append(to_raw(array, spec.datatype))
    return response


def build_infer_request(
    model_name: str,
    inputs: Mapping[str, tuple[str, np.ndarray]],
    *,
    raw: bool = True,
    model_version: str = "",
    request_id: str = "",
    outputs: list[str] | None = None,
    timeout_us: int | None = None,
) -> pb.ModelInferRequest:
    """A request as a client writes it: ``inputs`` maps a name to ``(datatype, array)``."""
    request = pb.ModelInferRequest(model_name=model_name, model_version=model_version, id=request_id)
    for name, (datatype, array) in inputs.items():
        tensor = request.inputs.add(name=name, datatype=datatype, shape=np.shape(array))
        if raw:
            request.raw_input_contents.append(to_raw(array, datatype))
        else:
            fill_contents(tensor.contents, array, datatype)
    for name in outputs or ():
        request.outputs.add(name=name)
    if timeout_us is not None:
        request.parameters["timeout"].int64_param = timeout_us
    return request


def response_arrays(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Every output of a response as an array (raw or typed, whichever the server sent)."""
    arrays: dict[str, np.ndarray] = {}
    for i, out in enumerate(response.outputs):
        shape, what = list(out.shape), f"output {out.name!r}"
        if i < len(response.raw_output_contents):
            arrays[out.name] = from_raw(response.raw_output_contents[i], out.datatype, shape, what)
        else:
            arrays[out.name] = from_contents(out.contents, out.datatype, shape, what)
    return arrays


# ---- checks ----------------------------------------------------------------------------------------


def _check_input(
    tensor: pb.ModelInferRequest.InferInputTensor,
    signature: ModelSignature,
    specs: list[TensorSpec],
    shapes: list[list[int]],
) -> tuple[TensorSpec, list[int]]:
    """One input's name, datatype, shape and parameters (not its data)."""
    name = tensor.name
    spec = signature.input(name)
    if spec is None:
        raise InvalidInput(f"unknown input {name[:64]!r}; the model's inputs are {_names(signature.inputs)}")
    if spec in specs:
        raise InvalidInput(f"input {name!r} is given twice")
    datatype = tensor.datatype
    if datatype != spec.datatype and not (datatype == "UINT8" and spec.datatype == "FP32"):
        accepted = "FP32 (or UINT8)" if spec.datatype == "FP32" else spec.datatype
        raise InvalidInput(f"input {name!r}: expected datatype {accepted}, got {datatype[:32] or 'none'}")
    shape = list(tensor.shape)
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input {name!r}: shape must hold non-negative integers, got {_fmt(shape)}")
    if len(shape) != len(spec.shape) or any(m not in (-1, d) for m, d in zip(spec.shape, shape, strict=True)):
        raise InvalidInput(f"input {name!r}: expected shape {_fmt(spec.shape)}, got {_fmt(shape)}")
    if shape and shape[0] < 1:
        raise InvalidInput(f"input {name!r}: the batch dimension must be at least 1, got {_fmt(shape)}")
    if any(d > _MAX_DIM for d in shape[1:]):
        raise InvalidInput(f"input {name!r}: shape {_fmt(shape)} has a dimension above 2**31")
    if shapes and shape and shapes[0] and shape[0] != shapes[0][0]:
        raise InvalidInput(
            f"inputs disagree on the batch size: {specs[0].name!r} has {shapes[0][0]} rows, "
            f"{name!r} has {shape[0]}"
        )
    if "shared_memory_region" in tensor.parameters:
        raise InvalidInput(f"input {name!r}: shared memory is not supported; send the data in the request")
    return spec, shape


def _requested_outputs(requested: Any, signature: ModelSignature) -> list[RequestedOutput] | None:
    names: list[str] = []
    for item in requested:
        if signature.output(item.name) is None:
            raise InvalidInput(
                f"unknown output {item.name[:64]!r}; the model's outputs are {_names(signature.outputs)}"
            )
        if item.name in names:
            raise InvalidInput(f"output {item.name!r} is requested twice")
        params = item.parameters
        if "shared_memory_region" in params or (
            "classification" in params and _truthy(params["classification"])
        ):
            raise InvalidInput(
                f"output {item.name!r}: the classification and shared-memory extensions are not supported"
            )
        names.append(item.name)
    return [RequestedOutput(n, True) for n in names] or None


def _timeout(parameters: Mapping[str, pb.InferParameter]) -> int | None:
    if "timeout" not in parameters:
        return None
    param = parameters["timeout"]
    kind = param.WhichOneof("parameter_choice")
    value = getattr(param, kind) if kind in ("int64_param", "uint64_param") else None
    if value is None or not 0 < value <= _MAX_TIMEOUT_US:
        raise InvalidInput("parameters.timeout must be a positive integer (microseconds)")
    return int(value)


def _truthy(param: pb.InferParameter) -> bool:
    kind = param.WhichOneof("parameter_choice")
    return bool(getattr(param, kind)) if kind else False


def _has_contents(contents: pb.InferTensorContents) -> bool:
    return any(len(getattr(contents, f)) for f in _FIELDS)


def _fmt(shape: Any) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


def _names(specs: tuple[TensorSpec, ...]) -> str:
    return "[" + ", ".join(repr(t.name) for t in specs) + "]"
