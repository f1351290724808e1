"""The preprocessing pool: /classify (and feedback) images decoded and prepared off the event loop, within
bounds that one client cannot stretch.

Decoding is milliseconds to seconds of CPU per image and holds the decoded pixels meanwhile, so it runs on
its own threads (``SERVE_PREPROCESS_THREADS``), not on asyncio's default executor that file I/O and the
feedback store share. Requests of at most :data:`SMALL_PIXELS` in all have a lane (one thread) of their
own, so a one-image request never queues behind large ones. Each lane admits at most ``threads +
SERVE_PREPROCESS_QUEUE`` requests; the next is answered 503 + ``Retry-After`` at once
(:class:`~service.errors.Overloaded`). A request counts against that bound until its thread has finished
with it, not merely until its client stopped waiting.

Work is given up between images: when the request's deadline has passed (504) or its caller was
cancelled (the HTTP client disconnected, a gRPC call was cancelled), the next image is not decoded.
Peak memory is therefore about ``threads`` decoded large images and one small one (docs/hostile-clients.md
states the bound).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from service.contract import Preprocessing
from service.errors import DeadlineExceeded, Overloaded
from service.images.preprocess import prepare_all

T = TypeVar("T")


class Abandoned(Exception):
    """The request's caller is gone; raised in the worker to stop between images (never answered)."""


#: Requests with at most this many pixels in all (a 2048 x 2048 image, or a drawing from the demo page)
#: are prepared on a lane of their own, so they never wait behind a request of large images.
SMALL_PIXELS = 2048 * 2048


class _Lane:
    """Threads and an admission count: at most ``threads + queue`` requests admitted at once."""

    def __init__(self, name: str, threads: int, queue: int) -> None:
        self.threads = threads
        self.capacity = threads + queue
        self.executor = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix=f"prepare-{name}")
        self.lock = threading.Lock()
        self.admitted = 0

    def admit(self) -> None:
        with self.lock:
            if self.admitted >= self.capacity:
                raise Overloaded(
                    f"image preprocessing is busy ({self.capacity} requests admitted); retry later"
                )
            self.admitted += 1

    def release(self, _: object = None) -> None:
        with self.lock:
            self.admitted -= 1


class PreparePool:
    """Bounded threads and queues for image preprocessing (see the module docstring): ``threads`` for
    requests of more than :data:`SMALL_PIXELS`, one more for the small ones, each with ``queue``."""

    def __init__(self, threads: int, queue: int) -> None:
        self.threads = threads
        self._large = _Lane("large", threads, queue)
        self._small = _Lane("small", 1, queue)

    @property
    def admitted(self) -> int:
        """Requests queued or being prepared now."""
        return self._large.admitted + self._small.admitted

    async def run(self, work: Callable[[Callable[[], None]], T], deadline: float, pixels: int = 0) -> T:
        """``work(check)`` on a pool thread; ``check()`` raises once ``deadline`` (monotonic) has passed
        or this coroutine was cancelled, so ``work`` calls it between images. Overloaded when the lane
        for ``pixels`` (the request's pixels in all) is full."""
        lane = self._small if pixels <= SMALL_PIXELS else self._large
        lane.admit()
        stop = threading.Event()

        def check() -> None:
            if stop.is_set():
                raise Abandoned
            if time.monotonic() >= deadline:
                raise DeadlineExceeded("deadline exceeded while preparing the images")

        try:
            future = lane.executor.submit(work, check)
        except RuntimeError:  # shut down
            lane.release()
            raise
        # Released when the thread is done with it (or it is cancelled while queued), not before.
        future.add_done_callback(lane.release)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            stop.set()  # a queued job is cancelled with the future; a running one stops at its next image
            raise

    async def prepare(
        self,
        images: Sequence[tuple[str | None, bytes]],
        preprocessing: Preprocessing,
        *,
        max_pixels: int,
        pixels: int,
        deadline: float,
    ) -> np.ndarray:
        """:func:`service.images.preprocess.prepare_all` on the pool, given up between images as above;
        ``pixels``: the images' pixels in all (:func:`service.images.preprocess.request_pixels`)."""

        def work(check: Callable[[], None]) -> np.ndarray:
            return prepare_all(images, preprocessing, max_pixels=max_pixels, check=check)

        return await self.run(work, deadline, pixels)

    def close(self) -> None:
        for lane in (self._large, self._small):
            lane.executor.shutdown(wait=False, cancel_futures=True)
