"""service.http.routes: HTTP tests through the real app (lifespan included) on the shipped models."""

from __future__ import annotations

import gzip
import io
import shutil
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.contract import Preprocessing
from service.images.preprocess import prepare
from service.settings import Settings
from tests.helpers.data import MODELS, load_digits
from tests.helpers.photos import photos

SHIPPED = ["mnist-mlp", "mnist-cnn", "fashion-cnn", "cifar10-cnn"]


def settings(**overrides: object) -> Settings:
    base: dict[str, object] = {"model_repository": MODELS, "models": SHIPPED, "max_queue_delay_us": 500}
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(settings())) as c:
        yield c


def json_infer(images: np.ndarray, **extra: object) -> bytes:
    body: dict[str, object] = {
        "inputs": [
            {
                "name": "image",
                "datatype": "FP32",
                "shape": list(images.shape),
                "data": images.ravel().tolist(),
            }
        ]
    }
    body.update(extra)
    return orjson.dumps(body)


def assert_error(response: object, status: int, fragment: str) -> dict[str, str]:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"}
    assert fragment in body["error"], body["error"]
    return body


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8).squeeze()).save(buffer, format="PNG")
    return buffer.getvalue()


# ---- health, metadata --------------------------------------------------------------------------------


def test_health_and_server_metadata(client: TestClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get("/v2").json()
    assert meta["name"] == "digits-serving"
    assert "binary_tensor_data" in meta["extensions"]


@pytest.mark.parametrize("name", SHIPPED)
def test_model_metadata_matches_repository(client: TestClient, name: str) -> None:
    on_disk = orjson.loads((MODELS / name / "1" / "metadata.json").read_bytes())
    for path in (f"/v2/models/{name}", f"/v2/models/{name}/versions/1"):
        meta = client.get(path).json()
        assert meta["name"] == name
        assert meta["versions"] == ["1"]
        assert meta["platform"] == "onnxruntime_onnx"
        assert meta["inputs"] == on_disk["inputs"]
        assert meta["outputs"] == on_disk["outputs"]
        assert meta["parameters"]["provider"] == "CPUExecutionProvider"
        assert meta["parameters"]["labels"] == on_disk["labels"]
        assert meta["parameters"]["preprocessing"] == on_disk["preprocessing"]
    assert client.get(f"/v2/models/{name}/ready").json() == {"name": name, "version": "1", "ready": True}
    assert client.get(f"/v2/models/{name}/versions/1/ready").status_code == 200


def test_unknown_model_and_version(client: TestClient) -> None:
    assert_error(client.get("/v2/models/nope"), 404, "unknown model 'nope'")
    assert_error(client.get("/v2/models/mnist-cnn/versions/7"), 404, "no served version 7")
    assert_error(client.get("/v2/models/mnist-cnn/versions/x1"), 400, "positive integer")
    assert_error(client.post("/v2/models/nope/infer", content=b"{}"), 404, "unknown model")
    assert_error(client.get("/v2/models/mnist-cnn/versions/7/ready"), 404, "no served version")
    assert_error(client.get("/v2/nothing-here"), 404, "Not Found")
    assert_error(client.get(f"/v2/models/{'a' * 200}"), 404, "unknown model")
    assert_error(client.get("/v2/models/%2e%2e"), 404, "unknown model")


# ---- inference -----------------------------------------------------------------------------------------


def test_json_infer_classifies_real_digits(client: TestClient) -> None:
    images, labels = load_digits("mnist")
    for name in ("mnist-cnn", "mnist-mlp"):
        response = client.post(f"/v2/models/{name}/infer", content=json_infer(images[:64], id="req-1"))
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model_name"] == name and body["model_version"] == "1" and body["id"] == "req-1"
        [out] = body["outputs"]
        assert out["name"] == "probabilities" and out["datatype"] == "FP32" and out["shape"] == [64, 10]
        probs = np.asarray(out["data"], dtype=np.float32).reshape(64, 10)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        assert probs[0].argmax() == labels[0] == 7
        assert (probs.argmax(axis=1) == labels[:64]).mean() >= 0.95


def test_binary_infer_as_tritonclient_sends_it(client: TestClient) -> None:
    images, labels = load_digits("mnist")
    batch = images[:16]
    inp = triton.InferInput("image", list(batch.shape), "FP32")
    inp.set_data_from_numpy(batch, binary_data=True)
    out = triton.InferRequestedOutput("probabilities", binary_data=True)
    body, header_length = triton.InferenceServerClient.generate_request_body([inp], outputs=[out])
    response = client.post(
        "/v2/models/mnist-cnn/infer",
        content=body,
        headers={"Inference-Header-Content-Length": str(header_length)},
    )
    assert response.status_code == 200, response.text
    result = triton.InferenceServerClient.parse_response_body(
        response.content, header_length=int(response.headers["Inference-Header-Content-Length"])
    )
    probs = result.as_numpy("probabilities")
    assert probs.shape == (16, 10) and probs.dtype == np.float32
    assert (probs.argmax(axis=1) == labels[:16]).mean() >= 0.9
    # The same rows as JSON give the same numbers.
    as_json = client.post("/v2/models/mnist-cnn/infer", content=json_infer(batch)).json()
    np.testing.assert_allclose(np.asarray(as_json["outputs"][0]["data"]).reshape(16, 10), probs, atol=1e-6)


def test_nested_uint8_gzip_and_deflate_bodies(client: TestClient) -> None:
    images, labels = load_digits("mnist")
    digit = images[:2].astype(np.uint8)
    nested = {
        "inputs": [{"name": "image", "datatype": "UINT8", "shape": [2, 28, 28, 1], "data": digit.tolist()}]
    }
    raw = orjson.dumps(nested)
    plain = client.post("/v2/models/mnist-cnn/infer", content=raw).json()
    for encoding, packed in (("gzip", gzip.compress(raw)), ("deflate", zlib.compress(raw))):
        response = client.post(
            "/v2/models/mnist-cnn/infer", content=packed, headers={"Content-Encoding": encoding}
        )
        assert response.status_code == 200, response.text
        assert response.json()["outputs"] == plain["outputs"]
    probs = np.asarray(plain["outputs"][0]["data"]).reshape(2, 10)
    assert list(probs.argmax(axis=1)) == list(labels[:2])


def test_explicit_version_infer(client: TestClient) -> None:
    images, _ = load_digits("mnist")
    response = client.post("/v2/models/mnist-mlp/versions/1/infer", content=json_infer(images[:1]))
    assert response.status_code == 200
    assert response.json()["model_version"] == "1"


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "invalid JSON"),
        (b"[]", 400, ""),
        (
            orjson.dumps(
                {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 28, 28], "data": [0] * 784}]}
            ),
            400,
            "input 'image': expected shape [-1,28,28,1], got [1,28,28]",
        ),
        (
            orjson.dumps(
                {
                    "inputs": [
                        {"name": "image", "datatype": "INT64", "shape": [1, 28, 28, 1], "data": [0] * 784}
                    ]
                }
            ),
            400,
            "INT64",
        ),
        (
            orjson.dumps(
                {
                    "inputs": [
                        {"name": "image", "datatype": "FP32", "shape": [1, 28, 28, 1], "data": [0] * 783}
                    ]
                }
            ),
            400,
            "783",
        ),
        (
            orjson.dumps(
                {
                    "inputs": [
                        {"name": "pixels", "datatype": "FP32", "shape": [1, 28, 28, 1], "data": [0] * 784}
                    ]
                }
            ),
            400,
            "pixels",
        ),
        (
            orjson.dumps(
                {
                    "inputs": [
                        {"name": "image", "datatype": "FP32", "shape": [1, 28, 28, 1], "data": [1e39] * 784}
                    ]
                }
            ),
            400,
            "finite",
        ),
        (
            orjson.dumps(
                {
                    "inputs": [
                        {
                            "name": "image",
                            "datatype": "FP32",
                            "shape": [300, 28, 28, 1],
                            "data": [0] * 784 * 300,
                        }
                    ]
                }
            ),
            413,
            "300 rows",
        ),
    ],
)
def test_infer_errors(client: TestClient, body: bytes, status: int, fragment: str) -> None:
    assert_error(client.post("/v2/models/mnist-cnn/infer", content=body), status, fragment)


def test_transport_errors(client: TestClient) -> None:
    assert_error(
        client.post("/v2/models/mnist-cnn/infer", content=b"{}", headers={"Content-Encoding": "br"}),
        415,
        "br",
    )
    assert_error(
        client.post("/v2/models/mnist-cnn/infer", content=b"junk", headers={"Content-Encoding": "gzip"}),
        400,
        "",
    )
    assert_error(
        client.post(
            "/v2/models/mnist-cnn/infer", content=b"{}", headers={"Inference-Header-Content-Length": "abc"}
        ),
        400,
        "Inference-Header-Content-Length",
    )


def test_body_limits() -> None:
    with TestClient(create_app(settings(models=["mnist-mlp"], max_body_bytes=64 * 1024))) as small:
        images, _ = load_digits("mnist")
        too_big = json_infer(images[:20])
        assert len(too_big) > 64 * 1024
        assert_error(small.post("/v2/models/mnist-mlp/infer", content=too_big), 413, "exceeds the limit")
        bomb = gzip.compress(b" " * (10 * 1024 * 1024))
        assert len(bomb) < 64 * 1024
        assert_error(
            small.post("/v2/models/mnist-mlp/infer", content=bomb, headers={"Content-Encoding": "gzip"}),
            413,
            "decompressed",
        )
        # Streamed (chunked) bodies are bounded too.
        chunks = (b"x" * 8192 for _ in range(16))
        assert_error(small.post("/v2/models/mnist-mlp/infer", content=chunks), 413, "exceeds the limit")
        # A good request still works afterwards.
        assert small.post("/v2/models/mnist-mlp/infer", content=json_infer(images[:1])).status_code == 200


# ---- classify -------------------------------------------------------------------------------------------


def test_classify_png_raw_and_multipart(client: TestClient) -> None:
    images, labels = load_digits("mnist")
    image = png(images[0])
    raw = client.post("/v2/models/mnist-cnn/classify", content=image, headers={"Content-Type": "image/png"})
    assert raw.status_code == 200, raw.text
    body = raw.json()
    assert body["model_name"] == "mnist-cnn" and body["model_version"] == "1"
    assert len(body["predictions"]) == 3
    top = body["predictions"][0]
    assert top["class_id"] == labels[0] and top["label"] == str(labels[0]) and top["probability"] > 0.5
    probabilities = [p["probability"] for p in body["predictions"]]
    assert probabilities == sorted(probabilities, reverse=True)
    form = client.post(
        "/v2/models/mnist-cnn/classify?top_k=10", files={"file": ("digit.png", image, "image/png")}
    )
    assert form.status_code == 200, form.text
    assert len(form.json()["predictions"]) == 10
    assert form.json()["predictions"][0] == top


def test_classify_fashion_and_colour_conversion(client: TestClient) -> None:
    images, labels = load_digits("fashion-mnist")
    buffer = io.BytesIO()
    # A colour JPEG twice the size: converted to grayscale and resized to 28x28 by the service.
    big = Image.fromarray(images[1].squeeze().astype(np.uint8)).convert("RGB").resize((56, 56))
    big.save(buffer, format="JPEG", quality=95)
    response = client.post("/v2/models/fashion-cnn/classify", content=buffer.getvalue())
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["class_id"] == labels[1]
    names = orjson.loads((MODELS / "fashion-cnn" / "1" / "metadata.json").read_bytes())["labels"]
    assert response.json()["predictions"][0]["label"] == names[labels[1]]


def test_classify_errors(client: TestClient) -> None:
    assert_error(
        client.post("/v2/models/mnist-cnn/classify", content=b"GIF89a not really"), 415, "PNG or JPEG"
    )
    assert_error(client.post("/v2/models/mnist-cnn/classify", content=b""), 400, "empty")
    assert_error(client.post("/v2/models/mnist-cnn/classify?top_k=abc", content=b"x"), 400, "top_k")
    assert_error(client.post("/v2/models/mnist-cnn/classify?top_k=0", content=b"x"), 400, "top_k")
    truncated = png(np.zeros((28, 28)))[:40]
    assert_error(client.post("/v2/models/mnist-cnn/classify", content=truncated), 400, "")
    assert_error(client.post("/v2/models/nope/classify", content=b"x"), 404, "unknown model")


def test_classify_decompression_bomb() -> None:
    with TestClient(create_app(settings(models=["mnist-cnn"], max_image_pixels=1000 * 1000))) as c:
        buffer = io.BytesIO()
        Image.new("L", (4000, 4000)).save(buffer, format="PNG")
        assert len(buffer.getvalue()) < 100_000
        assert_error(c.post("/v2/models/mnist-cnn/classify", content=buffer.getvalue()), 413, "")


# ---- shedding, deadlines, draining ------------------------------------------------------------------------


def test_queue_full_is_503_and_deadline_is_504() -> None:
    # With the fixed wait, batches go only when full (8 rows) or after 10 s, so requests stay queued.
    s = settings(
        models=["mnist-mlp"],
        max_batch_size=8,
        max_queue_rows=8,
        max_request_rows=8,
        max_queue_delay_us=10_000_000,
        batch_wait="fixed",
    )
    images, _ = load_digits("mnist")
    with TestClient(create_app(s)) as c:
        expired = c.post(
            "/v2/models/mnist-mlp/infer", content=json_infer(images[:1], parameters={"timeout": 1000})
        )
        assert_error(expired, 504, "deadline")
        holder: dict[str, object] = {}
        first = threading.Thread(
            target=lambda: holder.update(
                r=c.post(
                    "/v2/models/mnist-mlp/infer",
                    content=json_infer(images[:5], parameters={"timeout": 3_000_000}),
                )
            )
        )
        first.start()
        served = c.app.state.models.get("mnist-mlp")  # type: ignore[attr-defined]
        for _ in range(2000):
            if served.batcher.queue_rows == 5:
                break
            threading.Event().wait(0.005)
        assert served.batcher.queue_rows == 5
        full = c.post("/v2/models/mnist-mlp/infer", content=json_infer(images[:4]))
        assert_error(full, 503, "queue is full")
        assert full.headers["Retry-After"] == "1"
        first.join()
        assert_error(holder["r"], 504, "deadline")
        metrics = c.get("/metrics").text
        mv = {"model": "mnist-mlp", "version": "1"}
        http = {**mv, "protocol": "http"}
        assert sample(metrics, "inference_requests_total", status="timeout", **http) == 2
        assert sample(metrics, "inference_requests_total", status="rejected", **http) == 1
        assert sample(metrics, "inference_batches_total", **mv) == 0


def test_draining_refuses_new_work(client: TestClient) -> None:
    images, _ = load_digits("mnist")
    lifecycle = client.app.state.lifecycle  # type: ignore[attr-defined]
    lifecycle.draining = True
    try:
        assert_error(client.get("/v2/health/ready"), 503, "draining")
        refused = client.post("/v2/models/mnist-mlp/infer", content=json_infer(images[:1]))
        assert_error(refused, 503, "draining")
        assert refused.headers["Retry-After"]
        assert client.get("/v2/health/live").status_code == 200
    finally:
        lifecycle.draining = False
    assert client.get("/v2/health/ready").status_code == 200


# ---- metrics, statistics, repository ----------------------------------------------------------------------


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return 0.0


def test_metrics_move_by_exactly_what_happened() -> None:
    images, _ = load_digits("mnist")
    with TestClient(create_app(settings(models=["mnist-mlp"]))) as c:
        before = c.get("/metrics").text
        mv = {"model": "mnist-mlp", "version": "1"}
        assert sample(before, "model_info", provider="CPUExecutionProvider", **mv) == 1.0
        assert sample(before, "model_load_total", model="mnist-mlp", result="ok") == 1.0
        assert sample(before, "inference_batches_total", **mv) == 0.0
        for rows in (1, 3, 5):
            assert c.post("/v2/models/mnist-mlp/infer", content=json_infer(images[:rows])).status_code == 200
        assert c.post("/v2/models/mnist-mlp/infer", content=b"{bad").status_code == 400
        after = c.get("/metrics").text
        http = {**mv, "protocol": "http"}
        assert sample(after, "inference_requests_total", status="ok", **http) == 3
        assert sample(after, "inference_requests_total", status="bad_request", **http) == 1
        assert sample(after, "inference_rows_total", **mv) == 9
        assert sample(after, "inference_batches_total", **mv) == 3  # sequential requests: one batch each
        assert sample(after, "inference_request_duration_seconds_count", **http) == 4
        assert sample(after, "inference_queue_duration_seconds_count", **mv) == 3
        assert sample(after, "inference_compute_duration_seconds_count", **mv) == 3
        assert sample(after, "inference_batch_size_count", **mv) == 3
        assert sample(after, "inference_batch_size_sum", **mv) == 9
        assert sample(after, "inference_queue_rows", **mv) == 0
        assert sample(after, "model_load_duration_seconds_count", model="mnist-mlp") == 1
        assert "process_resident_memory_bytes" in after
        stats = c.get("/v2/models/mnist-mlp/stats").json()["model_stats"][0]
        assert stats["name"] == "mnist-mlp" and stats["version"] == "1"
        assert stats["inference_count"] == 9 and stats["execution_count"] == 3
        assert stats["inference_stats"]["success"]["count"] == 3
        assert stats["inference_stats"]["fail"]["count"] == 1
        assert {b["batch_size"] for b in stats["batch_stats"]} == {1, 3, 5}
        assert c.get("/v2/models/stats").json()["model_stats"] == [stats]
        assert_error(c.get("/v2/models/nope/stats"), 404, "unknown model")


def test_model_list_names_every_served_model(client: TestClient) -> None:
    listed = {m["name"]: m for m in client.get("/v2/models").json()["models"]}
    assert sorted(listed) == sorted(SHIPPED)
    for name in SHIPPED:
        metadata = client.get(f"/v2/models/{name}").json()
        del metadata["parameters"]["lineage"]
        assert listed[name] == metadata
    assert listed["mnist-cnn"]["parameters"]["version"] == "1"
    assert [t["name"] for t in listed["mnist-cnn"]["inputs"]] == ["image"]


def test_model_list_leaves_out_a_configured_model_that_is_not_served(tmp_path: Path) -> None:
    shutil.copytree(MODELS / "mnist-mlp", tmp_path / "mnist-mlp")
    with TestClient(create_app(settings(model_repository=tmp_path, models=["mnist-mlp", "ghost"]))) as c:
        assert [m["name"] for m in c.get("/v2/models").json()["models"]] == ["mnist-mlp"]
        assert_error(c.get("/v2/models/ghost"), 503, "ghost")


def test_repository_index(client: TestClient) -> None:
    rows = client.post("/v2/repository/index").json()
    assert {(r["name"], r["version"], r["state"]) for r in rows} >= {(n, "1", "READY") for n in SHIPPED}


def test_admin_routes_disabled_without_token(client: TestClient) -> None:
    assert_error(client.post("/v2/repository/models/mnist-cnn/load"), 403, "disabled")
    assert_error(
        client.post("/v2/repository/models/mnist-cnn/unload", headers={"Authorization": "Bearer x" * 3}),
        403,
        "disabled",
    )


def test_admin_routes_with_token() -> None:
    token = "s3cret-token-for-tests"
    images, _ = load_digits("mnist")
    with TestClient(create_app(settings(models=["mnist-mlp"], admin_token=token))) as c:
        assert_error(c.post("/v2/repository/models/mnist-mlp/unload"), 401, "bearer")
        assert_error(
            c.post(
                "/v2/repository/models/mnist-mlp/unload", headers={"Authorization": "Bearer wrong-token-123"}
            ),
            403,
            "invalid admin token",
        )
        auth = {"Authorization": f"Bearer {token}"}
        assert c.post("/v2/repository/models/mnist-mlp/unload", headers=auth).status_code == 200
        assert_error(
            c.post("/v2/models/mnist-mlp/infer", content=json_infer(images[:1])), 404, "unknown model"
        )
        assert_error(c.post("/v2/repository/models/nope/load", headers=auth), 404, "nope")
        loaded = c.post("/v2/repository/models/mnist-mlp/load", headers=auth)
        assert loaded.status_code == 200 and loaded.json()["versions"] == ["1"]
        assert c.post("/v2/models/mnist-mlp/infer", content=json_infer(images[:1])).status_code == 200


# ---- classify: photos, several images, the model's preprocessing ------------------------------------------

DIGIT = Preprocessing(height=28, width=28, color="grayscale", resize="digit")


def test_classify_several_photos_in_order_as_one_request_of_n_rows() -> None:
    shots = list(photos("phone", 5, seed=4))
    files = [
        ("file", (f"shot-{n}.jpg", data, content_type)) for n, (data, content_type, _) in enumerate(shots)
    ]
    with TestClient(create_app(settings(models=["mnist-cnn"], max_queue_delay_us=0))) as c:
        mv = {"model": "mnist-cnn", "version": "1"}
        response = c.post("/v2/models/mnist-cnn/classify?top_k=2&return_input=true", files=files)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"model_name", "model_version", "results"}  # several images: results only
        assert [r["filename"] for r in body["results"]] == [f"shot-{n}.jpg" for n in range(5)]
        top = [r["predictions"][0]["class_id"] for r in body["results"]]
        assert sum(t == label for t, (*_, label) in zip(top, shots, strict=True)) >= 4
        for result, (data, _, _) in zip(body["results"], shots, strict=True):
            assert len(result["predictions"]) == 2
            np.testing.assert_allclose(result["input"], prepare(data, DIGIT).ravel(), atol=1e-4)
        after = c.get("/metrics").text
        # In order: each image alone gets the answer it got among the others.
        for result, (data, _, _) in zip(body["results"], shots, strict=True):
            alone = c.post("/v2/models/mnist-cnn/classify?top_k=2", content=data).json()["predictions"]
            assert [p["class_id"] for p in alone] == [p["class_id"] for p in result["predictions"]]
            np.testing.assert_allclose(
                [p["probability"] for p in alone],
                [p["probability"] for p in result["predictions"]],
                rtol=1e-5,
            )
        assert sample(after, "inference_requests_total", status="ok", protocol="http", **mv) == 1
        assert sample(after, "inference_rows_total", **mv) == 5
        assert sample(after, "inference_batch_size_count", **mv) == 1  # the five rows in one batch
        assert sample(after, "inference_batch_size_sum", **mv) == 5


def test_classify_one_photo_answers_at_the_top_and_in_results(client: TestClient) -> None:
    [(data, content_type, label)] = photos("inverted", 1, seed=5)
    body = client.post(
        "/v2/models/mnist-cnn/classify", content=data, headers={"Content-Type": content_type}
    ).json()
    assert body["predictions"][0]["class_id"] == label
    assert body["results"] == [{"predictions": body["predictions"]}]  # no input unless asked for


def test_classify_blank_images_and_bad_forms(client: TestClient) -> None:
    blank = png(np.full((120, 160), 210.0))
    assert_error(
        client.post("/v2/models/mnist-cnn/classify", content=blank),
        400,
        "no digit found: the image has no ink",
    )
    [(good, _, _)] = photos("clean", 1, seed=6)
    two = [("file", ("good.png", good, "image/png")), ("file", ("blank.png", blank, "image/png"))]
    assert_error(
        client.post("/v2/models/mnist-cnn/classify", files=two), 400, "image 2 of 2 ('blank.png'): no digit"
    )
    # A stretch model takes the same blank image: only digit models look for a digit.
    assert client.post("/v2/models/fashion-cnn/classify", content=blank).status_code == 200
    gif = [("file", ("good.png", good, "image/png")), ("file", ("x.gif", b"GIF89a", "image/gif"))]
    assert_error(
        client.post("/v2/models/mnist-cnn/classify", files=gif), 415, "image 2 of 2 ('x.gif'): unsupported"
    )
    empty = [("file", ("good.png", good, "image/png")), ("file", ("e.png", b"", "image/png"))]
    assert_error(client.post("/v2/models/mnist-cnn/classify", files=empty), 400, "image 2 of 2 is empty")
    other = [("picture", ("good.png", good, "image/png"))]
    assert_error(client.post("/v2/models/mnist-cnn/classify", files=other), 400, "no file field named 'file'")
    as_text = client.post("/v2/models/mnist-cnn/classify", data={"file": "text"}, files=other)
    assert_error(as_text, 400, "no file field named 'file'")
    broken = client.post(
        "/v2/models/mnist-cnn/classify",
        content=b"--x\r\nnot a part",
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    )
    assert_error(broken, 400, "")
    assert_error(
        client.post("/v2/models/mnist-cnn/classify?return_input=maybe", content=good), 400, "return_input"
    )


def test_classify_refuses_more_images_than_a_request_may_have_rows() -> None:
    [(good, _, _)] = photos("clean", 1, seed=7)
    with TestClient(create_app(settings(models=["mnist-cnn"], max_request_rows=3))) as c:
        files = [("file", (f"{n}.png", good, "image/png")) for n in range(4)]
        assert_error(
            c.post("/v2/models/mnist-cnn/classify", files=files), 413, "more than 3 images in one request"
        )
        assert c.post("/v2/models/mnist-cnn/classify", files=files[:3]).status_code == 200


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "mnist-cnn",
            {"height": 28, "width": 28, "color": "grayscale", "input_range": [0.0, 255.0], "resize": "digit"},
        ),
        (
            "fashion-cnn",
            {
                "height": 28,
                "width": 28,
                "color": "grayscale",
                "input_range": [0.0, 255.0],
                "resize": "stretch",
            },
        ),
        (
            "cifar10-cnn",
            {"height": 32, "width": 32, "color": "rgb", "input_range": [0.0, 255.0], "resize": "stretch"},
        ),
    ],
)
def test_model_metadata_says_how_images_are_prepared(
    client: TestClient, name: str, expected: dict[str, object]
) -> None:
    assert client.get(f"/v2/models/{name}").json()["parameters"]["preprocessing"] == expected


def repository_with(tmp_path: Path, preprocessing: object) -> Path:
    """A repository holding mnist-cnn version 1 whose metadata declares ``preprocessing``."""
    version = tmp_path / "mnist-cnn" / "1"
    version.mkdir(parents=True)
    shutil.copy(MODELS / "mnist-cnn" / "1" / "model.onnx", version / "model.onnx")
    metadata = orjson.loads((MODELS / "mnist-cnn" / "1" / "metadata.json").read_bytes())
    (version / "metadata.json").write_bytes(orjson.dumps({**metadata, "preprocessing": preprocessing}))
    return tmp_path


def test_classify_follows_the_preprocessing_the_metadata_declares(tmp_path: Path) -> None:
    declared = {
        "height": 28,
        "width": 28,
        "color": "grayscale",
        "input_range": [0.0, 1.0],
        "resize": "stretch",
    }
    [(data, _, _)] = photos("clean", 1, seed=8)
    with TestClient(
        create_app(settings(model_repository=repository_with(tmp_path, declared), models=None))
    ) as c:
        body = c.post("/v2/models/mnist-cnn/classify?return_input=true", content=data).json()
        stretched = prepare(data, Preprocessing.model_validate(declared))
        np.testing.assert_allclose(body["results"][0]["input"], stretched.ravel(), atol=1e-6)
        assert max(body["results"][0]["input"]) <= 1.0
        assert c.get("/v2/models/mnist-cnn").json()["parameters"]["preprocessing"]["resize"] == "stretch"


def test_a_preprocessing_entry_that_disagrees_with_the_input_is_never_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The loader refuses the version (the repository is wrong, not the request): /classify never guesses.
    wrong = {"height": 32, "width": 32, "color": "grayscale", "resize": "digit"}
    [(data, _, _)] = photos("clean", 1, seed=9)
    with TestClient(
        create_app(settings(model_repository=repository_with(tmp_path, wrong), models=None))
    ) as c:
        assert_error(c.post("/v2/models/mnist-cnn/classify", content=data), 503, "is not ready")
        [entry] = c.post("/v2/repository/index").json()
        assert (entry["state"], entry["reason"]) == ("UNAVAILABLE", "failed to load (see server log)")
    assert "preprocessing (height 32, width 32, grayscale) disagrees with input 'image'" in caplog.text


# ---- hostile clients: readiness, names echoed, media types, the pixel budget ----------------------------


def test_not_ready_once_fewer_models_than_configured_are_served() -> None:
    token = "s3cret-token-for-tests"
    auth = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(settings(models=["mnist-mlp"], admin_token=token))) as c:
        assert c.get("/v2/health/ready").status_code == 200
        assert c.post("/v2/repository/models/mnist-mlp/unload", headers=auth).status_code == 200
        assert_error(c.get("/v2/health/ready"), 503, "0 of at least 1 models served")
        assert c.post("/v2/repository/models/mnist-mlp/load", headers=auth).status_code == 200
        assert c.get("/v2/health/ready").status_code == 200
    two = settings(models=["mnist-mlp", "mnist-cnn"], admin_token=token, ready_min_models=1)
    with TestClient(create_app(two)) as c:
        assert c.post("/v2/repository/models/mnist-mlp/unload", headers=auth).status_code == 200
        assert c.get("/v2/health/ready").status_code == 200  # one model is the minimum asked for
        assert c.post("/v2/repository/models/mnist-cnn/unload", headers=auth).status_code == 200
        assert_error(c.get("/v2/health/ready"), 503, "0 of at least 1 models served")


def test_a_long_model_or_input_name_is_cut_in_the_error(client: TestClient) -> None:
    name = "m" * 16384
    for response in (
        client.get(f"/v2/models/{name}"),
        client.post(f"/v2/models/{name}/infer", content=b"{}"),
    ):
        body = assert_error(response, 404, "unknown model 'mmmm")
        assert len(body["error"]) < 100
    images, _ = load_digits("mnist")
    request = orjson.loads(json_infer(images[:1]))
    request["inputs"][0]["name"] = "x" * 16384
    body = assert_error(
        client.post("/v2/models/mnist-cnn/infer", content=orjson.dumps(request)), 400, "xxx..."
    )
    assert len(body["error"]) < 200


@pytest.mark.parametrize(
    "content_type", ["MULTIPART/FORM-DATA; BOUNDARY=b0", 'Multipart/Form-Data;boundary="b0"']
)
def test_media_types_are_matched_whatever_their_case(client: TestClient, content_type: str) -> None:
    images, _ = load_digits("mnist")
    form = (
        b'--b0\r\nContent-Disposition: form-data; name="file"; filename="d.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + png(images[0, ..., 0]) + b"\r\n--b0--\r\n"
    )
    response = client.post(
        "/v2/models/mnist-cnn/classify", content=form, headers={"Content-Type": content_type}
    )
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["filename"] == "d.png"


def test_the_pixels_of_one_classify_request_are_bounded_before_decoding() -> None:
    big = png(np.zeros((1000, 1000), np.uint8))
    with TestClient(create_app(settings(models=["mnist-cnn"], max_request_pixels=2_500_000))) as c:
        files = [("file", (f"{n}.png", big, "image/png")) for n in range(3)]
        assert_error(c.post("/v2/models/mnist-cnn/classify", files=files), 413, "3000000 pixels together")
        files = [("file", (f"{n}.png", big, "image/png")) for n in range(2)]
        assert_error(c.post("/v2/models/mnist-cnn/classify", files=files), 400, "no digit found")
