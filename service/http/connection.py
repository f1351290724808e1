"""HTTP/1.1 connections held to account, below the application: uvicorn's httptools protocol with limits.

uvicorn arms its keep-alive timer only after a response, and bounds neither the header block nor the
number of connections, so a client that never finishes a request holds a socket (and a file
descriptor) forever, and one huge header value is buffered whole by the parser. :func:`guarded_protocol`
returns a subclass of uvicorn's ``HttpToolsProtocol`` (passed as ``http=`` to ``uvicorn.Config``) that:

- gives every request ``header_timeout_s`` from its first byte (or from the connection's opening) to
  deliver its whole header block; then **408** (nothing at all sent: closed silently) and close;
- gives its body ``body_timeout_s`` from the end of the header block; then **408** and close (the
  application reading it sees the client gone);
- counts header bytes *before* the parser buffers them: past ``max_header_bytes``, **431** and close;
- caps open connections below the file-descriptor limit: a new connection over the cap closes the
  connection that has waited longest without a request in progress (idle keep-alive, or still sending
  its header block); when every connection is busy the new one is answered **503** + ``Retry-After``;
- frames per RFC 9112: HTTP/1.1 without exactly one ``Host``, or HTTP/1.0 with several, is **400**;
  HTTP/0.9 is **400**; any major version but 1 is **505**;
- answers parser errors (malformed request line, headers or chunking; request smuggling shapes) as
  **400**, all of these as ``{"error": ...}`` JSON with ``Connection: close``;
- closes a keep-alive connection idle for uvicorn's ``timeout_keep_alive`` (as uvicorn does), found by the
  same sweep instead of a timer armed after every response and cancelled by the next request.

All of these clocks are read by one periodic sweep per process (every ``min(0.5, header_timeout_s / 4)``
seconds, while any connection is open) against the times each connection stores; nothing is armed per
request, so a limit fires within one sweep interval after it is reached.

A refused connection is closed gracefully: the answer is written, the write side shut, what the client
still sends is read and dropped for at most :data:`LINGER_S`, then the socket closes, so the client
reads the answer instead of a reset. Every refusal is counted in ``http_connections_closed_total{reason}``.

One module of this size on purpose: one subclass of uvicorn's protocol, whose limits work together
on the same connection state.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from dataclasses import dataclass
from http import HTTPStatus
from time import monotonic
from typing import Any, ClassVar

import httptools
import orjson
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.core import InferenceService
from service.http.dispatch import FastPath
from service.http.exchange import DirectExchange, begin
from service.settings import Settings

log = logging.getLogger("service")

#: How long a refused connection's further bytes are read and dropped before it closes.
LINGER_S = 1.0
#: File descriptors kept free of HTTP connections when the cap is derived from ``RLIMIT_NOFILE``:
#: model files, feedback files, gRPC connections, the executor's and the logger's.
FD_RESERVE_MIN = 64


def core_of(app: Any) -> InferenceService | None:
    """Unwrap uvicorn's middleware to the FastAPI app it serves, and return that app's core."""
    while not isinstance(app, FastAPI) and hasattr(app, "app"):
        app = app.app
    core = getattr(app.state, "core", None) if isinstance(app, FastAPI) else None
    return core if isinstance(core, InferenceService) else None


def fd_soft_limit() -> int:
    return int(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def connection_cap(configured: int, fd_limit: int) -> int:
    """Most open HTTP connections: ``configured`` (0 = derived), never above the file-descriptor limit
    minus a reserve (an eighth of it, at least :data:`FD_RESERVE_MIN`)."""
    ceiling = max(1, fd_limit - max(FD_RESERVE_MIN, fd_limit // 8))
    return min(configured, ceiling) if configured else ceiling


@dataclass(frozen=True)
class ConnectionLimits:
    """What one HTTP connection may hold, from :class:`~service.settings.Settings`."""

    header_timeout_s: float
    body_timeout_s: float
    max_header_bytes: int
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings, fd_limit: int | None = None) -> ConnectionLimits:
        fds = fd_soft_limit() if fd_limit is None else fd_limit
        return cls(
            settings.header_timeout_s,
            settings.body_timeout_s,
            settings.max_header_bytes,
            connection_cap(settings.max_connections, fds),
        )


def error_bytes(
    status: int, message: str, default_headers: list[tuple[bytes, bytes]], extra: dict[str, str] | None = None
) -> bytes:
    """A whole HTTP/1.1 answer ``{"error": message}`` with ``Connection: close``."""
    body = orjson.dumps({"error": message})
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode()]
    lines += [name + b": " + value for name, value in default_headers]
    lines += [b"content-type: application/json", b"content-length: %d" % len(body), b"connection: close"]
    lines += [f"{name}: {value}".encode("latin-1") for name, value in (extra or {}).items()]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def framing_problem(version: str, hosts: int) -> tuple[HTTPStatus, str, str] | None:
    """(status, message, reason) when a request with this HTTP ``version`` and number of ``Host`` headers
    breaks RFC 9112 (sections 2.3 and 3.2), else None."""
    if version not in ("1.1", "1.0"):
        if version.startswith("1.") or version == "0.9":
            return HTTPStatus.BAD_REQUEST, f"HTTP/{version} requests are not supported", "bad_request"
        return (
            HTTPStatus.HTTP_VERSION_NOT_SUPPORTED,
            f"HTTP/{version} is not supported over this connection; use HTTP/1.1",
            "version",
        )
    if hosts > 1:
        return HTTPStatus.BAD_REQUEST, "more than one Host header", "bad_request"
    if hosts == 0 and version == "1.1":
        return HTTPStatus.BAD_REQUEST, "HTTP/1.1 request without a Host header", "bad_request"
    return None


class _Refused(Exception):
    """Raised from a parser callback once the connection has been answered: stops the parser."""


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of the module docstring (see :func:`guarded_protocol`)."""

    limits: ClassVar[ConnectionLimits]
    _sweeper: ClassVar[asyncio.TimerHandle | None] = None
    _metrics: ClassVar[Any] = None
    _warned_at: ClassVar[float] = float("-inf")
    #: The FastPath uvicorn serves, when it serves one directly (found on the first request): then plain
    #: infer requests are answered from the parser callbacks (:mod:`service.http.exchange`).
    _fast: ClassVar[FastPath | None] = None
    _fast_found: ClassVar[bool] = False  # whether _fast was looked for

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Per connection; all set here, in one order, so instances keep CPython's compact attribute dict.
        self._refused = False  # answered and closing: further bytes are dropped
        self._in_headers = True  # the parser is inside a header block (or before one)
        self._header_bytes = 0  # bytes fed to the parser for the current header block
        self._header_blocks = 0  # header blocks completed on this connection
        self._headers_since: float | None = None  # the current header block's clock started then
        self._idle_since: float | None = None  # no request in progress since then (None: one is)
        self._body_since: float | None = None  # the current request's body has been awaited since then
        self._exchange: DirectExchange | None = None  # the infer request read without an ASGI cycle

    # ---- connection ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._headers_since = self._idle_since = now = monotonic()
        cls = type(self)
        if cls._sweeper is None:
            cls._sweeper = self.loop.call_later(self._sweep_interval(), self._sweep)
        if len(self.connections) > self.limits.max_connections:
            self._make_room(now)

    def _make_room(self, now: float) -> None:
        """Close the connection idle longest for this one, or refuse this one when none is idle."""
        oldest: GuardedProtocol | None = None
        for other in self.connections:
            if (
                other is not self
                and isinstance(other, GuardedProtocol)
                and other._idle_since is not None
                and not other._refused
                and (oldest is None or other._idle_since < oldest._idle_since)  # type: ignore[operator]
            ):
                oldest = other
        if oldest is not None:
            self._count("evicted")
            oldest._refused = True
            oldest.transport.close()
            return
        open_now = len(self.connections)
        if open_now > self.limits.max_connections + self.limits.max_connections // 16 + 16:
            # Refused connections linger a second each; a flood of them must not reach the fd limit.
            self._count("over_capacity")
            self._refused = True
            self.transport.abort()
            return
        if monotonic() - self._warned_at > 60:  # counted every time; logged at most once a minute
            log.warning("%d HTTP connections open, none idle: refusing new ones with 503", open_now)
            type(self)._warned_at = monotonic()
        self._refuse(
            HTTPStatus.SERVICE_UNAVAILABLE,
            f"too many connections (at most {self.limits.max_connections}); retry later",
            "over_capacity",
            {"Retry-After": "1"},
        )

    @classmethod
    def _sweep_interval(cls) -> float:
        return min(0.5, cls.limits.header_timeout_s / 4)

    def _sweep(self) -> None:
        """Every fraction of the header timeout: time out header blocks and bodies that took too long,
        and close keep-alive connections idle for ``timeout_keep_alive``."""
        cls = type(self)
        now = monotonic()
        limits = self.limits
        for other in list(self.connections):
            if not isinstance(other, GuardedProtocol) or other._refused:
                continue
            if other._headers_since is not None:
                if now - other._headers_since > limits.header_timeout_s:
                    other._header_timed_out()
            elif other._body_since is not None:
                if now - other._body_since > limits.body_timeout_s:
                    other._body_timed_out()
            elif other._idle_since is not None and now - other._idle_since > other.timeout_keep_alive:
                other._idle_since = None  # closing: no longer a candidate to evict
                if not other.transport.is_closing():
                    other.transport.close()
        cls._sweeper = self.loop.call_later(self._sweep_interval(), self._sweep) if self.connections else None

    def _header_timed_out(self) -> None:
        if not self._header_bytes:
            # Nothing of a request arrived: closing is not an answer to anything (RFC 9110 15.5.9).
            self._count("idle_timeout")
            self._refused = True
            self.transport.close()
            return
        self._refuse(
            HTTPStatus.REQUEST_TIMEOUT,
            f"request header block not received within {self.limits.header_timeout_s:g} s",
            "header_timeout",
        )

    def _body_timed_out(self) -> None:
        cycle = self.cycle
        if cycle is not None and cycle.response_started:
            self._count("body_timeout")
            self._refused = True
            self.transport.close()
        else:
            self._refuse(
                HTTPStatus.REQUEST_TIMEOUT,
                f"request body not received within {self.limits.body_timeout_s:g} s",
                "body_timeout",
            )
        if cycle is not None:  # the application reading the body gets http.disconnect
            cycle.disconnected = True
            cycle.message_event.set()

    # ---- bytes ---------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if not self._in_headers:
            self._feed(data)
            return
        if self._headers_since is None:  # the first bytes of the next request on this connection
            self._headers_since = monotonic()
        allowance = self.limits.max_header_bytes - self._header_bytes
        if len(data) <= allowance:
            self._header_bytes += len(data)
            self._feed(data)
            return
        # Feed no more than the limit; if that does not complete the header block, it is too large.
        view = memoryview(data)
        blocks = self._header_blocks
        self._header_bytes += allowance
        self._feed(view[:allowance])
        if self._refused or self.transport.is_closing():
            return
        if self._header_blocks == blocks:
            self._refuse(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                f"request header block exceeds {self.limits.max_header_bytes} bytes",
                "header_too_large",
            )
            return
        self.data_received(view[allowance:])  # type: ignore[arg-type]

    def _feed(self, data: bytes | memoryview) -> None:
        """uvicorn's ``data_received``, with parser errors answered as JSON and logged at debug level (no
        keep-alive timer to cancel: the sweep keeps that clock)."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():  # only with a WebSocket protocol configured (server.py: none)
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError as exc:
            if not self._refused:  # else a callback of ours raised _Refused after answering
                log.debug("malformed HTTP request from %s: %s", self.client, exc)
                self._refuse(HTTPStatus.BAD_REQUEST, "malformed HTTP request", "bad_request")

    # ---- parser callbacks ----------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._header_blocks += 1
        self._headers_since = self._idle_since = None
        version = self.parser.get_http_version()
        hosts = 0
        for name, _ in self.headers:
            if name == b"host":
                hosts += 1
        if version != "1.1" or hosts != 1:  # the common case costs these two comparisons only
            problem = framing_problem(version, hosts)
            if problem is not None:
                self._refuse(*problem)
                raise _Refused
        cls = type(self)
        if not cls._fast_found:
            cls._fast = self.app if isinstance(self.app, FastPath) else None
            cls._fast_found = True
        fast = cls._fast
        if fast is not None:
            exchange = begin(self, fast)
            if exchange is not None:
                self.cycle = exchange  # type: ignore[assignment]  # stands in for uvicorn's cycle
                self._exchange = exchange
                self._body_since = monotonic()
                return
        super().on_headers_complete()
        self._body_since = monotonic()
        if self.parser.should_upgrade() and not self._should_upgrade():
            # The parser stops at an upgrade request: answer it as plain HTTP, then close.
            self.cycle.keep_alive = False

    def on_body(self, body: bytes) -> None:
        exchange = self._exchange
        if exchange is not None and exchange.more_body:
            exchange.chunks.append(body)
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        exchange = self._exchange
        if exchange is not None and exchange.more_body:
            exchange.more_body = False
            task = self.loop.create_task(exchange.run())
            task.add_done_callback(self.tasks.discard)
            self.tasks.add(task)
        else:
            super().on_message_complete()
        self._body_since = None
        self._in_headers = True
        self._header_bytes = 0

    def on_response_complete(self) -> None:
        """uvicorn's, except that an idle connection's keep-alive clock is ``_idle_since``, read by the
        sweep, instead of a timer armed here and cancelled by the next request's first bytes."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:  # a pipelined request waits: start it
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self._idle_since = monotonic()

    def exchange_done(self, exchange: DirectExchange) -> None:
        """``exchange`` answered: close the connection if it may not be kept, else go on as after any
        response (a pipelined request waiting behind it starts now)."""
        if self._exchange is exchange:
            self._exchange = None
        if not exchange.keep_alive:
            self.server_state.total_requests += 1
            if not self.transport.is_closing():
                self.transport.close()
            return
        self.on_response_complete()

    # ---- answers -------------------------------------------------------------------------------

    def _unsupported_upgrade_warning(self) -> None:
        # Upgrades (WebSocket, h2c) are not offered; the request is answered as plain HTTP. Clients
        # choose what is sent, so this is not worth a warning per request.
        log.debug("HTTP upgrade requested and ignored")

    def _refuse(self, status: int, message: str, reason: str, headers: dict[str, str] | None = None) -> None:
        """Answer ``status`` as JSON, then close gracefully (see the module docstring)."""
        self._count(reason)
        self._refused = True
        self._headers_since = self._idle_since = self._body_since = None
        transport = self.transport
        if transport.is_closing():
            return
        transport.write(error_bytes(status, message, self.server_state.default_headers, headers))
        try:
            transport.write_eof()
        except (NotImplementedError, OSError, RuntimeError):
            transport.close()
            return
        self.loop.call_later(LINGER_S, transport.close)

    def _count(self, reason: str) -> None:
        cls = type(self)
        if cls._metrics is None:
            core = core_of(self.app)
            if core is None:
                return
            cls._metrics = core.metrics
        cls._metrics.connections_closed.labels(reason).inc()


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedProtocol]:
    """A :class:`GuardedProtocol` class with ``limits``, for one server (``uvicorn.Config(http=...)``)."""
    return type("GuardedHttpToolsProtocol", (GuardedProtocol,), {"limits": limits})


__all__ = [
    "ConnectionLimits",
    "GuardedProtocol",
    "connection_cap",
    "core_of",
    "error_bytes",
    "framing_problem",
    "guarded_protocol",
]
