"""Types of service.grpc._h2, the C extension (service/grpc/_h2.c) that runs the server side of an
HTTP/2 connection carrying gRPC over libnghttp2: bytes in, whole calls out, framed bytes back.

feed() returns events, tuples whose first item is one of the kinds below:

- ``(HEADERS, stream_id, method, path, metadata)``: a request's header block; ``metadata`` holds the
  non-pseudo headers in arrival order as ``(name, value)`` bytes pairs.
- ``(MESSAGE, stream_id, payload, compressed)``: one whole gRPC message, its 5-byte prefix stripped.
- ``(TOO_LARGE, stream_id, declared_length)``: a message over ``max_message_bytes``; the rest of the
  stream's request is discarded.
- ``(END, stream_id, truncated)``: the client half-closed; ``truncated`` when a message was cut short.
- ``(CLOSED, stream_id, error_code)``: the stream closed before the server ended its response.
- ``(BUSY, stream_id, held_bytes)``: a DATA chunk on this stream would have raised the bytes of
  unfinished request messages held over the whole connection above ``max_buffered_bytes``;
  ``held_bytes`` is the total it would have made.  Reported once per stream; from then on the stream is
  treated as after TOO_LARGE (its buffer freed, the rest of its request discarded) but no END follows:
  answer it with a status (finish, unary) or reset it.  The other streams go on.

``max_buffered_bytes`` (0: ``4 * max_message_bytes``, at least 1 MiB) bounds what nghttp2's automatic
WINDOW_UPDATEs would otherwise let a connection make the server hold: ``max_concurrent_streams`` times
``max_message_bytes``.  It counts the bytes of unfinished messages received so far, not their declared
lengths; a stream gives them back when its message completes, when its request or response ends, when it
closes, and when the session stops reading.  ``buffered_bytes`` is the current total.

A stream the server has ended (finish, unary, reject, reset) reports nothing more, and calls on a stream
that is unknown, closed or already ended are no-ops.
"""

from typing import Any

HEADERS: int
MESSAGE: int
END: int
TOO_LARGE: int
CLOSED: int
BUSY: int

class H2Error(Exception):
    """A fatal connection error; data_to_send() still holds the GOAWAY to write before closing."""

class Session:
    def __init__(
        self,
        max_message_bytes: int,
        max_concurrent_streams: int = 1024,
        window_bytes: int = 16777216,
        max_buffered_bytes: int = 0,
    ) -> None: ...
    def feed(self, data: bytes) -> list[tuple[Any, ...]]: ...
    def data_to_send(self) -> bytes: ...
    def want_read(self) -> bool: ...
    def want_write(self) -> bool: ...
    def send_headers(self, stream_id: int) -> None: ...
    def send_message(self, stream_id: int, payload: bytes) -> None: ...
    def finish(self, stream_id: int, trailers: list[tuple[bytes, bytes]]) -> None: ...
    def unary(self, stream_id: int, payload: bytes, trailers: list[tuple[bytes, bytes]]) -> None: ...
    def reject(self, stream_id: int, http_status: int) -> None: ...
    def reset(self, stream_id: int, error_code: int = 8) -> None: ...
    def shutdown_notice(self) -> None: ...
    def ping(self) -> None: ...
    def goaway(self, error_code: int = 0) -> None: ...
    @property
    def open_streams(self) -> int: ...
    @property
    def pings_unacked(self) -> int: ...
    @property
    def buffered_bytes(self) -> int: ...
