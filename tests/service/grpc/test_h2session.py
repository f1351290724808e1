"""service.grpc._h2.Session (the C extension over libnghttp2) against an independent HTTP/2 client: the
pure-Python ``h2`` library, with the bytes passed back and forth in memory."""

from __future__ import annotations

import contextlib
import random
import tracemalloc
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest
from hyperframe.frame import Frame, GoAwayFrame, PingFrame

from service.grpc import _h2

PATH = b"/inference.GRPCInferenceService/ModelInfer"
REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", PATH),
    (b":authority", b"127.0.0.1:8001"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
    (b"user-agent", b"grpc-python/1.85"),
]
METADATA = [
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
    (b"user-agent", b"grpc-python/1.85"),
]
OK = [(b"grpc-status", b"0"), (b"grpc-message", b"")]


def grpc(payload: bytes, compressed: bool = False) -> bytes:
    """One gRPC length-prefixed message."""
    return bytes([compressed]) + len(payload).to_bytes(4, "big") + payload


def frames(data: bytes) -> list[Any]:
    """The HTTP/2 frames in bytes a server wrote."""
    out = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        out.append(frame)
        data = data[9 + length :]
    return out


class Pair:
    """A Session and an h2 client connected in memory; the client acknowledges the data it receives."""

    def __init__(self, max_message_bytes: int = 4 << 20, **kwargs: int) -> None:
        self.server = _h2.Session(max_message_bytes, **kwargs)
        self.client = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.sent: list[bytes] = []  # what the client sent, in feed() calls
        self.client.initiate_connection()
        assert self.to_server() == []
        self.to_client()
        assert self.to_server() == []  # the SETTINGS ACK

    def to_server(self) -> list[tuple[Any, ...]]:
        data = self.client.data_to_send()
        self.sent.append(data)
        return self.server.feed(data)

    def to_client(self) -> list[Any]:
        events = self.client.receive_data(self.server.data_to_send())
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                self.client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        return events

    def request(
        self, body: bytes = b"", end: bool = True, headers: list[tuple[bytes, bytes]] = REQUEST
    ) -> int:
        stream = self.client.get_next_available_stream_id()
        self.client.send_headers(stream, headers, end_stream=end and not body)
        frame = self.client.max_outbound_frame_size
        for at in range(0, len(body), frame):
            self.client.send_data(stream, body[at : at + frame], end_stream=end and at + frame >= len(body))
        return stream

    def response(self, stream: int) -> tuple[list[tuple[bytes, bytes]], bytes, list[tuple[bytes, bytes]]]:
        """Exchanges bytes until ``stream`` ends; its headers, DATA and trailers."""
        headers: list[tuple[bytes, bytes]] = []
        trailers: list[tuple[bytes, bytes]] = []
        data = b""
        for _ in range(1000):
            for event in self.to_client():
                if getattr(event, "stream_id", None) != stream:
                    continue
                if isinstance(event, h2.events.ResponseReceived):
                    headers = event.headers
                elif isinstance(event, h2.events.DataReceived):
                    data += event.data
                elif isinstance(event, h2.events.TrailersReceived):
                    trailers = event.headers
                elif isinstance(event, h2.events.StreamEnded):
                    return headers, data, trailers
            assert self.to_server() == []
        raise AssertionError("the response never ended")


def test_preface_and_settings() -> None:
    server = _h2.Session(1000, max_concurrent_streams=7, window_bytes=1 << 20)
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    assert server.feed(client.data_to_send()) == []
    assert server.want_write()
    events = client.receive_data(server.data_to_send())
    changed = next(e for e in events if isinstance(e, h2.events.RemoteSettingsChanged)).changed_settings
    assert changed[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS].new_value == 7
    assert changed[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE].new_value == 1 << 20
    window = next(e for e in events if isinstance(e, h2.events.WindowUpdated))
    assert (window.stream_id, window.delta) == (0, (1 << 20) - 65535)
    assert any(isinstance(e, h2.events.SettingsAcknowledged) for e in events)
    assert server.feed(client.data_to_send()) == []  # the client's ACK
    assert server.data_to_send() == b""
    assert server.want_read() and not server.want_write()
    assert server.open_streams == 0


def test_window_cap() -> None:
    sent = frames(_h2.Session(1000, window_bytes=1 << 40).data_to_send())
    assert sent[0].settings[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] == 2**31 - 1
    assert sent[1].window_increment == 2**31 - 1 - 65535


def test_unary() -> None:
    pair = Pair()
    stream = pair.request(grpc(b"request"))
    events = pair.to_server()
    assert events == [
        (_h2.HEADERS, stream, b"POST", PATH, METADATA),
        (_h2.MESSAGE, stream, b"request", False),
        (_h2.END, stream, False),
    ]
    assert pair.server.open_streams == 1
    pair.server.unary(stream, b"answer", OK)
    out = pair.server.data_to_send()
    kinds = [type(e) for e in pair.client.receive_data(out)]
    assert kinds == [
        h2.events.ResponseReceived,
        h2.events.DataReceived,
        h2.events.TrailersReceived,
        h2.events.StreamEnded,
    ]
    data = next(f for f in frames(out) if f.type == 0x0)
    assert data.data == grpc(b"answer") and "END_STREAM" not in data.flags
    assert pair.server.open_streams == 0
    # The same call again: answers come through the same way with HPACK's dynamic table in use.
    stream = pair.request(grpc(b"", compressed=True))
    assert pair.to_server()[1:] == [(_h2.MESSAGE, stream, b"", True), (_h2.END, stream, False)]
    pair.server.unary(stream, b"", OK)
    assert pair.response(stream) == (
        [(b":status", b"200"), (b"content-type", b"application/grpc")],
        grpc(b""),
        OK,
    )


def test_keywords_and_argument_errors() -> None:
    pair = Pair()
    stream = pair.request(grpc(b"x"))
    pair.to_server()
    with pytest.raises(TypeError):
        pair.server.unary(stream, b"x", [(b"grpc-status", "0")])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        pair.server.unary(stream, b"x")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        pair.server.feed(data=b"", more=1)  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        pair.server.reject(stream, 99)
    with pytest.raises(ValueError):
        _h2.Session(-1)
    # Bad trailers left the stream untouched: a good call still answers it.
    pair.server.unary(stream_id=stream, payload=bytearray(b"y"), trailers=(OK[0],))  # type: ignore[arg-type]
    assert pair.response(stream)[1:] == (grpc(b"y"), [OK[0]])
    # Ids that name no stream are ignored, whatever their value.
    for bogus in (0, -1, 2**40, 99):
        pair.server.unary(bogus, b"x", OK)
        pair.server.reset(bogus)
        pair.server.reject(bogus, 404)
    assert pair.server.data_to_send() == b""


def test_messages_split_across_frames_and_packed_into_one() -> None:
    pair = Pair()
    first, second = bytes(range(256)) * 40, b"second"
    stream = pair.request(end=False)
    body = grpc(first) + grpc(second)
    for i in range(0, len(body), 7):  # every piece a DATA frame of its own
        pair.client.send_data(stream, body[i : i + 7])
    events = pair.to_server()
    assert events[1:] == [(_h2.MESSAGE, stream, first, False), (_h2.MESSAGE, stream, second, False)]
    # Three messages and the start of a fourth in one frame, the rest of it in the next.
    packed = grpc(b"a") + grpc(b"") + grpc(b"ccc", compressed=True) + grpc(b"dddd")[:6]
    pair.client.send_data(stream, packed)
    pair.client.send_data(stream, grpc(b"dddd")[6:], end_stream=True)
    assert pair.to_server() == [
        (_h2.MESSAGE, stream, b"a", False),
        (_h2.MESSAGE, stream, b"", False),
        (_h2.MESSAGE, stream, b"ccc", True),
        (_h2.MESSAGE, stream, b"dddd", False),
        (_h2.END, stream, False),
    ]


def test_message_larger_than_frames_and_default_window() -> None:
    pair = Pair()
    payload = random.Random(1).randbytes(300_000)
    assert pair.client.local_settings.max_frame_size == 16384
    # The session's SETTINGS and WINDOW_UPDATE opened both windows past the default 64 KiB: without them
    # h2 would refuse to send the message at once.
    assert pair.client.remote_settings.initial_window_size == 16 << 20
    assert pair.client.outbound_flow_control_window == 16 << 20
    stream = pair.request(grpc(payload))
    events = pair.to_server()
    assert events[1:] == [(_h2.MESSAGE, stream, payload, False), (_h2.END, stream, False)]


def test_window_updates_reopen_a_small_window() -> None:
    """With 64 KiB windows, 1 MiB goes through only if the session's WINDOW_UPDATEs reach the client."""
    pair = Pair(window_bytes=65535)
    payload = random.Random(2).randbytes(1 << 20)
    body = grpc(payload)
    stream = pair.request(end=False)
    events: list[tuple[Any, ...]] = []
    sent = 0
    for _ in range(1000):
        room = min(pair.client.local_flow_control_window(stream), len(body) - sent)
        while room > 0:
            size = min(room, pair.client.max_outbound_frame_size)
            pair.client.send_data(stream, body[sent : sent + size], end_stream=sent + size == len(body))
            sent += size
            room -= size
        events += pair.to_server()
        pair.to_client()  # the session's WINDOW_UPDATEs
        if sent == len(body):
            break
    assert events[1:] == [(_h2.MESSAGE, stream, payload, False), (_h2.END, stream, False)]


def test_too_large() -> None:
    pair = Pair(max_message_bytes=100)
    stream = pair.request(grpc(b"x" * 100) + grpc(b"y" * 101) + grpc(b"z"))
    assert pair.to_server()[1:] == [
        (_h2.MESSAGE, stream, b"x" * 100, False),
        (_h2.TOO_LARGE, stream, 101),
        (_h2.END, stream, False),
    ]
    pair.server.finish(stream, [(b"grpc-status", b"8"), (b"grpc-message", b"too%20large")])
    headers, data, trailers = pair.response(stream)
    # Trailers-only: the status rides in the one HEADERS frame.
    assert headers[:2] == [(b":status", b"200"), (b"content-type", b"application/grpc")]
    assert headers[2:] == [(b"grpc-status", b"8"), (b"grpc-message", b"too%20large")]
    assert (data, trailers) == (b"", [])


def test_too_large_while_the_client_still_sends() -> None:
    """A response ending before the request does stops the upload with RST_STREAM(NO_ERROR)."""
    pair = Pair(max_message_bytes=10)
    stream = pair.request(grpc(b"x" * 1000)[:500], end=False)
    assert pair.to_server()[1:] == [(_h2.TOO_LARGE, stream, 1000)]
    pair.client.send_data(stream, b"x" * 500)
    assert pair.to_server() == []  # discarded
    pair.server.finish(stream, [(b"grpc-status", b"8")])
    events = pair.to_client()
    assert [type(e) for e in events] == [
        h2.events.ResponseReceived,
        h2.events.StreamEnded,
        h2.events.StreamReset,
    ]
    assert events[-1].error_code == h2.errors.ErrorCodes.NO_ERROR
    assert pair.server.open_streams == 0


def test_truncated_end() -> None:
    pair = Pair()
    cut_body = pair.request(grpc(b"0123456789")[:8])
    cut_prefix = pair.request(grpc(b"0123456789")[:3])
    whole = pair.request(grpc(b"0123456789"))
    events = [e for e in pair.to_server() if e[0] == _h2.END]
    assert events == [(_h2.END, cut_body, True), (_h2.END, cut_prefix, True), (_h2.END, whole, False)]


def test_client_reset_closes_and_later_calls_are_no_ops() -> None:
    pair = Pair()
    stream = pair.request(grpc(b"part"), end=False)
    assert [e[0] for e in pair.to_server()] == [_h2.HEADERS, _h2.MESSAGE]
    pair.client.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
    assert pair.to_server() == [(_h2.CLOSED, stream, 8)]
    assert pair.server.open_streams == 0
    pair.server.send_headers(stream)
    pair.server.send_message(stream, b"late")
    pair.server.finish(stream, OK)
    pair.server.unary(stream, b"late", OK)
    pair.server.reject(stream, 415)
    pair.server.reset(stream)
    assert pair.server.data_to_send() == b""
    # A response already queued when the reset arrives: no CLOSED, the server had finished.
    stream = pair.request(grpc(b"q"))
    pair.to_server()
    pair.server.unary(stream, b"a", OK)
    pair.client.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
    assert pair.to_server() == []
    assert pair.server.open_streams == 0


def test_server_reset() -> None:
    pair = Pair()
    stream = pair.request(grpc(b"q"), end=False)
    pair.to_server()
    pair.server.reset(stream)
    events = pair.to_client()
    assert [(type(e), e.error_code) for e in events] == [(h2.events.StreamReset, h2.errors.ErrorCodes.CANCEL)]
    assert pair.server.open_streams == 0
    assert pair.to_server() == []  # no CLOSED for a stream the server reset


def test_reset_aborts_a_finished_response_held_by_flow_control() -> None:
    pair = Pair()
    stream = pair.request(grpc(b"q"))
    pair.to_server()
    pair.server.unary(stream, b"z" * 100_000, OK)
    pair.client.receive_data(pair.server.data_to_send())  # 64 KiB of it, unacknowledged
    assert pair.server.open_streams == 1
    pair.server.reset(stream)
    events = pair.to_client()
    assert [(type(e), e.error_code) for e in events] == [(h2.events.StreamReset, h2.errors.ErrorCodes.CANCEL)]
    assert pair.server.open_streams == 0


def test_oversized_header_list_resets_the_stream() -> None:
    pair = Pair()
    pair.request(headers=[*REQUEST, *[(b"x-big-%d" % i, b"v" * 1000) for i in range(70)]])
    assert pair.to_server() == []  # Python never hears of it
    events = pair.to_client()
    assert [type(e) for e in events] == [h2.events.StreamReset]
    assert pair.server.open_streams == 0
    # The connection goes on.
    stream = pair.request(grpc(b"q"))
    assert [e[:2] for e in pair.to_server()] == [
        (_h2.HEADERS, stream),
        (_h2.MESSAGE, stream),
        (_h2.END, stream),
    ]


def test_finish_without_messages_or_trailers() -> None:
    pair = Pair()
    first, second = pair.request(grpc(b"q")), pair.request(grpc(b"q"))
    pair.to_server()
    pair.server.send_headers(first)
    pair.to_client()
    pair.server.finish(first, OK)
    assert pair.response(first)[1:] == (b"", OK)
    pair.server.send_headers(second)
    pair.server.finish(second, [])  # END_STREAM on an empty DATA frame instead of trailers
    assert pair.response(second)[1:] == (b"", [])
    assert pair.server.open_streams == 0


def test_trailers_only_finish() -> None:
    pair = Pair()
    stream = pair.request(grpc(b"q"))
    pair.to_server()
    pair.server.finish(stream, [(b"grpc-status", b"12"), (b"grpc-message", b"Method%20not%20found!")])
    out = pair.server.data_to_send()
    sent = frames(out)
    assert [f.type for f in sent] == [0x1] and "END_STREAM" in sent[0].flags
    pair.client.receive_data(out)
    assert pair.server.open_streams == 0


def test_streaming_response_with_deferred_data() -> None:
    pair = Pair()
    stream = pair.request(grpc(b"q"))
    pair.to_server()
    pair.server.send_headers(stream)
    pair.server.send_headers(stream)  # once only
    events = pair.to_client()
    assert [type(e) for e in events] == [h2.events.ResponseReceived]
    assert pair.server.data_to_send() == b""  # the provider is deferred: nothing to send
    for i in range(3):
        pair.server.send_message(stream, b"m%d" % i)
        if i == 1:
            pair.server.send_message(stream, b"extra")
        events = pair.to_client()
        assert all(isinstance(e, h2.events.DataReceived) for e in events)
        got = b"".join(e.data for e in events)
        assert got == grpc(b"m%d" % i) + (grpc(b"extra") if i == 1 else b"")
    pair.server.finish(stream, OK)
    events = pair.to_client()
    assert [type(e) for e in events] == [h2.events.TrailersReceived, h2.events.StreamEnded]
    assert events[0].headers == OK
    assert pair.server.open_streams == 0


def test_many_queued_messages() -> None:
    pair = Pair()
    stream = pair.request(grpc(b"q"))
    pair.to_server()
    messages = [b"%d" % i * (i % 7) for i in range(50)]
    for message in messages:
        pair.server.send_message(stream, message)
    pair.server.finish(stream, OK)
    assert pair.response(stream)[1:] == (b"".join(grpc(m) for m in messages), OK)


def test_response_larger_than_the_client_window() -> None:
    pair = Pair()
    payload = random.Random(3).randbytes(200_000)
    stream = pair.request(grpc(b"q"))
    pair.to_server()
    pair.server.unary(stream, payload, OK)
    first = pair.server.data_to_send()
    assert sum(len(f.data) for f in frames(first) if f.type == 0x0) == 65535  # the client's window
    received = b""
    for event in pair.client.receive_data(first):
        if isinstance(event, h2.events.DataReceived):
            received += event.data
            pair.client.acknowledge_received_data(event.flow_controlled_length, stream)
    assert pair.server.data_to_send() == b""  # blocked until the WINDOW_UPDATE
    assert pair.to_server() == []
    _, rest, trailers = pair.response(stream)
    assert received + rest == grpc(payload)
    assert trailers == OK


def test_reject() -> None:
    pair = Pair()
    stream = pair.request(headers=[(b":method", b"GET"), *REQUEST[1:]])
    assert pair.to_server() == [(_h2.HEADERS, stream, b"GET", PATH, METADATA), (_h2.END, stream, False)]
    pair.server.reject(stream, 405)
    assert pair.response(stream) == ([(b":status", b"405")], b"", [])
    # Once the response started, a second :status cannot follow: the stream is reset instead.
    stream = pair.request(grpc(b"q"))
    pair.to_server()
    pair.server.send_headers(stream)
    pair.server.reject(stream, 415)
    events = pair.to_client()
    assert isinstance(events[-1], h2.events.StreamReset)
    assert pair.server.open_streams == 0


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # not the HTTP/2 preface
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x04\x01\x00\x00\x00\x00\x00" + b"\xff" * 9,
    ],
    ids=["bad-preface", "bad-frames"],
)
def test_garbage_raises_with_a_goaway_to_send(garbage: bytes) -> None:
    server = _h2.Session(1000)
    with pytest.raises(_h2.H2Error):
        server.feed(garbage)
    goaway = [f for f in frames(server.data_to_send()) if isinstance(f, GoAwayFrame)]
    assert len(goaway) == 1 and goaway[0].error_code != 0
    assert not server.want_read() and not server.want_write()
    assert server.feed(b"more garbage") == []  # ignored from now on


def test_protocol_error_after_streams() -> None:
    pair = Pair()
    stream = pair.request(grpc(b"q"), end=False)
    pair.to_server()
    # DATA on stream 0 is a connection error.
    with pytest.raises(_h2.H2Error, match="PROTOCOL_ERROR"):
        pair.server.feed(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")
    (goaway,) = [f for f in frames(pair.server.data_to_send()) if isinstance(f, GoAwayFrame)]
    assert goaway.last_stream_id == stream
    pair.server.goaway()  # what the caller does next: no error, nothing more to send
    assert pair.server.data_to_send() == b""


def test_shutdown_notice_then_goaway() -> None:
    pair = Pair()
    stream = pair.request(grpc(b"q"))
    pair.to_server()
    pair.server.shutdown_notice()
    (notice,) = frames(pair.server.data_to_send())
    assert isinstance(notice, GoAwayFrame)
    assert (notice.last_stream_id, notice.error_code) == (2**31 - 1, 0)
    assert pair.server.want_read()  # the calls in flight go on
    pair.server.unary(stream, b"a", OK)
    assert [f.type for f in frames(pair.server.data_to_send())] == [0x1, 0x0, 0x1]
    pair.server.goaway()
    (final,) = frames(pair.server.data_to_send())
    assert isinstance(final, GoAwayFrame)
    assert (final.last_stream_id, final.error_code) == (stream, 0)
    assert not pair.server.want_read() and not pair.server.want_write()
    pair.server.shutdown_notice()  # too late: a no-op
    pair.server.goaway(2)
    assert pair.server.data_to_send() == b""


def test_a_ping_counts_until_the_client_acknowledges_it() -> None:
    pair = Pair()
    assert pair.server.pings_unacked == 0
    pair.server.shutdown_notice()
    pair.server.ping()
    notice, ping = frames(pair.server.data_to_send())
    assert isinstance(notice, GoAwayFrame) and isinstance(ping, PingFrame)
    assert "ACK" not in ping.flags and ping.opaque_data == b"draining"
    assert pair.server.pings_unacked == 1
    # Neither the client's own PING nor an acknowledgement of other data counts; the right one does once.
    other = PingFrame(0, flags=["ACK"])
    other.opaque_data = b"whatever"
    own = PingFrame(0)
    own.opaque_data = b"draining"
    assert pair.server.feed(other.serialize() + own.serialize()) == []
    assert pair.server.pings_unacked == 1
    ack = PingFrame(0, flags=["ACK"])
    ack.opaque_data = b"draining"
    assert pair.server.feed(ack.serialize() + ack.serialize()) == []
    assert pair.server.pings_unacked == 0
    pair.server.ping()
    pair.server.ping()
    assert pair.server.pings_unacked == 2
    pair.to_client()  # h2 acknowledges both
    assert pair.to_server() == [] and pair.server.pings_unacked == 0


def test_goaway_with_an_error_code() -> None:
    pair = Pair()
    pair.server.goaway(error_code=2)
    (final,) = frames(pair.server.data_to_send())
    assert isinstance(final, GoAwayFrame) and final.error_code == 2


def test_interleaved_streams() -> None:
    pair = Pair()
    bodies = {}
    streams = []
    for i in range(200):
        stream = pair.request(end=False)
        streams.append(stream)
        bodies[stream] = grpc(b"%d-" % i * (i + 1))
    for part in range(3):
        for stream in streams:
            body = bodies[stream]
            third = len(body) // 3 + 1
            pair.client.send_data(stream, body[part * third : (part + 1) * third], end_stream=part == 2)
    events = pair.to_server()
    assert len(events) == 600
    assert pair.server.open_streams == 200
    for stream in streams:
        mine = [e for e in events if e[1] == stream]
        assert [e[0] for e in mine] == [_h2.HEADERS, _h2.MESSAGE, _h2.END]
        assert grpc(mine[1][2]) == bodies[stream]
    for stream in reversed(streams):
        pair.server.unary(stream, bodies[stream][5:], OK)
    got: dict[int, bytes] = dict.fromkeys(streams, b"")
    ended = set()
    for _ in range(100):
        for event in pair.to_client():
            if isinstance(event, h2.events.DataReceived):
                got[event.stream_id] += event.data
            elif isinstance(event, h2.events.StreamEnded):
                ended.add(event.stream_id)
        pair.to_server()
        if len(ended) == 200:
            break
    assert got == bodies
    assert pair.server.open_streams == 0


BUSY_STATUS = [(b"grpc-status", b"8"), (b"grpc-message", b"busy")]
RESPONSE_HEADERS = [(b":status", b"200"), (b"content-type", b"application/grpc")]


def send(pair: Pair, stream: int, data: bytes, end: bool = False) -> None:
    """``data`` on ``stream`` in DATA frames as large as the client may send (the window permitting)."""
    frame = pair.client.max_outbound_frame_size
    for at in range(0, len(data), frame):
        pair.client.send_data(stream, data[at : at + frame], end_stream=end and at + frame >= len(data))
    if end and not data:
        pair.client.end_stream(stream)


def upload(pair: Pair, stream: int, data: bytes, end: bool = False) -> list[tuple[Any, ...]]:
    """Sends ``data`` on ``stream`` as fast as flow control allows, passing the session's WINDOW_UPDATEs
    back to the client; the session's events meanwhile."""
    events: list[tuple[Any, ...]] = []
    sent = 0
    for _ in range(1000):
        room = min(pair.client.local_flow_control_window(stream), len(data) - sent)
        if room > 0:
            send(pair, stream, data[sent : sent + room], end=end and sent + room == len(data))
            sent += room
        elif end and not data:
            pair.client.end_stream(stream)
        events += pair.to_server()
        pair.to_client()
        if sent == len(data):
            return events
    raise AssertionError("the windows never reopened")


def test_busy_refuses_the_stream_that_crosses_the_cap() -> None:
    pair = Pair(max_message_bytes=100_000, max_buffered_bytes=150_000)
    assert pair.client.max_outbound_frame_size == 16384
    first, second = random.Random(7).randbytes(100_000), random.Random(8).randbytes(100_000)
    a = pair.request(grpc(first)[:90_005], end=False)
    assert pair.to_server() == [(_h2.HEADERS, a, b"POST", PATH, METADATA)]
    assert pair.server.buffered_bytes == 90_000  # what arrived, not the 100_000 declared
    b = pair.request(grpc(second)[:90_005], end=False)
    # b's DATA frames bring 16_379 (after the prefix), then 16_384 bytes each: the fourth would make the
    # connection hold 155_531 > 150_000 bytes.
    assert pair.to_server() == [
        (_h2.HEADERS, b, b"POST", PATH, METADATA),
        (_h2.BUSY, b, 90_000 + 16_379 + 3 * 16_384),
    ]
    assert pair.server.buffered_bytes == 90_000  # b gave back what it held
    # The rest of both messages: a's completes, b's is discarded, and b ends without END.
    send(pair, b, grpc(second)[90_005:], end=True)
    send(pair, a, grpc(first)[90_005:], end=True)
    assert pair.to_server() == [(_h2.MESSAGE, a, first, False), (_h2.END, a, False)]
    assert pair.server.buffered_bytes == 0
    pair.server.finish(b, BUSY_STATUS)
    assert pair.response(b) == (RESPONSE_HEADERS + BUSY_STATUS, b"", [])
    pair.server.unary(a, b"ok", OK)
    assert pair.response(a) == (RESPONSE_HEADERS, grpc(b"ok"), OK)
    assert (pair.server.open_streams, pair.server.buffered_bytes) == (0, 0)


def test_messages_that_complete_never_make_busy() -> None:
    """Only what waits in unfinished messages counts: 50 x 90 KB through a 150 KB cap, each held a while."""
    pair = Pair(max_message_bytes=100_000, max_buffered_bytes=150_000)
    rng = random.Random(9)
    messages = [rng.randbytes(90_000) for _ in range(50)]
    stream = pair.request(end=False)
    pair.to_server()
    for message in messages[:40]:
        send(pair, stream, grpc(message)[:50_005])
        assert pair.to_server() == []
        assert pair.server.buffered_bytes == 50_000
        send(pair, stream, grpc(message)[50_005:])
        assert pair.to_server() == [(_h2.MESSAGE, stream, message, False)]
        assert pair.server.buffered_bytes == 0
        pair.to_client()
    # Ten in one go, with frames that end one message and start the next.
    send(pair, stream, b"".join(grpc(m) for m in messages[40:]), end=True)
    assert pair.to_server() == [
        *[(_h2.MESSAGE, stream, m, False) for m in messages[40:]],
        (_h2.END, stream, False),
    ]
    assert pair.server.buffered_bytes == 0


def test_busy_stream_is_discarded_and_the_windows_stay_open() -> None:
    """With 64 KiB windows, a refused stream's DATA keeps being consumed: its own window, the connection's
    and the other calls go on."""
    pair = Pair(max_message_bytes=1 << 20, max_buffered_bytes=150_000, window_bytes=65535)
    big = random.Random(10).randbytes(140_000)
    a = pair.request(end=False)
    assert upload(pair, a, grpc(big)[:100_005])[1:] == []
    assert pair.server.buffered_bytes == 100_000
    b = pair.request(end=False)
    events = upload(pair, b, grpc(big)[:60_005])
    assert [e[:2] for e in events] == [(_h2.HEADERS, b), (_h2.BUSY, b)]
    assert events[1][2] > 150_000
    assert pair.server.buffered_bytes == 100_000
    # 1 MiB more on b, many windows' worth: all of it discarded, nothing reported.
    assert upload(pair, b, grpc(b"\x00" * 500_000) * 2, end=True) == []
    assert pair.server.buffered_bytes == 100_000
    assert upload(pair, a, grpc(big)[100_005:], end=True) == [
        (_h2.MESSAGE, a, big, False),
        (_h2.END, a, False),
    ]
    # A new call, larger than the windows, goes through whole.
    c = pair.request(end=False)
    payload = random.Random(11).randbytes(140_000)
    events = upload(pair, c, grpc(payload), end=True)
    assert events == [
        (_h2.HEADERS, c, b"POST", PATH, METADATA),
        (_h2.MESSAGE, c, payload, False),
        (_h2.END, c, False),
    ]
    pair.server.finish(b, BUSY_STATUS)
    assert pair.response(b)[0] == RESPONSE_HEADERS + BUSY_STATUS
    for stream in (a, c):
        pair.server.unary(stream, b"ok", OK)
        assert pair.response(stream)[1:] == (grpc(b"ok"), OK)
    assert (pair.server.open_streams, pair.server.buffered_bytes) == (0, 0)


def test_default_cap_is_four_messages_and_at_least_one_mib() -> None:
    with pytest.raises(ValueError):
        _h2.Session(1000, max_buffered_bytes=-1)
    pair = Pair(max_message_bytes=400_000)  # 1_600_000 bytes
    streams = [pair.request(grpc(b"x" * 400_000)[:400_004], end=False) for _ in range(4)]
    assert [e[:2] for e in pair.to_server()] == [(_h2.HEADERS, s) for s in streams]
    assert pair.server.buffered_bytes == 4 * 399_999
    last = pair.request(grpc(b"y" * 10)[:9], end=False)
    assert [e[0] for e in pair.to_server()] == [_h2.HEADERS]
    assert pair.server.buffered_bytes == 1_600_000  # the cap itself is allowed
    pair.client.send_data(last, b"y")
    assert pair.to_server() == [(_h2.BUSY, last, 1_600_001)]
    assert pair.server.buffered_bytes == 4 * 399_999
    # 4 x 100_000 is less than 1 MiB: five streams of 99_999 bytes fit.
    pair = Pair(max_message_bytes=100_000)
    for _ in range(5):
        pair.request(grpc(b"x" * 100_000)[:100_004], end=False)
    assert {e[0] for e in pair.to_server()} == {_h2.HEADERS}
    assert pair.server.buffered_bytes == 5 * 99_999


def _held(pair: Pair) -> int:
    """A new stream on ``pair`` holding 30_000 bytes of a 100_000-byte message."""
    before = pair.server.buffered_bytes
    stream = pair.request(grpc(b"x" * 100_000)[:30_005], end=False)
    assert [e[0] for e in pair.to_server()] == [_h2.HEADERS]
    assert pair.server.buffered_bytes == before + 30_000
    return stream


def test_buffered_bytes_come_back_however_a_stream_ends() -> None:
    pair = Pair(max_message_bytes=100_000)
    stream = _held(pair)  # the client resets it
    pair.client.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
    assert pair.to_server() == [(_h2.CLOSED, stream, 8)]
    assert pair.server.buffered_bytes == 0
    stream = _held(pair)  # the server answers while the client still sends
    pair.server.finish(stream, BUSY_STATUS)
    assert pair.server.buffered_bytes == 0
    pair.to_client()
    stream = _held(pair)
    pair.server.unary(stream, b"", OK)
    assert pair.server.buffered_bytes == 0
    pair.to_client()
    stream = _held(pair)
    pair.server.reset(stream)
    assert pair.server.buffered_bytes == 0
    pair.to_client()
    stream = _held(pair)
    pair.server.reject(stream, 503)
    assert pair.server.buffered_bytes == 0
    pair.to_client()
    stream = _held(pair)  # the client half-closes inside the message
    pair.client.end_stream(stream)
    assert pair.to_server() == [(_h2.END, stream, True)]
    assert pair.server.buffered_bytes == 0
    pair.server.finish(stream, OK)
    pair.to_client()
    assert pair.server.open_streams == 0
    # The connection ends with two streams holding parts of messages.
    stream, _ = _held(pair), _held(pair)
    assert pair.server.buffered_bytes == 60_000
    pair.server.goaway()
    assert frames(pair.server.data_to_send())[-1].type == GoAwayFrame.type
    assert pair.server.buffered_bytes == 0  # nothing more is read once the GOAWAY is out
    pair.client.send_data(stream, b"x")
    assert pair.server.feed(pair.client.data_to_send()) == []
    assert pair.server.buffered_bytes == 0
    # A connection error does the same, and dealloc frees what is still held.
    pair = Pair(max_message_bytes=100_000)
    _held(pair)
    with pytest.raises(_h2.H2Error):
        pair.server.feed(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")  # DATA on stream 0
    assert pair.server.buffered_bytes == 0
    pair = Pair(max_message_bytes=100_000)
    _held(pair), _held(pair)
    del pair


class _Stream:
    """The model of one stream in test_random_streams_match_a_model: what its client has queued to send,
    and the message the session assembles."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.prefix = b""
        self.body: bytearray | None = None  # the unfinished message's bytes, once its prefix is in
        self.size = 0
        self.compressed = False
        self.ended = False  # the client half-closed
        self.dropped = False  # BUSY: nothing more to report


def _expect_data(model: dict[int, _Stream], stream: int, chunk: bytes, cap: int) -> list[tuple[Any, ...]]:
    """The events a DATA chunk gives, by the rules in _h2.pyi."""
    st = model[stream]
    events: list[tuple[Any, ...]] = []
    while chunk and not st.dropped:
        if st.body is None:
            need = 5 - len(st.prefix)
            st.prefix, chunk = st.prefix + chunk[:need], chunk[need:]
            if len(st.prefix) < 5:
                break
            st.size, st.compressed = int.from_bytes(st.prefix[1:], "big"), bool(st.prefix[0] & 1)
            st.prefix, st.body = b"", bytearray()
        take = min(st.size - len(st.body), len(chunk))
        held = sum(len(s.body) for s in model.values() if s.body is not None)
        if len(st.body) + take < st.size and held + take > cap:
            events.append((_h2.BUSY, stream, held + take))
            st.body, st.dropped = None, True
            break
        st.body += chunk[:take]
        chunk = chunk[take:]
        if len(st.body) == st.size:
            events.append((_h2.MESSAGE, stream, bytes(st.body), st.compressed))
            st.body = None
    return events


def test_random_streams_match_a_model() -> None:
    """Random interleavings of parts of messages, half-closes, resets and answers on up to 12 streams: the
    events and buffered_bytes are those of a model of the rules, after every feed and every answer."""
    rng = random.Random(12)
    cap, limit = 100_000, 60_000
    pair = Pair(max_message_bytes=limit, max_buffered_bytes=cap)
    model: dict[int, _Stream] = {}
    seen: set[int] = set()

    def held() -> int:
        return sum(len(s.body) for s in model.values() if s.body is not None)

    for _ in range(1500):
        expected: list[tuple[Any, ...]] = []
        for _ in range(rng.randrange(1, 6)):
            op = rng.random()
            sending = [s for s in model if not model[s].ended]
            if (op < 0.1 and len(model) < 12) or not model:
                stream = pair.request(end=False)
                model[stream] = _Stream()
                expected.append((_h2.HEADERS, stream, b"POST", PATH, METADATA))
            elif op < 0.93 and sending:
                stream = rng.choice(sending)
                st = model[stream]
                size = rng.choice([1, 3, 5, 100, 3000, 16384, 16384])
                while len(st.out) < size:
                    st.out += grpc(
                        rng.randbytes(rng.choice([0, 10, 1000, 30_000, limit])), rng.random() < 0.2
                    )
                if pair.client.local_flow_control_window(stream) < size:
                    continue
                chunk = bytes(st.out[:size])
                del st.out[:size]
                pair.client.send_data(stream, chunk)
                expected += _expect_data(model, stream, chunk, cap)
            elif op < 0.97 and sending:
                stream = rng.choice(sending)
                st = model[stream]
                pair.client.end_stream(stream)
                st.ended = True
                if not st.dropped:
                    expected.append((_h2.END, stream, bool(st.prefix) or st.body is not None))
                st.prefix, st.body = b"", None
            else:
                stream = rng.choice(list(model))
                pair.client.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
                expected.append((_h2.CLOSED, stream, 8))
                del model[stream]
        assert pair.to_server() == expected
        seen.update(e[0] for e in expected)
        assert pair.server.buffered_bytes == held()
        for stream in list(model):
            answer = rng.randrange(40)
            if answer == 0:
                pair.server.finish(stream, BUSY_STATUS if model[stream].dropped else OK)
            elif answer == 1:
                pair.server.reset(stream)
            else:
                continue
            del model[stream]
            assert pair.server.buffered_bytes == held()
        pair.to_client()
        assert pair.server.open_streams >= len(model)
    assert seen == {_h2.HEADERS, _h2.MESSAGE, _h2.END, _h2.CLOSED, _h2.BUSY}
    for stream in list(model):
        pair.server.reset(stream)
    pair.to_client()
    assert (pair.server.open_streams, pair.server.buffered_bytes) == (0, 0)


def _conversation() -> bytes:
    """Everything a client sends over a connection with several kinds of calls, as one byte string."""
    pair = Pair(max_message_bytes=4096)
    client = pair.client
    rng = random.Random(4)
    for i in range(12):
        headers = [*REQUEST, (b"x-call", b"%d" % i), (b"x-trace", rng.randbytes(20).hex().encode())]
        body = b"".join(grpc(rng.randbytes(rng.choice([0, 1, 5, 300, 20000])), i % 2 == 0) for _ in range(3))
        if i == 3:
            body += grpc(b"x" * 5000)  # too large for the session below
        if i == 5:
            body += b"\x00\x00"  # a cut prefix
        stream = pair.request(body, end=False, headers=headers)
        if i == 7:
            client.reset_stream(stream)
        else:
            client.end_stream(stream)
        client.ping(b"%08d" % i)
        pair.to_server()
        pair.to_client()
    return b"".join(pair.sent)


def test_any_split_of_the_input_gives_the_same_events() -> None:
    wire = _conversation()
    whole = _h2.Session(4096).feed(wire)
    kinds = {e[0] for e in whole}
    assert kinds == {_h2.HEADERS, _h2.MESSAGE, _h2.END, _h2.TOO_LARGE, _h2.CLOSED}
    assert (_h2.END, 11, True) in whole
    rng = random.Random(5)
    splits = [[1] * len(wire)] + [
        [rng.choice([1, 2, 3, 8, 100, 4000, 17000]) for _ in wire] for _ in range(20)
    ]
    for sizes in splits:
        session = _h2.Session(4096)
        events: list[tuple[Any, ...]] = []
        at = 0
        for size in sizes:
            if at >= len(wire):
                break
            events += session.feed(wire[at : at + size])
            at += size
            if rng.random() < 0.1:
                session.data_to_send()
        assert events == whole


@pytest.mark.parametrize("max_buffered", [0, 1], ids=["default-cap", "busy-at-once"])
def test_random_bytes_never_crash(max_buffered: int) -> None:
    """Corrupted conversations, fed in random pieces, end in events or H2Error, never worse; with a cap
    of 1 byte, any message cut between two pieces makes BUSY."""
    rng = random.Random(6)
    wire = _conversation()
    preface = wire[:24]
    kinds: set[int] = set()
    for _ in range(1000):
        data = bytearray(wire[: rng.randrange(len(wire))])
        for _ in range(rng.randrange(1, 20)):
            at = rng.randrange(len(data) + 1)
            choice = rng.randrange(3)
            if choice == 0:
                data[at : at + 1] = bytes([rng.randrange(256)])
            elif choice == 1:
                data[at:at] = rng.randbytes(rng.randrange(1, 12))
            else:
                del data[at : at + rng.randrange(1, 12)]
        if rng.random() < 0.3:
            data = bytearray(preface + rng.randbytes(rng.randrange(2000)))
        session = _h2.Session(
            rng.choice([0, 100, 1 << 20]),
            window_bytes=rng.choice([0, 65535, 1 << 24]),
            max_buffered_bytes=max_buffered,
        )
        at = 0
        while at < len(data):
            size = rng.choice([1, 7, 100, 5000, 70000])
            with contextlib.suppress(_h2.H2Error):
                kinds.update(e[0] for e in session.feed(bytes(data[at : at + size])))
            assert max_buffered == 0 or session.buffered_bytes <= max_buffered
            at += size
            for stream in range(1, 40, 2):  # answers at random, on known streams or not
                answer = rng.randrange(6)
                if answer == 0:
                    session.unary(stream, b"x", OK)
                elif answer == 1:
                    session.send_message(stream, b"y" * rng.choice([0, 70000]))
                elif answer == 2:
                    session.finish(stream, OK)
                elif answer == 3:
                    session.reset(stream)
            session.data_to_send()
    assert (_h2.BUSY in kinds) == (max_buffered == 1)


def _recorded_calls(count: int) -> list[bytes]:
    """What a client sends for ``count`` unary calls answered as replay() answers them, one feed each."""
    pair = Pair()
    for i in range(count):
        stream = pair.request(grpc(b"request %d" % i), headers=[*REQUEST, (b"x-id", b"%d" % i)])
        wire = pair.client.data_to_send()
        pair.sent.append(wire)
        for event in pair.client.receive_data(replay(pair.server, [wire])):
            if isinstance(event, h2.events.DataReceived):
                pair.client.acknowledge_received_data(event.flow_controlled_length, stream)
    return pair.sent


def replay(session: Any, wires: list[bytes]) -> bytes:
    """Feeds ``wires`` to ``session``, answering each call with its request message; what it sent."""
    out = []
    for wire in wires:
        message = b""
        for event in session.feed(wire):
            if event[0] == _h2.MESSAGE:
                message = event[2]
            elif event[0] == _h2.END:
                session.unary(event[1], message, OK)
        out.append(session.data_to_send())
    return b"".join(out)


def test_no_state_left_behind() -> None:
    """Thousands of calls return open_streams to 0 and leave Python's heap where it was."""
    wires = _recorded_calls(3000)
    session = _h2.Session(4 << 20)
    replay(session, wires[:500])  # warms the caches up
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        replay(session, wires[500:])
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert session.open_streams == 0
    assert after - before < 32 * 1024, after - before
