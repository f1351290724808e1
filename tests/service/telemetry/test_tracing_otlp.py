"""Tracing end to end: the real service process exports over OTLP/HTTP to a real receiver in this test.

The receiver is a small HTTP server that decodes each ``ExportTraceServiceRequest`` with
``opentelemetry-proto``, as a collector would. Requests over HTTP (httpx) and gRPC (tritonclient.grpc)
carry their own W3C ``traceparent``; they are sent together while the batcher holds batches open, so
several share a batch.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.helpers.data import load_digits
from tests.helpers.server import RunningService, running_service

pytestmark = pytest.mark.slow
HTTP_ROUTE = "POST /v2/models/{model_name}/infer"
GRPC_METHOD = "inference.GRPCInferenceService/ModelInfer"
ADMIN = "t" * 32


@dataclass
class Receiver:
    """What the OTLP endpoint received: every span, and the resource attributes it came with."""

    spans: list[Span] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, done: Any, timeout: float = 30.0) -> list[Span]:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not done(self.spans):
                left = deadline - time.monotonic()
                assert left > 0, f"spans not received in {timeout} s: {sorted({s.name for s in self.spans})}"
                self.changed.wait(left)
            return list(self.spans)


def attributes(item: Any) -> dict[str, Any]:
    out = {}
    for kv in item.attributes:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind) if kind else None
    return out


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, int]]:
    received = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path != "/v1/traces" or self.headers.get("content-type") != "application/x-protobuf":
                self.send_error(400)
                return
            export = ExportTraceServiceRequest.FromString(body)
            with received.changed:
                for resource_spans in export.resource_spans:
                    received.resources.append(attributes(resource_spans.resource))
                    for scope_spans in resource_spans.scope_spans:
                        received.spans.extend(scope_spans.spans)
                received.changed.notify_all()
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield received, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, receiver: tuple[Receiver, int]
) -> Iterator[RunningService]:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver[1]}",
        "OTEL_SERVICE_NAME": "digits-under-test",
        "OTEL_TRACES_SAMPLER": "always_on",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "SERVE_MODELS": "mnist-mlp",
        # Every request waits two seconds for company (9 rows never fill a batch of 32), so those sent
        # together share a batch even on a loaded machine.
        "SERVE_BATCH_WAIT": "fixed",
        "SERVE_MAX_QUEUE_DELAY_US": "2000000",
        "SERVE_LOG_FORMAT": "json",
        "SERVE_ADMIN_TOKEN": ADMIN,
    }
    with running_service(tmp_path_factory.mktemp("traced"), env=env) as running:
        yield running


def traceparent(n: int) -> tuple[str, str, str]:
    trace_id, span_id = f"{0xA0 + n:02x}" * 16, f"{0xB0 + n:02x}" * 8
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def send_together(service: RunningService) -> dict[str, tuple[str, str, str]]:
    """Three HTTP and three gRPC requests released at once; request id -> (protocol, trace id, span id)."""
    images = load_digits("mnist")[0]
    barrier = threading.Barrier(6)
    sent: dict[str, tuple[str, str, str]] = {}
    failures: list[BaseException] = []

    def over_http(n: int) -> None:
        trace_id, span_id, header = traceparent(n)
        image = images[n : n + 1]
        body = {
            "inputs": [
                {"name": "image", "datatype": "FP32", "shape": [1, 28, 28, 1], "data": image.ravel().tolist()}
            ]
        }
        barrier.wait(timeout=30)
        response = httpx.post(
            f"{service.url}/v2/models/mnist-mlp/infer",
            json=body,
            headers={"traceparent": header, "x-request-id": f"http-{n}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        assert response.headers["x-request-id"] == f"http-{n}"
        sent[f"http-{n}"] = ("http", trace_id, span_id)

    def over_grpc(n: int) -> None:
        trace_id, span_id, header = traceparent(n)
        tensor = triton_grpc.InferInput("image", [2, 28, 28, 1], "FP32")
        tensor.set_data_from_numpy(images[n : n + 2])
        with triton_grpc.InferenceServerClient(service.grpc_address) as client:
            barrier.wait(timeout=30)
            result = client.infer(
                "mnist-mlp", [tensor], headers={"traceparent": header, "x-request-id": f"grpc-{n}"}
            )
        assert result.as_numpy("probabilities").shape == (2, 10)
        sent[f"grpc-{n}"] = ("grpc", trace_id, span_id)

    def run(target: Any, n: int) -> None:
        try:
            target(n)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(over_http, n)) for n in range(3)]
    threads += [threading.Thread(target=run, args=(over_grpc, n)) for n in range(3, 6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures, failures
    return sent


def test_http_and_grpc_requests_are_traced_and_their_batches_linked_to_exactly_them(
    service: RunningService, receiver: tuple[Receiver, int]
) -> None:
    received, _ = receiver
    sent = send_together(service)
    callers = {
        bytes.fromhex(trace_id): (rid, bytes.fromhex(span_id)) for rid, (_, trace_id, span_id) in sent.items()
    }

    def servers(spans: list[Span]) -> list[Span]:
        return [s for s in spans if s.kind == Span.SPAN_KIND_SERVER and s.trace_id in callers]

    def complete(spans: list[Span]) -> bool:
        ours = {s.span_id for s in servers(spans)}
        linked = {link.span_id for s in spans if s.name.startswith("batch ") for link in s.links}
        return len(ours) == 6 and ours <= linked

    spans = received.wait_for(complete)
    assert {"service.name": "digits-under-test"}.items() <= received.resources[-1].items()
    request_spans = {}
    for server in servers(spans):
        rid, caller_span = callers[server.trace_id]
        protocol = sent[rid][0]
        assert server.parent_span_id == caller_span  # the caller's trace, continued
        assert server.name == (HTTP_ROUTE if protocol == "http" else GRPC_METHOD)
        attrs = attributes(server)
        assert attrs["request.id"] == rid
        assert attrs["inference.model.name"] == "mnist-mlp"
        assert attrs["inference.protocol"] == protocol
        assert attrs["inference.rows"] == (1 if protocol == "http" else 2)
        children = {s.name: s for s in spans if s.parent_span_id == server.span_id}
        assert set(children) >= {"decode", "queue", "batch", "encode"}
        assert all(c.trace_id == server.trace_id for c in children.values())  # one trace per request
        request_spans[server.span_id] = (server, children["batch"])
    assert len(request_spans) == 6

    batches = {
        s.span_id: s
        for s in spans
        if s.name == "batch mnist-mlp/1" and any(link.span_id in request_spans for link in s.links)
    }
    for batch in batches.values():
        linked = {link.span_id for link in batch.links}
        served = {sid for sid, (_, child) in request_spans.items() if child.links[0].span_id == batch.span_id}
        assert linked == served  # exactly the requests it served, each linking back
        assert batch.trace_id not in callers
        rows = sum(attributes(request_spans[sid][0])["inference.rows"] for sid in served)
        assert attributes(batch)["inference.batch.rows"] == rows
        assert attributes(batch)["inference.provider"] == "CPUExecutionProvider"
        computes = [s for s in spans if s.parent_span_id == batch.span_id and s.name == "compute"]
        assert len(computes) == 1
    assert sum(len(b.links) for b in batches.values()) == 6
    assert max(len(b.links) for b in batches.values()) >= 2  # sent together: some shared a batch


def test_a_failed_grpc_call_carries_the_clients_message(
    service: RunningService, receiver: tuple[Receiver, int]
) -> None:
    received, _ = receiver
    trace_id, span_id, header = traceparent(40)
    tensor = triton_grpc.InferInput("image", [1, 28, 28, 1], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 28, 28, 1), np.float32))
    with (
        triton_grpc.InferenceServerClient(service.grpc_address) as client,
        pytest.raises(Exception) as failed,
    ):
        client.infer("no-such-model", [tensor], headers={"traceparent": header})
    assert "unknown model 'no-such-model'" in str(failed.value)
    spans = received.wait_for(lambda spans: any(s.trace_id == bytes.fromhex(trace_id) for s in spans))
    server = next(s for s in spans if s.trace_id == bytes.fromhex(trace_id))
    assert server.parent_span_id == bytes.fromhex(span_id)
    assert server.status.code == Status.STATUS_CODE_ERROR
    assert server.status.message == "unknown model 'no-such-model'"
    assert attributes(server)["rpc.grpc.status_code"] == 5  # NOT_FOUND


def test_json_log_lines_and_traces_find_each_other(
    service: RunningService, receiver: tuple[Receiver, int]
) -> None:
    received, _ = receiver
    trace_id, _, header = traceparent(50)
    auth = {"authorization": f"Bearer {ADMIN}", "traceparent": header, "x-request-id": "unload-1"}
    assert httpx.post(f"{service.url}/v2/repository/models/mnist-mlp/unload", headers=auth).status_code == 200
    auth["x-request-id"] = "load-1"
    assert (
        httpx.post(f"{service.url}/v2/repository/models/mnist-mlp/load", headers=auth, timeout=60).status_code
        == 200
    )
    spans = received.wait_for(
        lambda spans: any(s.name == "model.load" and s.trace_id == bytes.fromhex(trace_id) for s in spans)
    )
    load = next(s for s in spans if s.name == "model.load" and s.trace_id == bytes.fromhex(trace_id))
    lines = [json.loads(line) for line in service.log().splitlines() if line.startswith("{")]
    serving = [line for line in lines if line["message"].startswith("serving mnist-mlp version 1")]
    # The start-up load (a trace of its own, no request) and the admin load (in the caller's trace).
    assert len(serving) == 2
    assert "request_id" not in serving[0] and len(serving[0]["trace_id"]) == 32
    assert serving[1]["request_id"] == "load-1"
    assert serving[1]["trace_id"] == trace_id
    assert serving[1]["span_id"] == load.span_id.hex()
    retiring = next(line for line in lines if line["message"].startswith("retiring mnist-mlp version 1"))
    assert retiring["request_id"] == "unload-1" and retiring["trace_id"] == trace_id
    # uvicorn's own lines go through the same JSON handler.
    assert any(line["logger"] == "uvicorn.error" for line in lines)
