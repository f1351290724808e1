"""service.core.prepare: the preprocessing pool's bounds, and work given up between images, on real
threads gated by events."""

from __future__ import annotations

import asyncio
import io
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from service.core.prepare import SMALL_PIXELS, PreparePool
from service.errors import DeadlineExceeded, Overloaded, PayloadTooLarge, UnsupportedMedia
from service.images.preprocess import request_pixels
from tests.helpers.data import load_digits
from tests.helpers.server import running_service

GUARD_S = 10.0  # bounds every wait; never reached when the code is right


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 3 * GUARD_S))


class Images:
    """A stand-in for prepare_all: ``count`` images, each checked first, each gated by ``gate``."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.done: list[int] = []
        self.first = threading.Event()
        self.gate = threading.Event()

    def __call__(self, check: Callable[[], None]) -> int:
        for n in range(self.count):
            check()
            self.done.append(n)
            self.first.set()
            assert self.gate.wait(GUARD_S)
        return len(self.done)


def later(seconds: float = GUARD_S) -> float:
    return time.monotonic() + seconds


async def settled(pool: PreparePool) -> None:
    """Bounded polling until no request is admitted (the worker threads report back asynchronously)."""
    deadline = later()
    while pool.admitted and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert pool.admitted == 0


def test_threads_plus_queue_are_admitted_and_the_next_is_refused_with_retry_after() -> None:
    async def test() -> None:
        pool = PreparePool(threads=1, queue=1)
        first, second = Images(1), Images(1)
        running = asyncio.ensure_future(pool.run(first, later()))
        queued = asyncio.ensure_future(pool.run(second, later()))
        await asyncio.to_thread(first.first.wait, GUARD_S)
        with pytest.raises(Overloaded, match="busy") as refused:
            await pool.run(Images(1), later())
        assert refused.value.headers["Retry-After"] == "1"
        first.gate.set()
        second.gate.set()
        assert await running == 1 and await queued == 1
        await settled(pool)
        assert await pool.run(lambda check: 7, later()) == 7  # room again
        pool.close()

    run(test)


def test_a_cancelled_request_stops_at_the_next_image_and_holds_its_place_until_then() -> None:
    async def test() -> None:
        pool = PreparePool(threads=1, queue=0)
        images = Images(100)
        task = asyncio.ensure_future(pool.run(images, later()))
        await asyncio.to_thread(images.first.wait, GUARD_S)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The thread is still on image 1: the pool stays full until it has stopped.
        with pytest.raises(Overloaded):
            await pool.run(Images(1), later())
        images.gate.set()
        await settled(pool)
        assert images.done == [0]  # the 99 images after the cancel were never started
        pool.close()

    run(test)


def test_a_passed_deadline_stops_before_the_next_image() -> None:
    async def test() -> None:
        pool = PreparePool(threads=1, queue=0)
        images = Images(3)
        images.gate.set()
        with pytest.raises(DeadlineExceeded, match="preparing the images"):
            await pool.run(images, time.monotonic() - 1)
        assert images.done == []
        pool.close()

    run(test)


def test_a_small_request_has_its_own_lane_beside_full_large_ones() -> None:
    async def test() -> None:
        pool = PreparePool(threads=1, queue=0)
        large = Images(1)
        running = asyncio.ensure_future(pool.run(large, later(), pixels=SMALL_PIXELS + 1))
        await asyncio.to_thread(large.first.wait, GUARD_S)
        with pytest.raises(Overloaded):
            await pool.run(Images(1), later(), pixels=SMALL_PIXELS + 1)
        assert await pool.run(lambda check: "small", later(), pixels=SMALL_PIXELS) == "small"
        large.gate.set()
        assert await running == 1
        pool.close()

    run(test)


def test_the_pixels_of_a_request_are_counted_from_headers_and_bounded() -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((1000, 1000), np.uint8)).save(buffer, format="PNG")
    big = buffer.getvalue()
    assert request_pixels([(None, big), (None, big)], 2_000_000) == 2_000_000
    with pytest.raises(PayloadTooLarge, match="2000000 pixels together; the limit is 1999999"):
        request_pixels([(None, big), (None, big)], 1_999_999)
    with pytest.raises(UnsupportedMedia, match=r"image 2 of 2 \('x.gif'\): unsupported image type"):
        request_pixels([(None, big), ("x.gif", b"GIF89a")], 1 << 30)


# ---- through the real process ----------------------------------------------------------------------------


def answered(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return False
    finally:
        sock.setblocking(True)


def large_digit(side: int = 4096) -> bytes:
    """A ``side`` x ``side`` PNG of a drawn ring (tens of KB on the wire, seconds of CPU per dozen)."""
    picture = Image.new("L", (side, side), 0)
    ImageDraw.Draw(picture).ellipse(
        (side // 4, side // 6, 3 * side // 4, 5 * side // 6), outline=255, width=side // 20
    )
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def form(images: list[bytes]) -> tuple[bytes, str]:
    parts = [
        b'--b0\r\nContent-Disposition: form-data; name="file"; filename="%d.png"\r\n' % n
        + b"Content-Type: image/png\r\n\r\n"
        + data
        + b"\r\n"
        for n, data in enumerate(images)
    ]
    return b"".join(parts) + b"--b0--\r\n", "multipart/form-data; boundary=b0"


@pytest.mark.slow
def test_an_abandoned_request_of_many_large_images_stops_and_small_ones_are_served_meanwhile(
    tmp_path: Path,
) -> None:
    env = {
        "SERVE_MODELS": "mnist-cnn",
        "SERVE_GRPC_PORT": "0",
        "SERVE_PREPROCESS_THREADS": "1",
        "SERVE_PREPROCESS_QUEUE": "0",
        "SERVE_MAX_REQUEST_PIXELS": str(2_000_000_000),
    }
    big = large_digit()
    abusive, content_type = form([big] * 64)  # a minute or more of decoding on one thread
    pair, _ = form([big] * 2)
    small = io.BytesIO()
    Image.fromarray(load_digits("mnist")[0][0, ..., 0].astype(np.uint8)).save(small, format="PNG")
    url_path = "/v2/models/mnist-cnn/classify"
    with running_service(tmp_path, env=env) as service, httpx.Client(timeout=60) as client:
        url = service.url + url_path

        def large_pair() -> httpx.Response:
            return client.post(url, content=pair, headers={"Content-Type": content_type})

        head = f"POST {url_path} HTTP/1.1\r\nHost: a\r\nContent-Type: {content_type}\r\n"
        request = head.encode() + b"Content-Length: %d\r\n\r\n" % len(abusive) + abusive

        def send_abusive() -> socket.socket:
            sock = socket.create_connection(("127.0.0.1", service.port), timeout=30)
            sock.sendall(request)
            # A head start, so a pair sent next does not win the lane while the 2.4 MB body is still
            # being read (on a quiet machine it always did): polled, ends once it is answered.
            until = time.monotonic() + 1.0
            while time.monotonic() < until and not answered(sock):
                time.sleep(0.01)
            return sock

        abuser = send_abusive()
        try:
            answers = []
            deadline = time.monotonic() + 3 * GUARD_S
            while time.monotonic() < deadline and 503 not in answers:  # until the abuser holds the lane
                answers.append(large_pair().status_code)
                if answered(abuser):  # a pair was admitted first and the abuser refused: send it again
                    abuser.close()
                    abuser = send_abusive()
            busy = large_pair()
            assert busy.status_code == 503, answers
            assert busy.headers["Retry-After"] == "1" and "preprocessing is busy" in busy.json()["error"]
            served = client.post(url, content=small.getvalue())  # its own lane
            assert served.status_code == 200 and served.json()["predictions"][0]["label"] == "7"
        finally:
            abuser.close()  # the client leaves: its remaining images are never decoded
        answers = []
        deadline = time.monotonic() + 3 * GUARD_S
        while time.monotonic() < deadline and (not answers or answers[-1] == 503):
            answers.append(large_pair().status_code)
        assert answers[-1] != 503, "the abandoned request still held the preprocessing thread"
