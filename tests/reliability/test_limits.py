"""Size limits: request bodies (plain, streamed, gzip bombs) and image decompression bombs.

The body limits are checked against the real process, where "without reading it all into memory" can
be seen: the service answers 413 before the client has sent the body, and its resident memory does not
grow by what the client claimed or what a bomb would inflate to. Image bombs are checked in process.
"""

from __future__ import annotations

import gzip
import io
import socket
import struct
import zlib
from collections.abc import Callable, Iterator
from functools import cache

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.settings import Settings
from tests.helpers.modelfactory import write_model_version
from tests.helpers.server import RunningService, running_service
from tests.reliability.support import assert_error_body, images, json_body, metric

LIMIT = 1 << 20  # SERVE_MAX_BODY_BYTES for the process under test
MiB = 1 << 20


# ---- bodies, real process ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    repo = tmp_path_factory.mktemp("limit-models")
    write_model_version(repo, "tiny", 1)
    env = {"SERVE_MODEL_REPOSITORY": str(repo), "SERVE_MAX_BODY_BYTES": str(LIMIT)}
    with running_service(tmp_path_factory.mktemp("limit-logs"), env=env) as running:
        yield running


def rss(service: RunningService) -> float:
    return metric(httpx.get(f"{service.url}/metrics").text, "process_resident_memory_bytes")


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body, read off a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return int(status_line.split()[1]), headers, body


def raw_request(service: RunningService, head: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=20)
    sock.sendall(head.encode("latin-1"))
    return sock


@pytest.mark.slow
def test_declared_oversized_body_is_refused_before_it_is_sent(service: RunningService) -> None:
    before = rss(service)
    # Claims 4 GiB, sends 64 KiB of it, and waits: the answer must come without the rest.
    with raw_request(
        service,
        "POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {4 << 30}\r\n\r\n",
    ) as sock:
        sock.sendall(b"[" * 65536)
        status, _, body = read_response(sock)
    assert "exceeds the limit" in assert_error_body(status, body, (413,))
    assert rss(service) - before < 32 * MiB


@pytest.mark.slow
def test_streamed_oversized_body_is_refused_after_the_limit(service: RunningService) -> None:
    before = rss(service)
    # Chunked, no length: sends 2 MiB (twice the limit) and never ends the body. A server waiting for
    # the whole body would never answer.
    with raw_request(
        service, "POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    ) as sock:
        block = b" " * (64 * 1024)
        for _ in range(2 * LIMIT // len(block)):
            sock.sendall(b"%x\r\n%s\r\n" % (len(block), block))
        status, _, body = read_response(sock)
    assert "exceeds the limit" in assert_error_body(status, body, (413,))
    assert rss(service) - before < 32 * MiB


def gzip_bomb(inflated: int) -> bytes:
    """gzip of ``inflated`` zero bytes, made without holding them in memory."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(MiB)
    return b"".join([*(packer.compress(block) for _ in range(inflated // MiB)), packer.flush()])


@pytest.mark.slow
def test_gzip_bomb_is_refused_without_inflating_it(service: RunningService) -> None:
    before = rss(service)
    bomb = gzip_bomb(512 * MiB)
    assert len(bomb) < LIMIT  # passes the body limit; only inflating it would break the limit
    for path in ("/v2/models/tiny/infer", "/v2/models/tiny/versions/1/infer"):
        response = httpx.post(
            f"{service.url}{path}", content=bomb, headers={"Content-Encoding": "gzip"}, timeout=30
        )
        assert "decompressed" in assert_error_body(response.status_code, response.content, (413,))
    # A compressed body that inflates to just under the limit is fine.
    good = json_body(images(1, seed=1).round())
    padded = good + b" " * (LIMIT - len(good) - 1)
    response = httpx.post(
        f"{service.url}/v2/models/tiny/infer",
        content=gzip.compress(padded),
        headers={"Content-Encoding": "gzip"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert rss(service) - before < 32 * MiB


@pytest.mark.slow
def test_service_still_answers_after_refusals(service: RunningService) -> None:
    response = httpx.post(f"{service.url}/v2/models/tiny/infer", content=json_body(images(2)), timeout=30)
    assert response.status_code == 200, response.text
    assert orjson.loads(response.content)["outputs"][0]["shape"] == [2, 10]


# ---- images, in process ------------------------------------------------------------------------------------


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(
    width: int, height: int, *, rows: bytes = b"", before_idat: bytes = b"", after_idat: bytes = b""
) -> bytes:
    """A grayscale PNG whose header says ``width`` x ``height``, with ``rows`` as its (raw) pixel data."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            header,
            before_idat,
            png_chunk(b"IDAT", zlib.compress(rows)),
            after_idat,
            png_chunk(b"IEND", b""),
        ]
    )


def zeros_deflated(count: int) -> bytes:
    packer = zlib.compressobj(9)
    return b"".join([*(packer.compress(bytes(MiB)) for _ in range(count // MiB)), packer.flush()])


def pixel_bomb(side: int) -> bytes:
    """A real, decodable ``side`` x ``side`` black PNG: tens of KiB that decode to ``side**2`` bytes."""
    packer = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte + pixels
    data = b"".join([*(packer.compress(row) for _ in range(side)), packer.flush()])
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
    return b"".join([b"\x89PNG\r\n\x1a\n", header, png_chunk(b"IDAT", data), png_chunk(b"IEND", b"")])


def jpeg_claiming(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (28, 28)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    frame = data.index(b"\xff\xc0")  # SOF0: length (2), precision (1), height (2), width (2)
    data[frame + 5 : frame + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@cache
def text_bomb() -> bytes:
    return b"k\x00\x00" + zeros_deflated(64 * MiB)  # keyword, separator, method, 64 MiB of zeros


def many_text_chunks() -> bytes:
    return b"".join(png_chunk(b"zTXt", b"k%d\x00\x00" % i + zeros_deflated(MiB)) for i in range(70))


BLACK_28 = bytes(29 * 28)
IMAGE_BOMBS: dict[str, Callable[[], bytes]] = {
    "png header 100000x100000": lambda: png(100_000, 100_000),
    "png pixels 4100x4100": lambda: pixel_bomb(4100),
    "jpeg header 65000x65000": lambda: jpeg_claiming(65_000, 65_000),
    "png zTXt bomb": lambda: png(28, 28, rows=BLACK_28, before_idat=png_chunk(b"zTXt", text_bomb())),
    "png iCCP bomb": lambda: png(28, 28, rows=BLACK_28, before_idat=png_chunk(b"iCCP", text_bomb())),
    "png zTXt bomb after the pixels": lambda: png(
        28, 28, rows=BLACK_28, after_idat=png_chunk(b"zTXt", text_bomb())
    ),
    "png many text chunks": lambda: png(28, 28, rows=BLACK_28, before_idat=many_text_chunks()),
}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    repo = tmp_path_factory.mktemp("bomb-models")
    write_model_version(repo, "tiny", 1)
    with TestClient(create_app(Settings(model_repository=repo))) as c:
        yield c


@pytest.mark.parametrize("name", sorted(IMAGE_BOMBS))
def test_image_bombs_are_413(client: TestClient, name: str) -> None:
    bomb = IMAGE_BOMBS[name]()
    assert len(bomb) < 200_000, len(bomb)
    raw = client.post("/v2/models/tiny/classify", content=bomb)
    assert_error_body(raw.status_code, raw.content, (413,))
    form = client.post("/v2/models/tiny/classify", files={"file": ("bomb", bomb, "application/octet-stream")})
    assert_error_body(form.status_code, form.content, (413,))


def test_images_within_the_limits_still_classify(client: TestClient) -> None:
    small = png(
        28, 28, rows=bytes(29 * 28), before_idat=png_chunk(b"zTXt", b"k\x00\x00" + zlib.compress(b"hi"))
    )
    response = client.post("/v2/models/tiny/classify", content=small)
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 3
