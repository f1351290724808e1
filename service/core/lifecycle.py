"""Process lifecycle the core consults: draining, the drain's deadline, and the repository watcher."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from service.core.registry import ModelRegistry

log = logging.getLogger("service")


class Lifecycle:
    """Draining begins on SIGTERM, before the server stops accepting connections.

    ``deadline`` (``time.monotonic()`` seconds) is when the drain must be over, once one has begun.
    ``poll_interval_s`` is how often :meth:`load_and_watch` rescans the repository (0: never). ``clock``
    (default ``time.monotonic``) is injectable so that tests move time instead of waiting for it.
    """

    def __init__(self, poll_interval_s: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.draining = False
        self.deadline: float | None = None
        self.poll_interval_s = poll_interval_s
        self._clock = clock

    def begin_drain(self, seconds: float) -> float:
        """Start draining for at most ``seconds`` (once; later calls keep the first deadline)."""
        if self.deadline is None:
            self.deadline = self._clock() + seconds
        self.draining = True
        return self.deadline

    def time_left(self, default: float) -> float:
        """Seconds until the drain deadline; ``default`` when no drain has set one."""
        return default if self.deadline is None else max(0.0, self.deadline - self._clock())

    async def load_and_watch(self, registry: ModelRegistry, *, initial: bool) -> None:
        """Run the initial load when ``initial`` (a failure is logged, the process stays live), then
        rescan the repository every ``poll_interval_s`` seconds; a failed scan is logged, never fatal."""
        if initial:
            try:
                await registry.start()
            except Exception:
                log.exception("initial model load failed")
        if self.poll_interval_s <= 0:
            return
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                await registry.sync()
            except Exception:
                log.exception("repository scan failed")
