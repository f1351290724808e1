"""service.http.body: bodies are read within their limit, declared, streamed or compressed."""

from __future__ import annotations

import asyncio
import gzip
import re
import tracemalloc
import zlib
from collections.abc import Iterable
from typing import Any

import orjson
import pytest
from starlette.types import Message

from service.errors import InvalidInput, PayloadTooLarge, UnsupportedMedia
from service.http.body import decode_body, read_asgi_body, unless_disconnected


def receiver(chunks: Iterable[bytes], disconnect: bool = False) -> tuple[object, list[int]]:
    """An ASGI ``receive`` yielding ``chunks`` (then a disconnect), and a list counting the calls."""
    messages: list[Message] = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
    if disconnect:
        messages.append({"type": "http.disconnect"})
    else:
        messages.append({"type": "http.request", "body": b"", "more_body": False})
    calls: list[int] = []

    async def receive() -> Message:
        calls.append(1)
        return messages[len(calls) - 1]

    return receive, calls


def read(receive: object, declared: str | None, limit: int) -> bytes:
    return asyncio.run(read_asgi_body(receive, declared, limit))  # type: ignore[arg-type]


def test_a_body_in_chunks() -> None:
    receive, _ = receiver([b"ab", b"", b"cd"])
    assert read(receive, None, 4) == b"abcd"
    receive, _ = receiver([b"whole"])
    assert read(receive, "5", 5) == b"whole"


def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    receive, calls = receiver([b"x" * 10])
    with pytest.raises(PayloadTooLarge, match="request body of 11 bytes exceeds the limit of 10 bytes"):
        read(receive, "11", 10)
    assert calls == []


def test_a_streamed_body_is_refused_as_soon_as_it_passes_the_limit() -> None:
    receive, calls = receiver([b"x" * 6, b"x" * 6, b"x" * 6])
    with pytest.raises(PayloadTooLarge, match="exceeds the limit of 10 bytes"):
        read(receive, None, 10)
    assert len(calls) == 2


@pytest.mark.parametrize("declared", ["abc", "-1", "1e3", "١٢"])
def test_an_invalid_content_length(declared: str) -> None:
    receive, _ = receiver([b"x"])
    with pytest.raises(InvalidInput, match="invalid Content-Length"):
        read(receive, declared, 100)


def test_a_client_that_leaves_mid_body() -> None:
    receive, _ = receiver([b"half"], disconnect=True)
    with pytest.raises(InvalidInput, match="client disconnected"):
        read(receive, None, 100)


def test_decode_body_identity_gzip_deflate() -> None:
    body = orjson.dumps(
        {"inputs": [{"name": "image", "datatype": "FP32", "shape": [2, 3], "data": [0.5] * 6}]}
    )
    body = body * 20
    assert decode_body(body, None, max_bytes=len(body)) is body
    assert decode_body(body, "identity", max_bytes=len(body)) is body
    assert decode_body(gzip.compress(body), "gzip", max_bytes=len(body)) == body
    assert decode_body(gzip.compress(body), " GZip ", max_bytes=len(body)) == body
    assert decode_body(zlib.compress(body), "deflate", max_bytes=len(body)) == body
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    assert decode_body(raw.compress(body) + raw.flush(), "deflate", max_bytes=len(body)) == body
    with pytest.raises(PayloadTooLarge, match=f"body exceeds {len(body) - 1} bytes"):
        decode_body(body, None, max_bytes=len(body) - 1)
    with pytest.raises(PayloadTooLarge, match=f"decompressed body exceeds {len(body) - 1} bytes"):
        decode_body(gzip.compress(body), "gzip", max_bytes=len(body) - 1)


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda z: z[: len(z) // 2], "truncated stream"),
        (lambda z: z + b"junk", "trailing bytes"),
        (lambda z: b"\x1f\x8b" + bytes(40), "invalid gzip body: "),
        (lambda z: b"not gzip at all", "invalid gzip body: "),
    ],
)
def test_decode_body_corrupt_gzip(mangle: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode_body(mangle(gzip.compress(b'{"inputs": []}' * 100)), "gzip", max_bytes=10_000)


def test_gzip_bomb_is_refused_without_inflating_it() -> None:
    bomb = gzip.compress(bytes(50_000_000), compresslevel=9)
    assert len(bomb) < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge, match="decompressed body exceeds 1000000 bytes") as caught:
            decode_body(bomb, "gzip", max_bytes=1_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.status == 413
    assert peak < 5_000_000  # inflating it all would take 50 MB


@pytest.mark.parametrize("encoding", ["br", "compress", "gzip, deflate", "zstd"])
def test_unknown_content_encoding_is_415(encoding: str) -> None:
    with pytest.raises(UnsupportedMedia, match=re.escape(repr(encoding))) as caught:
        decode_body(b"{}", encoding, max_bytes=100)
    assert caught.value.status == 415


# ---- work given up when the client disconnects --------------------------------------------------------


def test_work_is_cancelled_when_the_client_disconnects_and_kept_otherwise() -> None:
    async def test() -> None:
        gone = asyncio.Event()

        async def receive() -> Message:
            await gone.wait()
            return {"type": "http.disconnect"}

        started, cancelled = asyncio.Event(), asyncio.Event()

        async def endless() -> int:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return 0

        work = asyncio.ensure_future(unless_disconnected(receive, endless()))
        await started.wait()
        gone.set()
        with pytest.raises(InvalidInput, match="client disconnected"):
            await work
        assert cancelled.is_set()

        async def quick() -> int:
            return 42

        gone.clear()
        assert await unless_disconnected(receive, quick()) == 42

    asyncio.run(asyncio.wait_for(test(), 10))
