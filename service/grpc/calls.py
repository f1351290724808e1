"""One gRPC call as the native listener (:mod:`service.grpc.native`) keeps it, and the wire's codecs.

:class:`Context` is what a servicer may ask of its call: the part of grpcio's ``ServicerContext`` the
services use. :class:`Call` is the listener's record of one stream; :class:`Requests` the iterator a
client-streaming method reads. The functions turn a request's headers into metadata and a deadline, and
a status into trailers, as the gRPC over HTTP/2 specification writes them.
"""

from __future__ import annotations

import asyncio
import base64
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import grpc
from grpc.aio import AbortError

OK = (b"grpc-status", b"0")
# Headers that carry the protocol itself; grpcio does not show them to servicers as metadata either.
PROTOCOL_HEADERS = frozenset(
    {b"content-type", b"te", b"grpc-timeout", b"grpc-encoding", b"grpc-accept-encoding"}
)
_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
# Everything printable but '%' stays as it is in grpc-message; the rest is percent-encoded UTF-8.
_MESSAGE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%" and not chr(c).isalnum())
END = object()


class Context:
    """What a servicer may ask of its call: grpcio's ``ServicerContext``, the part this service uses."""

    __slots__ = ("_code", "_deadline", "_details", "_metadata", "_peer", "_trailing", "cancelled_flag")

    def __init__(
        self, metadata: tuple[tuple[str, str | bytes], ...], deadline: float | None, peer: str
    ) -> None:
        self._metadata = metadata
        self._deadline = deadline  # time.monotonic()
        self._peer = peer
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._trailing: tuple[tuple[str, str | bytes], ...] = ()
        self.cancelled_flag = False

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def peer(self) -> str:
        return self._peer

    def cancelled(self) -> bool:
        return self.cancelled_flag

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        """End the call with ``code``: raises AbortError, as grpcio's does (so does the servicer's code)."""
        if code is grpc.StatusCode.OK:
            raise ValueError("abort() needs a status other than OK")
        self._code = code
        self._details = details
        if trailing_metadata:  # as grpcio: without new trailers, the ones already set stay
            self._trailing = tuple(trailing_metadata)
        raise AbortError()

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details

    def set_trailing_metadata(self, metadata: Any) -> None:
        self._trailing = tuple(metadata)

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._trailing


class Requests:
    """The request iterator a client-streaming method reads: messages as they arrive, then the half-close."""

    __slots__ = ("_queue",)

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue()

    def put(self, item: Any) -> None:
        self._queue.put_nowait(item)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        item = await self._queue.get()
        if item is END:
            self._queue.put_nowait(END)  # a second reader ends too
            raise StopAsyncIteration
        return item


class Call:
    """One stream: its method, metadata, deadline, what the client sent, and the task that answers it."""

    __slots__ = (
        "context",
        "deadline_handle",
        "encoding",
        "handler",
        "messages",
        "requests",
        "stream_id",
        "task",
    )

    def __init__(
        self, stream_id: int, handler: grpc.RpcMethodHandler, context: Context, encoding: bytes
    ) -> None:
        self.stream_id = stream_id
        self.handler = handler
        self.context = context
        self.encoding = encoding
        self.messages: list[bytes] = []
        self.requests: Requests | None = None
        self.task: asyncio.Task[None] | None = None
        self.deadline_handle: asyncio.TimerHandle | None = None


def status_trailers(
    code: grpc.StatusCode, message: str, metadata: tuple[tuple[str, str | bytes], ...]
) -> list[tuple[bytes, bytes]]:
    trailers = [(b"grpc-status", str(code.value[0]).encode())]
    if message:
        trailers.append((b"grpc-message", quote(message, safe=_MESSAGE_SAFE).encode("ascii")))
    for key, value in metadata:
        name = key.lower().encode("ascii")
        if isinstance(value, bytes):
            trailers.append((name, base64.b64encode(value).rstrip(b"=")))
        else:
            trailers.append((name, value.encode("ascii")))
    return trailers


def with_codecs(handler: Any) -> grpc.RpcMethodHandler:
    """``handler`` with both (de)serializers set: grpcio passes bytes through where one is None."""
    replaced: grpc.RpcMethodHandler = handler._replace(
        request_deserializer=handler.request_deserializer or _identity,
        response_serializer=handler.response_serializer or _identity,
    )
    return replaced


def _identity(data: Any) -> Any:
    return data


def timeout_seconds(value: bytes) -> float | None:
    """``grpc-timeout`` (up to 8 digits and a unit) in seconds; None when malformed."""
    unit = _TIMEOUT_UNITS.get(value[-1:])
    digits = value[:-1]
    if unit is None or not digits.isdigit() or len(digits) > 8:
        return None
    return int(digits) * unit


def unbase64(value: bytes) -> bytes:
    try:
        return base64.b64decode(value + b"=" * (-len(value) % 4))
    except ValueError:
        return value


class Refused(Exception):
    """A call the listener answers itself, with ``code``, ``message`` and any ``extra`` trailers."""

    def __init__(
        self, code: grpc.StatusCode, message: str, extra: tuple[tuple[bytes, bytes], ...] = ()
    ) -> None:
        super().__init__(message)
        self.code, self.message, self.extra = code, message, extra


def read_headers(
    headers: list[tuple[bytes, bytes]],
) -> tuple[bytes, float | None, bytes, tuple[tuple[str, str | bytes], ...]]:
    """A request's content type, deadline (``time.monotonic()``), message encoding (``b""``: none) and
    metadata as grpcio shows it (``-bin`` values decoded); :class:`Refused` for a malformed timeout or an
    encoding this server does not read."""
    content_type = b""
    timeout = encoding = None
    metadata: list[tuple[str, str | bytes]] = []
    for name, value in headers:
        if name in PROTOCOL_HEADERS:
            if name == b"content-type":
                content_type = value
            elif name == b"grpc-timeout":
                timeout = value
            elif name == b"grpc-encoding":
                encoding = value
        elif name.endswith(b"-bin"):
            metadata.append((name.decode("ascii"), unbase64(value)))
        else:
            metadata.append((name.decode("ascii"), value.decode("latin-1")))
    deadline = None
    if timeout is not None:
        seconds = timeout_seconds(timeout)
        if seconds is None:
            raise Refused(grpc.StatusCode.INTERNAL, f"malformed grpc-timeout {timeout[:16]!r}")
        deadline = time.monotonic() + seconds
    if encoding in (None, b"identity"):
        encoding = b""
    elif encoding not in (b"gzip", b"deflate"):
        raise Refused(
            grpc.StatusCode.UNIMPLEMENTED,
            f"message compression {encoding.decode('latin-1')[:32]!r} is not supported "
            "(gzip, deflate or identity)",
            ((b"grpc-accept-encoding", b"identity,deflate,gzip"),),
        )
    return content_type, deadline, encoding, tuple(metadata)


def inflate(payload: bytes, encoding: bytes, limit: int) -> bytes:
    """A compressed message's bytes (``encoding`` gzip or deflate), at most ``limit`` of them."""
    if not encoding:
        raise Refused(grpc.StatusCode.INTERNAL, "a compressed message without grpc-encoding")
    try:
        data = zlib.decompressobj(31 if encoding == b"gzip" else 15).decompress(payload, limit + 1)
    except zlib.error:
        raise Refused(
            grpc.StatusCode.INTERNAL, f"the message does not decompress as {encoding.decode()}"
        ) from None
    if len(data) > limit:
        raise Refused(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"Received message larger than max (more than {limit} decompressed vs. {limit})",
        )
    return data


def peer_name(address: Any) -> str:
    """A client's address as grpcio's ``context.peer()`` writes it: ``ipv4:127.0.0.1:5000``."""
    if not isinstance(address, tuple):
        return "unknown"
    host, port = address[0], address[1]
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"
