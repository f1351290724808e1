"""The gRPC service through the real app: lifespan, registry, batchers, and gRPC beside HTTP in one loop."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.grpc.generated import grpc_service_pb2 as pb
from service.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from service.grpc.tensors import build_infer_request, response_arrays
from service.settings import Settings
from tests.helpers.data import MODELS, load_digits
from tests.helpers.server import free_port
from tests.helpers.variants import publish_variant

TOKEN = "grpc-admin-token-for-tests"
MV = {"model": "mnist-mlp", "version": "1"}


@contextmanager
def serving(**overrides: Any) -> Iterator[tuple[TestClient, pb_grpc.GRPCInferenceServiceStub, FastAPI]]:
    """The app with gRPC on a free port, an HTTP test client and a gRPC stub on one channel."""
    base: dict[str, Any] = {"model_repository": MODELS, "models": ["mnist-mlp", "mnist-cnn"]}
    settings = Settings(**{**base, "grpc_port": free_port(), **overrides})
    app = create_app(settings, grpc_host="127.0.0.1")
    with TestClient(app) as http, grpc.insecure_channel(f"127.0.0.1:{app.state.grpc_port}") as channel:
        yield http, pb_grpc.GRPCInferenceServiceStub(channel), app


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[TestClient, pb_grpc.GRPCInferenceServiceStub, FastAPI]]:
    with serving(admin_token=TOKEN) as running:
        yield running


@pytest.fixture(scope="module")
def stub(
    served: tuple[TestClient, pb_grpc.GRPCInferenceServiceStub, FastAPI],
) -> pb_grpc.GRPCInferenceServiceStub:
    return served[1]


def images(rows: int, offset: int = 0) -> np.ndarray:
    return load_digits("mnist")[0][offset : offset + rows]


def request(
    model: str = "mnist-mlp", rows: int = 1, *, raw: bool = True, **kwargs: Any
) -> pb.ModelInferRequest:
    return build_infer_request(model, {"image": ("FP32", images(rows))}, raw=raw, **kwargs)


def rpc_error(call: Callable[..., Any], *args: Any, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value


def assert_status(error: grpc.RpcError, code: grpc.StatusCode, fragment: str) -> None:
    assert error.code() == code, (error.code(), error.details())
    assert fragment in error.details(), error.details()


def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return 0.0


def wait_for(condition: Callable[[], bool]) -> None:
    """Until ``condition()`` holds (bounded: 10 s); the test then asserts it."""
    event = threading.Event()
    for _ in range(2000):
        if condition():
            return
        event.wait(0.005)


def http_probabilities(http: TestClient, model: str, batch: np.ndarray) -> np.ndarray:
    tensor = {"name": "image", "datatype": "FP32", "shape": list(batch.shape), "data": batch.ravel().tolist()}
    answer = http.post(f"/v2/models/{model}/infer", content=orjson.dumps({"inputs": [tensor]}))
    assert answer.status_code == 200, answer.text
    [out] = answer.json()["outputs"]
    return np.asarray(out["data"], np.float32).reshape(out["shape"])


# ---- health, metadata, repository --------------------------------------------------------------------


def test_liveness_readiness_and_model_readiness(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="mnist-mlp")).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="mnist-mlp", version="1")).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="mnist-mlp", version="2")).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="no-such-model")).ready
    error = rpc_error(stub.ModelReady, pb.ModelReadyRequest(name="mnist-mlp", version="01"))
    assert_status(error, grpc.StatusCode.INVALID_ARGUMENT, "model version must be a positive integer")


def test_server_and_model_metadata(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    server = stub.ServerMetadata(pb.ServerMetadataRequest())
    assert server.name == "digits-serving" and "model_repository" in server.extensions
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="mnist-cnn"))
    assert (meta.name, list(meta.versions), meta.platform) == ("mnist-cnn", ["1"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("image", "FP32", [-1, 28, 28, 1])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("probabilities", "FP32", [-1, 10])
    ]
    assert_status(
        rpc_error(stub.ModelMetadata, pb.ModelMetadataRequest(name="nope")),
        grpc.StatusCode.NOT_FOUND,
        "unknown model 'nope'",
    )
    assert_status(
        rpc_error(stub.ModelMetadata, pb.ModelMetadataRequest(name="mnist-cnn", version="7")),
        grpc.StatusCode.NOT_FOUND,
        "model 'mnist-cnn' has no served version 7",
    )


def test_model_config_is_tritons_shape(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    config = stub.ModelConfig(pb.ModelConfigRequest(name="mnist-cnn")).config
    assert (config.name, config.platform, config.backend) == ("mnist-cnn", "onnxruntime_onnx", "onnxruntime")
    assert config.max_batch_size == 32
    assert [(t.name, list(t.dims)) for t in config.input] == [("image", [28, 28, 1])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("probabilities", [10])]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500


def test_repository_index(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    rows = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True)).models
    assert {(m.name, m.version, m.state) for m in rows} == {
        ("mnist-cnn", "1", "READY"),
        ("mnist-mlp", "1", "READY"),
    }


def test_statistics_count_grpc_inferences(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    def stats() -> Any:
        return stub.ModelStatistics(pb.ModelStatisticsRequest(name="mnist-cnn", version="1")).model_stats[0]

    before = stats()
    stub.ModelInfer(request("mnist-cnn", 3))
    after = stats()
    assert (after.name, after.version) == ("mnist-cnn", "1")
    assert after.inference_count - before.inference_count == 3
    assert after.inference_stats.success.count - before.inference_stats.success.count == 1
    everything = stub.ModelStatistics(pb.ModelStatisticsRequest()).model_stats
    assert {s.name for s in everything} == {"mnist-cnn", "mnist-mlp"}
    assert_status(
        rpc_error(stub.ModelStatistics, pb.ModelStatisticsRequest(name="nope")),
        grpc.StatusCode.NOT_FOUND,
        "unknown model",
    )


def test_health_service_and_reflection(served: tuple[TestClient, Any, FastAPI]) -> None:
    app = served[2]
    with grpc.insecure_channel(f"127.0.0.1:{app.state.grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        assert health.Check(health_pb2.HealthCheckRequest()).status == serving
        named = health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")
        assert health.Check(named).status == serving
        assert_status(
            rpc_error(health.Check, health_pb2.HealthCheckRequest(service="other")),
            grpc.StatusCode.NOT_FOUND,
            "unknown service 'other'",
        )
        watch = health.Watch(health_pb2.HealthCheckRequest())
        assert next(watch).status == serving
        watch.cancel()
        database = ProtoReflectionDescriptorDatabase(channel)
        assert set(database.get_services()) >= {
            "inference.GRPCInferenceService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        }
        infer = database.FindFileContainingSymbol("inference.GRPCInferenceService")
        assert infer.name == "grpc_service.proto"


def test_unsupported_extensions_say_so(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    error = rpc_error(stub.SystemSharedMemoryRegister, pb.SystemSharedMemoryRegisterRequest(name="r"))
    assert_status(
        error, grpc.StatusCode.UNIMPLEMENTED, "system shared memory is not supported by this server"
    )
    error = rpc_error(stub.LogSettings, pb.LogSettingsRequest())
    assert_status(error, grpc.StatusCode.UNIMPLEMENTED, "changing log settings is not supported")


# ---- inference ---------------------------------------------------------------------------------------


def test_a_long_model_name_is_cut_in_the_status_message(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    # A 16 KB name echoed whole overflowed the status trailer: RESOURCE_EXHAUSTED instead of NOT_FOUND.
    name = "m" * 16384
    for call, message in (
        (stub.ModelInfer, request(name)),
        (stub.ModelMetadata, pb.ModelMetadataRequest(name=name)),
    ):
        error = rpc_error(call, message)
        assert_status(error, grpc.StatusCode.NOT_FOUND, "unknown model 'mmm")
        assert len(error.details()) < 100


@pytest.mark.parametrize("model", ["mnist-mlp", "mnist-cnn"])
def test_raw_and_typed_answers_equal_https(served: tuple[TestClient, Any, FastAPI], model: str) -> None:
    http, stub, _ = served
    batch = images(8, offset=100)
    over_http = http_probabilities(http, model, batch)
    for raw in (True, False):
        answer = stub.ModelInfer(
            build_infer_request(model, {"image": ("FP32", batch)}, raw=raw, request_id="r7")
        )
        assert (answer.model_name, answer.model_version, answer.id) == (model, "1", "r7")
        np.testing.assert_array_equal(response_arrays(answer)["probabilities"], over_http)
    labels = load_digits("mnist")[1][100:108]
    assert (over_http.argmax(axis=1) == labels).mean() >= 0.85


def test_uint8_pixels_are_accepted(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    pixels = images(2).astype(np.uint8)
    answer = stub.ModelInfer(build_infer_request("mnist-mlp", {"image": ("UINT8", pixels)}, raw=False))
    floats = stub.ModelInfer(build_infer_request("mnist-mlp", {"image": ("FP32", pixels.astype(np.float32))}))
    np.testing.assert_array_equal(
        response_arrays(answer)["probabilities"], response_arrays(floats)["probabilities"]
    )


def test_invalid_requests_are_invalid_argument(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    bad_shape = request()
    bad_shape.inputs[0].shape[3] = 3
    short = request()
    short.raw_input_contents[0] = short.raw_input_contents[0][:-4]
    cases = [
        (bad_shape, "input 'image': expected shape [-1,28,28,1], got [1,28,28,3]"),
        (short, "raw_input_contents holds 3132 bytes; shape [1,28,28,1] of FP32 needs 3136"),
        (request(outputs=["nope"]), "unknown output 'nope'"),
        (pb.ModelInferRequest(model_name="mnist-mlp"), "the request has no inputs"),
    ]
    for message, fragment in cases:
        assert_status(rpc_error(stub.ModelInfer, message), grpc.StatusCode.INVALID_ARGUMENT, fragment)
    assert_status(
        rpc_error(stub.ModelInfer, request("nope")), grpc.StatusCode.NOT_FOUND, "unknown model 'nope'"
    )
    bad_version = request(model_version="x")
    assert_status(
        rpc_error(stub.ModelInfer, bad_version), grpc.StatusCode.INVALID_ARGUMENT, "positive integer"
    )
    too_many = request(rows=300)
    assert_status(
        rpc_error(stub.ModelInfer, too_many),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "request has 300 rows; the limit is 256",
    )


def test_messages_past_the_body_limit_are_resource_exhausted() -> None:
    with serving(models=["mnist-mlp"], max_body_bytes=64 * 1024) as (_, stub, _app):
        assert stub.ModelInfer(request(rows=16)).outputs  # 50 KB: under the limit
        error = rpc_error(stub.ModelInfer, request(rows=32))  # 100 KB
        assert_status(error, grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max")
        zeros = build_infer_request("mnist-mlp", {"image": ("FP32", np.zeros((64, 28, 28, 1), np.float32))})
        assert len(zeros.SerializeToString()) > 64 * 1024
        error = rpc_error(stub.ModelInfer, zeros, compression=grpc.Compression.Gzip)  # a few KB on the wire
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
        assert stub.ModelInfer(request(rows=1)).outputs


def test_grpc_metrics_carry_their_protocol(served: tuple[TestClient, Any, FastAPI]) -> None:
    http, stub, _ = served
    before = http.get("/metrics").text
    stub.ModelInfer(request())
    rpc_error(stub.ModelInfer, request(outputs=["nope"]))
    after = http.get("/metrics").text
    grpc_ok = {**MV, "status": "ok", "protocol": "grpc"}
    grpc_bad = {**MV, "status": "bad_request", "protocol": "grpc"}
    http_ok = {**MV, "status": "ok", "protocol": "http"}
    assert (
        sample(after, "inference_requests_total", **grpc_ok)
        - sample(before, "inference_requests_total", **grpc_ok)
        == 1
    )
    assert (
        sample(after, "inference_requests_total", **grpc_bad)
        - sample(before, "inference_requests_total", **grpc_bad)
        == 1
    )
    assert sample(after, "inference_requests_total", **http_ok) == sample(
        before, "inference_requests_total", **http_ok
    )
    duration = {**MV, "protocol": "grpc"}
    assert sample(after, "inference_request_duration_seconds_count", **duration) >= 2


def test_a_grpc_and_an_http_request_share_one_batch() -> None:
    # The batch only starts when it holds max_batch_size (2) rows or after 10 s: one row from each protocol.
    with serving(
        models=["mnist-mlp"], max_batch_size=2, max_queue_delay_us=10_000_000, batch_wait="fixed"
    ) as (http, stub, app):
        batcher = app.state.models.get("mnist-mlp").batcher
        before = http.get("/metrics").text
        pending = stub.ModelInfer.future(request(rows=1))
        wait_for(lambda: batcher.queue_rows == 1)
        assert batcher.queue_rows == 1 and not pending.done()
        over_http = http_probabilities(http, "mnist-mlp", images(1, offset=1))
        over_grpc = response_arrays(pending.result(timeout=30))["probabilities"]
        after = http.get("/metrics").text
        assert (
            sample(after, "inference_batch_size_count", **MV)
            - sample(before, "inference_batch_size_count", **MV)
            == 1
        )
        assert (
            sample(after, "inference_batch_size_sum", **MV) - sample(before, "inference_batch_size_sum", **MV)
            == 2
        )
        alone = http_probabilities(http, "mnist-mlp", images(2))  # both images again, in one HTTP request
        np.testing.assert_allclose(np.concatenate([over_grpc, over_http]), alone, atol=1e-6)


def test_overload_is_unavailable_and_the_timeout_parameter_a_deadline() -> None:
    settings = {
        "models": ["mnist-mlp"],
        "max_batch_size": 8,
        "max_queue_rows": 8,
        "max_request_rows": 8,
        "max_queue_delay_us": 10_000_000,
        "batch_wait": "fixed",
    }
    with serving(**settings) as (http, stub, app):
        batcher = app.state.models.get("mnist-mlp").batcher
        waiting = stub.ModelInfer.future(request(rows=5, timeout_us=300_000))
        wait_for(lambda: batcher.queue_rows == 5)
        assert batcher.queue_rows == 5
        full = rpc_error(stub.ModelInfer, request(rows=4))
        assert_status(full, grpc.StatusCode.UNAVAILABLE, "queue is full (5 rows queued, limit 8)")
        assert ("grpc-retry-pushback-ms", "1000") in full.trailing_metadata()
        with pytest.raises(grpc.RpcError) as expired:
            waiting.result(timeout=30)
        assert_status(
            expired.value,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "deadline exceeded before the request was computed",
        )
        wait_for(lambda: batcher.queue_rows == 0)
        metrics = http.get("/metrics").text
        assert sample(metrics, "inference_requests_total", **MV, status="rejected", protocol="grpc") == 1
        assert sample(metrics, "inference_requests_total", **MV, status="timeout", protocol="grpc") == 1
        assert sample(metrics, "inference_batches_total", **MV) == 0


def test_the_grpc_deadline_drops_the_queued_request() -> None:
    with serving(models=["mnist-mlp"], max_queue_delay_us=10_000_000, batch_wait="fixed") as (
        http,
        stub,
        app,
    ):
        batcher = app.state.models.get("mnist-mlp").batcher
        error = rpc_error(stub.ModelInfer, request(rows=2), timeout=0.3)
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_for(lambda: batcher.queue_rows == 0 and batcher.pending == 0)
        assert batcher.queue_rows == 0 and batcher.pending == 0
        wait_for(lambda: "timeout" in http.get("/metrics").text)
        metrics = http.get("/metrics").text
        assert sample(metrics, "inference_requests_total", **MV, status="timeout", protocol="grpc") == 1
        assert sample(metrics, "inference_batches_total", **MV) == 0


def test_draining_turns_readiness_off_and_refuses_new_calls() -> None:
    with serving(models=["mnist-mlp"]) as (_, stub, app):
        app.state.lifecycle.draining = True
        assert not stub.ServerReady(pb.ServerReadyRequest()).ready
        assert not stub.ModelReady(pb.ModelReadyRequest(name="mnist-mlp")).ready
        error = rpc_error(stub.ModelInfer, request())
        assert_status(error, grpc.StatusCode.UNAVAILABLE, "server is draining")
        with grpc.insecure_channel(f"127.0.0.1:{app.state.grpc_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert stub.ServerLive(pb.ServerLiveRequest()).live


def test_stream_answers_every_request_and_reports_failures_in_band(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    bad = request(request_id="bad")
    bad.inputs[0].datatype = "INT8"
    sent = [
        request(request_id="a"),
        bad,
        request("mnist-cnn", 2, request_id="b"),
        request("nope", request_id="c"),
    ]
    answers = {a.infer_response.id: a for a in stub.ModelStreamInfer(iter(sent))}
    assert set(answers) == {"a", "bad", "b", "c"}
    assert answers["a"].error_message == "" and response_arrays(answers["a"].infer_response)[
        "probabilities"
    ].shape == (1, 10)
    assert answers["b"].infer_response.model_name == "mnist-cnn"
    assert "expected datatype FP32 (or UINT8), got INT8" in answers["bad"].error_message
    assert answers["c"].error_message == "unknown model 'nope'"


# ---- admin -------------------------------------------------------------------------------------------


def test_admin_load_and_unload_need_the_token(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    unload = pb.RepositoryModelUnloadRequest(model_name="mnist-mlp")
    assert_status(
        rpc_error(stub.RepositoryModelUnload, unload), grpc.StatusCode.UNAUTHENTICATED, "missing bearer token"
    )
    wrong = (("authorization", "Bearer wrong-token-123456"),)
    assert_status(
        rpc_error(stub.RepositoryModelUnload, unload, metadata=wrong),
        grpc.StatusCode.PERMISSION_DENIED,
        "invalid admin token",
    )
    basic = (("authorization", f"Basic {TOKEN}"),)
    assert_status(
        rpc_error(stub.RepositoryModelUnload, unload, metadata=basic),
        grpc.StatusCode.UNAUTHENTICATED,
        "Bearer",
    )
    auth = (("authorization", f"Bearer {TOKEN}"),)
    stub.RepositoryModelUnload(unload, metadata=auth)
    assert not stub.ModelReady(pb.ModelReadyRequest(name="mnist-mlp")).ready
    assert_status(
        rpc_error(stub.ModelInfer, request()), grpc.StatusCode.NOT_FOUND, "unknown model 'mnist-mlp'"
    )
    missing = pb.RepositoryModelLoadRequest(model_name="nope")
    assert_status(
        rpc_error(stub.RepositoryModelLoad, missing, metadata=auth), grpc.StatusCode.NOT_FOUND, "nope"
    )
    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="mnist-mlp"), metadata=auth)
    assert stub.ModelReady(pb.ModelReadyRequest(name="mnist-mlp")).ready
    assert stub.ModelInfer(request()).outputs


def test_admin_is_refused_without_a_configured_token() -> None:
    with serving(models=["mnist-mlp"]) as (_, stub, _app):
        auth = (("authorization", "Bearer anything-at-all-123"),)
        error = rpc_error(
            stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="mnist-mlp"), metadata=auth
        )
        assert_status(error, grpc.StatusCode.PERMISSION_DENIED, "the admin API is disabled")


def test_grpc_port_zero_serves_no_grpc() -> None:
    app = create_app(
        Settings(model_repository=MODELS, models=["mnist-mlp"], grpc_port=0), grpc_host="127.0.0.1"
    )
    with TestClient(app) as http:
        assert http.get("/v2/health/ready").status_code == 200
        assert not hasattr(app.state, "grpc_port")


def test_grpc_follows_a_canary_sticky_per_routing_key(tmp_path: Path) -> None:
    publish_variant(MODELS / "mnist-mlp" / "1", tmp_path, "mnist-mlp", 1)
    publish_variant(MODELS / "mnist-mlp" / "1", tmp_path, "mnist-mlp", 2, candidate=True)
    with serving(model_repository=tmp_path, models=["mnist-mlp"], admin_token=TOKEN) as (http, stub, _):
        assert {stub.ModelInfer(request()).model_version for _ in range(10)} == {"1"}
        started = http.post(
            "/v2/repository/models/mnist-mlp/rollout",
            json={"candidate": "2", "stages": [{"kind": "canary", "weight": 0.5, "min_requests": 10**6}]},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert started.status_code == 200, started.text
        seen: dict[str, set[str]] = {}
        for key in (f"grpc-client-{n}" for n in range(12)):
            for _ in range(4):
                answer = stub.ModelInfer(request(), metadata=(("routing-key", key),))
                seen.setdefault(key, set()).add(answer.model_version)
        assert all(len(versions) == 1 for versions in seen.values()), seen
        assert set().union(*seen.values()) == {"1", "2"}
