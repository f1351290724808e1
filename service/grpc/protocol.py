"""KServe V2 gRPC infer messages: a ``ModelInferRequest`` validated into the core's
:class:`~service.core.InferRequest`, and the core's :class:`~service.core.InferResponse` encoded into a
``ModelInferResponse``.

:func:`parse_infer_request` checks a request against the model's signature with the checks every
transport shares (:class:`~service.core.signature.RequestCheck`): names, datatypes (UINT8 accepted for FP32
inputs), shapes, the row limit, then sizes, then values; nothing is allocated from a client's claim
before the bytes or values are there (see :mod:`service.grpc.tensors` for where a tensor's values
travel). Responses are always raw, as Triton answers and as ``tritonclient.grpc`` reads them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from service.core import InferRequest, InferResponse
from service.core.signature import ModelSignature, RequestCheck, TensorSpec, reject_extensions
from service.errors import InvalidInput
from service.grpc.generated import grpc_service_pb2 as pb
from service.grpc.tensors import from_contents, from_raw, has_contents, to_raw

try:
    from service.grpc import _wire
except ImportError:  # installed without the C extensions: only grpcio's listener serves, which never calls
    _wire = None  # type: ignore[assignment]  # decode_plain or encode_infer_bytes

#: A ``ModelInferRequest`` of the plain form as :func:`decode_plain` reads it: model name, model version,
#: request id, the inputs (name, datatype, shape), the output names asked for, and the raw input contents.
Plain = tuple[str, str, str, list[tuple[str, str, list[int]]], list[str], list[bytes]]

_MAX_TIMEOUT_US = 2**63 - 1


@dataclass(frozen=True)
class Malformed:
    """A request whose bytes did not parse as its message type (answered INVALID_ARGUMENT by the servicer)."""

    message: str


def message_parser(message_class: Any) -> Callable[[bytes], Any]:
    """A request deserializer for ``message_class`` that answers :class:`Malformed` for bytes that do not
    parse, rather than raising (grpcio would answer INTERNAL and log a traceback)."""

    def parse(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except DecodeError:
            return Malformed(f"the request is not a valid {message_class.DESCRIPTOR.full_name} message")

    return parse


parse_model_infer = message_parser(pb.ModelInferRequest)


def parse_infer_request(
    request: pb.ModelInferRequest, *, signature: ModelSignature, max_rows: int, deadline: float | None = None
) -> InferRequest:
    """Validate ``request`` against ``signature`` into the core's request, ``checked``: InvalidInput, or
    PayloadTooLarge past ``max_rows``. ``deadline`` is the gRPC deadline (monotonic), if the call has one;
    Triton's ``parameters.timeout`` becomes the request's ``timeout``.
    """
    timeout = _timeout(request.parameters)
    tensors = request.inputs
    raw = request.raw_input_contents
    _check_counts(len(tensors), len(raw))
    check = RequestCheck(signature, max_rows)
    for tensor in tensors:
        # A list, once: the checks index and slice the shape, which a message's container does slowly.
        check.input(tensor.name, tensor.datatype, list(tensor.shape))
        if tensor.parameters:
            reject_extensions(f"input {tensor.name!r}", tensor.parameters)
        if raw and has_contents(tensor.contents):
            raise InvalidInput(
                f"input {tensor.name!r}: give its data in contents or raw_input_contents, not both"
            )
    check.done()
    outputs = _requested_outputs(request.outputs, check) if request.outputs else None

    inputs: dict[str, np.ndarray] = {}
    for i, (tensor, spec, dims) in enumerate(zip(tensors, check.specs, check.shapes, strict=True)):
        what = f"input {spec.name!r}"
        if raw:
            array = from_raw(raw[i], tensor.datatype, dims, what)
        elif math.prod(dims) and not has_contents(tensor.contents):
            raise InvalidInput(f"{what}: no data; send it in raw_input_contents or contents")
        else:
            array = from_contents(tensor.contents, tensor.datatype, dims, what)
        inputs[spec.name] = _checked_values(check, spec, array)
    return _infer_request(inputs, request.id, outputs, deadline, timeout)


def decode_plain(payload: bytes) -> Plain | None:
    """``payload``, a serialized ``ModelInferRequest``, read without protobuf when it is of the plain form
    (``service/grpc/_wire.c``: no parameters, no typed contents, every input raw; what ``tritonclient``
    sends); None for any other message, which protobuf then parses."""
    return _wire.decode_infer(payload)


def parse_plain_request(
    plain: Plain, *, signature: ModelSignature, max_rows: int, deadline: float | None = None
) -> InferRequest:
    """:func:`parse_infer_request` for a request :func:`service.grpc._wire.decode_infer` read: one of the
    plain form (no parameters, no typed contents, every input raw), so the checks that only the other
    fields need have nothing to check; the rest run in the same order, with the same messages."""
    _, _, request_id, tensors, names, raw = plain
    _check_counts(len(tensors), len(raw))
    check = RequestCheck(signature, max_rows)
    for name, datatype, shape in tensors:
        check.input(name, datatype, shape)
    check.done()
    outputs = check.outputs(names) if names else None
    inputs: dict[str, np.ndarray] = {}
    for data, (_, datatype, _), spec, dims in zip(raw, tensors, check.specs, check.shapes, strict=True):
        array = from_raw(data, datatype, dims, f"input {spec.name!r}")
        inputs[spec.name] = _checked_values(check, spec, array)
    return _infer_request(inputs, request_id, outputs, deadline, None)


def _check_counts(inputs: int, raw: int) -> None:
    if not inputs:
        raise InvalidInput("the request has no inputs")
    if raw and raw != inputs:
        raise InvalidInput(
            f"raw_input_contents has {raw} entries for {inputs} inputs; send every input raw, or none"
        )


def _checked_values(check: RequestCheck, spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    array = check.values(spec, array)
    array.flags.writeable = False
    return array


def _infer_request(
    inputs: dict[str, np.ndarray],
    request_id: str,
    outputs: list[str] | None,
    deadline: float | None,
    timeout_us: int | None,
) -> InferRequest:
    return InferRequest(
        inputs,
        request_id or None,
        outputs,
        deadline,
        checked=True,
        timeout=None if timeout_us is None else timeout_us / 1e6,
    )


def encode_infer_response(response: InferResponse) -> pb.ModelInferResponse:
    """The core's answer as a ``ModelInferResponse``: outputs in signature order, values raw."""
    message = pb.ModelInferResponse(
        model_name=response.model, model_version=str(response.version), id=response.id or ""
    )
    for name, datatype, shape, raw in _raw_outputs(response):
        message.outputs.add(name=name, datatype=datatype, shape=shape)
        message.raw_output_contents.append(raw)
    return message


def encode_infer_bytes(response: InferResponse) -> bytes:
    """:func:`encode_infer_response`, serialized, written by :func:`service.grpc._wire.encode_infer`
    (the same bytes, without building the message)."""
    outputs = _raw_outputs(response)
    return _wire.encode_infer(response.model, str(response.version), response.id or "", outputs)


def _raw_outputs(response: InferResponse) -> list[tuple[str, str, tuple[int, ...], bytes]]:
    """Each output the core picked, in signature order: name, datatype, shape and raw bytes."""
    outputs = []
    for spec in response.specs:
        array = np.asarray(response.outputs[spec.name])
        outputs.append((spec.name, spec.datatype, array.shape, to_raw(array, spec.datatype)))
    return outputs


def _requested_outputs(requested: Any, check: RequestCheck) -> list[str] | None:
    names = [item.name for item in requested]
    wanted = check.outputs(names)
    for item in requested:
        params = item.parameters
        if not params:
            continue
        keys = [k for k in params if k != "classification" or _truthy(params[k])]
        reject_extensions(f"output {item.name!r}", keys, output=True)
    return wanted


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
