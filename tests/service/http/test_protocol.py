"""V2 request parsing and response encoding, against the real ``tritonclient.http`` encoder/decoder."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.http as triton

from service.core.signature import ModelSignature, TensorSpec
from service.core.types import InferRequest, InferResponse
from service.errors import InvalidInput, PayloadTooLarge
from service.http.protocol import (
    HEADER_LENGTH,
    encode_infer_response,
    parse_infer_request,
)

SIG = ModelSignature(
    inputs=(TensorSpec("image", "FP32", (-1, 28, 28, 1)),),
    outputs=(TensorSpec("probabilities", "FP32", (-1, 10)),),
)
# Two inputs and two outputs, to check ordering, missing inputs and batch agreement.
SIG2 = ModelSignature(
    inputs=(TensorSpec("a", "FP32", (-1, 3)), TensorSpec("b", "INT64", (-1, -1))),
    outputs=(TensorSpec("x", "FP32", (-1, 2)), TensorSpec("y", "INT64", (-1,))),
)


def images(rows: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((rows, 28, 28, 1), dtype=np.float32) * 255).astype(np.float32)


def client_body(
    array: np.ndarray, *, binary: bool, datatype: str = "FP32", **kwargs: Any
) -> tuple[bytes, Any]:
    tensor = triton.InferInput("image", list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return triton.InferenceServerClient.generate_request_body([tensor], **kwargs)


def parse(body: bytes, header_length: Any = None, *, sig: ModelSignature = SIG, max_rows: int = 64):
    return parse_infer_request(body, header_length=header_length, signature=sig, max_rows=max_rows)


def hand(header: dict[str, Any], tail: bytes = b"") -> tuple[bytes, int | None]:
    head = orjson.dumps(header)
    return head + tail, (len(head) if tail else None)


def image_input(**fields: Any) -> dict[str, Any]:
    tensor: dict[str, Any] = {
        "name": "image",
        "datatype": "FP32",
        "shape": [1, 28, 28, 1],
        "data": [0.0] * 784,
    }
    tensor.update(fields)
    return {k: v for k, v in tensor.items() if v is not None}


def answer(
    request: InferRequest, outputs: dict[str, np.ndarray], *, sig: ModelSignature = SIG, version: int = 2
) -> InferResponse:
    """The core's answer to ``request``: the outputs it asked for, in signature order."""
    specs = tuple(t for t in sig.outputs if request.outputs is None or t.name in request.outputs)
    values = {t.name: outputs[t.name] for t in specs}
    return InferResponse("m", version, request.id, values, specs, request.binary)


def client_result(body: bytes, headers: dict[str, str]):
    length = headers.get(HEADER_LENGTH)
    return triton.InferenceServerClient.parse_response_body(
        body, verbose=False, header_length=None if length is None else int(length), content_encoding=None
    )


@pytest.mark.parametrize("binary_in", [True, False])
@pytest.mark.parametrize("output_mode", ["default", "binary", "json"])
@pytest.mark.parametrize("request_id", ["", "req-7"])
def test_tritonclient_round_trip(binary_in: bool, output_mode: str, request_id: str) -> None:
    x = images(3)
    outputs = None
    if output_mode != "default":
        outputs = [triton.InferRequestedOutput("probabilities", binary_data=output_mode == "binary")]
    body, header_length = client_body(x, binary=binary_in, outputs=outputs, request_id=request_id)
    assert (header_length is not None) == binary_in

    request = parse(body, header_length)
    image = request.inputs["image"]
    assert image.dtype == np.float32 and image.flags.c_contiguous and not image.flags.writeable
    np.testing.assert_array_equal(image, x)
    assert request.checked and request.deadline is None
    assert request.id == (request_id or None)
    # tritonclient asks for binary outputs (request-level) whenever it names no outputs.
    assert request.binary == ({"probabilities"} if output_mode != "json" else set())
    assert request.outputs == (None if output_mode == "default" else ["probabilities"])

    probabilities = np.random.default_rng(1).dirichlet(np.ones(10), 3).astype(np.float32)
    body, headers = encode_infer_response(answer(request, {"probabilities": probabilities}))
    binary_out = output_mode != "json"
    assert headers["Content-Type"] == ("application/octet-stream" if binary_out else "application/json")
    assert (HEADER_LENGTH in headers) == binary_out
    result = client_result(body, headers)
    np.testing.assert_array_equal(result.as_numpy("probabilities"), probabilities)
    response = result.get_response()
    assert response["model_name"] == "m" and response["model_version"] == "2"
    assert response.get("id") == (request_id or None)


def test_uint8_input_is_cast_to_float32() -> None:
    x = np.random.default_rng(2).integers(0, 256, (2, 28, 28, 1), dtype=np.uint8)
    for binary in (True, False):
        request = parse(*client_body(x, binary=binary, datatype="UINT8"))
        assert request.inputs["image"].dtype == np.float32
        np.testing.assert_array_equal(request.inputs["image"], x.astype(np.float32))


def test_timeout_is_read_in_microseconds() -> None:
    assert parse(*client_body(images(1), binary=True, timeout=250_000)).timeout == 0.25
    assert parse(*client_body(images(1), binary=True)).timeout is None


def test_nested_and_flat_json_data_agree() -> None:
    x = np.random.default_rng(3).integers(0, 256, (2, 28, 28, 1)).astype(np.float32)
    expected = x
    for data in (x.ravel().tolist(), x.tolist(), x.reshape(2, 28, 28).tolist(), x.reshape(56, 28).tolist()):
        request = parse(*hand({"inputs": [image_input(shape=[2, 28, 28, 1], data=data)]}))
        np.testing.assert_array_equal(request.inputs["image"], expected)


def test_integer_json_and_string_header_length() -> None:
    body, header_length = client_body(images(1), binary=True)
    assert parse(body, str(header_length)).inputs["image"].shape == (1, 28, 28, 1)
    request = parse(*hand({"inputs": [image_input(data=list(range(784)))]}))
    np.testing.assert_array_equal(request.inputs["image"].ravel(), np.arange(784, dtype=np.float32))


def test_response_follows_signature_order_and_requested_outputs() -> None:
    a = np.zeros((2, 3), np.float32)
    b = np.arange(8, dtype=np.int64).reshape(2, 4)
    header = {
        "id": "r",
        "inputs": [
            {"name": "b", "datatype": "INT64", "shape": [2, 4], "data": b.tolist()},
            {"name": "a", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": 24}},
        ],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "x"}],
    }
    request = parse(*hand(header, a.tobytes()), sig=SIG2)
    np.testing.assert_array_equal(request.inputs["b"], b)
    assert request.inputs["b"].dtype == np.int64
    assert request.outputs == ["y", "x"] and request.binary == {"y"}
    x = np.array([[0.25, 0.75], [1.0, 0.0]], np.float32)
    y = np.array([7, -3], np.int64)
    body, headers = encode_infer_response(answer(request, {"x": x, "y": y}, sig=SIG2, version=1))
    split = int(headers[HEADER_LENGTH])
    head = orjson.loads(body[:split])
    assert head == {
        "model_name": "m",
        "model_version": "1",
        "id": "r",
        "outputs": [
            {"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [0.25, 0.75, 1.0, 0.0]},
            {"name": "y", "datatype": "INT64", "shape": [2], "parameters": {"binary_data_size": 16}},
        ],
    }
    assert body[split:] == y.tobytes()
    result = client_result(body, headers)
    np.testing.assert_array_equal(result.as_numpy("x"), x)
    np.testing.assert_array_equal(result.as_numpy("y"), y)

    only_x = InferRequest(request.inputs, None, ["x"])
    body, headers = encode_infer_response(answer(only_x, {"x": x, "y": y}, sig=SIG2, version=1))
    assert headers == {"Content-Type": "application/json"}
    assert [o["name"] for o in orjson.loads(body)["outputs"]] == ["x"]
    assert "id" not in orjson.loads(body)


def test_request_level_binary_output_and_per_output_override() -> None:
    header = {
        "inputs": [image_input()],
        "outputs": [{"name": "probabilities"}],
        "parameters": {"binary_data_output": True},
    }
    request = parse(*hand(header))
    assert request.outputs == ["probabilities"] and request.binary == {"probabilities"}
    header["outputs"] = [{"name": "probabilities", "parameters": {"binary_data": False}}]
    request = parse(*hand(header))
    assert request.outputs == ["probabilities"] and request.binary == set()


BAD_REQUESTS: list[tuple[str, Any, type[Exception], str]] = [
    ("not json", (b"{", None), InvalidInput, "invalid JSON: "),
    ("bad utf-8", (b'{"id": "\xff"}', None), InvalidInput, "invalid JSON: "),
    ("json array", (b"[1]", None), InvalidInput, "invalid JSON: the request must be a JSON object"),
    ("no inputs", {}, InvalidInput, "'inputs' must be a non-empty list of tensors"),
    ("empty inputs", {"inputs": []}, InvalidInput, "'inputs' must be a non-empty list of tensors"),
    ("input not object", {"inputs": [3]}, InvalidInput, "inputs[0] must be a JSON object"),
    (
        "name not str",
        {"inputs": [image_input(name=5)]},
        InvalidInput,
        "inputs[0]: 'name' must be a string, got 5",
    ),
    (
        "unknown input",
        {"inputs": [image_input(), image_input(name="pixels")]},
        InvalidInput,
        "unknown input 'pixels'; the model's inputs are ['image']",
    ),
    (
        "duplicate input",
        {"inputs": [image_input(), image_input()]},
        InvalidInput,
        "input 'image' is given twice",
    ),
    ("id not str", {"id": 7, "inputs": [image_input()]}, InvalidInput, "'id' must be a string, got 7"),
    (
        "datatype",
        {"inputs": [image_input(datatype="INT64")]},
        InvalidInput,
        "input 'image': expected datatype FP32 (or UINT8), got INT64",
    ),
    (
        "rank",
        {"inputs": [image_input(shape=[1, 28, 28])]},
        InvalidInput,
        "input 'image': expected shape [-1,28,28,1], got [1,28,28]",
    ),
    (
        "dims",
        {"inputs": [image_input(shape=[1, 28, 1, 28])]},
        InvalidInput,
        "input 'image': expected shape [-1,28,28,1], got [1,28,1,28]",
    ),
    (
        "shape not ints",
        {"inputs": [image_input(shape=[1, 28.0, 28, 1])]},
        InvalidInput,
        "input 'image': shape must be a list of non-negative integers, got [1,28.0,28,1]",
    ),
    (
        "shape negative",
        {"inputs": [image_input(shape=[-1, 28, 28, 1])]},
        InvalidInput,
        "non-negative integers",
    ),
    ("shape bool", {"inputs": [image_input(shape=[True, 28, 28, 1])]}, InvalidInput, "non-negative integers"),
    (
        "zero rows",
        {"inputs": [image_input(shape=[0, 28, 28, 1], data=[])]},
        InvalidInput,
        "input 'image': the batch dimension must be at least 1, got [0,28,28,1]",
    ),
    (
        "too many rows",
        {"inputs": [image_input(shape=[3, 28, 28, 1])]},
        PayloadTooLarge,
        "request has 3 rows; the limit is 2",
    ),
    ("huge batch", {"inputs": [image_input(shape=[2**62, 28, 28, 1])]}, PayloadTooLarge, "the limit is 2"),
    (
        "no data",
        {"inputs": [image_input(data=None)]},
        InvalidInput,
        "give exactly one of 'data' and parameters.binary_data_size",
    ),
    (
        "data and binary",
        {"inputs": [image_input(parameters={"binary_data_size": 3136})]},
        InvalidInput,
        "give exactly one of",
    ),
    (
        "data scalar",
        {"inputs": [image_input(data=1.0)]},
        InvalidInput,
        "input 'image': 'data' must be a list of numbers, got 1.0",
    ),
    ("data bools", {"inputs": [image_input(data=[True] * 784)]}, InvalidInput, "must hold only numbers"),
    (
        "data mixed bool",
        {"inputs": [image_input(data=[1.5] * 783 + [False])]},
        InvalidInput,
        "must hold only numbers",
    ),
    ("data strings", {"inputs": [image_input(data=["1"] * 784)]}, InvalidInput, "must hold only numbers"),
    ("data nulls", {"inputs": [image_input(data=[None] * 784)]}, InvalidInput, "must hold only numbers"),
    ("data objects", {"inputs": [image_input(data=[{}] * 784)]}, InvalidInput, "must hold only numbers"),
    (
        "data ragged",
        {"inputs": [image_input(data=[[0.0] * 28] * 27 + [[0.0] * 29])]},
        InvalidInput,
        "'data' is a ragged nested list",
    ),
    (
        "data ragged depth",
        {"inputs": [image_input(data=[[0.0] * 28] * 27 + [0.0] * 28)]},
        InvalidInput,
        "ragged",
    ),
    ("data ragged leaf", {"inputs": [image_input(data=[0.0] * 783 + [[0.0]])]}, InvalidInput, "ragged"),
    (
        "data count",
        {"inputs": [image_input(data=[0.0] * 783)]},
        InvalidInput,
        "input 'image': shape [1,28,28,1] needs 784 values, got 783",
    ),
    (
        "fp32 overflow",
        {"inputs": [image_input(data=[1e39] + [0.0] * 783)]},
        InvalidInput,
        "non-finite values",
    ),
    (
        "uint8 256",
        {"inputs": [image_input(datatype="UINT8", data=[256] * 784)]},
        InvalidInput,
        "input 'image': UINT8 data must be integers in 0..255",
    ),
    (
        "uint8 negative",
        {"inputs": [image_input(datatype="UINT8", data=[-1] + [0] * 783)]},
        InvalidInput,
        "UINT8 data must be integers in 0..255",
    ),
    (
        "uint8 float",
        {"inputs": [image_input(datatype="UINT8", data=[1.5] * 784)]},
        InvalidInput,
        "UINT8 data must be integers in 0..255",
    ),
    (
        "outputs not list",
        {"inputs": [image_input()], "outputs": {}},
        InvalidInput,
        "'outputs' must be a list",
    ),
    (
        "output no name",
        {"inputs": [image_input()], "outputs": [{}]},
        InvalidInput,
        "outputs[0] must be an object with a string 'name'",
    ),
    (
        "unknown output",
        {"inputs": [image_input()], "outputs": [{"name": "logits"}]},
        InvalidInput,
        "unknown output 'logits'; the model's outputs are ['probabilities']",
    ),
    (
        "duplicate output",
        {"inputs": [image_input()], "outputs": [{"name": "probabilities"}] * 2},
        InvalidInput,
        "output 'probabilities' is requested twice",
    ),
    (
        "binary_data not bool",
        {"inputs": [image_input()], "outputs": [{"name": "probabilities", "parameters": {"binary_data": 1}}]},
        InvalidInput,
        "output 'probabilities': parameters.binary_data must be true or false, got 1",
    ),
    (
        "classification",
        {
            "inputs": [image_input()],
            "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}],
        },
        InvalidInput,
        "not supported",
    ),
    (
        "parameters not object",
        {"inputs": [image_input()], "parameters": []},
        InvalidInput,
        "'parameters' must be a JSON object, got []",
    ),
    (
        "binary_data_output",
        {"inputs": [image_input()], "parameters": {"binary_data_output": "yes"}},
        InvalidInput,
        "parameters.binary_data_output must be true or false",
    ),
    (
        "shared memory",
        {"inputs": [image_input(data=None, parameters={"shared_memory_region": "r"})]},
        InvalidInput,
        "shared memory is not supported",
    ),
]
for _timeout in (0, -5, 1.5, "10", True):
    BAD_REQUESTS.append(
        (
            f"timeout {_timeout!r}",
            {"inputs": [image_input()], "parameters": {"timeout": _timeout}},
            InvalidInput,
            "parameters.timeout must be a positive integer (microseconds), got "
            + orjson.dumps(_timeout).decode(),
        )
    )


@pytest.mark.parametrize(
    ("case", "request_", "error", "message"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS]
)
def test_bad_requests(case: str, request_: Any, error: type[Exception], message: str) -> None:
    body, header_length = request_ if isinstance(request_, tuple) else hand(request_)
    with pytest.raises(error, match=re.escape(message)) as caught:
        parse(body, header_length, max_rows=2)
    assert caught.value.status == (413 if error is PayloadTooLarge else 400)  # type: ignore[attr-defined]


def binary_header(size: Any, shape: list[int] | None = None, datatype: str = "FP32") -> dict[str, Any]:
    tensor = image_input(data=None, datatype=datatype, parameters={"binary_data_size": size})
    if shape is not None:
        tensor["shape"] = shape
    return {"inputs": [tensor]}


def test_over_declared_binary_data_size_is_refused() -> None:
    """A binary_data_size larger than the tensor, or than the bytes that follow, is a 400: never a read
    past the body, never a tensor built from someone else's bytes."""
    x = images(1).tobytes()
    # Larger than the tensor, with the extra bytes really there.
    with pytest.raises(InvalidInput) as caught:
        parse(*hand(binary_header(3137), x + b"\0"))
    assert caught.value.status == 400
    assert str(caught.value) == (
        "input 'image': parameters.binary_data_size must be 3136 (shape [1,28,28,1] of FP32), got 3137"
    )
    # The tensor's size, but fewer bytes follow the JSON header than declared.
    with pytest.raises(InvalidInput) as caught:
        parse(*hand(binary_header(3136), x[:-1]))
    assert str(caught.value) == (
        "the body has 3135 bytes after the JSON header but the inputs' "
        "parameters.binary_data_size add up to 3136"
    )
    # Two inputs whose sizes add up to more than the body holds: the second is the one short.
    header = {
        "inputs": [
            {"name": "a", "datatype": "FP32", "shape": [1, 3], "parameters": {"binary_data_size": 12}},
            {"name": "b", "datatype": "INT64", "shape": [1, 2], "parameters": {"binary_data_size": 16}},
        ]
    }
    with pytest.raises(InvalidInput, match="the body has 20 bytes after the JSON header"):
        parse(*hand(header, bytes(20)), sig=SIG2)


def test_binary_input_errors() -> None:
    x = images(1).tobytes()
    with pytest.raises(
        InvalidInput,
        match=re.escape("parameters.binary_data_size must be 3136 (shape [1,28,28,1] of FP32), got 3135"),
    ):
        parse(*hand(binary_header(3135), x[:-1]))
    with pytest.raises(InvalidInput, match=re.escape('got "3136"')):
        parse(*hand(binary_header("3136"), x))
    with pytest.raises(
        InvalidInput, match="the body has 3137 bytes after the JSON header but the inputs' parameters"
    ):
        parse(*hand(binary_header(3136), x + b"\0"))
    with pytest.raises(InvalidInput, match=f"needs the {HEADER_LENGTH} header"):
        parse(orjson.dumps(binary_header(3136)))
    nan = np.full((1, 28, 28, 1), np.nan, np.float32).tobytes()
    with pytest.raises(
        InvalidInput, match=re.escape("input 'image': data holds non-finite values (NaN or infinity)")
    ):
        parse(*hand(binary_header(3136), nan))
    # UINT8 needs one byte per element, not four.
    request = parse(*hand(binary_header(784, datatype="UINT8"), bytes(range(256)) * 3 + bytes(16)))
    assert request.inputs["image"].ravel()[255] == 255.0


@pytest.mark.parametrize("value", [-1, "-1", "12a", " ", "1.5", 10**9, "99999999"])
def test_bad_header_length(value: Any) -> None:
    body, _ = client_body(images(1), binary=True)
    with pytest.raises(InvalidInput, match=HEADER_LENGTH):
        parse(body, value)


def test_inputs_must_agree_and_be_complete() -> None:
    a = {"name": "a", "datatype": "FP32", "shape": [2, 3], "data": [0.0] * 6}
    b = {"name": "b", "datatype": "INT64", "shape": [3, 1], "data": [1, 2, 3]}
    with pytest.raises(
        InvalidInput, match=re.escape("inputs disagree on the batch size: 'a' has 2 rows, 'b' has 3")
    ):
        parse(*hand({"inputs": [a, b]}), sig=SIG2)
    with pytest.raises(InvalidInput, match=re.escape("missing input 'b'; the model's inputs are ['a', 'b']")):
        parse(*hand({"inputs": [a]}), sig=SIG2)
    b_float = {**b, "shape": [2, 1], "data": [1.5, 2.0]}
    with pytest.raises(InvalidInput, match=re.escape("input 'b': expected datatype INT64, got FP32")):
        parse(*hand({"inputs": [a, {**b_float, "datatype": "FP32"}]}), sig=SIG2)
    with pytest.raises(InvalidInput, match=re.escape("input 'b': INT64 data must be integers in")):
        parse(*hand({"inputs": [a, b_float]}), sig=SIG2)
    with pytest.raises(InvalidInput, match="has a dimension above 2"):
        parse(*hand({"inputs": [a, {**b, "shape": [2, 2**40]}]}), sig=SIG2)
