"""gRPC infer messages: checked against the signature with the HTTP rules and words; raw answers."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as triton_pb

from service.core import InferRequest, InferResponse
from service.core.signature import DATATYPES, ModelSignature, TensorSpec
from service.errors import InvalidInput, PayloadTooLarge, ServiceError
from service.grpc.generated import grpc_service_pb2 as pb
from service.grpc.protocol import (
    decode_plain,
    encode_infer_bytes,
    encode_infer_response,
    parse_infer_request,
    parse_plain_request,
)
from service.grpc.tensors import CONTENTS_FIELD, WIRE_DTYPES, build_infer_request, response_arrays
from service.http import protocol

SIG = ModelSignature(
    inputs=(TensorSpec("image", "FP32", (-1, 28, 28, 1)),),
    outputs=(TensorSpec("probabilities", "FP32", (-1, 10)),),
)
SIG2 = ModelSignature(
    inputs=(TensorSpec("a", "FP32", (-1, 3)), TensorSpec("b", "INT64", (-1, -1))),
    outputs=(TensorSpec("x", "FP32", (-1, 2)), TensorSpec("y", "INT64", (-1,))),
)
NUMERIC = sorted(DATATYPES)


def sample(datatype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Values spanning the datatype's range (its extremes included)."""
    rng = np.random.default_rng(seed)
    dtype = WIRE_DTYPES[datatype]
    if datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(bool)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
        values.flat[0], values.flat[-1] = info.min, info.max
        return values
    return (rng.standard_normal(shape) * 1000).astype(dtype)


def one_input(datatype: str) -> ModelSignature:
    return ModelSignature(inputs=(TensorSpec("x", datatype, (-1, 3)),), outputs=SIG.outputs)


PLAIN_PARSED: list[InferRequest] = []  # what parse() also read through the plain path


def parse(request: pb.ModelInferRequest, sig: ModelSignature = SIG, max_rows: int = 64) -> InferRequest:
    """``request`` parsed with protobuf's message; when it is of the plain form (what the native listener
    reads with service.grpc._wire), also through that path, which must give the same request or the
    same error with the same message."""
    plain = decode_plain(request.SerializeToString())
    try:
        parsed = parse_infer_request(request, signature=sig, max_rows=max_rows)
    except ServiceError as exc:
        if plain is not None:
            with pytest.raises(type(exc)) as same:
                parse_plain_request(plain, signature=sig, max_rows=max_rows)
            assert same.value.message == exc.message
        raise
    assert parsed.checked and parsed.deadline is None  # no gRPC deadline given
    if plain is not None:
        assert_same_request(parse_plain_request(plain, signature=sig, max_rows=max_rows), parsed)
        PLAIN_PARSED.append(parsed)
    return parsed


def assert_same_request(got: InferRequest, expected: InferRequest) -> None:
    assert (got.id, got.outputs, got.deadline, got.timeout, got.checked, got.binary) == (
        expected.id,
        expected.outputs,
        expected.deadline,
        expected.timeout,
        expected.checked,
        expected.binary,
    )
    assert list(got.inputs) == list(expected.inputs)
    for name, array in expected.inputs.items():
        assert got.inputs[name].dtype == array.dtype and not got.inputs[name].flags.writeable
        np.testing.assert_array_equal(got.inputs[name], array)


def timeout_of(request: pb.ModelInferRequest) -> int | None:
    """Triton's ``parameters.timeout`` as the request carries it, back in microseconds."""
    timeout = parse(request).timeout
    return None if timeout is None else round(timeout * 1e6)


def image_request(rows: int = 2, *, raw: bool = True, **kwargs: Any) -> pb.ModelInferRequest:
    images = np.random.default_rng(1).uniform(0, 255, (rows, 28, 28, 1)).astype(np.float32)
    return build_infer_request("m", {"image": ("FP32", images)}, raw=raw, **kwargs)


def invalid(request: pb.ModelInferRequest, pattern: str, sig: ModelSignature = SIG) -> None:
    with pytest.raises(InvalidInput, match=pattern):
        parse(request, sig)


# ---- every datatype ----------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
@pytest.mark.parametrize("datatype", [d for d in NUMERIC if d != "FP16"] + ["FP16"])
def test_every_numeric_datatype_round_trips(datatype: str, raw: bool) -> None:
    values = sample(datatype, (4, 3))
    request = build_infer_request("m", {"x": (datatype, values)}, raw=raw or datatype == "FP16")
    parsed = parse(request, one_input(datatype))
    got = parsed.inputs["x"]
    assert got.dtype == DATATYPES[datatype] and got.shape == (4, 3)
    np.testing.assert_array_equal(got, values)
    assert not got.flags.writeable
    assert len(next(iter(parsed.inputs.values()))) == 4


def test_fp16_has_no_typed_field() -> None:
    request = build_infer_request("m", {"x": ("FP32", np.ones((1, 3), np.float32))}, raw=False)
    request.inputs[0].datatype = "FP16"
    invalid(
        request,
        r"input 'x': FP16 has no typed contents field; send it in raw_input_contents",
        one_input("FP16"),
    )


# ---- sizes, fields, ranges ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 6268, 6271, 6273, 6272 * 2])
def test_raw_of_the_wrong_size(size: int) -> None:
    request = image_request(2)
    request.raw_input_contents[0] = bytes(size)
    needs = "shape [2,28,28,1] of FP32 needs 6272"
    invalid(request, re.escape(f"input 'image': raw_input_contents holds {size} bytes; {needs}"))


def test_typed_contents_count_field_and_range() -> None:
    request = image_request(1, raw=False)
    del request.inputs[0].contents.fp32_contents[-1]
    invalid(
        request,
        re.escape("input 'image': shape [1,28,28,1] needs 784 values, got 783 in contents.fp32_contents"),
    )

    request = image_request(1, raw=False)
    request.inputs[0].contents.int_contents.append(1)
    invalid(
        request,
        re.escape("input 'image': FP32 data goes in contents.fp32_contents, got fp32_contents, int_contents"),
    )

    request = build_infer_request("m", {"x": ("INT32", np.zeros((1, 3), np.int32))}, raw=False)
    request.inputs[0].datatype = "INT8"
    request.inputs[0].contents.int_contents[1] = 128
    invalid(request, re.escape("input 'x': INT8 data must be integers in -128..127"), one_input("INT8"))

    request = build_infer_request("m", {"x": ("UINT32", np.zeros((1, 3), np.uint32))}, raw=False)
    request.inputs[0].datatype = "UINT16"
    request.inputs[0].contents.uint_contents[2] = 65536
    invalid(request, re.escape("input 'x': UINT16 data must be integers in 0..65535"), one_input("UINT16"))


def test_bool_raw_bytes_must_be_zero_or_one() -> None:
    request = build_infer_request("m", {"x": ("BOOL", np.ones((1, 3), bool))})
    request.raw_input_contents[0] = b"\x01\x02\x00"
    invalid(request, "BOOL raw bytes must each be 0 or 1", one_input("BOOL"))


def test_non_finite_values_are_refused_raw_and_typed() -> None:
    for raw in (True, False):
        images = np.zeros((1, 28, 28, 1), np.float32)
        images[0, 3, 4, 0] = np.nan if raw else np.inf
        request = build_infer_request("m", {"image": ("FP32", images)}, raw=raw)
        invalid(request, re.escape("input 'image': data holds non-finite values (NaN or infinity)"))


def test_uint8_is_accepted_for_fp32_inputs_and_cast() -> None:
    pixels = np.random.default_rng(2).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    for raw in (True, False):
        parsed = parse(build_infer_request("m", {"image": ("UINT8", pixels)}, raw=raw))
        assert parsed.inputs["image"].dtype == np.float32
        np.testing.assert_array_equal(parsed.inputs["image"], pixels.astype(np.float32))


# ---- names, shapes, data placement -------------------------------------------------------------------


def two_inputs(raw: bool = True, a_rows: int = 2, b_rows: int = 2) -> pb.ModelInferRequest:
    return build_infer_request(
        "m",
        {
            "a": ("FP32", np.ones((a_rows, 3), np.float32)),
            "b": ("INT64", np.arange(b_rows * 5).reshape(b_rows, 5)),
        },
        raw=raw,
    )


def test_two_inputs_parse_in_order() -> None:
    parsed = parse(two_inputs(), SIG2)
    assert list(parsed.inputs) == ["a", "b"]
    np.testing.assert_array_equal(parsed.inputs["b"], np.arange(10).reshape(2, 5))


def test_missing_unknown_and_duplicate_inputs() -> None:
    request = two_inputs(raw=False)
    del request.inputs[1]
    invalid(request, re.escape("missing input 'b'; the model's inputs are ['a', 'b']"), SIG2)

    request = two_inputs(raw=False)
    request.inputs[1].name = "c" * 500
    invalid(request, re.escape(f"unknown input '{'c' * 64}...'; the model's inputs are ['a', 'b']"), SIG2)

    request = two_inputs(raw=False)
    request.inputs[1].CopyFrom(request.inputs[0])
    invalid(request, "input 'a' is given twice", SIG2)

    invalid(pb.ModelInferRequest(model_name="m"), "the request has no inputs")


def test_raw_contents_must_cover_every_input_or_none() -> None:
    request = two_inputs(raw=True)
    del request.raw_input_contents[1]
    invalid(request, "raw_input_contents has 1 entries for 2 inputs; send every input raw, or none", SIG2)

    request = two_inputs(raw=True)
    request.inputs[0].contents.fp32_contents.extend([1.0, 2.0, 3.0] * 2)
    invalid(request, "input 'a': give its data in contents or raw_input_contents, not both", SIG2)

    request = two_inputs(raw=False)
    request.inputs[0].ClearField("contents")
    invalid(request, "input 'a': no data; send it in raw_input_contents or contents", SIG2)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ([1, 28, 28], "expected shape [-1,28,28,1], got [1,28,28]"),
        ([1, 28, 28, 3], "expected shape [-1,28,28,1], got [1,28,28,3]"),
        ([1, -28, 28, 1], "shape must hold non-negative integers, got [1,-28,28,1]"),
        ([0, 28, 28, 1], "the batch dimension must be at least 1, got [0,28,28,1]"),
    ],
)
def test_shape_errors_match_the_http_parser(shape: list[int], message: str) -> None:
    request = image_request(1)
    del request.inputs[0].shape[:]
    request.inputs[0].shape.extend(shape)
    invalid(request, "input 'image': " + re.escape(message))
    if min(shape) >= 0:  # the same tensor over HTTP gets the same words
        body = orjson.dumps(
            {"inputs": [{"name": "image", "datatype": "FP32", "shape": shape, "data": [0.0]}]}
        )
        with pytest.raises(InvalidInput, match=re.escape(message)):
            protocol.parse_infer_request(body, header_length=None, signature=SIG, max_rows=64)


def test_dimension_limit_and_batch_agreement() -> None:
    sig = ModelSignature(inputs=(TensorSpec("x", "FP32", (-1, -1)),), outputs=SIG.outputs)
    request = build_infer_request("m", {"x": ("FP32", np.ones((1, 1), np.float32))})
    request.inputs[0].shape[1] = 2**31 + 1
    invalid(request, re.escape("shape [1,2147483649] has a dimension above 2**31"), sig)
    invalid(
        two_inputs(a_rows=2, b_rows=3), "inputs disagree on the batch size: 'a' has 2 rows, 'b' has 3", SIG2
    )


def test_huge_claimed_shape_allocates_nothing() -> None:
    sig = ModelSignature(inputs=(TensorSpec("x", "FP32", (-1, -1)),), outputs=SIG.outputs)
    request = build_infer_request("m", {"x": ("FP32", np.ones((1, 4), np.float32))})
    request.inputs[0].shape[1] = 2**31
    invalid(request, re.escape("holds 16 bytes; shape [1,2147483648] of FP32 needs 8589934592"), sig)


def test_datatype_mismatch_names_what_is_accepted() -> None:
    request = build_infer_request("m", {"image": ("FP64", np.zeros((1, 28, 28, 1)))})
    invalid(request, re.escape("input 'image': expected datatype FP32 (or UINT8), got FP64"))
    request.inputs[0].datatype = ""
    invalid(request, re.escape("expected datatype FP32 (or UINT8), got none"))
    request = two_inputs()
    request.inputs[1].datatype = "INT32"
    invalid(request, re.escape("input 'b': expected datatype INT64, got INT32"), SIG2)


def test_row_limit_is_payload_too_large() -> None:
    with pytest.raises(PayloadTooLarge, match="request has 65 rows; the limit is 64"):
        parse(image_request(65))


def test_shared_memory_is_refused() -> None:
    request = image_request(1)
    request.inputs[0].parameters["shared_memory_region"].string_param = "region"
    invalid(request, "shared memory is not supported")


# ---- parameters and outputs --------------------------------------------------------------------------


def test_timeout_parameter() -> None:
    assert timeout_of(image_request(1, timeout_us=2500)) == 2500
    assert timeout_of(image_request(1)) is None
    request = image_request(1)
    request.parameters["timeout"].uint64_param = 7
    assert timeout_of(request) == 7
    for setter in ("int64_param", "string_param", "double_param"):
        request = image_request(1)
        setattr(
            request.parameters["timeout"],
            setter,
            0 if setter == "int64_param" else "5" if setter == "string_param" else 5.0,
        )
        invalid(request, re.escape("parameters.timeout must be a positive integer (microseconds)"))


def test_requested_outputs() -> None:
    parsed = parse(image_request(1, outputs=["probabilities"]))
    assert parsed.outputs == ["probabilities"]
    assert parse(image_request(1)).outputs is None
    invalid(
        image_request(1, outputs=["nope"]),
        re.escape("unknown output 'nope'; the model's outputs are ['probabilities']"),
    )
    invalid(image_request(1, outputs=["probabilities"] * 2), "output 'probabilities' is requested twice")
    request = image_request(1, outputs=["probabilities"])
    request.outputs[0].parameters["classification"].int64_param = 3
    invalid(request, "the classification and shared-memory extensions are not supported")


def test_request_id_passes_through() -> None:
    assert parse(image_request(1, request_id="abc")).id == "abc"
    assert parse(image_request(1)).id is None


# ---- responses ---------------------------------------------------------------------------------------


def test_response_is_raw_in_signature_order_and_tritonclient_reads_it() -> None:
    outputs = {"x": np.array([[0.5, 1.5], [2.5, 3.5]], np.float32), "y": np.array([7, -8], np.int64)}
    answer = InferResponse("m", 3, "q", outputs, SIG2.outputs)
    response = encode_infer_response(answer)
    assert encode_infer_bytes(answer) == response.SerializeToString()  # the native listener's encoder
    assert [o.name for o in response.outputs] == ["x", "y"]
    assert [list(o.shape) for o in response.outputs] == [[2, 2], [2]]
    assert len(response.raw_output_contents) == 2
    decoded = response_arrays(response)
    for name in outputs:
        np.testing.assert_array_equal(decoded[name], outputs[name])
    theirs = triton_grpc.InferResult(triton_pb.ModelInferResponse.FromString(response.SerializeToString()))
    np.testing.assert_array_equal(theirs.as_numpy("x"), outputs["x"])
    np.testing.assert_array_equal(theirs.as_numpy("y"), outputs["y"])
    assert theirs.get_response().id == "q" and theirs.get_response().model_version == "3"


def test_response_holds_only_the_outputs_the_core_picked() -> None:
    outputs = {"y": np.zeros(1, np.int64)}
    answer = InferResponse("m", 1, None, outputs, (SIG2.outputs[1],))
    response = encode_infer_response(answer)
    assert [o.name for o in response.outputs] == ["y"] and response.id == ""
    assert encode_infer_bytes(answer) == response.SerializeToString()


@pytest.mark.parametrize("datatype", [*NUMERIC, "BYTES"])
@pytest.mark.parametrize("shape", [(2, 3), (1,), (0, 4), (3, 0)])
def test_response_bytes_are_protobufs_for_every_datatype_and_shape(
    datatype: str, shape: tuple[int, ...]
) -> None:
    if datatype == "BYTES":
        values = np.array([b"a", "\u00e9t\u00e9", b""] * 4, dtype=object)[: int(np.prod(shape))].reshape(
            shape
        )
    else:
        values = sample(datatype, shape) if np.prod(shape) else np.zeros(shape, WIRE_DTYPES[datatype])
    spec = TensorSpec("out \u2713", datatype, tuple(-1 for _ in shape))
    for model, version, request_id in (("m", 1, None), ("m\u00e9", 12345678901, "id \u2603"), ("", 7, "")):
        answer = InferResponse(model, version, request_id, {spec.name: values}, (spec,))
        assert encode_infer_bytes(answer) == encode_infer_response(answer).SerializeToString()


def test_tritonclient_requests_parse_to_the_http_parsers_arrays() -> None:
    images = np.random.default_rng(5).uniform(0, 255, (3, 28, 28, 1)).astype(np.float32)
    grpc_input = triton_grpc.InferInput("image", [3, 28, 28, 1], "FP32").set_data_from_numpy(images)
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.append(
        pb.ModelInferRequest.InferInputTensor.FromString(grpc_input._get_tensor().SerializeToString())
    )
    request.raw_input_contents.append(grpc_input._get_content())
    http_input = triton_http.InferInput("image", [3, 28, 28, 1], "FP32").set_data_from_numpy(
        images, binary_data=True
    )
    body, length = triton_http.InferenceServerClient.generate_request_body([http_input])
    over_http = protocol.parse_infer_request(body, header_length=length, signature=SIG, max_rows=64)
    np.testing.assert_array_equal(parse(request).inputs["image"], over_http.inputs["image"])
    assert PLAIN_PARSED and PLAIN_PARSED[-1].inputs["image"] is not None  # tritonclient's form is plain
    assert decode_plain(request.SerializeToString()) is not None


# ---- hostile requests --------------------------------------------------------------------------------

DATATYPE_NAMES = [*NUMERIC, "BYTES", "BF16", "", "fp32", "FP32\x00"]


@st.composite
def hostile_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    for _ in range(draw(st.integers(0, 3))):
        tensor = request.inputs.add(
            name=draw(st.sampled_from(["image", "image", "other", ""])),
            datatype=draw(st.sampled_from(DATATYPE_NAMES)),
            shape=draw(st.lists(st.integers(-3, 2**33), max_size=5) | st.just([1, 28, 28, 1])),
        )
        if draw(st.booleans()):
            field = draw(st.sampled_from(sorted(set(CONTENTS_FIELD.values()))))
            values = draw(st.lists(st.integers(0, 255), max_size=900))
            if field == "bool_contents":
                tensor.contents.bool_contents.extend(bool(v & 1) for v in values)
            elif field == "bytes_contents":
                tensor.contents.bytes_contents.extend(bytes([v]) for v in values)
            else:
                getattr(tensor.contents, field).extend(values)
    for _ in range(draw(st.integers(0, 3))):
        size = draw(st.sampled_from([0, 1, 783, 784, 3136, 3137]))
        request.raw_input_contents.append(draw(st.binary(min_size=size, max_size=size)))
    return request


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_requests())
def test_hostile_requests_parse_or_fail_cleanly(request: pb.ModelInferRequest) -> None:
    try:
        parsed = parse(request)
    except (InvalidInput, PayloadTooLarge) as exc:
        assert exc.message and len(exc.message) < 400
        return
    image = parsed.inputs["image"]
    assert image.shape[0] >= 1 and image.shape[1:] == (28, 28, 1) and image.dtype == np.float32
    assert np.isfinite(image).all()
