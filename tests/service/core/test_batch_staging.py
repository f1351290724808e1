"""With ``stage`` (``SERVE_BATCH_STAGING``), a full batch queued behind the computing one is staged: the
worker runs it next, without a turn of the event loop. Without it (the default), it stays queued.
Deterministic, against the gated fake runtime of ``test_batching``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Iterator

import numpy as np
import pytest

from service.core.batching import Batcher
from service.errors import DeadlineExceeded, Unavailable
from tests.service.core.test_batching import (
    GUARD_S,
    Arrays,
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


async def one_computing(
    fake: FakeRuntime, batcher: Batcher, rng: np.random.Generator
) -> asyncio.Task[Arrays]:
    """Submit one row and wait until its batch is inside the gated runtime: the batch that computes."""
    first = asyncio.create_task(batcher.submit(make_inputs(rng, 1, 0)))
    assert await fake.next_batch() == 1
    return first


@contextlib.contextmanager
def one_worker(fake: FakeRuntime) -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    """The batcher's executor, one worker; on the way out the gate opens (a failed assertion must not leave
    the worker waiting on it) and the worker is joined."""
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        yield executor
    finally:
        fake.gate.set()
        executor.shutdown(wait=True)


def until_worker_idle(executor: concurrent.futures.ThreadPoolExecutor) -> None:
    """Block the event loop's thread until the batcher's only worker has finished all it was given (a
    job queued behind them runs): meanwhile only the worker moves, and after it nothing can start a batch
    but the loop."""
    executor.submit(lambda: None).result(GUARD_S)


def test_a_full_batch_behind_the_computing_one_starts_while_the_event_loop_is_blocked() -> None:
    async def main() -> None:
        fake, recorder = FakeRuntime(gated=True), Recorder()
        with one_worker(fake) as executor:
            batcher = make_batcher(fake, observer=recorder, executor=executor, stage=True)
            rng = np.random.default_rng(1)
            first = await one_computing(fake, batcher, rng)
            inputs = [make_inputs(rng, 4, 10), make_inputs(rng, 4, 20)]
            full = [asyncio.create_task(batcher.submit(x)) for x in inputs]
            await settle()
            assert batcher.queue_rows == 0  # staged: it left the queue
            fake.gate.set()
            until_worker_idle(executor)  # the loop's thread is held: only the worker can start it
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
        first = await one_computing(fake, batcher, rng)
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
        with one_worker(fake) as executor:
            batcher = make_batcher(fake, executor=executor, stage=True)
            rng = np.random.default_rng(3)
            first = await one_computing(fake, batcher, rng)
            full = [asyncio.create_task(batcher.submit(make_inputs(rng, 8, 10 * (i + 1)))) for i in range(3)]
            await settle()
            assert batcher.queue_rows == 16  # one of the three staged, two queued
            fake.gate.set()
            until_worker_idle(executor)
            assert fake.batches == [1, 8]  # the third waits for the loop
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
        first = await one_computing(fake, batcher, rng)
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
        first = await one_computing(fake, batcher, rng)
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
        with one_worker(fake) as executor:
            batcher = make_batcher(fake, executor=executor, stage=True)
            rng = np.random.default_rng(6)
            first = await one_computing(fake, batcher, rng)
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
        with one_worker(fake) as executor:
            batcher = make_batcher(fake, executor=executor)
            rng = np.random.default_rng(7)
            first = await one_computing(fake, batcher, rng)
            full = asyncio.create_task(batcher.submit(make_inputs(rng, 8, 10)))
            await settle()
            assert batcher.queue_rows == 8  # still queued
            fake.gate.set()
            until_worker_idle(executor)
            assert fake.batches == [1]  # the full batch needs the loop, which is held
            await answer(asyncio.gather(first, full))
            assert fake.batches == [1, 8]
            await batcher.stop()

    run(main)
