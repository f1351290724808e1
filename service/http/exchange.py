"""Infer requests answered from the HTTP/1.1 parser's callbacks, without an ASGI request cycle.

When uvicorn serves :class:`~service.http.dispatch.FastPath` itself (nothing of the app's own must see
every request: :func:`~service.http.dispatch.outermost`), the connection
(:class:`~service.http.connection.GuardedProtocol`) hands a plain infer request to a
:class:`DirectExchange` at the end of its header block. The body is gathered from the parser's
callbacks, the exchange itself is :meth:`FastPath.respond <service.http.dispatch.FastPath.respond>`, the
one the ASGI path runs, and the answer goes out in one write. What this skips per request: the ASGI
scope and its state copy, uvicorn's request cycle with its event, the receive and send messages, the
checks of every header uvicorn's send makes, and a second write for the body.

Only the plain form goes this way (:func:`begin`): POST to an infer path without percent-escapes,
HTTP/1.1, exactly one ``Content-Length`` within ``SERVE_MAX_BODY_BYTES``, no ``Transfer-Encoding``, no
``Expect``, no upgrade, nothing else in flight on the connection, and a client that reads its answers
(writes not paused). Everything else takes uvicorn's cycle and the ASGI fast path, as before, and the
answers are the same either way (the status, the headers uvicorn would add, the body).

While it runs, the exchange stands in the protocol's ``cycle``, unfinished: a pipelined request behind it
then waits in uvicorn's queue (its answer must come after this one), a drain (uvicorn's ``shutdown``)
clears its ``keep_alive`` so the connection closes after the answer, and a lost connection sets its
``disconnected``, so nothing is written to it.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from typing import Any, Protocol

import httptools
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE
from uvicorn.server import ServerState

from service.errors import PayloadTooLarge
from service.http.dispatch import WANTED, FastPath
from service.http.paths import INFER_PATH

log = logging.getLogger("service")


class Connection(Protocol):
    """What an exchange reads of the connection it runs on: uvicorn's httptools protocol's state as
    :class:`~service.http.connection.GuardedProtocol` keeps it, and the call that hands it back."""

    parser: httptools.HttpRequestParser
    url: bytes
    headers: list[tuple[bytes, bytes]]
    expect_100_continue: bool
    root_path: str
    cycle: Any
    pipeline: deque[Any]
    transport: asyncio.Transport
    flow: FlowControl
    server_state: ServerState

    def exchange_done(self, exchange: DirectExchange) -> None: ...


_CLOSE = b"connection: close\r\n"
_FAILED = (
    b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 21\r\nconnection: close\r\n\r\nInternal Server Error"
)


def begin(protocol: Connection, fast: FastPath) -> DirectExchange | None:
    """A :class:`DirectExchange` for the request whose header block the parser just finished, or None
    when it is not the plain form the module docstring lists (uvicorn's cycle then takes it)."""
    parser = protocol.parser
    if parser.get_method() != b"POST" or protocol.expect_100_continue or protocol.root_path:
        return None
    if parser.get_http_version() != "1.1":  # uvicorn keeps no HTTP/1.0 connection alive: its cycle's rule
        return None
    cycle = protocol.cycle
    if (cycle is not None and not cycle.response_complete) or protocol.pipeline or parser.should_upgrade():
        return None
    if protocol.flow.write_paused:  # a client that does not read: uvicorn's cycle waits for it to drain
        return None
    try:
        raw_path = httptools.parse_url(protocol.url).path
        path = raw_path.decode("ascii")
    except (httptools.HttpParserInvalidURLError, UnicodeDecodeError):
        return None  # uvicorn's cycle answers it as it always has
    match = None if "%" in path else INFER_PATH.fullmatch(path)
    if match is None:
        return None
    headers: dict[str, str] = {}
    for name, value in protocol.headers:
        if name in WANTED:
            key = name.decode("latin-1")
            if key in headers:
                return None
            headers[key] = value.decode("latin-1")
        elif name == b"transfer-encoding":
            return None
    declared = headers.get("content-length")
    if declared is None or not (declared.isascii() and declared.isdigit()):
        return None
    if int(declared) > fast.core.settings.max_body_bytes:
        return None  # the ASGI path answers 413 before reading, as it always has
    keep_alive = parser.should_keep_alive()
    return DirectExchange(protocol, fast, match, path, headers, keep_alive)


class DirectExchange:
    """One infer request read from the parser's callbacks and answered in one write (see the module
    docstring). Its attributes ``response_complete``, ``response_started``, ``keep_alive``,
    ``disconnected``, ``more_body`` and ``message_event`` are those of uvicorn's cycle that the protocol
    and the server read or set while it stands in for one."""

    __slots__ = (
        "chunks",
        "disconnected",
        "fast",
        "headers",
        "keep_alive",
        "match",
        "more_body",
        "path",
        "protocol",
        "response_complete",
        "response_started",
    )

    def __init__(
        self,
        protocol: Connection,
        fast: FastPath,
        match: re.Match[str],
        path: str,
        headers: dict[str, str],
        keep_alive: bool,
    ) -> None:
        self.protocol = protocol
        self.fast = fast
        self.match = match
        self.path = path
        self.headers = headers
        self.keep_alive = keep_alive
        self.chunks: list[bytes] = []
        self.more_body = True  # the parser has not finished the body
        self.response_started = False
        self.response_complete = False
        self.disconnected = False

    @property
    def message_event(self) -> DirectExchange:
        """uvicorn sets its cycle's ``message_event`` when the connection is lost; :meth:`set` ignores it
        (``disconnected`` says it all)."""
        return self

    def set(self) -> None:
        pass

    async def run(self) -> None:
        """Answer the request (its body complete), then hand the connection back to the protocol."""
        chunks = self.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []

        async def read(limit: int) -> bytes:
            if len(body) > limit:  # the declared length was checked; this is the same limit's guard
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            return body

        protocol = self.protocol
        try:
            status, headers, payload = await self.fast.respond(self.match, self.path, self.headers, read)
            answer = self._answer(status, headers, payload, protocol.server_state.default_headers)
        except Exception:  # a bug, not a client's error (respond answers those): as uvicorn's cycle does
            log.exception("Exception in ASGI application")
            self.keep_alive = False
            answer = _FAILED
        self.response_started = True
        if not self.disconnected and not protocol.transport.is_closing():
            protocol.transport.write(answer)
        self.response_complete = True
        protocol.exchange_done(self)

    def _answer(
        self, status: int, headers: list[tuple[bytes, bytes]], payload: bytes, defaults: list[Any]
    ) -> bytes:
        parts = [STATUS_LINE[status]]
        for name, value in defaults:
            parts += (name, b": ", value, b"\r\n")
        closes = False
        for name, value in headers:
            if name == b"connection" and value == b"close":
                closes = True
            parts += (name, b": ", value, b"\r\n")
        if closes:
            self.keep_alive = False
        elif not self.keep_alive:
            parts.append(_CLOSE)
        parts += (b"\r\n", payload)
        return b"".join(parts)
