"""The preprocessing pool: /classify (and feedback) images decoded and prepared off the event loop, within
bounds that one client cannot stretch.

Decoding is milliseconds to seconds of CPU per image and holds the decoded pixels meanwhile, so it runs on
its own threads (``SERVE_PREPROCESS_THREADS``), not on asyncio's default executor that file I/O and the
feedback store share. At most ``threads + SERVE_PREPROCESS_QUEUE`` requests are admitted at once; the
next is answered 503 + ``Retry-After`` at once (:class:`~service.errors.Overloaded`). A request counts
against that bound until its thread has finished with it, not merely until its client stopped waiting.

Work is given up between images: when the request's deadline has passed (504) or its caller was
cancelled (the HTTP client disconnected, a gRPC call was cancelled), the next image is not decoded.
Peak memory is therefore about ``threads`` decoded images (see docs/hostile-clients.md for the bound).
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
from service.preprocess import prepare_all

T = TypeVar("T")


class Abandoned(Exception):
    """The request's caller is gone; raised in the worker to stop between images (never answered)."""


class PreparePool:
    """Bounded threads and a bounded queue for image preprocessing (see the module docstring)."""

    def __init__(self, threads: int, queue: int) -> None:
        self.threads = threads
        self.capacity = threads + queue
        self._executor = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="prepare")
        self._lock = threading.Lock()
        self._admitted = 0

    @property
    def admitted(self) -> int:
        """Requests queued or being prepared now."""
        return self._admitted

    def _release(self, _: object) -> None:
        with self._lock:
            self._admitted -= 1

    async def run(self, work: Callable[[Callable[[], None]], T], deadline: float) -> T:
        """``work(check)`` on a pool thread; ``check()`` raises once ``deadline`` (monotonic) has passed
        or this coroutine was cancelled, so ``work`` calls it between images. Overloaded when full."""
        with self._lock:
            if self._admitted >= self.capacity:
                raise Overloaded(
                    f"image preprocessing is busy ({self.capacity} requests admitted); retry later"
                )
            self._admitted += 1
        stop = threading.Event()

        def check() -> None:
            if stop.is_set():
                raise Abandoned
            if time.monotonic() >= deadline:
                raise DeadlineExceeded("deadline exceeded while preparing the images")

        try:
            future = self._executor.submit(work, check)
        except RuntimeError:  # shut down
            with self._lock:
                self._admitted -= 1
            raise
        future.add_done_callback(self._release)
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
        max_total_pixels: int,
        deadline: float,
    ) -> np.ndarray:
        """:func:`service.preprocess.prepare_all` on the pool, given up between images as above."""

        def work(check: Callable[[], None]) -> np.ndarray:
            return prepare_all(
                images,
                preprocessing,
                max_pixels=max_pixels,
                max_total_pixels=max_total_pixels,
                check=check,
            )

        return await self.run(work, deadline)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
