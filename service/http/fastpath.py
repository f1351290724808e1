"""The hot route below the framework: ``POST /v2/models/{m}[/versions/{v}]/infer`` straight from ASGI.

On CPU the HTTP path, not the model, bounds throughput, and FastAPI's routing and dependency solving
cost more per request than parsing a 28x28 tensor. So :class:`FastPath` answers infer requests from
the ASGI scope. It is the *innermost* middleware of the app, an explicit layer between Starlette's
middleware stack and FastAPI's router (:func:`service.app.create_app` adds it first): every middleware,
whether the app's own or one added to the app later (CORS, auth, tracing), still sees every request,
the hot route included; only routing and dependency injection are skipped. The documented FastAPI
route (:mod:`service.http.routes`) calls the same :func:`answer_infer`, so both answer identically.

:class:`CloseWhileDraining` adds ``Connection: close`` to every answer while the server drains.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.contract import parse_version
from service.core import InferenceService, InferRequest, InferResponse, ModelCall
from service.errors import InvalidInput, ServiceError
from service.http.body import decode_body, read_asgi_body
from service.http.errors import error_parts
from service.protocol import InferenceRequest, encode_infer_response, parse_infer_request

log = logging.getLogger("service")

INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
_WANTED = {b"content-length", b"content-encoding", b"inference-header-content-length", b"x-routing-key"}
#: Longest ``X-Routing-Key`` honoured (a longer one is cut: it only picks a rollout's version).
MAX_ROUTING_KEY = 256


def url_version(version: str | None) -> int | None:
    """The version named in a URL (None: newest); 400 unless it is a canonical positive integer."""
    if version is None:
        return None
    parsed = parse_version(version)
    if parsed is None:
        raise InvalidInput(f"model version must be a positive integer, got '{version[:32]}'")
    return parsed


async def answer_infer(
    core: InferenceService,
    model: str,
    version: str | None,
    headers: Mapping[str, str],
    read: Callable[[int], Awaitable[bytes]],
) -> tuple[bytes, dict[str, str]]:
    """One V2 infer exchange over HTTP: the response body and headers, or a ServiceError.

    ``headers`` are the request's, lower-case; ``read(limit)`` returns the raw body or raises
    PayloadTooLarge past ``limit`` bytes. ``X-Routing-Key`` keeps a client on one version during a
    rollout's canary (``docs/rollout.md``).
    """
    key = headers.get("x-routing-key")
    routing_key = key[:MAX_ROUTING_KEY] if key else None
    async with core.call(model, url_version(version), routing_key=routing_key) as call:
        limits = call.limits
        if call.trace is None:  # tracing off or this request not sampled
            parsed = await _decode(call, headers, read)
        else:
            with call.trace.child("decode"):
                parsed = await _decode(call, headers, read)
        timeout_s = parsed.timeout_us / 1e6 if parsed.timeout_us else limits.default_timeout_s
        outputs = None if parsed.outputs is None else [o.name for o in parsed.outputs]
        # parse_infer_request checked the inputs against this signature, so the core need not again.
        request = InferRequest(parsed.inputs, parsed.id, outputs, time.monotonic() + timeout_s, checked=True)
        response = await call.infer(request)
        if call.trace is None:
            return _encode(response, parsed, call)
        with call.trace.child("encode"):
            return _encode(response, parsed, call)


async def _decode(
    call: ModelCall, headers: Mapping[str, str], read: Callable[[int], Awaitable[bytes]]
) -> InferenceRequest:
    limits = call.limits
    body = await read(limits.max_body_bytes)
    body = decode_body(body, headers.get("content-encoding"), max_bytes=limits.max_body_bytes)
    return parse_infer_request(
        body,
        header_length=headers.get("inference-header-content-length"),
        signature=call.signature,
        max_rows=limits.max_request_rows,
    )


def _encode(
    response: InferResponse, parsed: InferenceRequest, call: ModelCall
) -> tuple[bytes, dict[str, str]]:
    return encode_infer_response(
        model_name=response.model,
        model_version=str(response.version),
        request_id=response.id,
        outputs=response.outputs,
        request=parsed,
        signature=call.signature,
    )


class FastPath:
    """ASGI middleware that answers V2 infer requests itself and passes everything else on."""

    def __init__(self, app: ASGIApp, core: InferenceService) -> None:
        self.app = app
        self.core = core

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = INFER_PATH.fullmatch(scope["path"])
            if match is not None:
                await self._infer(match, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _infer(self, match: re.Match[str], scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in _WANTED}

        async def read(limit: int) -> bytes:
            return await read_asgi_body(receive, headers.get("content-length"), limit)

        try:
            body, extra = await answer_infer(self.core, match[1], match[2], headers, read)
            status = 200
        except Exception as exc:
            if not isinstance(exc, ServiceError):
                log.exception("unhandled error on POST %s", scope["path"])
            status, body, extra = error_parts(exc)
            extra = {"content-type": "application/json", **extra}
        raw: list[tuple[bytes, bytes]] = [(k.lower().encode(), v.encode()) for k, v in extra.items()]
        raw.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": int(status), "headers": raw})
        await send({"type": "http.response.body", "body": body})


class CloseWhileDraining:
    """ASGI middleware: while draining, every answer carries ``Connection: close``, so no client reuses
    a keep-alive connection the server is about to close (its next request would be lost in the race)."""

    def __init__(self, app: ASGIApp, core: InferenceService) -> None:
        self.app = app
        self.core = core

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.core.draining:
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_closing)
