"""The gRPC listener whose HTTP/2 is framed in C: the default (``SERVE_GRPC_SERVER=native``).

grpcio's server spends more per call in its own Python layer than the whole HTTP/1.1 exchange costs the
HTTP adapter (docs/hotpath.md, "gRPC"). Here each connection is an asyncio protocol over
:class:`service.grpc._h2.Session`, which wraps libnghttp2: HTTP/2 framing, HPACK, flow control and the
gRPC length prefix are done in C, and Python sees whole calls (headers, messages, the client's
half-close). The servicers are the same objects grpcio serves (:func:`service.grpc.server.services`),
called with the same ``(request, context)`` arguments; :class:`Context` is the part of grpcio's
``ServicerContext`` they use.

What a client sees follows grpcio's server: unknown methods are UNIMPLEMENTED, a message over
``SERVE_MAX_BODY_BYTES`` (compressed or not) is RESOURCE_EXHAUSTED, gzip and deflate request messages are
accepted (answers are not compressed, as the protocol allows), ``grpc-timeout`` sets the call's deadline
and a call past it is cancelled and answered DEADLINE_EXCEEDED, a client's RST_STREAM cancels the call.
Draining sends GOAWAY, lets the calls in flight finish until the grace runs out, then cancels the rest.
A connection that has not sent the HTTP/2 preface within ``SERVE_HEADER_TIMEOUT_S`` is closed, as
grpc-core closes one that does not finish its handshake (an idle channel that did is kept: gRPC clients
hold channels open between calls).

One module of this size on purpose: a connection's events, its timers and its answers all work on the
session and the table of its calls; split, each part would reach into the other's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, cast

import grpc
from grpc.aio import AbortError

from service.grpc import _h2
from service.grpc.calls import (
    END,
    OK,
    Call,
    Context,
    Refused,
    Requests,
    inflate,
    peer_name,
    read_headers,
    status_trailers,
    with_codecs,
)
from service.grpc.status import INTERNAL_MESSAGE
from service.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

#: How long, at most, a connection closed by the server's final GOAWAY waits for its client to close too
#: (within what is left of the drain's grace). Closing a socket with unread bytes resets it, and a client
#: that just sent a call would see "connection reset" instead of the GOAWAY that tells it the call was
#: not processed (so that it may retry it elsewhere).
LINGER_S = 1.0


class NativeGrpcServer:
    """The gRPC listener over :class:`_Connection`; create it inside the running event loop."""

    def __init__(
        self,
        methods: dict[str, grpc.RpcMethodHandler],
        *,
        max_message_bytes: int,
        preface_timeout: float = 5.0,
        reuse_port: bool = False,
        metrics: Metrics | None = None,
    ) -> None:
        """``methods``: handlers by full method path (``/package.Service/Method``); ``metrics``, where
        the connections and refusals are counted (``grpc_connections_open``, ``grpc_refused_total``)."""
        self.methods = {path.encode(): with_codecs(handler) for path, handler in methods.items()}
        self.metrics = metrics
        self.max_message_bytes = max_message_bytes
        self.preface_timeout = preface_timeout
        self.connections: set[_Connection] = set()
        self._reuse_port = reuse_port
        self._server: asyncio.Server | None = None
        self._progress = asyncio.Event()
        self._progress.set()
        self._gone = asyncio.Event()

    async def start(self, host: str, port: int) -> int:
        """Bind ``host:port`` (0: any free port) and start serving; returns the bound port."""
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: _Connection(self), host, port, reuse_port=self._reuse_port or None, backlog=2048
            )
        except OSError as exc:
            address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise OSError(f"cannot listen for gRPC on {address}: {exc.strerror or exc}") from None
        bound: int = self._server.sockets[0].getsockname()[1]
        log.info("gRPC listening on %s:%d (HTTP/2 framed by libnghttp2)", host, bound)
        return bound

    async def stop(self, grace: float) -> None:
        """Close the port now and tell every client (GOAWAY); calls in flight get ``grace`` seconds.

        The final GOAWAY waits, besides the calls in flight, for each client to acknowledge the PING sent
        with the first one (RFC 9113, section 6.8): every call a client sent before it read that GOAWAY
        has then arrived, and is answered (computed, or UNAVAILABLE from the draining service) rather
        than left behind the final GOAWAY. Once no call runs, the acknowledgements are waited for at most
        :data:`LINGER_S`, within the grace.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(grace, 0.0)
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.drain()
        await self._until(lambda: not any(c.calls for c in self.connections), deadline)
        await self._until(
            lambda: not any(c.calls or c.unacknowledged for c in self.connections),
            min(deadline, loop.time() + LINGER_S),
        )
        linger = min(LINGER_S, max(deadline - loop.time(), 0.0))
        for connection in list(self.connections):
            connection.close(linger=linger)
        if self.connections and linger > 0:  # each closes when its client has, or after ``linger``
            self._gone.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._gone.wait(), timeout=linger + 0.1)
        if self._server is not None:
            await self._server.wait_closed()

    def refused(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.grpc_refused.labels(reason).inc()

    def connection_gone(self, connection: _Connection) -> None:
        self.connections.discard(connection)
        if not self.connections:
            self._gone.set()

    def drain_progress(self) -> None:
        """A call ended, or a client acknowledged the drain's PING: wakes a stop() waiting for either."""
        if not self._progress.is_set():
            self._progress.set()

    async def _until(self, done: Callable[[], bool], deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while not done():
            left = deadline - loop.time()
            if left <= 0:
                return
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), timeout=left)
        self._progress.set()  # at rest: drain_progress() then costs one check per call


class _Connection(asyncio.Protocol):
    """One client connection: the session's events in, the servicers' answers out."""

    def __init__(self, server: NativeGrpcServer) -> None:
        self._server = server
        self._session = _h2.Session(server.max_message_bytes)
        self._methods = server.methods
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._peer = ""
        self.calls: dict[int, Call] = {}
        # Bytes still to come before the client's preface (24 bytes) and its first frame header (9) are
        # in: the session raises H2Error on a wrong preface, so those bytes arriving means a real client.
        self._preface_left = 33
        self._preface_timer: asyncio.TimerHandle | None = None
        self._flush_soon = False  # a flush is scheduled for the end of this turn of the loop
        self._linger = 0.0  # how long close() lets the client close first, after the final GOAWAY
        self._linger_timer: asyncio.TimerHandle | None = None
        # The drain's PING is out and not acknowledged yet (the client may still be sending calls).
        self.unacknowledged = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # TCP_NODELAY is set by asyncio and uvloop alike; uvloop's transport is not an asyncio.Transport.
        self._transport = cast(asyncio.Transport, transport)
        self._peer = peer_name(transport.get_extra_info("peername"))
        self._server.connections.add(self)
        if self._server.metrics is not None:
            self._server.metrics.grpc_connections.inc()
        self._preface_timer = self._loop.call_later(self._server.preface_timeout, self._preface_expired)
        self._flush()

    def pause_writing(self) -> None:
        """The client is not reading its answers: take no new calls from it until it does."""
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    def _preface_expired(self) -> None:
        log.debug("closing a gRPC connection from %s: no HTTP/2 preface in time", self._peer)
        self._server.refused("preface_timeout")
        self._preface_timer = None
        self.close()

    def data_received(self, data: bytes) -> None:
        if self._linger_timer is not None:
            return  # after the final GOAWAY: the client learns from it that these calls were not taken
        try:
            events = self._session.feed(data)
        except _h2.H2Error as exc:
            log.debug("closing a gRPC connection from %s: %s", self._peer, exc)
            self._server.refused("protocol_error")
            self._flush()
            self.close()
            return
        if self._preface_timer is not None:
            self._preface_left -= len(data)
            if self._preface_left <= 0:
                self._preface_timer.cancel()
                self._preface_timer = None
        for event in events:
            kind = event[0]
            if kind == _h2.MESSAGE:
                self._message(event[1], event[2], event[3])
            elif kind == _h2.HEADERS:
                self._headers(event[1], event[2], event[3], event[4])
            elif kind == _h2.END:
                self._end(event[1], event[2])
            elif kind == _h2.TOO_LARGE:
                self._too_large(event[1], event[2])
            elif kind == _h2.CLOSED:
                self._cancel(event[1])
            elif kind == _h2.BUSY:
                self._busy(event[1], event[2])
        if self.unacknowledged and not self._session.pings_unacked:
            self.unacknowledged = False
            self._server.drain_progress()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._preface_timer is not None:
            self._preface_timer.cancel()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        if self in self._server.connections and self._server.metrics is not None:
            self._server.metrics.grpc_connections.dec()
        self._server.connection_gone(self)
        for stream_id in list(self.calls):
            self._cancel(stream_id)
        self._transport = None
        self._server.drain_progress()

    def drain(self) -> None:
        """No new streams past the ones already open (the first GOAWAY); the rest finish. A PING follows
        it, unless the client has not sent its preface yet: its acknowledgement means that the client
        has read the GOAWAY, so no call it sent before can still be on the way."""
        self._session.shutdown_notice()
        if self._preface_timer is None and self._transport is not None:
            self._session.ping()
            self.unacknowledged = True
        self._flush()

    def close(self, linger: float = 0.0) -> None:
        """Cancel what still runs, say GOAWAY and close; with ``linger`` seconds (a server that stops),
        close only the sending side and give the client that long to close first."""
        for stream_id in list(self.calls):
            self._cancel(stream_id)
        if self._transport is not None:
            self._linger = linger
            self._session.goaway()
            self._flush()
            self._shut()

    def _flush(self) -> None:
        if self._transport is None or self._linger_timer is not None:  # gone, or its sending side closed
            return
        out = self._session.data_to_send()
        if out:
            self._transport.write(out)
        if not self._session.want_read() and not self._session.want_write() and not self.calls:
            self._shut()

    def _shut(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing() or self._linger_timer is not None:
            return
        if self._linger > 0 and transport.can_write_eof():
            try:
                transport.write_eof()  # the client reads the GOAWAY, then an end of stream
            except OSError:  # the client is gone already (reset), and the loop has not read that yet
                transport.close()
                return
            transport.resume_reading()
            self._linger_timer = self._loop.call_later(self._linger, transport.close)
        else:
            transport.close()

    # the session's events

    def _headers(
        self, stream_id: int, method: bytes, path: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        if method != b"POST":
            self._server.refused("not_grpc")
            self._session.reject(stream_id, 405)
            return
        try:
            content_type, deadline, encoding, metadata = read_headers(headers)
        except Refused as refused:
            self._session.finish(
                stream_id, [*status_trailers(refused.code, refused.message, ()), *refused.extra]
            )
            return
        if not content_type.startswith(b"application/grpc"):
            self._server.refused("not_grpc")
            self._session.reject(stream_id, 415)
            return
        handler = self._methods.get(path)
        if handler is None:
            self._session.finish(
                stream_id, status_trailers(grpc.StatusCode.UNIMPLEMENTED, "Method not found!", ())
            )
            return
        call = Call(stream_id, handler, Context(metadata, deadline, self._peer), encoding)
        self.calls[stream_id] = call
        if deadline is not None:
            call.deadline_handle = self._loop.call_at(
                self._loop.time() + (deadline - time.monotonic()), self._expire, call
            )
        if handler.request_streaming:
            call.requests = Requests()
            run = self._run_streaming if handler.response_streaming else self._run_unary
            call.task = self._loop.create_task(run(call, None))

    def _message(self, stream_id: int, payload: bytes, compressed: bool) -> None:
        call = self.calls.get(stream_id)
        if call is None:
            return
        if compressed:
            try:
                payload = inflate(payload, call.encoding, self._server.max_message_bytes)
            except Refused as refused:
                if refused.code is grpc.StatusCode.RESOURCE_EXHAUSTED:
                    self._server.refused("too_large")
                self._fail(call, refused.code, refused.message)
                return
        if call.requests is None:
            call.messages.append(payload)
            return
        try:
            request = call.handler.request_deserializer(payload)
        except Exception:
            self._fail(call, grpc.StatusCode.INTERNAL, "Exception deserializing request!")
            return
        call.requests.put(request)

    def _end(self, stream_id: int, truncated: bool) -> None:
        call = self.calls.get(stream_id)
        if call is None:
            return
        if truncated:
            self._fail(call, grpc.StatusCode.INTERNAL, "the client half-closed inside a message")
            return
        if call.requests is not None:
            call.requests.put(END)
            return
        if len(call.messages) != 1:
            self._fail(
                call,
                grpc.StatusCode.INTERNAL,
                f"a unary call carries one request message, not {len(call.messages)}",
            )
            return
        try:
            request = call.handler.request_deserializer(call.messages[0])
        except Exception:
            self._fail(call, grpc.StatusCode.INTERNAL, "Exception deserializing request!")
            return
        call.messages = []
        if call.handler.response_streaming:
            call.task = self._loop.create_task(self._run_streaming(call, request))
        else:
            call.task = self._loop.create_task(self._run_unary(call, request))

    def _too_large(self, stream_id: int, length: int) -> None:
        call = self.calls.get(stream_id)
        if call is not None:
            self._server.refused("too_large")
            limit = f"({length} vs. {self._server.max_message_bytes})"
            self._fail(call, grpc.StatusCode.RESOURCE_EXHAUSTED, f"Received message larger than max {limit}")

    def _busy(self, stream_id: int, held: int) -> None:
        call = self.calls.get(stream_id)
        if call is not None:  # the connection's unfinished messages would hold more than the session's cap
            self._server.refused("connection_busy")
            self._fail(
                call,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this connection holds too many unfinished messages ({held} bytes); send fewer at once",
            )

    def _cancel(self, stream_id: int) -> None:
        call = self.calls.pop(stream_id, None)
        if call is None:
            return
        call.context.cancelled_flag = True
        if call.deadline_handle is not None:
            call.deadline_handle.cancel()
        if call.task is not None:
            call.task.cancel()

    def _expire(self, call: Call) -> None:
        if self.calls.get(call.stream_id) is call:
            call.deadline_handle = None
            self._fail(call, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            self._flush()

    # answers

    def _fail(self, call: Call, code: grpc.StatusCode, message: str) -> None:
        """End ``call`` now with ``code`` (its task, if any, is cancelled)."""
        self._cancel(call.stream_id)
        self._session.finish(call.stream_id, status_trailers(code, message, call.context.trailing_metadata()))
        self._server.drain_progress()

    def _done(self, call: Call) -> bool:
        """Whether ``call`` still owns its stream; if so, forget it (its answer goes out next)."""
        if self.calls.get(call.stream_id) is not call:
            return False
        del self.calls[call.stream_id]
        if call.deadline_handle is not None:
            call.deadline_handle.cancel()
        return True

    async def _run_unary(self, call: Call, request: Any) -> None:
        context = call.context
        try:
            if call.requests is None:
                response = await call.handler.unary_unary(request, context)
            else:  # client streaming, one answer
                response = await call.handler.stream_unary(call.requests, context)
            payload = call.handler.response_serializer(response)
        except AbortError:
            code, message = context.code() or grpc.StatusCode.UNKNOWN, context.details()
        except asyncio.CancelledError:
            return
        except Exception:
            log.exception("unhandled error in a gRPC call")
            code, message = grpc.StatusCode.UNKNOWN, INTERNAL_MESSAGE
        else:
            if self._done(call):
                trailing = context.trailing_metadata()
                self._session.unary(
                    call.stream_id,
                    payload,
                    status_trailers(grpc.StatusCode.OK, "", trailing) if trailing else [OK],
                )
                self._answered()
            return
        self._end_with(call, code, message)

    async def _run_streaming(self, call: Call, request: Any) -> None:
        context = call.context
        handler = call.handler
        serialize: Callable[[Any], bytes] = handler.response_serializer
        try:
            if handler.request_streaming:
                answers = handler.stream_stream(call.requests, context)
            else:
                answers = handler.unary_stream(request, context)
            async for answer in answers:
                if self.calls.get(call.stream_id) is not call:
                    return
                self._session.send_message(call.stream_id, serialize(answer))
                self._flush()
            code, message = context.code() or grpc.StatusCode.OK, context.details()
        except AbortError:
            code, message = context.code() or grpc.StatusCode.UNKNOWN, context.details()
        except asyncio.CancelledError:
            return
        except Exception:
            log.exception("unhandled error in a gRPC stream")
            code, message = grpc.StatusCode.UNKNOWN, INTERNAL_MESSAGE
        self._end_with(call, code, message)

    def _end_with(self, call: Call, code: grpc.StatusCode, message: str) -> None:
        """End ``call``'s stream with a status, unless it was ended meanwhile (cancelled, expired)."""
        if self._done(call):
            self._session.finish(
                call.stream_id, status_trailers(code, message, call.context.trailing_metadata())
            )
            self._answered()

    def _answered(self) -> None:
        if self.calls:
            # Other calls are in flight on this connection (a channel multiplexes its client's calls):
            # those answered in this turn of the loop, often one batch's, go out in one write after it.
            if not self._flush_soon:
                self._flush_soon = True
                self._loop.call_soon(self._flush_deferred)
            return
        self._flush()
        self._server.drain_progress()

    def _flush_deferred(self) -> None:
        self._flush_soon = False
        self._flush()
