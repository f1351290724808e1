"""One gRPC tensor and numpy, both ways: each V2 datatype raw and typed; BYTES laid out as tritonclient."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc

from service.core.signature import DATATYPES
from service.errors import InvalidInput
from service.grpc import tensors
from service.grpc.generated import grpc_service_pb2 as pb
from service.grpc.tensors import (
    CONTENTS_FIELD,
    WIRE_DTYPES,
    build_infer_request,
    fill_contents,
    from_contents,
    from_raw,
    has_contents,
    response_arrays,
    to_raw,
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


@pytest.mark.parametrize("datatype", [*NUMERIC, "BYTES"])
def test_raw_and_typed_decoders_agree(datatype: str) -> None:
    if datatype == "BYTES":
        values = np.array([b"", b"\x00abc", b"zeta", b"\xff" * 300, b"x", b"yz"], dtype=object)
        values = values.reshape(2, 3)
    else:
        values = sample(datatype, (2, 3), seed=3)
    raw = from_raw(to_raw(values, datatype), datatype, [2, 3], "t")
    np.testing.assert_array_equal(raw, values)
    if datatype in CONTENTS_FIELD:
        contents = pb.InferTensorContents()
        fill_contents(contents, values, datatype)
        typed = from_contents(contents, datatype, [2, 3], "t")
        np.testing.assert_array_equal(typed, values)
        assert typed.dtype == raw.dtype


@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
@pytest.mark.parametrize("count", [1, 31, 784, 5000])  # 1- and 2-byte length varints, and a 3-byte one
def test_typed_floats_are_read_from_the_messages_bytes_as_iterating_reads_them(
    datatype: str, count: int
) -> None:
    values = sample(datatype, (count,), seed=count)
    values[: min(count, 3)] = [np.nan, np.inf, -0.0][: min(count, 3)]  # non-finite values pass through
    wire = pb.InferTensorContents()
    fill_contents(wire, values, datatype)
    contents = pb.InferTensorContents.FromString(wire.SerializeToString())  # as a request carries them
    assert (
        tensors._packed_floats(contents, CONTENTS_FIELD[datatype], WIRE_DTYPES[datatype], count) is not None
    )
    read = from_contents(contents, datatype, [count], "t")
    expected = np.fromiter(getattr(contents, CONTENTS_FIELD[datatype]), WIRE_DTYPES[datatype], count)
    np.testing.assert_array_equal(read, expected)
    assert read.dtype == WIRE_DTYPES[datatype] and read.flags.aligned
    assert np.signbit(read[2]) if count >= 3 else True  # -0.0 kept bit for bit


def test_typed_floats_with_unknown_fields_fall_back_to_iterating() -> None:
    values = np.arange(10, dtype=np.float32)
    wire = pb.InferTensorContents()
    fill_contents(wire, values, "FP32")
    unknown = b"\xf8\x06\x01"  # field 111, varint 1: kept by the parser and serialized after the floats
    contents = pb.InferTensorContents.FromString(wire.SerializeToString() + unknown)
    assert tensors._packed_floats(contents, "fp32_contents", WIRE_DTYPES["FP32"], 10) is None
    np.testing.assert_array_equal(from_contents(contents, "FP32", [10], "t"), values)


def test_bytes_raw_layout_is_tritonclients() -> None:
    values = np.array([[b"ab", b""], [b"\x00", b"longer item"]], dtype=object)
    tensor = triton_grpc.InferInput("s", [2, 2], "BYTES").set_data_from_numpy(values)
    ours = to_raw(values, "BYTES")
    assert ours == tensor._raw_content
    assert ours[:6] == b"\x02\x00\x00\x00ab"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x02\x00\x00", "does not hold exactly 2 length-prefixed items"),
        (b"\x05\x00\x00\x00ab", "item 0 claims 5 bytes past the data's end"),
        (b"\x01\x00\x00\x00a", "holds 1 items; the shape needs 2"),
        (b"\x00\x00\x00\x00" * 3, "does not hold exactly 2"),
    ],
)
def test_bytes_raw_errors(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        from_raw(raw, "BYTES", [2], "input 's'")


def test_fp16_has_no_typed_field() -> None:
    with pytest.raises(ValueError, match="FP16 has no typed contents field"):
        fill_contents(pb.InferTensorContents(), np.ones(3, np.float16), "FP16")
    with pytest.raises(InvalidInput, match="FP16 has no typed contents field; send it in raw_input_contents"):
        from_contents(pb.InferTensorContents(fp32_contents=[1.0]), "FP16", [1], "input 'x'")


def test_typed_values_must_be_in_the_right_field_count_and_range() -> None:
    contents = pb.InferTensorContents(fp32_contents=[1.0, 2.0], int_contents=[1])
    with pytest.raises(
        InvalidInput,
        match=re.escape("FP32 data goes in contents.fp32_contents, got fp32_contents, int_contents"),
    ):
        from_contents(contents, "FP32", [2], "t")
    with pytest.raises(
        InvalidInput, match=re.escape("shape [3] needs 3 values, got 2 in contents.fp32_contents")
    ):
        from_contents(pb.InferTensorContents(fp32_contents=[1.0, 2.0]), "FP32", [3], "t")
    with pytest.raises(InvalidInput, match=re.escape("INT16 data must be integers in -32768..32767")):
        from_contents(pb.InferTensorContents(int_contents=[0, 40000]), "INT16", [2], "t")
    assert not has_contents(pb.InferTensorContents())
    assert has_contents(pb.InferTensorContents(bool_contents=[False]))


def test_raw_size_and_bool_bytes_are_checked() -> None:
    with pytest.raises(InvalidInput, match=re.escape("holds 7 bytes; shape [2] of FP32 needs 8")):
        from_raw(bytes(7), "FP32", [2], "t")
    with pytest.raises(InvalidInput, match="BOOL raw bytes must each be 0 or 1"):
        from_raw(b"\x01\x02", "BOOL", [2], "t")
    unaligned = memoryview(bytes(9))[1:].tobytes()
    assert from_raw(unaligned, "FP64", [1], "t").flags.aligned


def test_client_helpers_round_trip_a_request_and_a_response() -> None:
    values = sample("INT32", (2, 3))
    request = build_infer_request(
        "m", {"x": ("INT32", values)}, raw=False, outputs=["y"], timeout_us=5, request_id="r"
    )
    assert list(request.inputs[0].contents.int_contents) == values.ravel().tolist()
    assert [o.name for o in request.outputs] == ["y"] and request.parameters["timeout"].int64_param == 5
    response = pb.ModelInferResponse(model_name="m")
    response.outputs.add(name="raw", datatype="FP64", shape=[2])
    response.raw_output_contents.append(to_raw(np.array([1.5, -2.0]), "FP64"))
    np.testing.assert_array_equal(response_arrays(response)["raw"], [1.5, -2.0])
    typed = pb.ModelInferResponse(model_name="m")
    out = typed.outputs.add(name="typed", datatype="UINT64", shape=[1, 2])
    out.contents.uint64_contents.extend([2**64 - 1, 0])
    np.testing.assert_array_equal(response_arrays(typed)["typed"], np.array([[2**64 - 1, 0]], np.uint64))
