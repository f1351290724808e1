"""The native gRPC listener (:mod:`service.grpc.native`) on its own, against grpcio's own client.

The methods here are small handlers written for the test (echo, sleep, stream), registered as grpcio
servers take them, so that each property of the listener (deadlines, cancellation, streaming, metadata,
compression, limits, draining) is checked against the client every user of the service runs. The real
services over the real core are checked in ``test_servicer.py`` and ``test_server.py``.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
import uvloop
from hyperframe.frame import Frame, GoAwayFrame, PingFrame
from prometheus_client import CollectorRegistry

from service.grpc.native import LINGER_S, NativeGrpcServer, _Connection
from service.telemetry.metrics import Metrics

LIMIT = 64 * 1024
SERVICE = "test.Echo"


class Recorder:
    """What the handlers saw: the cancellations and the metadata of the last call."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.metadata: tuple[Any, ...] = ()
        self.remaining: float | None = None
        self.started = asyncio.Event()


def methods(seen: Recorder) -> dict[str, grpc.RpcMethodHandler]:
    async def echo(request: bytes, context: Any) -> bytes:
        seen.metadata = tuple(context.invocation_metadata())
        seen.remaining = context.time_remaining()
        context.set_trailing_metadata((("x-echo", "yes"), ("x-raw-bin", b"\x00\xff")))
        return request

    async def sleep(request: bytes, context: Any) -> bytes:
        seen.started.set()
        try:
            await asyncio.sleep(float(request.decode()))
        except asyncio.CancelledError:
            seen.cancelled.set()
            raise
        return b"slept"

    async def fail(request: bytes, context: Any) -> bytes:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "nope: ünïcode % and\nnewline")
        raise AssertionError("unreachable")

    async def big(request: bytes, context: Any) -> bytes:
        return bytes(int(request.decode()))

    async def crash(request: bytes, context: Any) -> bytes:
        raise RuntimeError("a bug")

    async def count(request: bytes, context: Any) -> AsyncIterator[bytes]:
        for i in range(int(request.decode())):
            yield str(i).encode()

    async def chat(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for request in requests:
            yield request.upper()

    async def total(requests: AsyncIterator[bytes], context: Any) -> bytes:
        return str(sum([len(r) async for r in requests])).encode()

    return {
        f"/{SERVICE}/Echo": grpc.unary_unary_rpc_method_handler(echo),
        f"/{SERVICE}/Sleep": grpc.unary_unary_rpc_method_handler(sleep),
        f"/{SERVICE}/Fail": grpc.unary_unary_rpc_method_handler(fail),
        f"/{SERVICE}/Crash": grpc.unary_unary_rpc_method_handler(crash),
        f"/{SERVICE}/Big": grpc.unary_unary_rpc_method_handler(big),
        f"/{SERVICE}/Count": grpc.unary_stream_rpc_method_handler(count),
        f"/{SERVICE}/Chat": grpc.stream_stream_rpc_method_handler(chat),
        f"/{SERVICE}/Total": grpc.stream_unary_rpc_method_handler(total),
    }


Test = Callable[[NativeGrpcServer, str, Recorder], Awaitable[None]]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Test], None]:
    """Runs a test against a started listener, on each loop the service runs on (uvloop under
    ``python -m service``, whose transports are not asyncio's classes)."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def run_test(test: Test) -> None:
        async def main() -> None:
            seen = Recorder()
            metrics = Metrics(CollectorRegistry())
            server = NativeGrpcServer(methods(seen), max_message_bytes=LIMIT, metrics=metrics)
            port = await server.start("127.0.0.1", 0)
            try:
                await asyncio.wait_for(test(server, f"127.0.0.1:{port}", seen), 30)
            finally:
                await server.stop(0)

        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main())

    return run_test


def refused(server: NativeGrpcServer, reason: str) -> float:
    assert server.metrics is not None
    value: float | None = server.metrics.registry.get_sample_value("grpc_refused_total", {"reason": reason})
    return value or 0.0


def open_connections(server: NativeGrpcServer) -> float:
    assert server.metrics is not None
    return server.metrics.registry.get_sample_value("grpc_connections_open") or 0.0


def unary(channel: grpc.aio.Channel, name: str) -> Any:
    return channel.unary_unary(f"/{SERVICE}/{name}")


async def status_of(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


def test_unary_calls_carry_metadata_both_ways(run: Callable[[Test], None]) -> None:
    async def test(server: NativeGrpcServer, address: str, seen: Recorder) -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            call = unary(channel, "Echo")(
                b"hello", metadata=(("routing-key", "abc"), ("x-id-bin", b"\x01\x02"))
            )
            assert await call == b"hello"
            trailing = dict(await call.trailing_metadata())
            assert trailing["x-echo"] == "yes" and trailing["x-raw-bin"] == b"\x00\xff"
            assert await call.code() == grpc.StatusCode.OK
        metadata = dict(seen.metadata)
        assert metadata["routing-key"] == "abc" and metadata["x-id-bin"] == b"\x01\x02"
        assert "content-type" not in metadata and "grpc-timeout" not in metadata
        assert seen.remaining is None  # no deadline set

    run(test)


def test_every_kind_of_streaming(run: Callable[[Test], None]) -> None:
    async def test(server: NativeGrpcServer, address: str, seen: Recorder) -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            answers = [a async for a in channel.unary_stream(f"/{SERVICE}/Count")(b"5")]
            assert answers == [b"0", b"1", b"2", b"3", b"4"]
            chat = channel.stream_stream(f"/{SERVICE}/Chat")()
            for word in (b"a", b"bc", b"def"):
                await chat.write(word)
                assert await chat.read() == word.upper()  # each answer arrives before the stream ends
            await chat.done_writing()
            assert await chat.read() == grpc.aio.EOF
            assert await chat.code() == grpc.StatusCode.OK

            async def parts() -> AsyncIterator[bytes]:
                for _ in range(100):
                    yield b"x" * 1000

            assert await channel.stream_unary(f"/{SERVICE}/Total")(parts()) == b"100000"

    run(test)


def test_errors_are_statuses_with_their_messages(run: Callable[[Test], None]) -> None:
    async def test(server: NativeGrpcServer, address: str, seen: Recorder) -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            error = await status_of(unary(channel, "Fail")(b""))
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert error.details() == "nope: ünïcode % and\nnewline"  # percent-encoded on the wire
            error = await status_of(unary(channel, "Crash")(b""))
            assert error.code() == grpc.StatusCode.UNKNOWN
            assert "a bug" not in error.details()  # internals stay in the log
            error = await status_of(unary(channel, "Nope")(b""))
            assert error.code() == grpc.StatusCode.UNIMPLEMENTED
            error = await status_of(channel.unary_unary("/other.Service/Echo")(b""))
            assert error.code() == grpc.StatusCode.UNIMPLEMENTED
            assert await unary(channel, "Echo")(b"still fine") == b"still fine"

    run(test)


def test_deadlines_cancel_the_call(run: Callable[[Test], None]) -> None:
    async def test(server: NativeGrpcServer, address: str, seen: Recorder) -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            assert await unary(channel, "Echo")(b"x", timeout=60) == b"x"
            # The handler sees the client's deadline (grpc-timeout, rounded up), with room for a slow machine.
            assert seen.remaining is not None and 30 < seen.remaining <= 60.1
            error = await status_of(unary(channel, "Sleep")(b"10", timeout=0.3))
            assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            await asyncio.wait_for(seen.cancelled.wait(), 5)
            assert not server.connections or not any(c.calls for c in server.connections)

    run(test)


def test_a_client_cancel_cancels_the_handler(run: Callable[[Test], None]) -> None:
    async def test(server: NativeGrpcServer, address: str, seen: Recorder) -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            call = unary(channel, "Sleep")(b"10")
            await asyncio.wait_for(seen.started.wait(), 5)
            call.cancel()
            await asyncio.wait_for(seen.cancelled.wait(), 5)
            assert await unary(channel, "Echo")(b"after") == b"after"

    run(test)


def test_messages_past_the_limit_are_resource_exhausted_compressed_or_not(
    run: Callable[[Test], None],
) -> None:
    async def test(server: NativeGrpcServer, address: str, seen: Recorder) -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            big = bytes(LIMIT + 1)
            error = await status_of(unary(channel, "Echo")(big))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert f"larger than max ({LIMIT + 1} vs. {LIMIT})" in error.details()
            error = await status_of(unary(channel, "Echo")(big, compression=grpc.Compression.Gzip))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert refused(server, "too_large") == 2
            exact = bytes(range(256)) * (LIMIT // 256)  # at the limit: served, and echoed whole
            assert await unary(channel, "Echo")(exact) == exact
            assert await unary(channel, "Echo")(exact, compression=grpc.Compression.Deflate) == exact

    run(test)


def test_many_calls_at_once_on_one_connection(run: Callable[[Test], None]) -> None:
    async def test(server: NativeGrpcServer, address: str, seen: Recorder) -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            echo = unary(channel, "Echo")
            payloads = [bytes([i % 256]) * (i * 97) for i in range(300)]
            answers = await asyncio.gather(*(echo(p) for p in payloads))
            assert answers == payloads
            assert len(server.connections) == 1 and open_connections(server) == 1
            assert all(not c.calls for c in server.connections)
        for _ in range(100):  # the channel's close reaches the server a moment later
            if not open_connections(server):
                break
            await asyncio.sleep(0.02)
        assert open_connections(server) == 0

    run(test)


def test_stop_lets_calls_in_flight_finish_and_refuses_new_ones(run: Callable[[Test], None]) -> None:
    async def test(server: NativeGrpcServer, address: str, seen: Recorder) -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            assert await unary(channel, "Echo")(b"warm") == b"warm"
            slow = asyncio.ensure_future(unary(channel, "Sleep")(b"0.5"))
            await asyncio.wait_for(seen.started.wait(), 5)
            stopping = asyncio.ensure_future(server.stop(5))
            assert await slow == b"slept"
            await stopping
            error = await status_of(unary(channel, "Echo")(b"late", timeout=2))
            assert error.code() == grpc.StatusCode.UNAVAILABLE

    run(test)


def test_stop_cancels_what_outlasts_the_grace(run: Callable[[Test], None]) -> None:
    async def test(server: NativeGrpcServer, address: str, seen: Recorder) -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            slow = asyncio.ensure_future(unary(channel, "Sleep")(b"30"))
            await asyncio.wait_for(seen.started.wait(), 5)
            await server.stop(0.2)
            await asyncio.wait_for(seen.cancelled.wait(), 5)
            error = await status_of(slow)
            assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)

    run(test)


class RawClient:
    """An HTTP/2 client from the ``h2`` library over asyncio streams, making Echo calls by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.h2.initiate_connection()

    @classmethod
    async def answered_once(cls, address: str) -> tuple[RawClient, int]:
        """A client connected to ``address`` whose first call was answered; and that call's stream."""
        host, port = address.rsplit(":", 1)
        client = cls(*await asyncio.open_connection(host, int(port)))
        first, _ = client.call()
        await client.until(lambda e: isinstance(e, h2.events.StreamEnded) and e.stream_id == first)
        return client, first

    def call(self, send: bool = True) -> tuple[int, bytes]:
        """An Echo call: its stream id and its bytes, written unless ``send`` is False."""
        headers = [(":method", "POST"), (":scheme", "http"), (":authority", "x"),
                   (":path", f"/{SERVICE}/Echo"), ("content-type", "application/grpc")]  # fmt: skip
        stream = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream, headers)
        self.h2.send_data(stream, b"\x00\x00\x00\x00\x02hi", end_stream=True)
        data = self.h2.data_to_send()
        if send:
            self.writer.write(data)
        return stream, data

    async def until(self, wanted: Callable[[h2.events.Event], bool]) -> h2.events.Event:
        while True:
            data = await asyncio.wait_for(self.reader.read(65536), 5)
            assert data, "the server closed the connection first"
            for event in self.h2.receive_data(data):
                if wanted(event):
                    return event
            self.writer.write(self.h2.data_to_send())


def test_stop_waits_for_the_client_to_read_the_final_goaway(run: Callable[[Test], None]) -> None:
    """A call the client sends after the server's final GOAWAY is never read. Closing the socket with
    those bytes unread would reset the connection, and the client would see "connection reset" rather
    than the GOAWAY that says the call was not taken (and may go elsewhere): the server closes only its
    sending side, and the socket when the client has closed."""

    async def test(server: NativeGrpcServer, address: str, seen: Recorder) -> None:
        client, first = await RawClient.answered_once(address)
        _, late = client.call(send=False)  # a call that crosses the final GOAWAY on the wire
        stopping = asyncio.ensure_future(server.stop(5))
        received = await frames_until(client.reader, lambda f: isinstance(f, PingFrame))
        client.writer.write(acknowledgement(received[-1]))
        rest = await frames_until(client.reader, lambda f: isinstance(f, GoAwayFrame))
        final = rest[-1]
        assert (final.last_stream_id, final.error_code) == (first, 0)
        client.writer.write(late)
        await client.writer.drain()
        assert await asyncio.wait_for(client.reader.read(), 5) == b""  # an end of stream, not a reset
        await asyncio.sleep(0.2)
        assert not stopping.done() and len(server.connections) == 1  # the server waits for the client
        client.writer.close()
        await asyncio.wait_for(stopping, 1)
        assert not server.connections

    run(test)


def parse(data: bytes) -> tuple[list[Any], bytes]:
    """The whole HTTP/2 frames at the start of ``data``, and what follows them."""
    out = []
    while len(data) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        if len(data) < 9 + length:
            break
        frame.parse_body(memoryview(data[9 : 9 + length]))
        out.append(frame)
        data = data[9 + length :]
    return out, data


async def frames_until(reader: asyncio.StreamReader, last: Callable[[Any], bool]) -> list[Any]:
    """The frames the server writes, read up to the first one ``last`` accepts (whole reads). Frames,
    not ``h2`` events: ``h2`` takes the first GOAWAY for the end of the connection, and the PING that
    follows it for a protocol error."""
    out: list[Any] = []
    data = b""
    while not any(last(f) for f in out):
        chunk = await asyncio.wait_for(reader.read(65536), 5)
        assert chunk, f"the connection ended after {out}"
        frames, data = parse(data + chunk)
        out += frames
    return out


def acknowledgement(ping: PingFrame) -> bytes:
    ack = PingFrame(0, flags=["ACK"])
    ack.opaque_data = ping.opaque_data
    return ack.serialize()


async def final_goaway(reader: asyncio.StreamReader) -> GoAwayFrame:
    """The last frame before the end of stream, which must be the final GOAWAY."""
    frames, rest = parse(await asyncio.wait_for(reader.read(), 5))
    assert not rest and isinstance(frames[-1], GoAwayFrame), frames
    return frames[-1]


def test_a_call_sent_before_the_client_read_the_first_goaway_is_answered(run: Callable[[Test], None]) -> None:
    """A client may send a call while the first GOAWAY is on its way to it. A PING follows that GOAWAY,
    and the final one waits for its acknowledgement (RFC 9113, section 6.8): the call is taken and
    answered, where before the final GOAWAY went out at once and left it behind."""

    async def test(server: NativeGrpcServer, address: str, seen: Recorder) -> None:
        client, _ = await RawClient.answered_once(address)
        late, request = client.call(send=False)
        stopping = asyncio.ensure_future(server.stop(5))
        received = await frames_until(client.reader, lambda f: isinstance(f, PingFrame))
        goaways = [f for f in received if isinstance(f, GoAwayFrame)]
        assert [g.last_stream_id for g in goaways] == [2**31 - 1]  # the notice, and it came first
        assert received.index(goaways[0]) < len(received) - 1
        # The call crossed the notice on the wire; the acknowledgement follows it, as a client that read
        # the notice after sending the call would write them.
        client.writer.write(request + acknowledgement(received[-1]))
        rest = await frames_until(client.reader, lambda f: isinstance(f, GoAwayFrame))
        assert any(f.stream_id == late and "END_STREAM" in f.flags for f in rest)  # answered, trailers
        assert rest[-1].last_stream_id == late and rest[-1].error_code == 0
        client.writer.close()
        await asyncio.wait_for(stopping, 5)  # within the grace, once the client has closed
        assert not server.connections

    run(test)


def test_stop_closes_a_connection_whose_client_never_does(run: Callable[[Test], None]) -> None:
    async def test(server: NativeGrpcServer, address: str, seen: Recorder) -> None:
        client, first = await RawClient.answered_once(address)
        # It acknowledges no PING either: LINGER_S for that and LINGER_S for the close end the stop, not
        # the grace (30 s).
        await asyncio.wait_for(server.stop(30), 10)
        assert not server.connections
        assert (await final_goaway(client.reader)).last_stream_id == first
        client.writer.close()

    run(test)


class GoneTransport(asyncio.Transport):
    """A connection whose client has reset it, before the event loop has read that: asyncio's transport
    then shuts its sending side down at once, and the kernel answers ENOTCONN."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: Any) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")

    def close(self) -> None:
        self.closed = True


def test_a_stop_that_finds_the_client_gone_closes_its_connection_without_an_error() -> None:
    async def main() -> None:
        connection = _Connection(NativeGrpcServer({}, max_message_bytes=1 << 20))
        transport = GoneTransport()
        connection.connection_made(transport)
        connection.close(linger=LINGER_S)  # what a stop with grace left does to each connection
        assert transport.closed

    asyncio.run(main())


def test_stop_with_no_grace_left_closes_at_once(run: Callable[[Test], None]) -> None:
    """The drain's time is not stretched: with the grace spent, connections close without waiting."""

    async def test(server: NativeGrpcServer, address: str, seen: Recorder) -> None:
        client, first = await RawClient.answered_once(address)
        await asyncio.wait_for(server.stop(0), LINGER_S / 2)  # no linger, no wait for the PING's answer
        assert (await final_goaway(client.reader)).last_stream_id == first
        client.writer.close()

    run(test)


def test_a_taken_port_is_an_error_that_names_it() -> None:
    async def main() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            server = NativeGrpcServer({}, max_message_bytes=LIMIT)
            with pytest.raises(OSError, match=f"cannot listen for gRPC on 127.0.0.1:{port}"):
                await server.start("127.0.0.1", port)

    asyncio.run(main())


def h2_exchange(address: str, headers: list[tuple[str, str]], body: bytes = b"") -> dict[str, str]:
    """One request from the ``h2`` library (a second HTTP/2 implementation): the response's headers."""
    host, port = address.rsplit(":", 1)
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    stream_id = connection.get_next_available_stream_id()
    connection.send_headers(stream_id, headers, end_stream=not body)
    if body:
        connection.send_data(stream_id, body, end_stream=True)
    answer: dict[str, str] = {}
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(connection.data_to_send())
        while True:
            data = sock.recv(65536)
            assert data, "the server closed the connection without ending the stream"
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    answer.update((k.decode(), v.decode()) for k, v in event.headers)
                if isinstance(event, h2.events.StreamEnded):
                    return answer
            sock.sendall(connection.data_to_send())


def test_requests_that_are_not_grpc_get_http_errors(run: Callable[[Test], None]) -> None:
    async def test(server: NativeGrpcServer, address: str, seen: Recorder) -> None:
        base = [(":scheme", "http"), (":authority", address), (":path", f"/{SERVICE}/Echo")]
        get = await asyncio.to_thread(h2_exchange, address, [(":method", "GET"), *base])
        assert get[":status"] == "405"
        json = [(":method", "POST"), *base, ("content-type", "application/json")]
        assert (await asyncio.to_thread(h2_exchange, address, json, b"{}"))[":status"] == "415"
        assert refused(server, "not_grpc") == 2
        grpc_headers = [(":method", "POST"), *base, ("content-type", "application/grpc"), ("te", "trailers")]
        framed = b"\x00\x00\x00\x00\x02hi"
        answer = await asyncio.to_thread(h2_exchange, address, grpc_headers, framed)
        assert answer[":status"] == "200" and answer["grpc-status"] == "0"
        zipped = [*grpc_headers, ("grpc-encoding", "br")]
        answer = await asyncio.to_thread(h2_exchange, address, zipped, b"\x01\x00\x00\x00\x02hi")
        assert answer["grpc-status"] == str(grpc.StatusCode.UNIMPLEMENTED.value[0])
        assert "gzip" in answer["grpc-accept-encoding"]
        cut = await asyncio.to_thread(h2_exchange, address, grpc_headers, b"\x00\x00\x00\x00\x09hi")
        assert cut["grpc-status"] == str(grpc.StatusCode.INTERNAL.value[0])
        two = await asyncio.to_thread(h2_exchange, address, grpc_headers, framed + framed)
        assert two["grpc-status"] == str(grpc.StatusCode.INTERNAL.value[0])
        bad_timeout = [*grpc_headers, ("grpc-timeout", "soon")]
        assert (await asyncio.to_thread(h2_exchange, address, bad_timeout, framed))["grpc-status"] == str(
            grpc.StatusCode.INTERNAL.value[0]
        )

    run(test)


def test_a_connection_without_the_preface_is_closed_and_an_idle_channel_is_kept() -> None:
    async def main() -> None:
        metrics = Metrics(CollectorRegistry())
        server = NativeGrpcServer(
            methods(Recorder()), max_message_bytes=LIMIT, preface_timeout=0.3, metrics=metrics
        )
        port = await server.start("127.0.0.1", 0)
        try:
            silent_reader, silent = await asyncio.open_connection("127.0.0.1", port)
            partial_reader, partial = await asyncio.open_connection("127.0.0.1", port)
            partial.write(b"PRI * HTTP/2.0\r\n")  # half a preface, then nothing
            http1_reader, http1 = await asyncio.open_connection("127.0.0.1", port)
            http1.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # not HTTP/2: closed at once
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                assert await unary(channel, "Echo")(b"before") == b"before"
                for reader in (silent_reader, partial_reader):
                    while await asyncio.wait_for(reader.read(65536), 5):  # the server's SETTINGS, then EOF
                        pass
                await asyncio.sleep(0.5)  # the channel stays open past the timeout, idle
                assert len(server.connections) == 1
                assert refused(server, "preface_timeout") == 2 and open_connections(server) == 1
                while await asyncio.wait_for(http1_reader.read(65536), 5):
                    pass
                assert refused(server, "protocol_error") == 1
                assert await unary(channel, "Echo")(b"after") == b"after"
            silent.close()
            partial.close()
            http1.close()
        finally:
            await server.stop(0)

    asyncio.run(main())


def test_a_client_that_does_not_read_its_answers_is_not_read_either() -> None:
    """Backpressure: answers pile up in the socket's buffer, so the listener stops taking new calls."""

    async def main() -> None:
        server = NativeGrpcServer(methods(Recorder()), max_message_bytes=LIMIT)
        port = await server.start("127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            client.initiate_connection()
            # A large window, so that flow control does not hold the answers back before the socket does.
            client.increment_flow_control_window(2**30)
            client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
            headers = [(":method", "POST"), (":scheme", "http"), (":authority", "x"),
                       (":path", f"/{SERVICE}/Big"), ("content-type", "application/grpc")]  # fmt: skip
            message = b"\x00\x00\x00\x00\x07" + b"1000000"  # a 1 MB answer to a 12-byte call
            writer.write(client.data_to_send())
            while not server.connections:
                await asyncio.sleep(0.01)
            (connection,) = server.connections
            for _ in range(400):  # up to 400 MB of answers that are never read
                stream = client.get_next_available_stream_id()
                client.send_headers(stream, headers)
                client.send_data(stream, message, end_stream=True)
                writer.write(client.data_to_send())  # no drain: the server may stop reading us
                await asyncio.sleep(0.01)
                if not connection._transport.is_reading():  # type: ignore[union-attr]
                    break
            assert not connection._transport.is_reading()  # type: ignore[union-attr]
            while await asyncio.wait_for(reader.read(1 << 20), 5):  # the client reads at last
                if connection._transport.is_reading():  # type: ignore[union-attr]
                    break
            assert connection._transport.is_reading()  # type: ignore[union-attr]
            writer.close()
        finally:
            await server.stop(0)

    asyncio.run(main())


def test_unfinished_messages_past_the_connections_cap_are_resource_exhausted(
    run: Callable[[Test], None],
) -> None:
    def exchange(address: str) -> dict[int, str]:
        """20 calls that each send 60 KB of a 64 KB message and stop: 1.2 MB held, over the 1 MiB cap."""
        host, port = address.rsplit(":", 1)
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        headers = [(":method", "POST"), (":scheme", "http"), (":authority", address),
                   (":path", f"/{SERVICE}/Echo"), ("content-type", "application/grpc")]  # fmt: skip
        statuses: dict[int, str] = {}
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(client.data_to_send())
            while client.outbound_flow_control_window < 2 * 1024 * 1024:  # the server's 16 MiB windows
                client.receive_data(sock.recv(65536))
                sock.sendall(client.data_to_send())
            for _ in range(20):
                stream = client.get_next_available_stream_id()
                client.send_headers(stream, headers)
                part = b"\x00" + (LIMIT - 100).to_bytes(4, "big") + bytes(60_000)
                for i in range(0, len(part), 16384):
                    client.send_data(stream, part[i : i + 16384])
                sock.sendall(client.data_to_send())
            while not statuses:
                data = sock.recv(65536)
                assert data, "closed without an answer"
                for event in client.receive_data(data):
                    if isinstance(event, h2.events.TrailersReceived | h2.events.ResponseReceived):
                        found = dict(event.headers).get(b"grpc-status")
                        if found is not None:
                            statuses[event.stream_id] = found.decode()
                sock.sendall(client.data_to_send())
        return statuses

    async def test(server: NativeGrpcServer, address: str, seen: Recorder) -> None:
        statuses = await asyncio.to_thread(exchange, address)
        assert set(statuses.values()) == {str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])}, statuses
        assert min(statuses) == 2 * 18 - 1  # the 18th call is the first over 1 MiB (17 x 60 KB is 1.02 MB)
        assert refused(server, "connection_busy") >= 1
        async with grpc.aio.insecure_channel(address) as channel:  # a new connection is served as usual
            assert await unary(channel, "Echo")(b"fine") == b"fine"

    run(test)
