"""service.core.signature: specs from metadata, and the inputs check every transport relies on."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.contract import parse_metadata
from service.core.signature import DATATYPES, ModelSignature, TensorSpec, datatype_of
from service.errors import InvalidInput, PayloadTooLarge
from tests.helpers.data import MODELS

SIGNATURE = ModelSignature(
    inputs=(TensorSpec("image", "FP32", (-1, 4, 4, 1)), TensorSpec("mask", "BOOL", (-1, 4))),
    outputs=(TensorSpec("probabilities", "FP32", (-1, 3)),),
)


def inputs(rows: int = 2, **changes: np.ndarray) -> dict[str, np.ndarray]:
    base = {"image": np.zeros((rows, 4, 4, 1), np.float32), "mask": np.ones((rows, 4), bool)}
    return base | changes


def test_from_metadata() -> None:
    document = json.loads((MODELS / "cifar10-cnn" / "1" / "metadata.json").read_text())
    signature = ModelSignature.from_metadata(parse_metadata(document))
    assert signature.inputs == (TensorSpec("image", "FP32", (-1, 32, 32, 3)),)
    assert signature.output("probabilities") == TensorSpec("probabilities", "FP32", (-1, 10))
    assert signature.input("nope") is None
    assert signature.inputs[0].dtype == np.float32
    assert signature.inputs[0].as_json() == {"name": "image", "datatype": "FP32", "shape": [-1, 32, 32, 3]}


def test_datatype_names() -> None:
    for name, dtype in DATATYPES.items():
        assert datatype_of(dtype) == name
        assert datatype_of(dtype.newbyteorder(">")) == name
    with pytest.raises(InvalidInput, match="no V2 datatype"):
        datatype_of(np.dtype(np.complex64))


def test_good_inputs_come_back_in_signature_order() -> None:
    given = {"mask": np.ones((3, 4), bool), "image": np.ones((3, 4, 4, 1), np.float32)}
    checked = SIGNATURE.check_inputs(given, max_rows=3)
    assert list(checked) == ["image", "mask"]
    assert checked["image"] is given["image"]


def test_uint8_and_foreign_byte_order_are_cast() -> None:
    checked = SIGNATURE.check_inputs(inputs(image=np.full((2, 4, 4, 1), 255, np.uint8)), max_rows=8)
    assert checked["image"].dtype == np.float32 and checked["image"].max() == 255.0
    swapped = np.ones((2, 4, 4, 1), np.dtype(">f4"))
    checked = SIGNATURE.check_inputs(inputs(image=swapped), max_rows=8)
    assert checked["image"].dtype == np.float32 and checked["image"].sum() == 32


@pytest.mark.parametrize(
    ("given", "error", "fragment"),
    [
        (inputs() | {"extra": np.zeros(2)}, InvalidInput, "unknown input 'extra'; the model's inputs are"),
        ({"image": np.zeros((2, 4, 4, 1), np.float32)}, InvalidInput, "missing input 'mask'"),
        (
            inputs(image=np.zeros((2, 4, 4, 1), np.int32)),
            InvalidInput,
            "expected datatype FP32 (or UINT8), got INT32",
        ),
        (inputs(mask=np.ones((2, 4), np.uint8)), InvalidInput, "'mask': expected datatype BOOL, got UINT8"),
        (
            inputs(image=np.zeros((2, 4, 4), np.float32)),
            InvalidInput,
            "expected shape [-1,4,4,1], got [2,4,4]",
        ),
        (
            inputs(image=np.zeros((2, 4, 5, 1), np.float32)),
            InvalidInput,
            "expected shape [-1,4,4,1], got [2,4,5,1]",
        ),
        (inputs(0), InvalidInput, "the batch dimension must be at least 1"),
        (
            inputs(mask=np.ones((3, 4), bool)),
            InvalidInput,
            "inputs disagree on the batch size: 'image' has 2 rows, 'mask' has 3",
        ),
        (inputs(image=np.full((2, 4, 4, 1), np.inf, np.float32)), InvalidInput, "non-finite"),
        (inputs(9), PayloadTooLarge, "request has 9 rows; the limit is 8"),
    ],
)
def test_inputs_that_do_not_fit(given: dict[str, np.ndarray], error: type[Exception], fragment: str) -> None:
    with pytest.raises(error) as caught:
        SIGNATURE.check_inputs(given, max_rows=8)
    assert fragment in str(caught.value)


# ---- one set of checks, every transport ------------------------------------------------------------

# (case, fault as (name, datatype, shape, rows), the message every transport answers)
FAULTS = [
    ("unknown", ("pixels", "FP32", [2, 4, 4, 1]), "unknown input 'pixels'; the model's inputs are"),
    (
        "datatype",
        ("image", "INT32", [2, 4, 4, 1]),
        "input 'image': expected datatype FP32 (or UINT8), got INT32",
    ),
    ("shape", ("image", "FP32", [2, 4, 5, 1]), "input 'image': expected shape [-1,4,4,1], got [2,4,5,1]"),
    ("rows", ("image", "FP32", [0, 4, 4, 1]), "input 'image': the batch dimension must be at least 1"),
    (
        "batch",
        ("image", "FP32", [3, 4, 4, 1]),
        "inputs disagree on the batch size: 'mask' has 2 rows, 'image' has 3",
    ),
]


def _http(name: str, datatype: str, shape: list[int], binary: bool) -> None:
    import orjson

    from service.http.protocol import parse_infer_request

    mask = {"name": "mask", "datatype": "BOOL", "shape": [2, 4], "data": [True] * 8}
    count = int(np.prod(shape))
    tensor: dict[str, object] = {"name": name, "datatype": datatype, "shape": shape}
    tail = b""
    if binary:
        tail = bytes(count * 4)
        tensor["parameters"] = {"binary_data_size": len(tail)}
    else:
        tensor["data"] = [0] * count
    head = orjson.dumps({"inputs": [mask, tensor]})
    parse_infer_request(
        head + tail, header_length=len(head) if binary else None, signature=SIGNATURE, max_rows=8
    )


def _grpc(name: str, datatype: str, shape: list[int]) -> None:
    from service.grpc.generated import grpc_service_pb2 as pb
    from service.grpc.protocol import parse_infer_request

    request = pb.ModelInferRequest()
    request.inputs.add(name="mask", datatype="BOOL", shape=[2, 4])
    request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.extend([bytes(8), bytes(int(np.prod(shape)) * 4)])
    parse_infer_request(request, signature=SIGNATURE, max_rows=8)


def _arrays(name: str, datatype: str, shape: list[int]) -> None:
    dtype = DATATYPES[datatype]
    SIGNATURE.check_inputs({"mask": np.ones((2, 4), bool), name: np.zeros(shape, dtype)}, max_rows=8)


@pytest.mark.parametrize(("case", "fault", "message"), FAULTS, ids=[f[0] for f in FAULTS])
@pytest.mark.parametrize("transport", ["http-json", "http-binary", "grpc", "arrays"])
def test_every_transport_answers_a_fault_with_the_same_words(
    transport: str, case: str, fault: tuple[str, str, list[int]], message: str
) -> None:
    name, datatype, shape = fault
    run = {
        "http-json": lambda: _http(name, datatype, shape, binary=False),
        "http-binary": lambda: _http(name, datatype, shape, binary=True),
        "grpc": lambda: _grpc(name, datatype, shape),
        "arrays": lambda: _arrays(name, datatype, shape),
    }[transport]
    with pytest.raises(InvalidInput) as caught:
        run()
    assert message in str(caught.value)
    assert caught.value.status == 400
