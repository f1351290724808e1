"""service.grpc.tracing: server spans, request ids and stream requests, over a real gRPC server and channel
with the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NamedTuple

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from service.core import InferenceService
from service.grpc.generated import grpc_service_pb2 as pb
from service.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from service.grpc.server import inference_handlers, open_grpc_server
from service.grpc.servicer import InferenceServicer
from service.grpc.tensors import build_infer_request
from service.settings import Settings
from service.telemetry.metrics import Metrics
from service.telemetry.tracing import Tracing
from tests.helpers.modelfactory import write_model_version
from tests.reliability.support import images

TRACE_ID, SPAN_ID = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"
METHOD = "inference.GRPCInferenceService/ModelInfer"


SERVERS = pytest.mark.parametrize("kind", ["native", "grpcio"])


def serve(
    test: Callable[[str], Awaitable[None]],
    tmp_path: Path,
    tracing: Tracing | None,
    kind: str,
    log_format: str = "text",
) -> None:
    write_model_version(tmp_path, "tiny", 1)

    async def main() -> None:
        settings = Settings(
            model_repository=tmp_path, max_queue_delay_us=0, log_format=log_format, grpc_server=kind
        )
        core = InferenceService(settings, Metrics(CollectorRegistry()), tracing)
        await core.start()
        server = open_grpc_server(core)
        port = await server.start("127.0.0.1", 0)
        try:
            await test(f"127.0.0.1:{port}")
        finally:
            await server.stop(1)
            await core.stop()

    asyncio.run(main())


def traced() -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    return Tracing.create(exporter, batch_export=False), exporter


def named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


@SERVERS
def test_model_infer_continues_the_callers_trace_and_answers_the_request_id(
    tmp_path: Path, kind: str
) -> None:
    tracing, exporter = traced()
    trailers: list[tuple[str, str]] = []

    async def test(address: str) -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            call = stub.ModelInfer(
                build_infer_request("tiny", {"image": ("FP32", images(3))}),
                metadata=(("traceparent", TRACEPARENT), ("x-request-id", "abc-1")),
            )
            await call
            trailers.extend((k, v) for k, v in await call.trailing_metadata() or ())

    serve(test, tmp_path, tracing, kind)
    assert ("x-request-id", "abc-1") in trailers
    spans = exporter.get_finished_spans()
    (server,) = named(spans, METHOD)
    assert server.kind is SpanKind.SERVER
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert server.parent is not None and format(server.parent.span_id, "016x") == SPAN_ID
    attributes = dict(server.attributes or {})
    assert attributes["rpc.system"] == "grpc" and attributes["rpc.method"] == "ModelInfer"
    assert attributes["rpc.grpc.status_code"] == 0
    assert attributes["request.id"] == "abc-1"
    assert attributes["inference.rows"] == 3 and attributes["inference.protocol"] == "grpc"
    for name in ("decode", "queue", "batch", "encode"):
        (child,) = named(spans, name)
        assert child.parent is not None and child.parent.span_id == server.context.span_id
    (batch,) = named(spans, "batch tiny/1")
    assert [link.context.span_id for link in batch.links] == [server.context.span_id]


@SERVERS
def test_a_failed_call_has_the_clients_details_as_its_status(tmp_path: Path, kind: str) -> None:
    tracing, exporter = traced()
    details: list[str] = []
    trailers: list[tuple[str, str]] = []

    async def test(address: str) -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.ModelInfer(
                    build_infer_request("tiny", {"image": ("FP32", images(1)[:, :27])}),
                    metadata=(("x-request-id", "bad-1"),),
                )
            assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            details.append(failed.value.details() or "")
            trailers.extend(failed.value.trailing_metadata() or ())

    serve(test, tmp_path, tracing, kind)
    (server,) = named(exporter.get_finished_spans(), METHOD)
    assert server.status.status_code is StatusCode.ERROR
    assert server.status.description == details[0] and "shape" in details[0]
    assert dict(server.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert ("x-request-id", "bad-1") in trailers  # the error's trailers keep it


@SERVERS
def test_each_request_of_a_stream_is_a_span_under_the_streams(tmp_path: Path, kind: str) -> None:
    tracing, exporter = traced()
    answers: list[pb.ModelStreamInferResponse] = []

    async def test(address: str) -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            requests = [
                build_infer_request("tiny", {"image": ("FP32", images(1))}, request_id="one"),
                build_infer_request("tiny", {"image": ("FP32", images(2))}, request_id="two"),
                build_infer_request("nope", {"image": ("FP32", images(1))}, request_id="bad"),
            ]
            call = stub.ModelStreamInfer(iter(requests), metadata=(("traceparent", TRACEPARENT),))
            answers.extend([a async for a in call])

    serve(test, tmp_path, tracing, kind)
    spans = exporter.get_finished_spans()
    (stream,) = named(spans, "inference.GRPCInferenceService/ModelStreamInfer")
    assert format(stream.context.trace_id, "032x") == TRACE_ID
    requests = {dict(s.attributes or {})["inference.request.id"]: s for s in named(spans, "request")}
    assert set(requests) == {"one", "two", "bad"}
    for rid, rows in (("one", 1), ("two", 2)):
        span = requests[rid]
        assert span.parent is not None and span.parent.span_id == stream.context.span_id
        assert dict(span.attributes or {})["inference.rows"] == rows
        assert span.status.status_code is StatusCode.UNSET
        queue = [s for s in named(spans, "queue") if s.parent and s.parent.span_id == span.context.span_id]
        assert len(queue) == 1
    linked = {link.context.span_id for b in named(spans, "batch tiny/1") for link in b.links}
    assert linked == {requests["one"].context.span_id, requests["two"].context.span_id}
    bad = next(a for a in answers if a.infer_response.id == "bad")
    assert requests["bad"].status.status_code is StatusCode.ERROR
    assert requests["bad"].status.description == bad.error_message == "unknown model 'nope'"


@SERVERS
def test_json_logs_alone_give_request_ids_without_any_span(tmp_path: Path, kind: str) -> None:
    trailers: list[tuple[str, str]] = []

    async def test(address: str) -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            call = pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest())
            await call
            trailers.extend((k, v) for k, v in await call.trailing_metadata() or ())

    serve(test, tmp_path, None, kind, log_format="json")
    ids = [v for k, v in trailers if k == "x-request-id"]
    assert len(ids) == 1 and len(ids[0]) == 16  # made up: 8 random bytes in hex


class Details(NamedTuple):
    method: str
    invocation_metadata: tuple[tuple[str, str], ...]


def test_without_tracing_or_json_logs_the_methods_are_not_wrapped(tmp_path: Path) -> None:
    write_model_version(tmp_path, "tiny", 1)
    core = InferenceService(Settings(model_repository=tmp_path), Metrics(CollectorRegistry()))
    plain = inference_handlers(InferenceServicer(core))
    wrapped = inference_handlers(InferenceServicer(core), None, wrap=True)

    def behaviour(handler: grpc.GenericRpcHandler) -> str:
        details = Details("/inference.GRPCInferenceService/ModelInfer", ())
        found = handler.service(details)  # type: ignore[arg-type]
        assert found is not None
        return str(found.unary_unary.__qualname__)

    # The servicer's method as it is: its own wrapper (servicer._rpc) refuses undecodable requests.
    assert behaviour(plain) == "InferenceServicer.ModelInfer"
    assert behaviour(wrapped) == "in_context.<locals>.unary"
