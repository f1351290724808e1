"""Reading request bodies within limits: raw ASGI bodies (the fast path), FastAPI requests, image uploads,
and undoing their ``Content-Encoding``.

Nothing is read past the limit: a declared ``Content-Length`` above it is refused (413) before the
first byte, a streamed body is refused as soon as it passes the limit, and a compressed body is never
inflated past it.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import AsyncGenerator, Awaitable
from typing import TypeVar

from fastapi import Request
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.types import Message, Receive

from service.errors import InvalidInput, PayloadTooLarge, UnsupportedMedia

T = TypeVar("T")


async def read_asgi_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The body from ASGI ``receive``, refusing (413) more than ``limit`` bytes, declared or sent."""
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise InvalidInput("invalid Content-Length header")
        if int(declared) > limit:
            raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidInput("client disconnected before sending the whole body")
        chunk: bytes = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything over ``limit`` bytes without reading it all."""
    return await read_asgi_body(request.receive, request.headers.get("content-length"), limit)


async def unless_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """``work``'s result; ``work`` is cancelled as soon as the client disconnects, so a long request
    (``/classify`` of many images) stops instead of outliving its client. Call once the body is read:
    the next ASGI message is then ``http.disconnect`` (when the client leaves or the answer is sent)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(receive())
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise InvalidInput("client disconnected before the answer")
        return task.result()
    finally:
        watcher.cancel()
        task.cancel()


def media_type(content_type: str | None) -> str:
    """The media type of a ``Content-Type`` value without its parameters, lower-cased: media types are
    case-insensitive (RFC 9110 section 8.3.1), so ``MULTIPART/Form-Data; boundary=x`` is a form."""
    return (content_type or "").partition(";")[0].strip().lower()


async def read_images(request: Request, max_bytes: int, max_files: int) -> list[tuple[str | None, bytes]]:
    """(file name, bytes) of each uploaded image, in order: the raw body, or every multipart ``file`` part.

    The whole body is bounded by ``max_bytes`` (413) before it is parsed, so the form's parts together
    are too; more than ``max_files`` parts is 413 as soon as the parser meets one too many.
    """
    data = await read_body(request, max_bytes)
    if media_type(request.headers.get("content-type")) != "multipart/form-data":
        return [(None, data)]

    async def replay() -> AsyncGenerator[bytes, None]:
        yield data

    parser = MultiPartParser(
        request.headers, replay(), max_files=max_files, max_fields=8, max_part_size=len(data)
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if exc.message.startswith("Too many files"):
            raise PayloadTooLarge(f"more than {max_files} images in one request") from None
        raise InvalidInput(f"invalid multipart body: {exc.message}") from None
    except Exception as exc:  # python-multipart's errors carry no common base worth naming
        raise InvalidInput(f"invalid multipart body: {exc}") from exc
    try:
        uploads = form.getlist("file")
        if not uploads or any(isinstance(upload, str) for upload in uploads):
            raise InvalidInput("multipart body has no file field named 'file'")
        return [(upload.filename, await upload.read()) for upload in uploads if not isinstance(upload, str)]
    finally:
        await form.close()


def decode_body(body: bytes, content_encoding: str | None, *, max_bytes: int) -> bytes:
    """Undo ``Content-Encoding`` (identity, gzip, deflate), never producing more than ``max_bytes``.

    Inflation is bounded by zlib's ``max_length``, so a compression bomb allocates at most
    ``max_bytes + 1`` bytes before it is refused with 413.
    """
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        if len(body) > max_bytes:
            raise PayloadTooLarge(f"body exceeds {max_bytes} bytes")
        return body
    if encoding in ("gzip", "x-gzip"):
        return _inflate(body, 16 + zlib.MAX_WBITS, max_bytes, "gzip")
    if encoding == "deflate":
        # HTTP "deflate" is meant to be zlib-wrapped, but raw deflate is common; zlib's two header
        # bytes (CM = 8, check bits) tell them apart.
        wrapped = len(body) >= 2 and body[0] & 0x0F == 8 and (body[0] << 8 | body[1]) % 31 == 0
        return _inflate(body, zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS, max_bytes, "deflate")
    raise UnsupportedMedia(
        f"unsupported Content-Encoding {content_encoding!r}; use gzip, deflate or identity"
    )


def _inflate(body: bytes, wbits: int, max_bytes: int, name: str) -> bytes:
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise InvalidInput(f"invalid {name} body: {exc}") from None
    if len(out) > max_bytes:
        raise PayloadTooLarge(f"decompressed body exceeds {max_bytes} bytes")
    if not inflater.eof:
        raise InvalidInput(f"invalid {name} body: truncated stream")
    if inflater.unused_data:
        raise InvalidInput(f"invalid {name} body: trailing bytes after the compressed stream")
    return out
