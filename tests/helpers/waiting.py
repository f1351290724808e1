"""Waiting for a condition in tests: poll until it holds, with a bound that only ever ends a failure.

A test never sleeps a fixed time to let something happen (CONTRIBUTING.md, "Tests"): it waits for an event,
moves a fake clock, or polls the observable condition with these, whose timeout is generous because
reaching it means the test has already failed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

#: Long enough for a loaded 2-core CI machine; only a failing test ever waits this long.
TIMEOUT_S = 30.0


async def eventually(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT_S) -> None:
    """Return once ``condition()`` is true; raise ``AssertionError`` naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true after {timeout} s")
        await asyncio.sleep(0.005)


def until(
    condition: Callable[[], bool], what: str, timeout: float = TIMEOUT_S, interval: float = 0.05
) -> None:
    """:func:`eventually` for threads and processes: poll ``condition()`` every ``interval`` seconds;
    ``AssertionError`` naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true after {timeout} s")
        time.sleep(interval)
