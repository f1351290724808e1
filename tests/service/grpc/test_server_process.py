"""The service as a real process, spoken to over gRPC by unmodified ``tritonclient.grpc``, beside HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.helpers.data import load_digits
from tests.helpers.server import RunningService, running_service

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    env = {"SERVE_MODELS": "mnist-cnn,mnist-mlp", "SERVE_MAX_QUEUE_DELAY_US": "2000"}
    with running_service(tmp_path_factory.mktemp("grpc-serve"), env=env) as running:
        yield running


@pytest.fixture(scope="module")
def client(service: RunningService) -> Iterator[triton_grpc.InferenceServerClient]:
    with triton_grpc.InferenceServerClient(service.grpc_address) as c:
        yield c


def test_readiness_metadata_config_statistics_index(client: triton_grpc.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mnist-cnn") and client.is_model_ready("mnist-cnn", "1")
    assert not client.is_model_ready("no-such-model")
    assert client.get_server_metadata(as_json=True)["name"] == "digits-serving"
    meta = client.get_model_metadata("mnist-cnn", as_json=True)
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": ["-1", "28", "28", "1"]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": ["-1", "10"]}]
    config = client.get_model_config("mnist-cnn", as_json=True)["config"]
    assert config["max_batch_size"] == 32 and config["input"][0]["dims"] == ["28", "28", "1"]
    stats = client.get_inference_statistics("mnist-cnn", as_json=True)
    assert stats["model_stats"][0]["name"] == "mnist-cnn"
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {"name": "mnist-cnn", "version": "1", "state": "READY"} in index


@pytest.mark.parametrize("model", ["mnist-cnn", "mnist-mlp"])
def test_raw_and_typed_answers_equal_https(
    service: RunningService, client: triton_grpc.InferenceServerClient, model: str
) -> None:
    images, labels = load_digits("mnist")
    batch = images[200:208]
    # HTTP, binary tensors, with tritonclient.http.
    http_input = triton_http.InferInput("image", list(batch.shape), "FP32")
    http_input.set_data_from_numpy(batch, binary_data=True)
    over_http = triton_http.InferenceServerClient(service.address).infer(model, [http_input])
    expected = over_http.as_numpy("probabilities")
    # gRPC, raw_input_contents, with tritonclient.grpc.
    grpc_input = triton_grpc.InferInput("image", list(batch.shape), "FP32").set_data_from_numpy(batch)
    raw = client.infer(model, [grpc_input], request_id="raw-1")
    assert raw.get_response().id == "raw-1" and raw.get_response().model_version == "1"
    np.testing.assert_array_equal(raw.as_numpy("probabilities"), expected)
    # gRPC, typed contents (tritonclient always sends raw, so the request is written with its own protos).
    typed = service_pb2.ModelInferRequest(model_name=model, id="typed-1")
    tensor = typed.inputs.add(name="image", datatype="FP32", shape=batch.shape)
    tensor.contents.fp32_contents.extend(batch.ravel().tolist())
    with grpc.insecure_channel(service.grpc_address) as channel:
        answer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(typed)
    result = triton_grpc.InferResult(answer)
    np.testing.assert_array_equal(result.as_numpy("probabilities"), expected)
    assert answer.id == "typed-1"
    assert (expected.argmax(axis=1) == labels[200:208]).mean() >= 0.85


def test_errors_come_with_tritons_codes(client: triton_grpc.InferenceServerClient) -> None:
    flat = triton_grpc.InferInput("image", [1, 28, 28], "FP32").set_data_from_numpy(
        np.zeros((1, 28, 28), np.float32)
    )
    with pytest.raises(triton_grpc.InferenceServerException) as bad:
        client.infer("mnist-cnn", [flat])
    assert bad.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert bad.value.message() == "input 'image': expected shape [-1,28,28,1], got [1,28,28]"
    image = triton_grpc.InferInput("image", [1, 28, 28, 1], "FP32")
    image.set_data_from_numpy(np.zeros((1, 28, 28, 1), np.float32))
    with pytest.raises(triton_grpc.InferenceServerException) as unknown:
        client.infer("nope", [image])
    assert (unknown.value.status(), unknown.value.message()) == (
        "StatusCode.NOT_FOUND",
        "unknown model 'nope'",
    )
    with pytest.raises(triton_grpc.InferenceServerException) as version:
        client.infer("mnist-cnn", [image], model_version="9")
    assert version.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(triton_grpc.InferenceServerException) as admin:
        client.unload_model("mnist-cnn")
    assert admin.value.status() == "StatusCode.PERMISSION_DENIED"
    assert "admin API is disabled" in admin.value.message()
    assert client.is_model_ready("mnist-cnn")


def test_both_protocols_in_one_process_are_counted_apart(
    service: RunningService, client: triton_grpc.InferenceServerClient
) -> None:
    image = triton_grpc.InferInput("image", [1, 28, 28, 1], "FP32")
    image.set_data_from_numpy(load_digits("mnist")[0][:1])
    for _ in range(3):
        client.infer("mnist-mlp", [image])
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{service.url}/metrics").text):
        for s in family.samples:
            if (
                s.name == "inference_requests_total"
                and s.labels["model"] == "mnist-mlp"
                and s.labels["status"] == "ok"
            ):
                counts[s.labels["protocol"]] = s.value
    assert counts.get("grpc", 0) >= 3
    assert "http" in counts
    assert f"gRPC listening on 127.0.0.1:{service.grpc_port}" in service.log()


def test_deadlines_and_overload_over_grpc(tmp_path_factory: pytest.TempPathFactory) -> None:
    # A batch leaves when it holds 8 rows or after 10 s, so what is queued stays queued.
    env = {
        "SERVE_MODELS": "mnist-mlp",
        "SERVE_MAX_BATCH_SIZE": "8",
        "SERVE_MAX_QUEUE_ROWS": "8",
        "SERVE_MAX_REQUEST_ROWS": "8",
        "SERVE_MAX_QUEUE_DELAY_US": "10000000",
        "SERVE_BATCH_WAIT": "fixed",
    }
    images = load_digits("mnist")[0]

    def tensor(rows: int) -> triton_grpc.InferInput:
        return triton_grpc.InferInput("image", [rows, 28, 28, 1], "FP32").set_data_from_numpy(images[:rows])

    with running_service(tmp_path_factory.mktemp("grpc-limits"), env=env) as svc:
        client = triton_grpc.InferenceServerClient(svc.grpc_address)
        with pytest.raises(triton_grpc.InferenceServerException) as client_deadline:
            client.infer("mnist-mlp", [tensor(1)], client_timeout=0.5)
        assert client_deadline.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        with pytest.raises(triton_grpc.InferenceServerException) as parameter:
            client.infer("mnist-mlp", [tensor(1)], timeout=300_000)  # microseconds
        assert parameter.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        assert parameter.value.message() == "deadline exceeded before the request was computed"

        results: list[object] = []
        client.async_infer(
            "mnist-mlp",
            [tensor(5)],
            lambda result, error: results.append(error or result),
            timeout=20_000_000,
        )

        def queued() -> float:
            for family in text_string_to_metric_families(httpx.get(f"{svc.url}/metrics").text):
                for s in family.samples:
                    if s.name == "inference_queue_rows" and s.labels.get("model") == "mnist-mlp":
                        return s.value
            return 0.0

        for _ in range(1000):
            if queued() == 5:
                break
        assert queued() == 5
        with pytest.raises(triton_grpc.InferenceServerException) as full:
            client.infer("mnist-mlp", [tensor(4)])
        assert full.value.status() == "StatusCode.UNAVAILABLE"
        assert "queue is full (5 rows queued, limit 8)" in full.value.message()
        answer = client.infer("mnist-mlp", [tensor(3)])  # 5 + 3 rows: the batch is full and leaves
        assert answer.as_numpy("probabilities").shape == (3, 10)
        for _ in range(1000):
            if results:
                break
            queued()
        [first] = results
        assert isinstance(first, triton_grpc.InferResult), first
        assert first.as_numpy("probabilities").shape == (5, 10)
        client.close()
