"""service.core.lifecycle: the drain's deadline and the repository watcher, on a real registry."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from service.core import Lifecycle
from service.core.registry import ModelRegistry
from service.settings import Settings
from service.telemetry.metrics import Metrics
from tests.helpers.modelfactory import write_model_version
from tests.helpers.waiting import eventually


class FakeClock:
    """Seconds that pass only when the test moves them."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_drain_deadline_is_set_once_and_counts_down() -> None:
    clock = FakeClock()
    lifecycle = Lifecycle(clock=clock)
    assert not lifecycle.draining and lifecycle.time_left(7.0) == 7.0
    deadline = lifecycle.begin_drain(5.0)
    assert lifecycle.draining
    assert deadline == 1005.0
    clock.now += 1.5
    assert lifecycle.begin_drain(60.0) == deadline
    assert lifecycle.time_left(7.0) == 3.5
    clock.now += 10
    assert lifecycle.time_left(7.0) == 0.0


def test_the_default_clock_is_monotonic() -> None:
    lifecycle = Lifecycle()
    before = time.monotonic()
    deadline = lifecycle.begin_drain(5.0)
    assert before + 5.0 <= deadline <= time.monotonic() + 5.0


def test_watcher_loads_new_versions(tmp_path: Path) -> None:
    write_model_version(tmp_path, "tiny", 1)
    settings = Settings(model_repository=tmp_path, poll_interval_s=0.05)

    async def main() -> list[int]:
        registry = ModelRegistry(settings, Metrics(CollectorRegistry()), ["CPUExecutionProvider"])
        watcher = asyncio.create_task(Lifecycle(0.05).load_and_watch(registry, initial=True))
        try:
            await eventually(lambda: bool(registry.loaded), "version 1 loaded")
            write_model_version(tmp_path, "tiny", 2, seed=2)
            await eventually(lambda: registry.versions("tiny") == [2], "version 2 swapped in by the watcher")
            return registry.versions("tiny")
        finally:
            watcher.cancel()
            await registry.stop(1.0)

    assert asyncio.run(main()) == [2]


def test_a_failed_scan_is_logged_and_the_watcher_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    class Flaky:
        calls = 0

        async def sync(self) -> None:
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise OSError("repository on a flaky volume")

    async def main() -> None:
        watcher = asyncio.create_task(Lifecycle(0.01).load_and_watch(Flaky(), initial=False))  # type: ignore[arg-type]
        await eventually(lambda: Flaky.calls >= 3, "two scans after the failed one")
        watcher.cancel()

    with caplog.at_level(logging.ERROR, logger="service"):
        asyncio.run(main())
    assert Flaky.calls >= 3
    assert "repository scan failed" in caplog.text


def test_no_polling_when_the_interval_is_zero() -> None:
    class Never:
        async def sync(self) -> None:
            raise AssertionError("must not be called")

    asyncio.run(asyncio.wait_for(Lifecycle(0).load_and_watch(Never(), initial=False), 1))  # type: ignore[arg-type]
