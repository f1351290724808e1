"""ASGI dispatch below the framework: ``POST /v2/models/{m}[/versions/{v}]/infer`` answered from the scope.

On CPU the HTTP path, not the model, bounds throughput, and FastAPI's routing and dependency solving
cost more per request than parsing a 28x28 tensor. So :class:`FastPath` answers infer requests from
the ASGI scope. It is the *innermost* middleware of the app, an explicit layer between Starlette's
middleware stack and FastAPI's router (:func:`service.app.create_app` adds it first): every middleware,
whether the app's own or one added to the app later (CORS, auth, tracing), still sees every request,
the hot route included; only routing and dependency injection are skipped. The exchange itself is
:func:`service.http.infer.answer_infer`, which the documented FastAPI route calls too; errors are
answered through :mod:`service.http.errors`, as FastAPI's handlers answer them.

:class:`CloseWhileDraining` adds ``Connection: close`` to every answer while the server drains.

:func:`outermost` is what ``python -m service`` hands to uvicorn: the same exchange answered *before*
uvicorn's proxy-header layer and Starlette's middleware stack (error middleware, FastAPI's body limit and
telemetry layers, :class:`CloseWhileDraining`), which cost about a twentieth of the event loop at c=64 and
do nothing for this route: its errors are answered as JSON by :func:`~service.http.errors.asgi_error`
either way, it reads no client address or scheme, and it says ``Connection: close`` itself while
draining. It is used only when the app has no middleware of its own around the fast path that must see
every request (:class:`~service.http.tracing.RequestContext`, for tracing and JSON logs, and anything an
embedder added); then the inner :class:`FastPath` answers, as before.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core import InferenceService
from service.http.body import read_asgi_body
from service.http.errors import asgi_error
from service.http.infer import answer_infer
from service.http.paths import INFER_PATH

#: The request headers the infer exchange reads.
WANTED = frozenset(
    {b"content-length", b"content-encoding", b"inference-header-content-length", b"x-routing-key"}
)


class FastPath:
    """ASGI middleware that answers V2 infer requests itself and passes everything else on.

    With ``closes_while_draining`` its answers carry ``Connection: close`` while the server drains (what
    :class:`CloseWhileDraining` adds when it wraps this layer)."""

    def __init__(self, app: ASGIApp, core: InferenceService, *, closes_while_draining: bool = False) -> None:
        self.app = app
        self.core = core
        self.closes_while_draining = closes_while_draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = INFER_PATH.fullmatch(scope["path"])
            if match is not None:
                await self._infer(match, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _infer(self, match: re.Match[str], scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in WANTED}

        async def read(limit: int) -> bytes:
            return await read_asgi_body(receive, headers.get("content-length"), limit)

        status, raw, body = await self.respond(match, scope["path"], headers, read)
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})

    async def respond(
        self,
        match: re.Match[str],
        path: str,
        headers: Mapping[str, str],
        read: Callable[[int], Awaitable[bytes]],
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """One infer exchange, whatever carries it: status, response headers and body. Here through ASGI;
        through the connection's own parser callbacks in :mod:`service.http.exchange`."""
        try:
            body, extra = await answer_infer(self.core, match[1], match[2], headers, read)
            status = 200
        except Exception as exc:
            status, body, extra = asgi_error(exc, path)
        raw: list[tuple[bytes, bytes]] = [(k.lower().encode(), v.encode()) for k, v in extra.items()]
        raw.append((b"content-length", str(len(body)).encode()))
        if self.closes_while_draining and self.core.draining:
            raw.append((b"connection", b"close"))
        return int(status), raw, body


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


#: The app's middleware (outermost first) that :func:`outermost` may answer infer requests ahead of:
#: Starlette's error middleware, FastAPI's telemetry (off, see :mod:`service.app`) and body-limit layers
#: (no limit set; the exchange enforces ``SERVE_MAX_BODY_BYTES`` itself) and :class:`CloseWhileDraining`.
_SKIPPABLE = frozenset(
    {"ServerErrorMiddleware", "ExceptionTelemetryMiddleware", "AppBodyLimitMiddleware", "CloseWhileDraining"}
)


def outermost(app: ASGIApp, core: InferenceService | None) -> ASGIApp:
    """``app`` (what uvicorn serves, its own middleware included) behind a :class:`FastPath` that answers
    infer requests first, when nothing of the app's own stands between Starlette's error middleware and
    the app's :class:`FastPath`; else ``app`` unchanged. The app's middleware stack is built here, so
    no middleware can be added to it afterwards (Starlette refuses, as it does once an app started)."""
    if core is None:
        return app
    inner = app
    while not isinstance(inner, FastAPI) and hasattr(inner, "app"):
        inner = inner.app
    if not isinstance(inner, FastAPI) or getattr(inner, "max_body_size", None) is not None:
        return app
    if inner.middleware_stack is None:
        inner.middleware_stack = inner.build_middleware_stack()
    stack: Any = inner.middleware_stack
    seen: list[str] = []
    while stack is not None and not isinstance(stack, FastPath):
        seen.append(type(stack).__name__)
        stack = getattr(stack, "app", None)
    if stack is None or any(name not in _SKIPPABLE for name in seen):
        return app
    return FastPath(app, core, closes_while_draining=True)
