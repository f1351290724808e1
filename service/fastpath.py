"""The hot route without the framework: a pure-ASGI front for ``POST /v2/models/{m}[/versions/{v}]/infer``.

On CPU the HTTP path, not the model, bounds throughput. FastAPI's routing, dependency solving and
middleware cost more per request than parsing a 28x28 tensor, so :class:`ServingApp` answers infer
requests straight from the ASGI scope, with the same core (:func:`service.api.run_infer`) and the same
error bodies as the documented route; every other request goes through FastAPI as usual.
"""

from __future__ import annotations

import logging
import re

import orjson
from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send

from service.api import read_asgi_body, run_infer
from service.errors import ServiceError

log = logging.getLogger(__name__)

INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
_WANTED = {b"content-length", b"content-encoding", b"inference-header-content-length"}


class ServingApp(FastAPI):
    """FastAPI, with infer requests short-circuited to :func:`run_infer`."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.state.lifecycle.draining:
            send = _closing(send)
        if scope["type"] == "http" and scope["method"] == "POST":
            match = INFER_PATH.fullmatch(scope["path"])
            if match is not None:
                await self._infer(match, scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def _infer(self, match: re.Match[str], scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in _WANTED}

        async def read(limit: int) -> bytes:
            return await read_asgi_body(receive, headers.get("content-length"), limit)

        try:
            body, extra = await run_infer(self.state, match[1], match[2], headers, read)
            status = 200
        except ServiceError as exc:
            status, body, extra = exc.status, orjson.dumps({"error": exc.message}), exc.headers
            extra = {"content-type": "application/json", **extra}
        except Exception:
            log.exception("unhandled error on POST %s", scope["path"])
            status, body = 500, orjson.dumps({"error": "internal server error"})
            extra = {"content-type": "application/json"}
        raw: list[tuple[bytes, bytes]] = [(k.lower().encode(), v.encode()) for k, v in extra.items()]
        raw.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": int(status), "headers": raw})
        await send({"type": "http.response.body", "body": body})


def _closing(send: Send) -> Send:
    """``send`` with ``Connection: close`` on the response: while draining, a client must not reuse a
    keep-alive connection that the server is about to close (its next request would be lost in the race)."""

    async def send_closing(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
        await send(message)

    return send_closing
