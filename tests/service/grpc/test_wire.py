"""service.grpc._wire: ModelInfer messages of the plain form read and written without message objects,
always as protobuf reads and writes the same bytes; anything else is left to protobuf (None)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from google.protobuf.message import DecodeError
from grpc.aio import AbortError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.app import create_app
from service.grpc import _wire
from service.grpc.calls import Context
from service.grpc.generated import grpc_service_pb2 as pb
from service.grpc.protocol import parse_model_infer
from service.grpc.servicer import InferenceServicer
from service.grpc.tensors import build_infer_request
from service.settings import Settings
from tests.helpers.data import MODELS

TEXT = st.text(max_size=12)
DIMS = st.lists(st.integers(-(2**63), 2**63 - 1) | st.integers(0, 300), max_size=6)


def fields(message: pb.ModelInferRequest) -> tuple[object, ...]:
    """What decode_infer answers for ``message``, read from protobuf's parse."""
    return (
        message.model_name,
        message.model_version,
        message.id,
        [(t.name, t.datatype, list(t.shape)) for t in message.inputs],
        [o.name for o in message.outputs],
        list(message.raw_input_contents),
    )


@st.composite
def plain_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=draw(TEXT), model_version=draw(TEXT), id=draw(TEXT))
    for _ in range(draw(st.integers(0, 3))):
        request.inputs.add(name=draw(TEXT), datatype=draw(TEXT), shape=draw(DIMS))
    for _ in range(draw(st.integers(0, 3))):
        request.outputs.add(name=draw(TEXT))
    for _ in range(draw(st.integers(1, 3))):
        request.raw_input_contents.append(draw(st.binary(max_size=64)))
    return request


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plain_requests())
def test_plain_requests_read_as_protobuf_reads_them(request: pb.ModelInferRequest) -> None:
    data = request.SerializeToString()
    assert _wire.decode_infer(data) == fields(pb.ModelInferRequest.FromString(data))


def test_what_tritonclient_sends_is_plain() -> None:
    image = np.random.default_rng(1).uniform(0, 1, (2, 28, 28, 1)).astype(np.float32)
    sent = triton_grpc.InferInput("image", [2, 28, 28, 1], "FP32").set_data_from_numpy(image)
    request = pb.ModelInferRequest(model_name="mnist-cnn", model_version="2", id="r-1")
    request.inputs.append(
        pb.ModelInferRequest.InferInputTensor.FromString(sent._get_tensor().SerializeToString())
    )
    request.outputs.add(name="probabilities")
    request.raw_input_contents.append(sent._get_content())
    decoded = _wire.decode_infer(request.SerializeToString())
    assert decoded == (
        "mnist-cnn",
        "2",
        "r-1",
        [("image", "FP32", [2, 28, 28, 1])],
        ["probabilities"],
        [image.tobytes()],
    )


def with_parameter(request: pb.ModelInferRequest) -> None:
    request.parameters["timeout"].int64_param = 5


def with_input_parameter(request: pb.ModelInferRequest) -> None:
    request.inputs[0].parameters["binary_data_size"].int64_param = 3136


def with_contents(request: pb.ModelInferRequest) -> None:
    request.inputs[0].contents.fp32_contents.append(1.0)


def with_output_parameter(request: pb.ModelInferRequest) -> None:
    request.outputs[0].parameters["classification"].int64_param = 3


def without_raw(request: pb.ModelInferRequest) -> None:
    del request.raw_input_contents[:]


@pytest.mark.parametrize(
    "change", [with_parameter, with_input_parameter, with_contents, with_output_parameter, without_raw]
)
def test_other_forms_are_left_to_protobuf(change: object) -> None:
    image = np.zeros((1, 28, 28, 1), np.float32)
    request = build_infer_request("m", {"image": ("FP32", image)}, raw=True, outputs=["probabilities"])
    assert _wire.decode_infer(request.SerializeToString()) is not None
    change(request)  # type: ignore[operator]
    assert _wire.decode_infer(request.SerializeToString()) is None


PLAIN = pb.ModelInferRequest(model_name="m", id="x")
PLAIN.inputs.add(name="image", datatype="FP32", shape=[1, 2])
PLAIN.outputs.add(name="p")
PLAIN.raw_input_contents.append(b"\x00" * 8)


@pytest.mark.parametrize(
    "tail",
    [
        b"\x0a\x01n",  # model_name (1) a second time: protobuf keeps the last, this module falls back
        b"\x42\x00",  # an unknown field (8)
        b"\x08\x01",  # field 1 as a varint, not a string
        b"\x0b",  # a group (wire type 3)
        b"\x2a\x05\x0a\x00",  # an input whose length runs past the end
    ],
)
def test_repeats_unknown_fields_and_wrong_wire_types_fall_back(tail: bytes) -> None:
    assert _wire.decode_infer(PLAIN.SerializeToString() + tail) is None


def test_text_that_is_not_utf8_falls_back_as_protobuf_refuses_it() -> None:
    data = PLAIN.SerializeToString().replace(b"\x0a\x01m", b"\x0a\x01\xff")
    with pytest.raises(DecodeError):
        pb.ModelInferRequest.FromString(data)
    assert _wire.decode_infer(data) is None


def test_every_prefix_reads_as_protobuf_reads_it_or_falls_back() -> None:
    data = PLAIN.SerializeToString()
    for end in range(len(data) + 1):
        decoded = _wire.decode_infer(data[:end])
        if decoded is not None:  # a prefix that ends on a field boundary is a message of its own
            assert decoded == fields(pb.ModelInferRequest.FromString(data[:end]))


@settings(max_examples=500, deadline=None)
@given(
    st.binary(max_size=200)
    | plain_requests()
    .map(lambda r: r.SerializeToString())
    .flatmap(
        lambda data: st.tuples(st.just(data), st.integers(0, len(data)), st.binary(max_size=4)).map(
            lambda t: t[0][: t[1]] + t[2] + t[0][t[1] :]
        )
    )
)
def test_any_bytes_fall_back_or_read_as_protobuf_reads_them(data: bytes) -> None:
    decoded = _wire.decode_infer(data)
    if decoded is not None:
        assert decoded == fields(pb.ModelInferRequest.FromString(data))


def test_buffers_other_than_bytes_are_read_too() -> None:
    data = PLAIN.SerializeToString()
    assert _wire.decode_infer(memoryview(data)) == _wire.decode_infer(bytearray(data)) == fields(PLAIN)
    with pytest.raises(TypeError):
        _wire.decode_infer("text")  # type: ignore[arg-type]


@st.composite
def responses(draw: st.DrawFn) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=draw(TEXT), model_version=draw(TEXT), id=draw(TEXT))
    for _ in range(draw(st.integers(0, 3))):
        response.outputs.add(name=draw(TEXT), datatype=draw(TEXT), shape=draw(DIMS))
        response.raw_output_contents.append(draw(st.binary(max_size=300)))
    return response


@settings(max_examples=400, deadline=None)
@given(responses())
def test_responses_are_written_byte_for_byte_as_protobuf_writes_them(response: pb.ModelInferResponse) -> None:
    outputs = [
        (o.name, o.datatype, tuple(o.shape), raw)
        for o, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    ]
    written = _wire.encode_infer(response.model_name, response.model_version, response.id, outputs)
    assert written == response.SerializeToString()


@pytest.mark.parametrize(
    "outputs",
    [[("x", "FP32", [1], b"")], [("x", "FP32", (1,), "text")], [("x", "FP32", ("1",), b"")], ["x"], [("x",)]],
)
def test_encoding_refuses_outputs_of_another_shape(outputs: list[object]) -> None:
    with pytest.raises(TypeError):
        _wire.encode_infer("m", "1", "", outputs)  # type: ignore[arg-type]


def test_encoding_refuses_a_dimension_beyond_int64() -> None:
    with pytest.raises(OverflowError):
        _wire.encode_infer("m", "1", "", [("x", "FP32", (2**64,), b"")])


# ---- the servicer: ModelInferBytes answers as ModelInfer does -------------------------------------------


def infer_cases() -> dict[str, bytes]:
    image = np.random.default_rng(2).uniform(0, 1, (1, 28, 28, 1)).astype(np.float32)
    plain = build_infer_request("mnist-cnn", {"image": ("FP32", image)}, raw=True)
    asked = build_infer_request("mnist-cnn", {"image": ("FP32", image)}, raw=True, outputs=["probabilities"])
    asked.model_version, asked.id = "1", "req-7"
    typed = build_infer_request("mnist-cnn", {"image": ("FP32", image)}, raw=False)
    timed = build_infer_request("mnist-cnn", {"image": ("FP32", image)}, raw=True)
    timed.parameters["timeout"].int64_param = 5_000_000
    wrong_shape = build_infer_request("mnist-cnn", {"image": ("FP32", image.reshape(1, 784))}, raw=True)
    unknown = build_infer_request("no-such-model", {"image": ("FP32", image)}, raw=True)
    bad_version = build_infer_request("mnist-cnn", {"image": ("FP32", image)}, raw=True)
    bad_version.model_version = "01"
    short = build_infer_request("mnist-cnn", {"image": ("FP32", image)}, raw=True)
    short.raw_input_contents[0] = short.raw_input_contents[0][:-4]
    nan = build_infer_request("mnist-cnn", {"image": ("FP32", np.full_like(image, np.nan))}, raw=True)
    unknown_output = build_infer_request("mnist-cnn", {"image": ("FP32", image)}, raw=True, outputs=["x"])
    messages = {
        "plain": plain,
        "outputs, version and id": asked,
        "typed contents": typed,
        "timeout parameter": timed,
        "wrong shape": wrong_shape,
        "unknown model": unknown,
        "bad version": bad_version,
        "raw too short": short,
        "not finite": nan,
        "unknown output": unknown_output,
    }
    cases = {name: message.SerializeToString() for name, message in messages.items()}
    cases["not a message"] = b"\xff\xff\xff"
    return cases


def test_model_infer_bytes_answers_byte_for_byte_as_model_infer() -> None:
    async def outcome(call: Any) -> tuple[object, ...]:
        context = Context((), None, "ipv4:127.0.0.1:1")
        try:
            return ("answer", await call(context))
        except AbortError:
            return ("abort", context.code(), context.details(), context.trailing_metadata())

    async def main() -> list[str]:
        app = create_app(Settings(model_repository=MODELS, models=["mnist-cnn"], grpc_port=0))
        plain_taken = []
        async with app.router.lifespan_context(app):
            servicer = InferenceServicer(app.state.core)
            for name, data in infer_cases().items():
                wire = await outcome(lambda context, data=data: servicer.ModelInferBytes(data, context))

                async def message(context: Context, data: bytes = data) -> bytes:
                    response = await servicer.ModelInfer(parse_model_infer(data), context)
                    return response.SerializeToString()

                assert wire == await outcome(message), name
                if _wire.decode_infer(data) is not None:
                    plain_taken.append(name)
        return plain_taken

    plain_taken = asyncio.run(main())
    # The plain path met the answers and the errors of a plain request, not only the fallback.
    assert {"plain", "outputs, version and id", "wrong shape", "unknown model", "raw too short"} <= set(
        plain_taken
    )
