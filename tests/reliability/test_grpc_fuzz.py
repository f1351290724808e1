"""Property-based fuzzing of ``ModelInfer`` over gRPC, against the real app's gRPC listener.

Every call is hostile or malformed in some way (or, by chance, valid): random shapes and datatypes, raw
contents of wrong sizes or counts, typed contents in the wrong field or out of range, NaN, missing and
duplicate inputs, unknown outputs, odd parameters and versions, and bytes that are no protobuf at all.
The properties:

- the answer is OK or a client-error status (INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED; or
  DEADLINE_EXCEEDED for a call whose own ``timeout`` was too short), never INTERNAL or UNKNOWN, and
  always with a message;
- an OK answer carries the right probabilities for the tensor that was sent;
- a good call right after is answered correctly (nothing was left broken).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from service.app import create_app
from service.grpc.generated import grpc_service_pb2 as pb
from service.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from service.grpc.tensors import CONTENTS_FIELD, build_infer_request, from_raw, response_arrays
from service.settings import Settings
from tests.helpers.modelfactory import WrittenModel, write_model_version
from tests.helpers.server import free_port
from tests.reliability.support import images

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CLIENT_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
GOOD_IMAGES = images(3, seed=42)
DATATYPES = [
    "FP32",
    "UINT8",
    "FP16",
    "FP64",
    "INT8",
    "INT32",
    "INT64",
    "UINT64",
    "BOOL",
    "BYTES",
    "BF16",
    "",
    "fp32",
]
MAX_BODY = 1 << 20


class Target:
    def __init__(self, channel: grpc.Channel, model: WrittenModel) -> None:
        self.stub = pb_grpc.GRPCInferenceServiceStub(channel)
        self.raw_infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        self.model = model

    def check(self, request: pb.ModelInferRequest) -> None:
        try:
            answer = self.stub.ModelInfer(request, timeout=30)
        except grpc.RpcError as exc:
            _event(exc.code().name)
            assert exc.details(), exc.code()
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                assert "timeout" in request.parameters, exc.details()
                return
            assert exc.code() in CLIENT_ERRORS, (exc.code(), exc.details())
            return
        _event("OK")
        sent = _sent_images(request)
        np.testing.assert_allclose(
            response_arrays(answer)["probabilities"], self.model.reference(sent), atol=1e-5
        )

    def still_good(self) -> None:
        answer = self.stub.ModelInfer(
            build_infer_request("tiny", {"image": ("FP32", GOOD_IMAGES)}, request_id="after"), timeout=30
        )
        assert answer.id == "after"
        np.testing.assert_allclose(
            response_arrays(answer)["probabilities"], self.model.reference(GOOD_IMAGES), atol=1e-5
        )


def _event(name: str) -> None:
    with contextlib.suppress(InvalidArgument):  # outside @given there are no statistics to keep
        event(name)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    repo = tmp_path_factory.mktemp("grpc-fuzz-models")
    model = write_model_version(repo, "tiny", 1)
    settings_ = Settings(
        model_repository=repo, max_queue_delay_us=0, max_body_bytes=MAX_BODY, grpc_port=free_port()
    )
    app = create_app(settings_, grpc_host="127.0.0.1")
    with TestClient(app), grpc.insecure_channel(f"127.0.0.1:{app.state.grpc_port}") as channel:
        yield Target(channel, model)


def _sent_images(request: pb.ModelInferRequest) -> np.ndarray:
    """The image batch of a request that was answered OK, decoded independently of the server."""
    [tensor] = request.inputs
    shape = list(tensor.shape)
    if request.raw_input_contents:
        array = from_raw(request.raw_input_contents[0], tensor.datatype, shape, "sent")
    else:
        values = getattr(tensor.contents, CONTENTS_FIELD[tensor.datatype])
        array = np.asarray(list(values)).reshape(shape)
    return array.astype(np.float64)


shapes = st.one_of(
    st.just([1, 28, 28, 1]),
    st.just([3, 28, 28, 1]),
    st.lists(st.integers(-2, 4), min_size=0, max_size=5),
    st.lists(st.sampled_from([0, 1, 28, 2**31, 2**31 + 1, 2**40]), min_size=4, max_size=4),
)


@st.composite
def tensors(draw: st.DrawFn) -> tuple[pb.ModelInferRequest.InferInputTensor, bytes | None]:
    name = draw(st.sampled_from(["image", "image", "image", "other", "", "IMAGE"]))
    datatype = draw(st.sampled_from(DATATYPES))
    shape = draw(shapes)
    tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
    count = int(np.prod(shape)) if shape and all(0 <= d < 4096 for d in shape) else 784
    kind = draw(st.sampled_from(["raw-right", "raw-wrong", "typed", "typed-wrong-field", "none"]))
    if kind.startswith("raw"):
        itemsize = {"FP32": 4, "FP64": 8, "FP16": 2, "INT64": 8, "UINT64": 8, "INT32": 4}.get(datatype, 1)
        size = count * itemsize if kind == "raw-right" else draw(st.sampled_from([0, 1, 3, 783, 785, 3137]))
        if draw(st.booleans()):
            raw = (
                np.random.default_rng(draw(st.integers(0, 99)))
                .integers(0, 256, size, dtype=np.uint8)
                .tobytes()
            )
        else:  # plausible pixels, as floats or bytes
            raw = np.full(
                size // max(itemsize, 1), 7, {4: np.float32, 8: np.float64}.get(itemsize, np.uint8)
            ).tobytes()
        return tensor, raw
    if kind == "none":
        return tensor, None
    field = CONTENTS_FIELD.get(datatype, "fp32_contents")
    if kind == "typed-wrong-field":
        field = draw(st.sampled_from(sorted(set(CONTENTS_FIELD.values()))))
    n = draw(st.sampled_from([count, count, 0, 1, max(count - 1, 0), count + 1]))
    target = getattr(tensor.contents, field)
    if field == "bool_contents":
        target.extend([True] * n)
    elif field == "bytes_contents":
        target.extend([b"x"] * n)
    elif field in ("fp32_contents", "fp64_contents"):
        value = draw(st.sampled_from([1.0, 255.0, -3.5, float("nan"), float("inf"), 1e39]))
        target.extend([value] * n)
    else:
        value = draw(st.sampled_from([0, 1, 255, 256, -1, 2**31 - 1]))
        if field.startswith("uint"):
            value = abs(value)
        target.extend([value] * n)
    return tensor, None


MUTATIONS = [
    "none",
    "shape",
    "truncate",
    "extend",
    "datatype",
    "drop-input",
    "duplicate-input",
    "unknown-output",
    "version",
    "nan",
    "no-data",
    "both",
    "timeout",
]


@st.composite
def mutated_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    """A valid request (1-3 images, FP32 or UINT8, raw or typed) with at most one thing wrong."""
    rows = draw(st.integers(1, 3))
    datatype = draw(st.sampled_from(["FP32", "UINT8"]))
    batch = images(rows, seed=draw(st.integers(0, 9))).round()
    raw = draw(st.booleans())
    request = build_infer_request(
        "tiny", {"image": (datatype, batch.astype(np.uint8 if datatype == "UINT8" else np.float32))}, raw=raw
    )
    mutation = draw(st.sampled_from(MUTATIONS))
    event(f"mutation {mutation}")
    tensor = request.inputs[0]
    if mutation == "shape":
        tensor.shape[draw(st.integers(0, 3))] = draw(st.sampled_from([0, 2, 27, 29, 2**31, 2**33]))
    elif mutation == "truncate" and raw:
        request.raw_input_contents[0] = request.raw_input_contents[0][: draw(st.integers(0, 10))]
    elif mutation == "extend" and raw:
        request.raw_input_contents.append(b"\x00" * draw(st.integers(0, 4)))
    elif mutation == "datatype":
        tensor.datatype = draw(st.sampled_from(DATATYPES))
    elif mutation == "drop-input":
        del request.inputs[0]
    elif mutation == "duplicate-input":
        request.inputs.append(tensor)
        if raw:
            request.raw_input_contents.append(request.raw_input_contents[0])
    elif mutation == "unknown-output":
        request.outputs.add(name=draw(st.sampled_from(["nope", "", "probabilities"])))
    elif mutation == "version":
        request.model_version = draw(st.sampled_from(["1", "2", "0", "01", "-1", "x" * 80]))
    elif mutation == "nan" and not raw and datatype == "FP32":
        tensor.contents.fp32_contents[draw(st.integers(0, 783))] = float("nan")
    elif mutation == "no-data":
        tensor.ClearField("contents")
        del request.raw_input_contents[:]
    elif mutation == "both" and raw:
        tensor.contents.fp32_contents.extend([1.0] * 784 * rows)
    elif mutation == "timeout":
        request.parameters["timeout"].int64_param = draw(st.sampled_from([1, 0, -5, 10_000_000]))
    return request


@st.composite
def random_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(
        model_name=draw(st.sampled_from(["tiny", "tiny", "tiny", "nope", "", "../tiny"])),
        model_version=draw(st.sampled_from(["", "", "1", "2", "0", "01", "-1", "x" * 80])),
        id=draw(st.sampled_from(["", "abc"])),
    )
    raws: list[bytes] = []
    for tensor, raw in draw(st.lists(tensors(), min_size=0, max_size=3)):
        request.inputs.append(tensor)
        if raw is not None:
            raws.append(raw)
    if raws and draw(st.booleans()):
        raws = raws[: draw(st.integers(0, len(raws)))] + ([b""] if draw(st.booleans()) else [])
    request.raw_input_contents.extend(raws)
    for name in draw(st.lists(st.sampled_from(["probabilities", "nope", ""]), max_size=2)):
        request.outputs.add(name=name)
    timeout = draw(st.sampled_from([None, "int", "tiny", "zero", "string", "double"]))
    if timeout == "int":
        request.parameters["timeout"].int64_param = 10_000_000
    elif timeout == "tiny":
        request.parameters["timeout"].int64_param = 1
    elif timeout == "zero":
        request.parameters["timeout"].int64_param = 0
    elif timeout == "string":
        request.parameters["timeout"].string_param = "1000"
    elif timeout == "double":
        request.parameters["timeout"].double_param = 1000.0
    return request


@FUZZ
@given(request=st.one_of(mutated_requests(), random_requests()))
def test_model_infer_never_fails_on_the_server(target: Target, request: pb.ModelInferRequest) -> None:
    target.check(request)
    target.still_good()


@FUZZ
@given(data=st.binary(max_size=2048))
def test_bytes_that_are_not_a_request_are_invalid_argument(target: Target, data: bytes) -> None:
    try:
        target.raw_infer(data, timeout=30)
    except grpc.RpcError as exc:
        event(exc.code().name)
        assert exc.code() in CLIENT_ERRORS, (exc.code(), exc.details())
        assert exc.details()
    target.still_good()


def test_garbage_is_refused_with_a_message(target: Target) -> None:
    with pytest.raises(grpc.RpcError) as info:
        target.raw_infer(b"\xff\xff\xff\xff", timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "the request is not a valid inference.ModelInferRequest message"


def test_a_message_past_the_limit_and_one_under_it(target: Target) -> None:
    big = build_infer_request("tiny", {"image": ("FP32", np.zeros((400, 28, 28, 1), np.float32))})
    assert len(big.SerializeToString()) > MAX_BODY
    with pytest.raises(grpc.RpcError) as info:
        target.stub.ModelInfer(big, timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    target.check(build_infer_request("tiny", {"image": ("FP32", np.zeros((200, 28, 28, 1), np.float32))}))
    target.still_good()
