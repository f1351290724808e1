"""Property-based fuzzing of the V2 infer endpoint, through the fast path and through FastAPI's route.

Every request is hostile or malformed in some way (or, by chance, valid). The properties:

- the answer is 200 or a 4xx, never a 5xx (except 504 for a request whose own deadline was too short);
- a 4xx body is exactly ``{"error": "<message>"}``;
- a 200 carries the right probabilities for the tensor that was sent;
- a good request sent right after is answered correctly (nothing was left broken).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import math
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from service.app import create_app
from service.settings import Settings
from tests.helpers.modelfactory import WrittenModel, write_model_version
from tests.reliability.support import assert_error_body, binary_probabilities, images, json_body

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
INFER = "/v2/models/tiny/infer"
GOOD_IMAGES = images(3, seed=42)


class Target:
    """A running app (lifespan started) and the model it serves."""

    def __init__(self, client: TestClient, model: WrittenModel) -> None:
        self.client = client
        self.model = model

    def post(self, body: bytes, headers: dict[str, str] | None = None, path: str = INFER) -> Any:
        return self.client.post(path, content=body, headers=headers or {})

    def check(self, response: Any, request: dict[str, Any] | None = None, raw: bytes = b"") -> None:
        """200 with the right numbers, or a 4xx with an error body; never a 5xx."""
        with contextlib.suppress(InvalidArgument):  # outside @given there are no statistics to keep
            event(f"status {response.status_code}")
        if response.status_code == 504:  # only for a client's own (tiny) parameters.timeout
            params = request.get("parameters") if isinstance(request, dict) else None
            assert isinstance(params, dict) and "timeout" in params, response.text
            assert "deadline" in assert_error_body(504, response.content, (504,))
            return
        if response.status_code != 200:
            assert_error_body(response.status_code, response.content, range(400, 500))
            return
        sent = _sent_images(request, raw, response.request.headers)
        expected = self.model.reference(sent)
        header_length = response.headers.get("Inference-Header-Content-Length")
        if header_length is not None:
            probs = binary_probabilities(response.content, int(header_length))
        else:
            [out] = response.json()["outputs"]
            probs = np.asarray(out["data"], np.float64).reshape(out["shape"])
        np.testing.assert_allclose(probs, expected, atol=1e-5)

    def still_good(self) -> None:
        response = self.post(json_body(GOOD_IMAGES, id="after"))
        assert response.status_code == 200, response.text
        assert response.json()["id"] == "after"
        [out] = response.json()["outputs"]
        probs = np.asarray(out["data"]).reshape(out["shape"])
        np.testing.assert_allclose(probs, self.model.reference(GOOD_IMAGES), atol=1e-5)


@pytest.fixture(scope="module", params=["fastpath", "framework"])
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    repo = tmp_path_factory.mktemp("fuzz-models")
    model = write_model_version(repo, "tiny", 1)
    settings = Settings(model_repository=repo, max_queue_delay_us=0, max_body_bytes=1 << 20)
    # Without its fast path, every request goes through FastAPI's routing and handlers.
    app = create_app(settings, fast_path=request.param == "fastpath")
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Target(client, model)


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list):
        return [leaf for item in data for leaf in _flatten(item)]
    return [data]


def _sent_images(request: dict[str, Any] | None, raw: bytes, headers: Any) -> np.ndarray:
    """The image tensor a request that was answered 200 carried (JSON data or binary block)."""
    if request is None:  # raw bodies: parse what was sent
        length = headers.get("inference-header-content-length")
        request = orjson.loads(raw if length is None else raw[: int(length)])
        binary = raw[int(length) :] if length is not None else b""
    else:
        binary = raw
    assert isinstance(request, dict)
    [tensor] = [t for t in request["inputs"] if t.get("name") == "image"]
    shape = tensor["shape"]
    if tensor.get("data") is not None:  # "data": null counts as absent, as the service reads it
        values = np.asarray(_flatten(tensor["data"]), np.float64).astype(np.float32)
    else:
        values = np.frombuffer(binary, np.uint8 if tensor["datatype"] == "UINT8" else "<f4").astype(
            np.float32
        )
    return values.reshape(shape)


# ---- strategies ------------------------------------------------------------------------------------------

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()  # NaN and infinities included: written as NaN / Infinity, which JSON forbids
    | st.text(max_size=12)
)
json_any = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16,
)
datatypes = (
    st.sampled_from(
        [
            "FP32",
            "FP32",
            "FP32",
            "UINT8",
            "UINT8",
            "FP16",
            "FP64",
            "INT8",
            "INT32",
            "INT64",
            "BOOL",
            "BYTES",
            "fp32",
        ]
    )
    | json_any
)
dims = st.sampled_from([1, 2, 28, 28, 1, 0, -1, 3, 2**31, 2**31 + 1, 2**40, 2**63 - 1, -(2**63), 2**64]) | (
    st.integers(min_value=-3, max_value=300)
)
shapes = (
    st.sampled_from([[1, 28, 28, 1], [2, 28, 28, 1], [3, 28, 28, 1], [1, 28, 28], [1, 784], []])
    | st.lists(dims, max_size=6)
    | json_any
)
pixel = (
    st.integers(min_value=0, max_value=255)
    | st.floats(min_value=0, max_value=255, width=32)
    | st.sampled_from([math.nan, math.inf, -math.inf, 1e39, -1e39, 1e308, -1, 256, 2**63, 2**64, 2**70])
    | st.booleans()
    | st.none()
    | st.text(max_size=3)
)


def _pixels(seed: int, rows: int, datatype: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if datatype == "UINT8":
        return rng.integers(0, 256, (rows, 28, 28, 1)).astype(np.uint8)
    return rng.uniform(0, 255, (rows, 28, 28, 1)).astype(np.float32)


@st.composite
def hostile_data(draw: st.DrawFn, rows: int) -> Any:
    """``data`` that is wrong: bad leaves, wrong lengths, ragged nesting, not a list at all."""
    count = rows * 784
    kind = draw(st.sampled_from(["spoilt", "length", "ragged", "scalar", "short", "any"]))
    if kind == "spoilt":  # right length, one to three bad values (NaN, inf, 1e39, bool, None, text ...)
        leaves: list[Any] = _pixels(draw(st.integers(0, 9)), rows, "UINT8").ravel().tolist()
        for index in draw(st.lists(st.integers(0, count - 1), min_size=1, max_size=3)):
            leaves[index] = draw(pixel)
        return leaves if draw(st.booleans()) else [leaves[i : i + 784] for i in range(0, count, 784)]
    if kind == "length":
        return [0] * draw(st.sampled_from([count - 1, count + 1, 0, 1, count * 2]))
    if kind == "ragged":
        cut = draw(st.integers(1, count - 1))
        return [[0] * cut, [0] * (count - cut)]
    if kind == "scalar":
        return draw(pixel)
    if kind == "short":
        return draw(st.lists(pixel, max_size=20))
    return draw(json_any)


@st.composite
def tensors(draw: st.DrawFn, binary: bool = False) -> tuple[dict[str, Any], bytes]:
    """An input tensor and its binary block: valid, then zero to three fields made hostile."""
    rows = draw(st.integers(1, 3))
    datatype = draw(st.sampled_from(["FP32", "UINT8"]))
    pixels = _pixels(draw(st.integers(0, 2**32 - 1)), rows, datatype)
    tensor: dict[str, Any] = {"name": "image", "datatype": datatype, "shape": [rows, 28, 28, 1]}
    block = b""
    if binary:
        block = pixels.tobytes()
        tensor["parameters"] = {"binary_data_size": len(block)}
    elif draw(st.booleans()):
        tensor["data"] = pixels.ravel().tolist()
    else:
        tensor["data"] = pixels.tolist()  # nested [rows][28][28][1]
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 3]))):
        field = draw(st.sampled_from(["name", "datatype", "shape", "data", "size", "block", "drop", "shm"]))
        if field == "name":
            tensor["name"] = draw(st.sampled_from(["probabilities", "", "IMAGE", "image "]) | json_any)
        elif field == "datatype":
            tensor["datatype"] = draw(datatypes)
        elif field == "shape":
            tensor["shape"] = draw(shapes)
        elif field == "data":
            tensor["data"] = draw(hostile_data(rows))
        elif field == "size":
            size = st.sampled_from([0, -1, 1, 2**31, 2**63, 2**64, len(block) + 1, len(block) * 4]) | json_any
            tensor["parameters"] = {"binary_data_size": draw(size)}
        elif field == "block":
            block = block[: draw(st.integers(0, max(len(block) - 1, 0)))] or draw(st.binary(max_size=64))
        elif field == "drop":
            tensor.pop(draw(st.sampled_from(["name", "datatype", "shape", "data", "parameters"])), None)
        else:
            tensor.setdefault("parameters", {})["shared_memory_region"] = "region"
    return tensor, block


@st.composite
def requests(draw: st.DrawFn, binary: bool = False) -> tuple[dict[str, Any], bytes]:
    """A V2 request and its binary section: inputs from :func:`tensors`, hostile top-level fields."""
    request: dict[str, Any] = {}
    payload = b""
    shape = draw(st.sampled_from(["one", "one", "one", "one", "two", "none", "empty", "any"]))
    if shape in ("one", "two"):
        first, block = draw(tensors(binary))
        request["inputs"] = [first]
        payload = block
        if shape == "two":  # a duplicate, or a second (unknown or hostile) input
            second, block = draw(tensors(binary))
            request["inputs"].append(second)
            payload += block
    elif shape == "empty":
        request["inputs"] = []
    elif shape == "any":
        request["inputs"] = draw(json_any)
    if draw(st.booleans()):
        request["id"] = draw(st.text(max_size=10) | json_any)
    if draw(st.booleans()):
        params = st.fixed_dictionaries(
            {},
            optional={
                "timeout": st.integers(min_value=-5, max_value=2**64) | json_any,
                "binary_data_output": st.booleans() | json_any,
            },
        )
        request["parameters"] = draw(params | json_any)
    if draw(st.booleans()):
        output = st.fixed_dictionaries(
            {"name": st.sampled_from(["probabilities", "probabilities", "image", "x"]) | json_any},
            optional={
                "parameters": st.fixed_dictionaries({}, optional={"binary_data": st.booleans() | json_any})
            },
        )
        request["outputs"] = draw(st.lists(output, max_size=3) | json_any)
    return request, payload


def encode(request: Any) -> bytes:
    """JSON text as a careless client writes it: NaN and Infinity included, big integers kept."""
    return json.dumps(request, allow_nan=True).encode()


def compress(body: bytes, encoding: str | None) -> tuple[bytes, dict[str, str]]:
    if encoding == "gzip":
        return gzip.compress(body), {"Content-Encoding": "gzip"}
    if encoding == "deflate":
        return zlib.compress(body), {"Content-Encoding": "deflate"}
    return body, {}


# ---- properties --------------------------------------------------------------------------------------------


@FUZZ
@given(case=requests(), encoding=st.sampled_from([None, None, None, "gzip", "deflate"]))
def test_json_requests(target: Target, case: tuple[dict[str, Any], bytes], encoding: str | None) -> None:
    request, _ = case
    body, headers = compress(encode(request), encoding)
    target.check(target.post(body, headers), request)
    target.still_good()


@FUZZ
@given(
    case=requests(binary=True),
    header_length=st.sampled_from(["exact", "exact", "exact", "exact", "short", "long", "body+1", "junk"]),
    truncate=st.sampled_from([0, 0, 0, 0, 1, 7, 3000]),
)
def test_binary_requests(
    target: Target, case: tuple[dict[str, Any], bytes], header_length: str, truncate: int
) -> None:
    request, payload = case
    head = encode(request)
    body = head + payload
    if truncate:
        body = body[: max(0, len(body) - truncate)]
    value = {
        "exact": str(len(head)),
        "short": str(max(0, len(head) - 5)),
        "long": str(len(head) + 5),
        "body+1": str(len(body) + 1),
        "junk": f"{len(head)}abc",
    }[header_length]
    response = target.post(body, {"Inference-Header-Content-Length": value})
    if header_length == "exact" and not truncate:
        target.check(response, request, payload)
    else:
        target.check(response, None, body)
    target.still_good()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid request's bytes with random edits: cut, spliced, duplicated keys, invalid UTF-8."""
    body = bytearray(json_body(images(1, seed=draw(st.integers(0, 3))).round(), id="x"))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["cut", "insert", "replace", "utf8", "dup_key", "truncate"]))
        at = draw(st.integers(0, len(body)))
        if kind == "cut":
            del body[at : at + draw(st.integers(1, 50))]
        elif kind == "insert":
            body[at:at] = draw(
                st.binary(min_size=1, max_size=8) | st.sampled_from([b"[", b"{", b",", b'"', b"\\"])
            )
        elif kind == "replace" and at < len(body):
            body[at] = draw(st.integers(0, 255))
        elif kind == "utf8":
            body[at:at] = draw(
                st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x00"])
            )
        elif kind == "dup_key":
            body[1:1] = b'"inputs": [{"name": "image", "datatype": "FP32", "shape": [1], "data": [1]}],'
        elif kind == "truncate":
            del body[at:]
    return bytes(body)


@FUZZ
@given(
    body=mutated() | st.binary(max_size=2000),
    header_length=st.none() | st.sampled_from(["0", "1", "5", "99999", "-3", "+4", " 7", "0x10", "\uff11"]),
    encoding=st.none()
    | st.sampled_from(["gzip", "deflate", "br", "identity", "GZIP", "x-gzip", "gzip, gzip", ""]),
    compressed=st.booleans(),
    cut=st.integers(0, 20),
)
def test_raw_bodies(
    target: Target, body: bytes, header_length: str | None, encoding: str | None, compressed: bool, cut: int
) -> None:
    headers: dict[str, bytes] = {}
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = header_length.encode()
    sent = body
    if encoding is not None:
        headers["Content-Encoding"] = encoding.encode()
        if compressed and encoding.lower() in ("gzip", "x-gzip", "deflate"):
            sent = (zlib.compress(body) if encoding == "deflate" else gzip.compress(body))[: -cut or None]
    response = target.client.post(INFER, content=sent, headers=headers)
    target.check(response, raw=body)
    target.still_good()


@FUZZ
@given(
    depth=st.integers(1, 5000),
    where=st.sampled_from(
        ["top", "id", "parameters", "inputs", "tensor", "shape", "data", "outputs", "name"]
    ),
    opener=st.sampled_from(["[", '{"a":']),
)
def test_deeply_nested_json(target: Target, depth: int, where: str, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    deep = opener * depth + "1" + closer * depth
    good = (
        '{"name": "image", "datatype": "FP32", "shape": [1, 28, 28, 1], "data": ['
        + ",".join(["0"] * 784)
        + "]}"
    )
    image = '{"name": "image", "datatype": "FP32", '
    bodies = {
        "top": deep,
        "id": '{"id": ' + deep + ', "inputs": [' + good + "]}",
        "parameters": '{"parameters": ' + deep + ', "inputs": [' + good + "]}",
        "inputs": '{"inputs": ' + deep + "}",
        "tensor": '{"inputs": [' + deep + "]}",
        "shape": '{"inputs": [' + image + '"shape": ' + deep + ', "data": [0]}]}',
        "data": '{"inputs": [' + image + '"shape": [1, 28, 28, 1], "data": ' + deep + "}]}",
        "outputs": '{"inputs": [' + good + '], "outputs": ' + deep + "}",
        "name": '{"inputs": [' + good + '], "outputs": [{"name": ' + deep + "}]}",
    }
    body = bodies[where].encode()
    target.check(target.post(body), raw=body)  # '{"parameters": {"a": 1}, ...}' is a good request
    target.still_good()


def test_duplicate_inputs_and_keys(target: Target) -> None:
    one = {"name": "image", "datatype": "FP32", "shape": [1, 28, 28, 1], "data": [0] * 784}
    twice = target.post(orjson.dumps({"inputs": [one, one]}))
    assert "given twice" in assert_error_body(twice.status_code, twice.content, (400,))
    # With duplicate keys the parser keeps the last one (as orjson and json do); never a 5xx either way.
    text = orjson.dumps({"inputs": [one]}).decode()
    duplicated = '{"inputs": [{"name": "nope"}],' + text[1:]
    response = target.post(duplicated.encode())
    target.check(response, {"inputs": [one]})
    target.still_good()


def test_fuzzing_left_no_damage(target: Target) -> None:
    """After every property above ran on this app, it still answers, and its queue is empty."""
    target.still_good()
    text = target.client.get("/metrics").text
    assert 'inference_queue_rows{model="tiny",version="1"} 0.0' in text
