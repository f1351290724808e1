"""The gRPC call's context: its request id and, when tracing is on, its server span.

:func:`in_context` wraps a method of ``inference.GRPCInferenceService`` only when tracing or JSON logs
are on (:class:`service.grpc.server.GrpcServer`); otherwise the methods are registered as they are and
calls do no work for it. Per call it sets :data:`service.telemetry.logs.request_id` from the ``x-request-id``
metadata (or a new one; answered back in the trailing metadata) and, with tracing, opens a SERVER span named
``inference.GRPCInferenceService/<Method>`` that continues the caller's ``traceparent`` metadata, with
``rpc.*`` attributes and the status code; a failed call's span status carries the status details the
client received. A ``ModelStreamInfer`` stream is one span; each request in it gets a ``request``
child (:func:`stream_request`), which the core annotates and batches link to.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
from grpc.aio import ServicerContext as Context

from service.telemetry.logs import pick_request_id, request_id
from service.telemetry.tracing import Tracing, current, error_status

SERVICE = "inference.GRPCInferenceService"
_CARRIED = frozenset({"traceparent", "tracestate", "x-request-id"})


def _carrier(context: Context) -> dict[str, str]:
    return {k: v for k, v in context.invocation_metadata() or () if k in _CARRIED and isinstance(v, str)}


@contextmanager
def _call_span(tracing: Tracing | None, method: str, carrier: dict[str, str], rid: str) -> Iterator[Any]:
    """The call's server span, current in the block; None when tracing is off or the call not sampled."""
    if tracing is None:
        yield None
        return
    attributes = {"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": method, "request.id": rid}
    span = tracing.server_span(f"{SERVICE}/{method}", carrier, attributes)
    if not span.is_recording():
        yield None
        return
    with current(span):
        yield span


def _finish(span: Any, context: Context, failed: bool) -> None:
    code = context.code()
    if code is None:
        code = grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code is not grpc.StatusCode.OK:
        span.set_status(error_status(context.details() or code.name))
        span.set_attribute("error.type", code.name)


def in_context(
    behaviour: Callable[[Any, Context], Any], method: str, tracing: Tracing | None, streaming: bool
) -> Callable[[Any, Context], Any]:
    """``behaviour`` run with the call's request id and server span (see the module docstring)."""

    async def unary(request: Any, context: Context) -> Any:
        carrier = _carrier(context)
        rid = pick_request_id(carrier.pop("x-request-id", None))
        token = request_id.set(rid)
        try:
            context.set_trailing_metadata((("x-request-id", rid),))
            with _call_span(tracing, method, carrier, rid) as span:
                failed = True
                try:
                    response = await behaviour(request, context)
                    failed = False
                    return response
                finally:
                    if span is not None:
                        _finish(span, context, failed)
        finally:
            request_id.reset(token)

    async def stream(requests: Any, context: Context) -> AsyncIterator[Any]:
        carrier = _carrier(context)
        rid = pick_request_id(carrier.pop("x-request-id", None))
        token = request_id.set(rid)
        try:
            context.set_trailing_metadata((("x-request-id", rid),))
            with _call_span(tracing, method, carrier, rid) as span:
                failed = True
                try:
                    async for answer in behaviour(requests, context):
                        yield answer
                    failed = False
                finally:
                    if span is not None:
                        _finish(span, context, failed)
        finally:
            request_id.reset(token)

    return stream if streaming else unary


async def stream_request(
    tracing: Tracing | None, request_id_in_stream: str, answer: Callable[[], Awaitable[Any]]
) -> Any:
    """One request of a ``ModelStreamInfer`` stream: under a ``request`` span when tracing is on."""
    if tracing is None:
        return await answer()
    with tracing.child("request", {"inference.request.id": request_id_in_stream}):
        return await answer()
