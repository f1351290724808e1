"""POST /v2/models/{m}/explain through the real app (lifespan included): faithfulness on a model whose
answer is known by construction, the body forms, the heat map, the limits and the error answers."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.contract import METADATA_FILE, MODEL_FILE
from service.settings import Settings
from tests.helpers.modelfactory import write_model_version

SIDE, HALF = 28, 14
URL = "/v2/models/quadrant/explain"


def quadrant_model() -> bytes:
    """``image [N,28,28,1] -> softmax([8 mean(top-left 14x14) / 255 - 4, 0])``: class 0's score depends on
    the top-left quadrant's pixels and on nothing else."""
    nodes = [
        helper.make_node("Slice", ["image", "starts", "ends", "axes"], ["quadrant"]),
        helper.make_node("ReduceMean", ["quadrant"], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean", "column"], ["mean2"]),
        helper.make_node("Mul", ["mean2", "gain"], ["scaled"]),
        helper.make_node("Add", ["scaled", "offset"], ["logit"]),
        helper.make_node("Mul", ["logit", "zero"], ["other"]),
        helper.make_node("Concat", ["logit", "other"], ["logits"], axis=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    initializers = [
        numpy_helper.from_array(np.array([0, 0], np.int64), "starts"),
        numpy_helper.from_array(np.array([HALF, HALF], np.int64), "ends"),
        numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
        numpy_helper.from_array(np.array([-1, 1], np.int64), "column"),
        numpy_helper.from_array(np.array(8.0 / 255.0, np.float32), "gain"),
        numpy_helper.from_array(np.array(-4.0, np.float32), "offset"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
    ]
    graph = helper.make_graph(
        nodes,
        "quadrant",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", SIDE, SIDE, 1])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])],
        initializer=initializers,
    )
    opsets = [helper.make_opsetid("", 17)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(model)
    return model.SerializeToString()


def two_input_model() -> bytes:
    """``image [N,28,28,1]`` and ``bias [N,2]`` -> ``softmax(mean(image) + bias)``: not one image alone."""
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Unsqueeze", ["mean", "one"], ["mean2"]),
        helper.make_node("Add", ["mean2", "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "two_inputs",
        [
            helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", SIDE, SIDE, 1]),
            helper.make_tensor_value_info("bias", TensorProto.FLOAT, ["N", 2]),
        ],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])],
        initializer=[numpy_helper.from_array(np.array([1], np.int64), "one")],
    )
    opsets = [helper.make_opsetid("", 17)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(model)
    return model.SerializeToString()


def publish(root: Path, name: str, data: bytes, **metadata_changes: Any) -> None:
    """A repository version whose model.onnx is ``data`` (metadata through the contract, then changed)."""
    version = write_model_version(root, name, 1, classes=2, labels=["left", "other"]).path
    (version / MODEL_FILE).write_bytes(data)
    metadata = json.loads((version / METADATA_FILE).read_text())
    metadata["sha256"] = hashlib.sha256(data).hexdigest()
    metadata.update(metadata_changes)
    (version / METADATA_FILE).write_text(json.dumps(metadata))


def picture() -> np.ndarray:
    """A bright top-left quadrant (class 0 at 0.98) in random pixels."""
    pixels = np.random.default_rng(0).integers(0, 256, (SIDE, SIDE), dtype=np.uint8)
    pixels[:HALF, :HALF] = 255
    return pixels


def png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("repository")
    publish(root, "quadrant", quadrant_model())
    image = {"name": "image", "datatype": "FP32", "shape": [-1, SIDE, SIDE, 1]}
    bias = {"name": "bias", "datatype": "FP32", "shape": [-1, 2]}
    publish(root, "two-inputs", two_input_model(), inputs=[image, bias])
    with TestClient(create_app(Settings(model_repository=root, explain_max_rows=4096))) as c:
        yield c


def assert_error(response: Any, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and fragment in body["error"], body


def positive_share(attribution: np.ndarray, rows: int, cols: int) -> float:
    positive = np.clip(attribution, 0, None)
    return float(positive[:rows, :cols].sum() / positive.sum())


def test_occlusion_puts_the_attribution_on_the_quadrant_the_model_reads(client: TestClient) -> None:
    response = client.post(URL, content=png(picture()))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model_name"], body["model_version"], body["label"], body["class_id"]) == (
        "quadrant",
        "1",
        "left",
        0,
    )
    assert body["score"] == pytest.approx(1 / (1 + np.exp(-4)), abs=1e-5)
    assert body["method"] == "occlusion"
    assert body["parameters"] == {"patch": 4, "stride": 2, "baseline": 127.5}
    assert body["rows"] == 13 * 13 + 1
    assert body["milliseconds"] > 0
    attribution = np.array(body["attribution"])
    assert attribution.shape == (SIDE, SIDE) and body["shape"] == [SIDE, SIDE]
    assert positive_share(attribution, HALF, HALF) > 0.9
    assert (attribution[:HALF, :HALF] > 0).all()  # every pixel there is brighter than the baseline
    # Beyond one patch from the quadrant no patch touches it: exactly nothing.
    assert np.abs(attribution[HALF + 4 :, :]).max() == 0 and np.abs(attribution[:, HALF + 4 :]).max() == 0


def test_rise_puts_the_attribution_on_the_quadrant_the_model_reads(client: TestClient) -> None:
    response = client.post(URL, params={"method": "rise", "masks": 4000, "seed": 1}, content=png(picture()))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["method"] == "rise" and body["rows"] == 4001
    assert body["parameters"] == {"masks": 4000, "grid": 7, "seed": 1, "baseline": 127.5}
    attribution = np.array(body["attribution"])
    # RISE resolves cells (4x4 pixels here), not pixels: the quadrant grown by one cell holds nearly all.
    assert positive_share(attribution, HALF, HALF) > 0.8
    assert positive_share(attribution, HALF + 4, HALF + 4) > 0.9
    assert attribution[:HALF, :HALF].mean() > 10 * np.abs(attribution[HALF + 4 :, HALF + 4 :]).mean()


def test_rise_is_seeded(client: TestClient) -> None:
    def run(seed: int) -> list[Any]:
        params = {"method": "rise", "masks": 50, "seed": seed}
        return list(client.post(URL, params=params, content=png(picture())).json()["attribution"])

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_the_class_can_be_chosen_by_label_or_index(client: TestClient) -> None:
    for label in ("other", "1"):
        body = client.post(URL, params={"label": label}, content=png(picture())).json()
        assert (body["label"], body["class_id"]) == ("other", 1)
        assert body["score"] == pytest.approx(1 / (1 + np.exp(4)), abs=1e-5)
        # The other class's score rises exactly as class 0's falls: the same map, negated.
        assert np.array(body["attribution"])[:HALF, :HALF].max() < 0
    assert_error(client.post(URL, params={"label": "2"}, content=png(picture())), 400, "unknown label '2'")


def test_a_v2_infer_body_is_explained_like_the_image(client: TestClient) -> None:
    pixels = picture()
    from_image = client.post(URL, content=png(pixels)).json()
    tensor = {"name": "image", "shape": [1, SIDE, SIDE, 1], "datatype": "FP32"}
    as_json = client.post(URL, json={"inputs": [{**tensor, "data": pixels.ravel().tolist()}]})
    assert as_json.status_code == 200, as_json.text
    assert as_json.json()["attribution"] == from_image["attribution"]
    header = json.dumps(
        {"inputs": [{**tensor, "parameters": {"binary_data_size": SIDE * SIDE * 4}}]}
    ).encode()
    binary = client.post(
        URL,
        content=header + pixels.astype("<f4").tobytes(),
        headers={
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header)),
        },
    )
    assert binary.status_code == 200, binary.text
    assert binary.json()["attribution"] == from_image["attribution"]
    two_rows = {**tensor, "shape": [2, SIDE, SIDE, 1], "data": [0.0] * (2 * SIDE * SIDE)}
    assert_error(client.post(URL, json={"inputs": [two_rows]}), 400, "an explanation takes one image")
    assert_error(client.post(URL, json={"inputs": [{**tensor, "shape": [1, 3]}]}), 400, "image")


def test_multipart_and_png_answer(client: TestClient) -> None:
    data = png(picture())
    multipart = client.post(URL, files={"file": ("q.png", data, "image/png")})
    assert multipart.status_code == 200, multipart.text
    heat = client.post(URL, params={"format": "png"}, content=data)
    assert heat.status_code == 200 and heat.headers["content-type"] == "image/png"
    assert heat.headers["x-explained-label"] == "left"
    picture_ = np.asarray(Image.open(io.BytesIO(heat.content)).convert("RGB")).astype(int)
    assert picture_.shape == (224, 224, 3)  # 28x28 enlarged 8 times
    top_left, far = picture_[:112, :112], picture_[144:, 144:]
    assert (top_left[..., 0] > top_left[..., 2] + 100).mean() > 0.9  # red: supports the class
    assert (np.abs(far[..., 0] - far[..., 2]) == 0).all()  # grey: untouched by the overlay


@pytest.mark.parametrize(
    ("params", "status", "fragment"),
    [
        ({"patch": 29}, 400, "patch must be from 1 to 28 for the 28x28 input, got 29"),
        ({"patch": 4, "stride": 5}, 400, "stride must be from 1 to the patch size (4), got 5"),
        ({"patch": 0}, 400, "patch"),
        ({"method": "rise", "masks": 0}, 400, "masks"),
        ({"method": "rise", "grid": 29}, 400, "grid must be from 2 to 28"),
        ({"method": "lime"}, 400, "method"),
        ({"format": "gif"}, 400, "format"),
        (
            {"method": "rise", "masks": 4096},
            413,
            "needs 4097 rows (the input and 4096 perturbed); the limit "
            "is 4096 rows per explanation (SERVE_EXPLAIN_MAX_ROWS)",
        ),
        ({"patch": 1, "stride": 1, "method": "occlusion"}, 200, ""),  # 785 rows: within the limit
    ],
)
def test_parameters_out_of_range_are_refused(
    client: TestClient, params: dict[str, Any], status: int, fragment: str
) -> None:
    response = client.post(URL, params=params, content=png(picture()))
    if status == 200:
        assert response.status_code == 200 and response.json()["rows"] == 785
    else:
        assert_error(response, status, fragment)


def test_bad_bodies_and_models_get_the_answers_infer_and_classify_give(client: TestClient) -> None:
    data = png(picture())
    assert_error(client.post("/v2/models/nope/explain", content=data), 404, "nope")
    assert_error(client.post("/v2/models/quadrant/versions/7/explain", content=data), 404, "version")
    assert_error(client.post("/v2/models/quadrant/versions/x/explain", content=data), 400, "version")
    not_image = client.post(URL, content=b"hello", headers={"Content-Type": "text/plain"})
    assert_error(not_image, 415, "PNG or JPEG")
    assert_error(client.post(URL, content=b""), 400, "empty image")
    two = [("file", ("a.png", data, "image/png")), ("file", ("b.png", data, "image/png"))]
    assert_error(client.post(URL, files=two), 413, "more than 1 images")
    not_explainable = client.post("/v2/models/two-inputs/explain", content=data)
    assert_error(
        not_explainable, 400, "model 'two-inputs' cannot be explained: explanations need one image input"
    )


def test_explanations_are_counted_apart_from_predictions(client: TestClient) -> None:
    def counts() -> dict[tuple[str, ...], float]:
        found = {}
        for family in text_string_to_metric_families(client.get("/metrics").text):
            for s in family.samples:
                names = ("explanations_total", "explanation_rows_total", "inference_requests_total")
                if s.name in names and s.labels.get("model") == "quadrant":
                    found[(s.name, *sorted(s.labels.values()))] = s.value
        return found

    before = counts()
    assert client.post(URL, params={"method": "rise", "masks": 20}, content=png(picture())).status_code == 200
    assert client.post(URL, params={"patch": 99}, content=png(picture())).status_code == 400
    after = counts()
    changed = {k: after[k] - before.get(k, 0.0) for k in after if after[k] != before.get(k, 0.0)}
    assert changed == {
        ("explanations_total", "ok", "quadrant", "rise"): 1.0,
        ("explanations_total", "bad_request", "occlusion", "quadrant"): 1.0,
        ("explanation_rows_total", "quadrant", "rise"): 21.0,
    }


def test_the_openapi_document_lists_the_parameters_with_ranges_and_defaults(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    for path in ("/v2/models/{model_name}/explain", "/v2/models/{model_name}/versions/{version}/explain"):
        operation = document["paths"][path]["post"]
        # (The unversioned path also lists ``version`` as a query parameter, as /classify's does.)
        params = {
            p["name"]: p for p in operation["parameters"] if p["in"] == "query" and p["name"] != "version"
        }
        assert set(params) == {"method", "patch", "stride", "masks", "grid", "seed", "label", "format"}
        assert params["method"]["schema"]["enum"] == ["occlusion", "rise"]
        assert params["method"]["schema"]["default"] == "occlusion"
        assert (params["masks"]["schema"]["minimum"], params["masks"]["schema"]["default"]) == (2, 1000)
        assert (params["grid"]["schema"]["minimum"], params["grid"]["schema"]["default"]) == (2, 7)
        assert all(p.get("description") for p in params.values())
        assert set(operation["responses"]) >= {"200", "400", "404", "413", "415", "503", "504"}
        content = operation["requestBody"]["content"]
        assert set(content) >= {"image/png", "image/jpeg", "multipart/form-data", "application/json"}
