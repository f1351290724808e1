"""service.telemetry.tracing: the spans of a request, a batch and the model lifecycle, with the SDK's
in-memory exporter behind the real app; the configuration from ``OTEL_*``; and tracing off meaning no tracer
at all."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from PIL import Image

from service.app import create_app
from service.core.batching import Batcher
from service.errors import DeadlineExceeded
from service.settings import Settings
from service.telemetry import tracing as tracing_module
from service.telemetry.tracing import Tracing, TracingConfigError, check_environment, enabled_in
from tests.helpers.data import ROOT
from tests.helpers.modelfactory import WrittenModel, write_model_version

IMAGES = np.random.default_rng(5).uniform(0, 50, (2, 28, 28, 1)).astype(np.float32)
BODY = orjson.dumps(
    {
        "inputs": [
            {"name": "image", "datatype": "FP32", "shape": [2, 28, 28, 1], "data": IMAGES.ravel().tolist()}
        ]
    }
)
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, WrittenModel]:
    root = tmp_path_factory.mktemp("models")
    return root, write_model_version(root, "tiny", 1)


@pytest.fixture
def traced(model: tuple[Path, WrittenModel]) -> Iterator[tuple[TestClient, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    tracing = Tracing.create(exporter, batch_export=False)
    settings = Settings(model_repository=model[0], max_queue_delay_us=0, admin_token="a" * 16)
    with TestClient(create_app(settings, tracing=tracing)) as client:
        exporter.clear()  # the start-up load is checked on its own below
        yield client, exporter


def by_name(spans: tuple[ReadableSpan, ...] | list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def one(spans: tuple[ReadableSpan, ...] | list[ReadableSpan], name: str) -> ReadableSpan:
    found = by_name(spans, name)
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]


def test_an_infer_request_is_one_trace_continuing_the_callers(
    traced: tuple[TestClient, InMemorySpanExporter],
) -> None:
    client, exporter = traced
    response = client.post("/v2/models/tiny/infer", content=BODY, headers={"traceparent": TRACEPARENT})
    assert response.status_code == 200
    spans = exporter.get_finished_spans()
    server = one(spans, "POST /v2/models/{model_name}/infer")
    assert server.kind is SpanKind.SERVER
    assert format(server.context.trace_id, "032x") == CALLER_TRACE
    assert server.parent is not None and format(server.parent.span_id, "016x") == CALLER_SPAN
    attributes = dict(server.attributes or {})
    assert attributes["http.route"] == "/v2/models/{model_name}/infer"
    assert attributes["http.response.status_code"] == 200
    assert attributes["inference.model.name"] == "tiny"
    assert attributes["inference.model.version"] == 1
    assert attributes["inference.rows"] == 2
    assert attributes["request.id"] == response.headers["x-request-id"]
    for name in ("decode", "queue", "batch", "encode"):
        child = one(spans, name)
        assert child.context.trace_id == server.context.trace_id, name
        assert child.parent is not None and child.parent.span_id == server.context.span_id, name
    batch = one(spans, "batch tiny/1")
    assert batch.context.trace_id != server.context.trace_id  # a trace of its own ...
    assert [link.context.span_id for link in batch.links] == [server.context.span_id]  # ... linked
    assert dict(batch.attributes or {})["inference.batch.rows"] == 2
    assert dict(batch.attributes or {})["inference.provider"] == "CPUExecutionProvider"
    request_batch = one(spans, "batch")
    assert [link.context.span_id for link in request_batch.links] == [batch.context.span_id]
    compute = one(spans, "compute")
    assert compute.parent is not None and compute.parent.span_id == batch.context.span_id
    assert compute.start_time is not None and batch.start_time is not None
    assert compute.start_time >= batch.start_time


def test_a_request_without_traceparent_starts_its_own_trace(
    traced: tuple[TestClient, InMemorySpanExporter],
) -> None:
    client, exporter = traced
    assert client.post("/v2/models/tiny/infer", content=BODY).status_code == 200
    assert client.post("/v2/models/tiny/infer", content=BODY).status_code == 200
    servers = by_name(exporter.get_finished_spans(), "POST /v2/models/{model_name}/infer")
    assert len(servers) == 2
    assert all(s.parent is None for s in servers)
    assert servers[0].context.trace_id != servers[1].context.trace_id


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v2/models/nope/infer", BODY, 404, "unknown model 'nope'"),
        ("/v2/models/tiny/infer", b"{", 400, None),
        ("/v2/models/tiny/versions/x/infer", BODY, 400, "model version must be a positive integer, got 'x'"),
    ],
)
def test_a_failed_request_has_the_clients_message_as_its_status(
    traced: tuple[TestClient, InMemorySpanExporter], path: str, body: bytes, status: int, message: str | None
) -> None:
    client, exporter = traced
    response = client.post(path, content=body)
    assert response.status_code == status
    answered = response.json()["error"]
    if message is not None:
        assert answered == message
    server = next(s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER)
    assert server.status.status_code is StatusCode.ERROR
    assert server.status.description == answered
    assert dict(server.attributes or {})["http.response.status_code"] == status


def test_other_routes_are_traced_by_their_route(traced: tuple[TestClient, InMemorySpanExporter]) -> None:
    client, exporter = traced
    assert client.get("/v2/models/tiny").status_code == 200
    server = one(exporter.get_finished_spans(), "GET /v2/models/{model_name}")
    assert dict(server.attributes or {})["http.route"] == "/v2/models/{model_name}"


def test_classify_has_a_preprocess_span(traced: tuple[TestClient, InMemorySpanExporter]) -> None:
    client, exporter = traced
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(buffer, format="PNG")
    image = buffer.getvalue()
    response = client.post("/v2/models/tiny/classify", content=image, headers={"content-type": "image/png"})
    assert response.status_code == 200, response.text
    spans = exporter.get_finished_spans()
    server = one(spans, "POST /v2/models/{model_name}/classify")
    preprocess = one(spans, "preprocess")
    assert preprocess.parent is not None and preprocess.parent.span_id == server.context.span_id
    assert dict(server.attributes or {})["inference.rows"] == 1


def test_unload_and_load_are_spans_under_the_admin_request(
    traced: tuple[TestClient, InMemorySpanExporter],
) -> None:
    client, exporter = traced
    auth = {"authorization": "Bearer " + "a" * 16}
    assert client.post("/v2/repository/models/tiny/unload", headers=auth).status_code == 200
    assert client.post("/v2/repository/models/tiny/load", headers=auth).status_code == 200
    spans = exporter.get_finished_spans()
    unload_request = one(spans, "POST /v2/repository/models/{model_name}/unload")
    unload = one(spans, "model.unload")
    assert unload.parent is not None and unload.parent.span_id == unload_request.context.span_id
    load_request = one(spans, "POST /v2/repository/models/{model_name}/load")
    load = one(spans, "model.load")
    assert load.parent is not None and load.parent.span_id == load_request.context.span_id
    assert dict(load.attributes or {})["inference.model.version"] == 1
    assert load.status.status_code is StatusCode.UNSET


def test_the_start_up_load_is_a_trace_of_its_own(model: tuple[Path, WrittenModel]) -> None:
    exporter = InMemorySpanExporter()
    with TestClient(
        create_app(Settings(model_repository=model[0]), tracing=Tracing.create(exporter, batch_export=False))
    ):
        load = one(exporter.get_finished_spans(), "model.load")
    assert load.parent is None
    assert dict(load.attributes or {})["inference.provider"] == "CPUExecutionProvider"


# ---- the batch span, through a real Batcher -----------------------------------------------------------


async def _batch_of(tracing: Tracing, traced: list[bool], deadline_passes: bool = False) -> None:
    gate = asyncio.Event()

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": inputs["x"] * 2}

    batcher = Batcher(
        run,
        max_batch_size=len(traced) * (len(traced) + 1) // 2,  # every request's rows: one batch
        max_queue_delay_us=10_000_000,
        max_queue_rows=64,
        wait="fixed",
        tracer=tracing.batches("m", 3, "CPUExecutionProvider", 10),
    )
    batcher.start()

    async def request(n: int, trace_it: bool) -> None:
        await gate.wait()
        if trace_it:
            with tracing.tracer.start_as_current_span(f"request {n}"):
                await batcher.submit({"x": np.full((n + 1, 2), n, np.float32)})
        else:
            await batcher.submit({"x": np.full((n + 1, 2), n, np.float32)})

    tasks = [asyncio.create_task(request(n, t)) for n, t in enumerate(traced)]
    gate.set()
    await asyncio.gather(*tasks)
    await batcher.stop()


def test_one_batch_span_links_exactly_the_traced_requests_it_served() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing.create(exporter, batch_export=False)
    asyncio.run(_batch_of(tracing, [True, False, True, True]))
    spans = exporter.get_finished_spans()
    batch = one(spans, "batch m/3")
    requests = {s.context.span_id for s in spans if s.name.startswith("request ")}
    assert len(requests) == 3
    assert {link.context.span_id for link in batch.links} == requests
    attributes = dict(batch.attributes or {})
    assert attributes["inference.batch.requests"] == 4  # the untraced one is counted, not linked
    assert attributes["inference.batch.traced_requests"] == 3
    assert attributes["inference.batch.rows"] == 1 + 2 + 3 + 4
    assert attributes["inference.batch.max_rows"] == 10
    assert len(by_name(spans, "queue")) == 3
    for span in by_name(spans, "batch"):
        assert [link.context.span_id for link in span.links] == [batch.context.span_id]
        assert span.parent is not None and span.parent.span_id in requests


def test_an_untraced_batch_has_no_span() -> None:
    exporter = InMemorySpanExporter()
    asyncio.run(_batch_of(Tracing.create(exporter, batch_export=False), [False, False]))
    assert exporter.get_finished_spans() == ()


def test_a_request_dropped_from_the_queue_ends_its_queue_span_with_the_error() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing.create(exporter, batch_export=False)

    async def scenario() -> None:
        batcher = Batcher(
            lambda inputs: inputs,
            max_batch_size=4,
            max_queue_delay_us=10_000_000,
            max_queue_rows=64,
            wait="fixed",
            tracer=tracing.batches("m", 1, "CPUExecutionProvider", 4),
        )
        batcher.start()
        loop = asyncio.get_running_loop()
        with tracing.tracer.start_as_current_span("request"), pytest.raises(DeadlineExceeded):
            await batcher.submit({"x": np.zeros((1, 2), np.float32)}, deadline=loop.time() + 0.05)
        await batcher.stop()

    asyncio.run(scenario())
    queue = one(exporter.get_finished_spans(), "queue")
    assert queue.status.status_code is StatusCode.ERROR
    assert queue.status.description == "deadline exceeded before the request was computed"


# ---- configuration, and tracing off -----------------------------------------------------------------


def test_tracing_is_on_only_with_an_endpoint() -> None:
    assert not enabled_in({})
    assert enabled_in({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert enabled_in({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"})
    assert not enabled_in({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318", "OTEL_SDK_DISABLED": "true"})
    assert not enabled_in({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318", "OTEL_TRACES_EXPORTER": "none"})
    assert tracing_module.from_env({}) is None


@pytest.mark.parametrize(
    ("environ", "complaint"),
    [
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "x"}, "SAMPLER_ARG"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "http/protobuf"),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "http://"),
    ],
)
def test_settings_the_sdk_would_silently_replace_are_refused(environ: dict[str, str], complaint: str) -> None:
    with pytest.raises(TracingConfigError, match=complaint):
        check_environment(environ)


def test_the_process_exits_2_on_bad_tracing_settings() -> None:
    env = {"PATH": "/usr/bin:/bin", "OTEL_TRACES_SAMPLER": "sometimes", "SERVE_MODEL_REPOSITORY": "models"}
    result = subprocess.run(
        [sys.executable, "-m", "service", "--port", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "OTEL_TRACES_SAMPLER" in result.stderr


OFF_SCRIPT = """
import sys
from fastapi.testclient import TestClient
from service.app import create_app
from service.settings import Settings
body = open(sys.argv[2], "rb").read()
app = create_app(Settings(model_repository=sys.argv[1], max_queue_delay_us=0))
with TestClient(app) as client:
    assert client.post("/v2/models/tiny/infer", content=body).status_code == 200
    core = app.state.core
    served = core.registry.get("tiny")
    print(core.tracing, served.batcher._tracer, "x-request-id" in client.get("/v2").headers)
print(sorted(m for m in sys.modules if m.startswith("opentelemetry.sdk")))
"""


def test_with_tracing_off_no_sdk_is_loaded_and_no_tracer_exists(
    model: tuple[Path, WrittenModel], tmp_path: Path
) -> None:
    body = tmp_path / "body.json"
    body.write_bytes(BODY)
    result = subprocess.run(
        [sys.executable, "-c", OFF_SCRIPT, str(model[0]), str(body)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["None None False", "[]"]


def test_feedback_is_classified_and_stored_under_the_request(
    model: tuple[Path, WrittenModel], tmp_path: Path
) -> None:
    exporter = InMemorySpanExporter()
    settings = Settings(
        model_repository=model[0], feedback_dir=tmp_path / "feedback", feedback_token="f" * 16
    )
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(buffer, format="PNG")
    with TestClient(create_app(settings, tracing=Tracing.create(exporter, batch_export=False))) as client:
        exporter.clear()
        response = client.post(
            "/v2/models/tiny/feedback?label=class_1",
            content=buffer.getvalue(),
            headers={"content-type": "image/png", "authorization": "Bearer " + "f" * 16},
        )
    assert response.status_code == 201, response.text
    spans = exporter.get_finished_spans()
    server = one(spans, "POST /v2/models/{model_name}/feedback")
    store = one(spans, "feedback.store")
    assert store.parent is not None and store.parent.span_id == server.context.span_id
    assert dict(store.attributes or {})["feedback.id"] == response.json()["id"]
    assert one(spans, "preprocess").context.trace_id == server.context.trace_id
