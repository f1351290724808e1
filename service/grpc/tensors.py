"""KServe V2 gRPC tensors and numpy, one tensor at a time, in both directions.

A tensor's values travel in one of two places, never both:

- raw: ``raw_input_contents[i]`` / ``raw_output_contents[i]`` hold the i-th tensor's bytes, little-endian,
  row-major; a BYTES element is a 4-byte little-endian length followed by its bytes. In a request either
  every input is raw or none is (what tritonclient and Triton do).
- typed: the tensor's ``contents``, in the repeated field its datatype selects::

      BOOL        bool_contents      INT8, INT16, INT32     int_contents     INT64   int64_contents
      UINT8..32   uint_contents      UINT64                 uint64_contents  FP32    fp32_contents
      FP64        fp64_contents      BYTES                  bytes_contents   FP16    (raw only)

The decoders check sizes against the shape before touching values and raise
:class:`~service.errors.InvalidInput` saying what was expected and what came; whole messages are checked in
:mod:`service.grpc.protocol`. The client-side helpers (:func:`build_infer_request`,
:func:`response_arrays`) serve the tests and the benchmark's load generator.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from service.core.signature import DATATYPES, TensorSpec
from service.errors import InvalidInput
from service.grpc.generated import grpc_service_pb2 as pb

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
#: Datatypes whose typed field is packed fixed-width floats on the wire (numpy reads those bytes as they are).
_PACKED_FLOATS = frozenset({"FP32", "FP64"})
#: Each contents field's tag as a length-delimited (packed) field: field number << 3 | 2.
_FIELD_TAGS = {f: (pb.InferTensorContents.DESCRIPTOR.fields_by_name[f].number << 3) | 2 for f in _FIELDS}
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


def from_raw(raw: bytes, datatype: str, shape: Sequence[int], what: str) -> np.ndarray:
    """``raw`` as an array of ``datatype`` and ``shape``; InvalidInput when the size does not match."""
    count = math.prod(shape)
    if datatype == "BYTES":
        return _bytes_from_raw(raw, count, what).reshape(shape)
    dtype = WIRE_DTYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(
            f"{what}: raw_input_contents holds {len(raw)} bytes; shape {fmt(shape)} of {datatype} "
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


def from_contents(
    contents: pb.InferTensorContents, datatype: str, shape: Sequence[int], what: str
) -> np.ndarray:
    """The typed contents as an array of ``datatype`` and ``shape``; InvalidInput when the field, the
    count or a value's range is wrong."""
    field = CONTENTS_FIELD.get(datatype)
    used = sorted(descriptor.name for descriptor, _ in contents.ListFields())  # the fields with values
    if field is None:
        raise InvalidInput(f"{what}: {datatype} has no typed contents field; send it in raw_input_contents")
    if any(f != field for f in used):
        raise InvalidInput(f"{what}: {datatype} data goes in contents.{field}, got {', '.join(used)}")
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidInput(
            f"{what}: shape {fmt(shape)} needs {count} values, got {len(values)} in contents.{field}"
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
    if datatype in _PACKED_FLOATS and count:
        array = _packed_floats(contents, field, dtype, count)
        if array is not None:
            return array.reshape(shape)
    return np.fromiter(values, dtype, count).reshape(shape)


def _packed_floats(
    contents: pb.InferTensorContents, field: str, dtype: np.dtype[Any], count: int
) -> np.ndarray | None:
    """The values of ``field`` (FP32 or FP64, the only field set) read from the message's own bytes.

    Serialized, such a message is the field's tag, the varint length of its values, then the values as
    little-endian IEEE floats, which is what numpy reads directly: no Python float per value, as iterating
    the field makes. None when the bytes are not exactly that (unknown fields kept from the wire, say).
    """
    wire = contents.SerializeToString()
    size = count * dtype.itemsize
    head = len(wire) - size
    if head < 2 or wire[0] != _FIELD_TAGS[field]:
        return None
    length, shift, i = 0, 0, 1
    while i < head:
        byte = wire[i]
        length |= (byte & 0x7F) << shift
        shift += 7
        i += 1
        if not byte & 0x80:
            break
    if i != head or length != size:
        return None
    array = np.frombuffer(wire, dtype.newbyteorder("<"), count, head)
    return array if array.flags.aligned else array.copy()


# ---- client side: requests and responses as a client writes and reads them --------------------


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


def has_contents(contents: pb.InferTensorContents) -> bool:
    """Whether any typed field holds a value (every field is a repeated one: a value has a size)."""
    return contents.ByteSize() != 0


def fmt(shape: Any) -> str:
    """A shape as the messages write it: ``[1,28,28,1]``."""
    return "[" + ",".join(map(str, shape)) + "]"


def names(specs: tuple[TensorSpec, ...]) -> str:
    """Tensor names as the messages list them: ``['a', 'b']``."""
    return "[" + ", ".join(repr(t.name) for t in specs) + "]"
