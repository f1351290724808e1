"""The HTTP request's context: its request id and, when tracing is on, its server span.

:class:`RequestContext` is added to the app (outside every other middleware but Starlette's error
handling) only when tracing or JSON logs are on (:func:`service.app.create_app`); with both off it does
not exist and requests do no work for it. Per request it sets :data:`service.telemetry.logs.request_id` (the
client's ``X-Request-ID`` or a new one, answered back in the same header) and, with tracing, opens the
SERVER span that continues the caller's W3C ``traceparent``. The span is named ``METHOD route``
(``POST /v2/models/{model_name}/infer``) and carries the method, path, route, status code and request
id; the core adds the model, version and rows. An answer of 400 or more sets the span's status to
ERROR with the ``error`` message of the body the client received.
"""

from __future__ import annotations

from typing import Any

import orjson
from opentelemetry.trace import Span
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.http.paths import INFER_PATH
from service.telemetry.logs import pick_request_id, request_id
from service.telemetry.tracing import Tracing, current, error_status

_CARRIED = {b"traceparent", b"tracestate", b"x-request-id"}
_MAX_ERROR_BODY = 16 * 1024  # error bodies are {"error": message}; never buffer a large one


def route_of(scope: Scope) -> str | None:
    """The route template that answered (FastAPI's route, or the fast path's infer routes)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    match = INFER_PATH.fullmatch(scope["path"])
    if match is not None:
        versioned = "/versions/{version}" if match[2] is not None else ""
        return f"/v2/models/{{model_name}}{versioned}/infer"
    return None


class RequestContext:
    """ASGI middleware: request id and (with ``tracing``) the server span of every HTTP request."""

    def __init__(self, app: ASGIApp, tracing: Tracing | None) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in _CARRIED}
        rid = pick_request_id(carrier.pop("x-request-id", None))
        token = request_id.set(rid)
        try:
            span = None
            if self.tracing is not None:
                attributes: dict[str, Any] = {
                    "http.request.method": scope["method"],
                    "url.path": scope["path"],
                    "url.scheme": scope.get("scheme", "http"),
                    "request.id": rid,
                }
                if scope.get("client"):
                    attributes["client.address"] = scope["client"][0]
                span = self.tracing.server_span(scope["method"], carrier, attributes)
            if span is None or not span.is_recording():  # tracing off, or this request not sampled
                await self.app(scope, receive, _with_request_id(send, rid))
            else:
                await self._traced(span, scope, receive, send, rid)
        finally:
            request_id.reset(token)

    async def _traced(self, span: Span, scope: Scope, receive: Receive, send: Send, rid: str) -> None:
        method = scope["method"]
        status = 500
        error_body = bytearray()
        send_with_id = _with_request_id(send, rid)

        async def send_traced(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif status >= 400 and len(error_body) < _MAX_ERROR_BODY:
                error_body.extend(message.get("body", b"")[:_MAX_ERROR_BODY])
            await send_with_id(message)

        with current(span):
            try:
                await self.app(scope, receive, send_traced)
            finally:
                route = route_of(scope)
                if route is not None:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if status >= 400:
                    span.set_status(error_status(_error_message(bytes(error_body), status)))
                    span.set_attribute("error.type", str(status))


def _with_request_id(send: Send, rid: str) -> Send:
    header = (b"x-request-id", rid.encode("latin-1"))

    async def send_with_id(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), header]}
        await send(message)

    return send_with_id


def _error_message(body: bytes, status: int) -> str:
    """The ``error`` the client was answered with, or the status when the body is not ours."""
    try:
        message = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        message = None
    if isinstance(message, str):
        return message
    return "internal server error" if status == 500 and not body else f"HTTP {status}"
