"""KServe V2 gRPC infer messages: a ``ModelInferRequest`` validated into the core's
:class:`~service.core.InferRequest`, and the core's :class:`~service.core.InferResponse` encoded into a
``ModelInferResponse``.

:func:`parse_infer_request` checks a request against the model's signature with the rules and messages of
the HTTP parser (:mod:`service.protocol`): names, datatypes (UINT8 accepted for FP32 inputs), shapes, the
row limit, then sizes, then values; nothing is allocated from a client's claim before the bytes or values
are there (see :mod:`service.grpc.tensors` for where a tensor's values travel). Responses are always raw,
as Triton answers and as ``tritonclient.grpc`` reads them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from service.core import InferRequest, InferResponse
from service.errors import InvalidInput, PayloadTooLarge
from service.grpc.generated import grpc_service_pb2 as pb
from service.grpc.tensors import fmt, from_contents, from_raw, has_contents, names, to_raw
from service.signature import ModelSignature, TensorSpec

_MAX_DIM = 2**31
_MAX_TIMEOUT_US = 2**63 - 1


def parse_infer_request(
    request: pb.ModelInferRequest, *, signature: ModelSignature, max_rows: int
) -> tuple[InferRequest, int | None]:
    """Validate ``request`` against ``signature``: InvalidInput, or PayloadTooLarge past ``max_rows``.

    Returns the core's request, ``checked`` (the core need not check it again; no deadline yet: the
    caller knows the gRPC one), and Triton's ``parameters.timeout`` in microseconds, if given.
    """
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
        if raw and has_contents(tensor.contents):
            raise InvalidInput(
                f"input {spec.name!r}: give its data in contents or raw_input_contents, not both"
            )
        specs.append(spec)
        shapes.append(shape)
    if len(specs) != len(signature.inputs):
        missing = next(t.name for t in signature.inputs if t not in specs)
        raise InvalidInput(f"missing input {missing!r}; the model's inputs are {names(signature.inputs)}")
    rows = shapes[0][0] if shapes[0] else 1
    if rows > max_rows:
        raise PayloadTooLarge(f"request has {rows} rows; the limit is {max_rows}")
    outputs = _requested_outputs(request.outputs, signature)

    inputs: dict[str, np.ndarray] = {}
    for i, (tensor, spec, shape) in enumerate(zip(request.inputs, specs, shapes, strict=True)):
        what = f"input {spec.name!r}"
        if raw:
            array = from_raw(raw[i], tensor.datatype, shape, what)
        elif math.prod(shape) and not has_contents(tensor.contents):
            raise InvalidInput(f"{what}: no data; send it in raw_input_contents or contents")
        else:
            array = from_contents(tensor.contents, tensor.datatype, shape, what)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise InvalidInput(f"{what}: data holds non-finite values (NaN or infinity)")
        if array.dtype != spec.dtype:
            array = array.astype(spec.dtype)
        array.flags.writeable = False
        inputs[spec.name] = array
    return InferRequest(inputs, request.id or None, outputs, checked=True), timeout


def encode_infer_response(response: InferResponse) -> pb.ModelInferResponse:
    """The core's answer as a ``ModelInferResponse``: outputs in signature order, values raw."""
    message = pb.ModelInferResponse(
        model_name=response.model, model_version=str(response.version), id=response.id or ""
    )
    for spec in response.specs:
        array = np.asarray(response.outputs[spec.name])
        message.outputs.add(name=spec.name, datatype=spec.datatype, shape=array.shape)
        message.raw_output_contents.append(to_raw(array, spec.datatype))
    return message


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
        raise InvalidInput(f"unknown input {name[:64]!r}; the model's inputs are {names(signature.inputs)}")
    if spec in specs:
        raise InvalidInput(f"input {name!r} is given twice")
    datatype = tensor.datatype
    if datatype != spec.datatype and not (datatype == "UINT8" and spec.datatype == "FP32"):
        accepted = "FP32 (or UINT8)" if spec.datatype == "FP32" else spec.datatype
        raise InvalidInput(f"input {name!r}: expected datatype {accepted}, got {datatype[:32] or 'none'}")
    shape = list(tensor.shape)
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input {name!r}: shape must hold non-negative integers, got {fmt(shape)}")
    if len(shape) != len(spec.shape) or any(m not in (-1, d) for m, d in zip(spec.shape, shape, strict=True)):
        raise InvalidInput(f"input {name!r}: expected shape {fmt(spec.shape)}, got {fmt(shape)}")
    if shape and shape[0] < 1:
        raise InvalidInput(f"input {name!r}: the batch dimension must be at least 1, got {fmt(shape)}")
    if any(d > _MAX_DIM for d in shape[1:]):
        raise InvalidInput(f"input {name!r}: shape {fmt(shape)} has a dimension above 2**31")
    if shapes and shape and shapes[0] and shape[0] != shapes[0][0]:
        raise InvalidInput(
            f"inputs disagree on the batch size: {specs[0].name!r} has {shapes[0][0]} rows, "
            f"{name!r} has {shape[0]}"
        )
    if "shared_memory_region" in tensor.parameters:
        raise InvalidInput(f"input {name!r}: shared memory is not supported; send the data in the request")
    return spec, shape


def _requested_outputs(requested: Any, signature: ModelSignature) -> list[str] | None:
    wanted: list[str] = []
    for item in requested:
        if signature.output(item.name) is None:
            raise InvalidInput(
                f"unknown output {item.name[:64]!r}; the model's outputs are {names(signature.outputs)}"
            )
        if item.name in wanted:
            raise InvalidInput(f"output {item.name!r} is requested twice")
        params = item.parameters
        if "shared_memory_region" in params or (
            "classification" in params and _truthy(params["classification"])
        ):
            raise InvalidInput(
                f"output {item.name!r}: the classification and shared-memory extensions are not supported"
            )
        wanted.append(item.name)
    return wanted or None


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
