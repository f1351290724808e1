"""With ``stage`` (``SERVE_BATCH_STAGING``), a full batch queued behind the computing one is staged: the
worker runs it next, without a turn of the event loop. Without it (the default), it stays queued.
Deterministic, against the gated fake runtime of ``test_batching``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time

import numpy as np
import pytest

from service.errors import DeadlineExceeded, Unavailable
from tests.service.core.test_batching import (
    GUARD_S,
    FakeClock,
    FakeRuntime,
    Recorder,
    answer,
    assert_matches_model,
    make_batcher,
    make_inputs,
    run,
    settle,
)


def wait_blocking(condition: object, seconds: float = GUARD_S) -> bool:
    """Poll ``condition`` (a callable) with the event loop's thread blocked: only other threads move."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.001)
    return False


def test_a_full_batch_behind_the_computing_one_starts_while_the_event_loop_is_blocked() -> None:
    async def main() -> None:
        fake = FakeRuntime(gated=True)
        recorder = Recorder()
        batcher = make_batcher(fake, observer=recorder, stage=True)
        rng = np.random.default_rng(1)
        first = asyncio.create_task(batcher.submit(make_inputs(rng, 1, 0)))
        assert await fake.next_batch() == 1
        inputs = [make_inputs(rng, 4, 10), make_inputs(rng, 4, 20)]
        full = [asyncio.create_task(batcher.submit(x)) for x in inputs]
        await settle()
        assert batcher.queue_rows == 0  # staged: it left the queue
        fake.gate.set()
        # No await from here: the loop cannot run, so only the worker can start the staged batch.
        assert wait_blocking(lambda: len(fake.batches) == 2), fake.batches
        assert fake.batches == [1, 8]
        results = await answer(asyncio.gather(first, *full))
        for x, out in zip(inputs, results[1:], strict=True):
            assert_matches_model(x, out)
        assert recorder.batches == [1, 8]
        assert recorder.waits == [0.0, 0.0]
        await batcher.stop()

    run(main)


def test_a_batch_that_is_not_full_waits_for_the_answer_and_grows_meanwhile() -> None:
    async def main() -> None:
        fake = FakeRuntime(gated=True)
        batcher = make_batcher(fake, stage=True)
        rng = np.random.default_rng(2)
        first = asyncio.create_task(batcher.submit(make_inputs(rng, 1, 0)))
        assert await fake.next_batch() == 1
        small = asyncio.create_task(batcher.submit(make_inputs(rng, 3, 10)))
        await settle()
        assert batcher.queue_rows == 3  # not staged
        more = asyncio.create_task(batcher.submit(make_inputs(rng, 2, 20)))
        await settle()
        fake.gate.set()
        await answer(asyncio.gather(first, small, more))
        assert fake.batches == [1, 5]
        await batcher.stop()

    run(main)


def test_one_batch_at_most_is_staged() -> None:
    async def main() -> None:
        fake = FakeRuntime(gated=True)
        batcher = make_batcher(fake, stage=True)
        rng = np.random.default_rng(3)
        first = asyncio.create_task(batcher.submit(make_inputs(rng, 1, 0)))
        assert await fake.next_batch() == 1
        full = [asyncio.create_task(batcher.submit(make_inputs(rng, 8, 10 * (i + 1)))) for i in range(3)]
        await settle()
        assert batcher.queue_rows == 16  # one of the three staged, two queued
        fake.gate.set()
        assert wait_blocking(lambda: len(fake.batches) == 2)
        # The third batch needs the loop, which is blocked: it does not start, however long we wait.
        assert not wait_blocking(lambda: len(fake.batches) > 2, 0.2)
        await answer(asyncio.gather(first, *full))
        assert fake.batches == [1, 8, 8, 8]
        await batcher.stop()

    run(main)


def test_a_staged_job_past_its_deadline_is_answered_deadline_exceeded_and_not_computed() -> None:
    async def main() -> None:
        fake = FakeRuntime(gated=True)
        clock = FakeClock()
        batcher = make_batcher(fake, clock=clock, stage=True)
        rng = np.random.default_rng(4)
        first = asyncio.create_task(batcher.submit(make_inputs(rng, 1, 0)))
        assert await fake.next_batch() == 1
        late = asyncio.create_task(batcher.submit(make_inputs(rng, 4, 10), deadline=clock.now + 1))
        kept = asyncio.create_task(batcher.submit(make_inputs(rng, 4, 20)))
        await settle()
        assert batcher.queue_rows == 0  # both staged
        clock.now += 2  # the first batch computes past the staged job's deadline
        fake.gate.set()
        await answer(asyncio.gather(first, kept))
        with pytest.raises(DeadlineExceeded):
            await answer(late)
        assert fake.batches == [1, 4]
        assert fake.seen_ids().isdisjoint(range(10, 14))
        await batcher.stop()

    run(main)


def test_a_staged_job_whose_client_went_away_is_not_computed() -> None:
    async def main() -> None:
        fake = FakeRuntime(gated=True)
        batcher = make_batcher(fake, stage=True)
        rng = np.random.default_rng(5)
        first = asyncio.create_task(batcher.submit(make_inputs(rng, 1, 0)))
        assert await fake.next_batch() == 1
        gone = asyncio.create_task(batcher.submit(make_inputs(rng, 4, 10)))
        kept = asyncio.create_task(batcher.submit(make_inputs(rng, 4, 20)))
        await settle()
        assert batcher.queue_rows == 0
        gone.cancel()
        await settle()
        fake.gate.set()
        await answer(asyncio.gather(first, kept))
        assert fake.batches == [1, 4]
        assert fake.seen_ids().isdisjoint(range(10, 14))
        await batcher.stop()

    run(main)


def test_a_stop_that_times_out_fails_the_staged_batch_and_the_worker_never_runs_it() -> None:
    async def main() -> None:
        fake = FakeRuntime(gated=True)
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as executor:
            batcher = make_batcher(fake, executor=executor, stage=True)
            rng = np.random.default_rng(6)
            first = asyncio.create_task(batcher.submit(make_inputs(rng, 1, 0)))
            assert await fake.next_batch() == 1
            staged = asyncio.create_task(batcher.submit(make_inputs(rng, 8, 10)))
            await settle()
            assert batcher.queue_rows == 0
            await batcher.stop(timeout=0.05)
            for task in (first, staged):
                with pytest.raises(Unavailable):
                    await answer(task)
            fake.gate.set()
        # The executor has joined its thread: the worker finished the batch it computed and stopped.
        assert fake.batches == [1]

    run(main)


def test_without_staging_a_full_batch_waits_in_the_queue_for_the_loop() -> None:
    async def main() -> None:
        fake = FakeRuntime(gated=True)
        batcher = make_batcher(fake)
        rng = np.random.default_rng(7)
        first = asyncio.create_task(batcher.submit(make_inputs(rng, 1, 0)))
        assert await fake.next_batch() == 1
        full = asyncio.create_task(batcher.submit(make_inputs(rng, 8, 10)))
        await settle()
        assert batcher.queue_rows == 8  # still queued
        fake.gate.set()
        assert not wait_blocking(lambda: len(fake.batches) > 1, 0.2)  # needs the loop, which is blocked
        await answer(asyncio.gather(first, full))
        assert fake.batches == [1, 8]
        await batcher.stop()

    run(main)
