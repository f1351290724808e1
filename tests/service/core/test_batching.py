"""Deterministic tests of the dynamic batcher against a fake runtime that the test gates."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import threading
import time
from collections.abc import Callable, Coroutine
from http import HTTPStatus
from typing import Any

import numpy as np
import pytest

from service.core.batching import Batcher
from service.core.batchwait import QUIET_GAPS
from service.errors import DeadlineExceeded, InferenceFailed, Overloaded, Unavailable

Arrays = dict[str, np.ndarray]
WEIGHTS = np.random.default_rng(0).standard_normal((12, 3)).astype(np.float32)
GUARD_S = 5.0  # only reached when the batcher is broken; keeps a failing test from hanging


def model(inputs: Arrays) -> Arrays:
    """What the fake computes: a fixed linear map on ``x`` and a row id check on ``k``."""
    x, k = inputs["x"], inputs["k"]
    return {"y": x.reshape(len(x), -1) @ WEIGHTS, "k2": k * 2}


def make_inputs(rng: np.random.Generator, rows: int, first_id: int) -> Arrays:
    x = rng.standard_normal((rows, 3, 4), dtype=np.float32)
    return {"x": x, "k": np.arange(first_id, first_id + rows, dtype=np.int64)}


class FakeRuntime:
    """Runs :func:`model`; records each batch; blocks on ``gate`` (open unless ``gated``)."""

    def __init__(self, *, gated: bool = False) -> None:
        self.loop = asyncio.get_running_loop()
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.started: asyncio.Queue[int] = asyncio.Queue()
        self.batches: list[int] = []
        self.received: list[Arrays] = []
        self.fail_batches: set[int] = set()
        self.transform: Callable[[Arrays], Arrays] = model
        self.on_run: Callable[[], None] = lambda: None  # runs in the worker once the gate is open

    def __call__(self, inputs: Arrays) -> Arrays:
        index = len(self.batches)
        self.batches.append(len(inputs["k"]))
        self.received.append(inputs)
        self.loop.call_soon_threadsafe(self.started.put_nowait, len(inputs["k"]))
        if not self.gate.wait(GUARD_S):
            raise TimeoutError("the test never opened the gate")
        self.on_run()
        if index in self.fail_batches:
            raise RuntimeError("secret internal detail")
        return self.transform(inputs)

    def seen_ids(self) -> set[int]:
        return {int(i) for inputs in self.received for i in inputs["k"]}

    async def next_batch(self) -> int:
        """Rows of the next batch to enter the runtime."""
        return await asyncio.wait_for(self.started.get(), GUARD_S)


class Recorder:
    def __init__(self) -> None:
        self.batches: list[int] = []
        self.compute_seconds: list[float] = []
        self.queued_seconds: list[float] = []
        self.queue_rows: list[int] = []
        self.waits: list[float] = []

    def on_batch(self, rows: int, compute_seconds: float) -> None:
        self.batches.append(rows)
        self.compute_seconds.append(compute_seconds)

    def on_dequeue(self, queued_seconds: float) -> None:
        self.queued_seconds.append(queued_seconds)

    def on_queue_rows(self, rows: int) -> None:
        self.queue_rows.append(rows)

    def on_wait(self, seconds: float) -> None:
        self.waits.append(seconds)


class FakeClock:
    """Seconds that pass only when the test moves them."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class BrokenObserver:
    def on_batch(self, rows: int, compute_seconds: float) -> None:
        raise RuntimeError("observer bug")

    def on_dequeue(self, queued_seconds: float) -> None:
        raise RuntimeError("observer bug")

    def on_queue_rows(self, rows: int) -> None:
        raise RuntimeError("observer bug")

    def on_wait(self, seconds: float) -> None:
        raise RuntimeError("observer bug")


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 4 * GUARD_S))


async def settle() -> None:
    """Let every ready callback run (no time passes), so anything the batcher would do now is done."""
    for _ in range(20):
        await asyncio.sleep(0)


def make_batcher(fake: FakeRuntime, **kwargs: Any) -> Batcher:
    options: dict[str, Any] = {"max_batch_size": 8, "max_queue_delay_us": 0, "max_queue_rows": 1000}
    batcher = Batcher(fake, name="digits", **(options | kwargs))
    batcher.start()
    return batcher


async def answer(aw: Any) -> Any:
    return await asyncio.wait_for(aw, GUARD_S)


def assert_matches_model(inputs: Arrays, outputs: Arrays) -> None:
    expected = model(inputs)
    assert outputs.keys() == expected.keys()
    np.testing.assert_allclose(outputs["y"], expected["y"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(outputs["k2"], expected["k2"])


def test_batched_results_equal_unbatched() -> None:
    async def main() -> None:
        fake = FakeRuntime(gated=True)
        batcher = make_batcher(fake, max_batch_size=8)
        rng = np.random.default_rng(1)
        sizes = [3, *rng.integers(1, 21, size=40).tolist()]  # some above max_batch_size
        requests, first = [], 0
        for rows in sizes:
            requests.append(make_inputs(rng, rows, first))
            first += rows
        head = asyncio.create_task(batcher.submit(requests[0]))
        assert await fake.next_batch() == 3
        rest = [asyncio.create_task(batcher.submit(r)) for r in requests[1:]]
        await settle()
        fake.gate.set()
        results = await answer(asyncio.gather(head, *rest))
        for inputs, outputs in zip(requests, results, strict=True):
            assert_matches_model(inputs, outputs)
        jobs = sum(math.ceil(rows / 8) for rows in sizes)
        assert sum(fake.batches) == sum(sizes)
        assert max(fake.batches) <= 8
        assert len(fake.batches) < jobs  # jobs really were batched together
        await batcher.stop()

    run(main)


def test_batches_form_while_compute_is_gated() -> None:
    async def main() -> None:
        fake = FakeRuntime(gated=True)
        batcher = make_batcher(fake, max_batch_size=16)
        rng = np.random.default_rng(2)
        first = asyncio.create_task(batcher.submit(make_inputs(rng, 2, 0)))
        assert await fake.next_batch() == 2
        queued = [asyncio.create_task(batcher.submit(make_inputs(rng, n, 10 * n))) for n in (3, 4, 5)]
        await settle()
        assert batcher.queue_rows == 12
        assert batcher.pending == 4
        fake.gate.set()
        await answer(asyncio.gather(first, *queued))
        assert fake.batches == [2, 12]
        assert batcher.pending == 0
        await batcher.stop()

    run(main)


@pytest.mark.parametrize("delay_us", [0, 1000])
def test_partial_batch_goes_without_reaching_max_batch_size(delay_us: int) -> None:
    async def main() -> None:
        fake = FakeRuntime()
        batcher = make_batcher(fake, max_batch_size=64, max_queue_delay_us=delay_us)
        inputs = make_inputs(np.random.default_rng(3), 3, 0)
        assert_matches_model(inputs, await answer(batcher.submit(inputs)))
        assert fake.batches == [3]
        await batcher.stop()

    run(main)


def test_huge_delay_dispatches_only_full_batches_or_on_drain() -> None:
    async def main() -> None:
        fake = FakeRuntime()
        batcher = make_batcher(fake, max_batch_size=8, max_queue_delay_us=1000 * 10**6, wait="fixed")
        rng = np.random.default_rng(4)
        a, b, c, d = (make_inputs(rng, n, 100 * i) for i, n in enumerate((3, 4, 1, 2)))
        waiting = [asyncio.create_task(batcher.submit(x)) for x in (a, b)]
        await settle()
        assert batcher.queue_rows == 7  # not full: nothing taken
        assert not any(t.done() for t in waiting)
        full = asyncio.create_task(batcher.submit(c))
        for inputs, outputs in zip((a, b, c), await answer(asyncio.gather(*waiting, full)), strict=True):
            assert_matches_model(inputs, outputs)
        last = asyncio.create_task(batcher.submit(d))
        await settle()
        assert batcher.queue_rows == 2
        await answer(batcher.stop(drain=True))
        assert_matches_model(d, last.result())
        assert fake.batches == [8, 2]

    run(main)


def test_oversized_request_is_split_and_reassembled_in_order() -> None:
    async def main() -> None:
        fake = FakeRuntime()
        recorder = Recorder()
        batcher = make_batcher(fake, max_batch_size=4, observer=recorder)
        inputs = make_inputs(np.random.default_rng(5), 10, 0)
        outputs = await answer(batcher.submit(inputs))
        assert fake.batches == [4, 4, 2]
        assert [r["k"].tolist() for r in fake.received] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
        assert_matches_model(inputs, outputs)
        assert len(recorder.queued_seconds) == 3
        await batcher.stop()

    run(main)


def test_single_job_inputs_pass_through_without_copy() -> None:
    async def main() -> None:
        fake = FakeRuntime()
        batcher = make_batcher(fake)
        inputs = make_inputs(np.random.default_rng(6), 5, 0)
        await answer(batcher.submit(inputs))
        assert fake.received[0]["x"] is inputs["x"]
        await batcher.stop()

    run(main)


def test_full_queue_is_overloaded_and_admits_nothing() -> None:
    async def main() -> None:
        fake = FakeRuntime(gated=True)
        batcher = make_batcher(fake, max_queue_rows=10)
        rng = np.random.default_rng(7)
        computing = asyncio.create_task(batcher.submit(make_inputs(rng, 2, 0)))
        assert await fake.next_batch() == 2
        queued = asyncio.create_task(batcher.submit(make_inputs(rng, 6, 10)))
        await settle()
        with pytest.raises(Overloaded) as caught:
            await batcher.submit(make_inputs(rng, 5, 20))
        error = caught.value
        assert error.status == HTTPStatus.SERVICE_UNAVAILABLE
        assert error.headers == {"Retry-After": "1"}
        assert error.message == "model 'digits' queue is full (6 rows queued, limit 10)"
        assert batcher.queue_rows == 6
        assert batcher.pending == 2
        fits = asyncio.create_task(batcher.submit(make_inputs(rng, 4, 30)))  # exactly the limit
        await settle()
        assert batcher.queue_rows == 10
        fake.gate.set()
        await answer(asyncio.gather(computing, queued, fits))
        assert fake.seen_ids().isdisjoint(range(20, 25))
        await batcher.stop()

    run(main)


def test_deadline_already_past_is_refused_without_compute() -> None:
    async def main() -> None:
        fake = FakeRuntime()
        recorder = Recorder()
        batcher = make_batcher(fake, observer=recorder)
        with pytest.raises(DeadlineExceeded):
            await batcher.submit(make_inputs(np.random.default_rng(8), 3, 0), deadline=time.monotonic() - 1)
        assert recorder.queue_rows == []  # refused before admission, not expired from the queue
        await settle()
        assert (batcher.queue_rows, batcher.pending, fake.batches) == (0, 0, [])
        await batcher.stop()

    run(main)


def test_deadline_passing_while_queued_answers_at_the_deadline() -> None:
    async def main() -> None:
        fake = FakeRuntime(gated=True)
        recorder = Recorder()
        batcher = make_batcher(fake, observer=recorder)
        rng = np.random.default_rng(9)
        computing = asyncio.create_task(batcher.submit(make_inputs(rng, 2, 0)))
        assert await fake.next_batch() == 2
        late = make_inputs(rng, 3, 10)
        with pytest.raises(DeadlineExceeded) as caught:  # the gate is still closed: answered at the deadline
            await answer(batcher.submit(late, deadline=time.monotonic() + 0.05))
        assert caught.value.status == HTTPStatus.GATEWAY_TIMEOUT
        assert batcher.queue_rows == 0
        assert recorder.queue_rows[-1] == 0
        fake.gate.set()
        await answer(computing)
        after = make_inputs(rng, 1, 20)
        assert_matches_model(after, await answer(batcher.submit(after)))
        assert fake.batches == [2, 1]
        assert fake.seen_ids().isdisjoint(late["k"].tolist())
        assert len(recorder.queued_seconds) == 2  # the expired job was never dequeued into a batch
        await batcher.stop()

    run(main)


def test_an_earlier_deadline_rearms_the_one_expiry_timer() -> None:
    async def main() -> None:
        fake = FakeRuntime(gated=True)
        batcher = make_batcher(fake)
        rng = np.random.default_rng(24)
        computing = asyncio.create_task(batcher.submit(make_inputs(rng, 2, 0)))
        assert await fake.next_batch() == 2
        late, soon, never = (make_inputs(rng, 1, first) for first in (10, 20, 30))
        late_task = asyncio.create_task(batcher.submit(late, deadline=time.monotonic() + 60))
        soon_task = asyncio.create_task(batcher.submit(soon, deadline=time.monotonic() + 0.05))
        never_task = asyncio.create_task(batcher.submit(never))
        with pytest.raises(DeadlineExceeded):  # at its own deadline, not the first one armed (60 s)
            await answer(soon_task)
        assert not late_task.done() and batcher.queue_rows == 2
        fake.gate.set()
        await answer(computing)
        assert_matches_model(late, await answer(late_task))
        assert_matches_model(never, await answer(never_task))
        assert fake.seen_ids().isdisjoint(soon["k"].tolist())
        await batcher.stop()

    run(main)


def test_expired_job_is_skipped_at_batch_start_even_before_its_timer() -> None:
    """The batcher's clock jumps past the deadline while the loop's timer is still far off."""

    async def main() -> None:
        fake, clock = FakeRuntime(gated=True), FakeClock()
        batcher = make_batcher(fake, clock=clock)
        rng = np.random.default_rng(23)
        computing = asyncio.create_task(batcher.submit(make_inputs(rng, 2, 0)))
        assert await fake.next_batch() == 2
        late = make_inputs(rng, 3, 10)
        expiring = asyncio.create_task(batcher.submit(late, deadline=clock() + 100))
        await settle()
        clock.now += 200.0  # the loop's timer for it is still 100 real seconds away
        fake.gate.set()
        await answer(computing)
        with pytest.raises(DeadlineExceeded):
            await answer(expiring)
        assert fake.batches == [2]
        assert batcher.queue_rows == 0
        await batcher.stop()

    run(main)


def test_deadline_passing_after_batch_started_still_answers() -> None:
    async def main() -> None:
        fake, clock = FakeRuntime(gated=True), FakeClock()
        batcher = make_batcher(fake, clock=clock)
        inputs = make_inputs(np.random.default_rng(10), 3, 0)
        task = asyncio.create_task(batcher.submit(inputs, deadline=clock() + 0.05))
        assert await fake.next_batch() == 3
        clock.now += 1.0  # the deadline passes mid-compute, however slow the machine was to get here
        batcher._expire()  # what the loop's deadline timer does when it fires
        await settle()
        assert not task.done()
        fake.gate.set()
        assert_matches_model(inputs, await answer(task))
        await batcher.stop()

    run(main)


def test_cancelled_submit_releases_its_rows() -> None:
    async def main() -> None:
        fake = FakeRuntime(gated=True)
        recorder = Recorder()
        batcher = make_batcher(fake, observer=recorder)
        rng = np.random.default_rng(11)
        computing = asyncio.create_task(batcher.submit(make_inputs(rng, 2, 0)))
        assert await fake.next_batch() == 2
        gone = asyncio.create_task(batcher.submit(make_inputs(rng, 5, 10)))
        await settle()
        assert batcher.queue_rows == 5
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert batcher.queue_rows == 0
        assert recorder.queue_rows[-1] == 0
        assert batcher.pending == 1
        fake.gate.set()
        await answer(computing)
        await answer(batcher.submit(make_inputs(rng, 1, 20)))
        assert fake.batches == [2, 1]
        assert fake.seen_ids() == {0, 1, 20}
        await batcher.stop()

    run(main)


def test_failing_batch_fails_exactly_its_jobs(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        fake = FakeRuntime(gated=True)
        fake.fail_batches = {1}
        batcher = make_batcher(fake)
        rng = np.random.default_rng(12)
        ok_before = asyncio.create_task(batcher.submit(make_inputs(rng, 2, 0)))
        assert await fake.next_batch() == 2
        doomed = [asyncio.create_task(batcher.submit(make_inputs(rng, n, 10 * n))) for n in (1, 3)]
        await settle()
        fake.gate.set()
        await answer(ok_before)
        for task in doomed:
            with pytest.raises(InferenceFailed) as caught:
                await answer(task)
            assert caught.value.message == "inference failed"  # no internals for the client
        after = make_inputs(rng, 2, 50)
        assert_matches_model(after, await answer(batcher.submit(after)))
        assert fake.batches == [2, 4, 2]
        await batcher.stop()

    with caplog.at_level(logging.ERROR, logger="service.core.batching"):
        run(main)
    failures = [r for r in caplog.records if r.exc_info and "secret internal detail" in str(r.exc_info[1])]
    assert len(failures) == 1


def test_failing_chunk_fails_the_whole_request() -> None:
    async def main() -> None:
        fake = FakeRuntime()
        fake.fail_batches = {1}
        batcher = make_batcher(fake, max_batch_size=4)
        with pytest.raises(InferenceFailed):
            await answer(batcher.submit(make_inputs(np.random.default_rng(13), 10, 0)))
        await settle()
        assert (batcher.queue_rows, batcher.pending) == (0, 0)
        await batcher.stop()

    run(main)


@pytest.mark.parametrize(
    "transform",
    [
        lambda inputs: {"y": np.zeros((len(inputs["k"]) + 1, 3))},
        lambda inputs: {"y": np.zeros((len(inputs["k"]), 3)), "z": np.zeros((1, 2))},
        lambda inputs: {"y": np.float32(1.0)},
    ],
    ids=["extra-row", "one-short-output", "scalar"],
)
def test_wrong_output_row_count_fails_the_batch(transform: Callable[[Arrays], Arrays]) -> None:
    async def main() -> None:
        fake = FakeRuntime()
        fake.transform = transform
        batcher = make_batcher(fake)
        with pytest.raises(InferenceFailed):
            await answer(batcher.submit(make_inputs(np.random.default_rng(14), 3, 0)))
        fake.transform = model
        inputs = make_inputs(np.random.default_rng(15), 2, 0)
        assert_matches_model(inputs, await answer(batcher.submit(inputs)))
        await batcher.stop()

    run(main)


def test_observer_counts_are_exact() -> None:
    async def main() -> None:
        fake = FakeRuntime(gated=True)
        recorder = Recorder()
        batcher = make_batcher(fake, max_batch_size=8, observer=recorder)
        rng = np.random.default_rng(16)
        first = asyncio.create_task(batcher.submit(make_inputs(rng, 2, 0)))
        assert await fake.next_batch() == 2
        rest = [asyncio.create_task(batcher.submit(make_inputs(rng, n, 100 * n))) for n in (3, 4, 10)]
        await settle()
        fake.gate.set()
        await answer(asyncio.gather(first, *rest))
        assert fake.batches == [2, 7, 8, 2]  # the 10-row request is two jobs: 8 and 2
        assert recorder.batches == [2, 7, 8, 2]
        assert len(recorder.queued_seconds) == 5
        assert all(s >= 0 for s in recorder.queued_seconds + recorder.compute_seconds)
        assert recorder.queue_rows == [2, 0, 3, 7, 17, 10, 2, 0]
        await batcher.stop()

    run(main)


def test_broken_observer_does_not_break_batching(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        fake = FakeRuntime()
        batcher = make_batcher(fake, observer=BrokenObserver())
        rng = np.random.default_rng(17)
        for first in (0, 10):
            inputs = make_inputs(rng, 3, first)
            assert_matches_model(inputs, await answer(batcher.submit(inputs)))
        await batcher.stop()

    with caplog.at_level(logging.ERROR, logger="service.core.batching"):
        run(main)
    assert any("observer" in r.getMessage() for r in caplog.records)


def test_stop_drains_queued_jobs_then_refuses_new_ones() -> None:
    async def main() -> None:
        fake = FakeRuntime(gated=True)
        batcher = make_batcher(fake, max_queue_delay_us=1000 * 10**6, wait="fixed")
        rng = np.random.default_rng(18)
        requests = [make_inputs(rng, n, 10 * n) for n in (3, 2)]
        queued = [asyncio.create_task(batcher.submit(r)) for r in requests]
        await settle()
        assert fake.batches == []
        stopping = asyncio.create_task(batcher.stop(drain=True))
        await settle()
        assert not batcher.accepting
        with pytest.raises(Unavailable) as caught:
            await batcher.submit(make_inputs(rng, 1, 99))
        assert caught.value.message == "server is shutting down"
        assert caught.value.headers == {"Retry-After": "1"}
        assert await fake.next_batch() == 5  # the delay is ignored while draining
        fake.gate.set()
        await answer(stopping)
        for inputs, task in zip(requests, queued, strict=True):
            assert_matches_model(inputs, task.result())
        assert batcher.pending == 0
        await answer(batcher.stop())  # idempotent
        with pytest.raises(Unavailable):
            await batcher.submit(make_inputs(rng, 1, 99))

    run(main)


def test_stop_without_drain_fails_queued_jobs() -> None:
    async def main() -> None:
        fake = FakeRuntime(gated=True)
        batcher = make_batcher(fake)
        rng = np.random.default_rng(19)
        computing = asyncio.create_task(batcher.submit(make_inputs(rng, 2, 0)))
        assert await fake.next_batch() == 2
        queued = [asyncio.create_task(batcher.submit(make_inputs(rng, n, 10 * n))) for n in (1, 3)]
        await settle()
        stopping = asyncio.create_task(batcher.stop(drain=False))
        for task in queued:
            with pytest.raises(Unavailable, match="server is shutting down"):
                await answer(task)
        assert batcher.queue_rows == 0
        fake.gate.set()
        await answer(stopping)
        assert computing.done() and computing.exception() is None
        assert fake.batches == [2]

    run(main)


def test_stop_timeout_fails_the_batch_still_computing() -> None:
    async def main() -> None:
        fake = FakeRuntime(gated=True)
        batcher = make_batcher(fake)
        rng = np.random.default_rng(20)
        computing = asyncio.create_task(batcher.submit(make_inputs(rng, 2, 0)))
        assert await fake.next_batch() == 2
        queued = asyncio.create_task(batcher.submit(make_inputs(rng, 3, 10)))
        await settle()
        try:
            await answer(batcher.stop(drain=True, timeout=0.05))
            for task in (computing, queued):
                with pytest.raises(Unavailable):
                    await task
            assert fake.batches == [2]
        finally:
            fake.gate.set()  # let the worker thread finish

    run(main)


def test_stop_leaves_a_shared_executor_running() -> None:
    async def main() -> None:
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as executor:
            fake = FakeRuntime()
            batcher = make_batcher(fake, executor=executor)
            await answer(batcher.submit(make_inputs(np.random.default_rng(21), 1, 0)))
            await batcher.stop()
            assert executor.submit(lambda: 42).result(GUARD_S) == 42

    run(main)


def test_submit_before_start_is_unavailable() -> None:
    async def main() -> None:
        batcher = Batcher(model, max_batch_size=4, max_queue_delay_us=0, max_queue_rows=10, name="digits")
        with pytest.raises(Unavailable, match="not ready"):
            await batcher.submit(make_inputs(np.random.default_rng(22), 1, 0))
        await batcher.stop()

    run(main)


# ---- the adaptive wait ------------------------------------------------------------------------------------


def test_lone_client_goes_at_once_even_with_a_huge_delay() -> None:
    async def main() -> None:
        fake = FakeRuntime()
        recorder = Recorder()
        batcher = make_batcher(fake, max_batch_size=8, max_queue_delay_us=1000 * 10**6, observer=recorder)
        rng = np.random.default_rng(30)
        for i in range(12):  # one request at a time: each arrives with nothing else in flight
            inputs = make_inputs(rng, 1 + i % 3, 10 * i)
            assert_matches_model(inputs, await answer(batcher.submit(inputs)))
        assert fake.batches == [1 + i % 3 for i in range(12)]
        assert recorder.waits == [0.0] * 12
        await batcher.stop()

    run(main)


async def hold_batch(
    fake: FakeRuntime, batcher: Batcher, clock: FakeClock, *, gap: float, queued: int = 7
) -> tuple[list[asyncio.Task[Arrays]], list[Arrays]]:
    """One request computes behind the closed gate while ``queued`` one-row requests arrive ``gap`` seconds
    apart, each finding it in flight; then the gate opens. Returns the queued tasks and their inputs."""
    rng = np.random.default_rng(31)
    first = asyncio.create_task(batcher.submit(make_inputs(rng, 1, 0)))
    assert await fake.next_batch() == 1  # nothing measured yet: it went at once
    requests = [make_inputs(rng, 1, 100 + i) for i in range(queued)]
    tasks = []
    for inputs in requests:
        clock.now += gap
        tasks.append(asyncio.create_task(batcher.submit(inputs)))
        await settle()
    fake.gate.set()
    await answer(first)
    await settle()
    return tasks, requests


def held_batcher(fake: FakeRuntime, clock: FakeClock, recorder: Recorder, **kwargs: Any) -> Batcher:
    options = {"max_batch_size": 8, "max_queue_delay_us": 1000 * 10**6, "observer": recorder, "clock": clock}
    return make_batcher(fake, **(options | kwargs))


def test_concurrent_arrivals_are_held_until_the_stream_pauses() -> None:
    async def main() -> None:
        fake, clock, recorder = FakeRuntime(gated=True), FakeClock(), Recorder()
        batcher = held_batcher(fake, clock, recorder)
        tasks, requests = await hold_batch(fake, batcher, clock, gap=0.01)
        assert batcher.queue_rows == 7 and fake.batches == [1]  # held for company
        assert not any(t.done() for t in tasks)
        clock.now += QUIET_GAPS * 0.01  # no arrival for that many mean gaps: the stream has paused
        assert await fake.next_batch() == 7
        for inputs, outputs in zip(requests, await answer(asyncio.gather(*tasks)), strict=True):
            assert_matches_model(inputs, outputs)
        assert recorder.waits == [0.0, pytest.approx(QUIET_GAPS * 0.01)]
        await batcher.stop()

    run(main)


def test_held_batch_goes_at_once_when_it_fills() -> None:
    async def main() -> None:
        fake, clock, recorder = FakeRuntime(gated=True), FakeClock(), Recorder()
        batcher = held_batcher(fake, clock, recorder)
        rng = np.random.default_rng(32)
        # Eleven requests in flight at once (one computing, ten queued): more than a batch holds.
        tasks, _ = await hold_batch(fake, batcher, clock, gap=1.0, queued=10)
        assert await fake.next_batch() == 8 and fake.batches[:2] == [1, 8]
        assert batcher.queue_rows == 2  # held: nine more were in flight a moment ago
        more = []
        for i in range(6):
            more.append(asyncio.create_task(batcher.submit(make_inputs(rng, 1, 200 + i))))
            await settle()
        assert await fake.next_batch() == 8  # full, though fewer than were lately in flight
        await answer(asyncio.gather(*tasks, *more))
        assert fake.batches == [1, 8, 8]
        await batcher.stop()

    run(main)


def test_closed_loop_batch_goes_once_every_client_is_back() -> None:
    async def main() -> None:
        fake, clock, recorder = FakeRuntime(gated=True), FakeClock(), Recorder()
        batcher = held_batcher(fake, clock, recorder, max_batch_size=16)
        tasks, _ = await hold_batch(fake, batcher, clock, gap=1.0)  # eight clients: one answered, 7 held
        assert batcher.queue_rows == 7 and fake.batches == [1]
        back = asyncio.create_task(batcher.submit(make_inputs(np.random.default_rng(35), 1, 300)))
        assert await fake.next_batch() == 8  # all eight are queued: nobody else can come
        await answer(asyncio.gather(back, *tasks))
        assert recorder.waits == [0.0, 0.0]  # the fake clock did not move while it was held
        await batcher.stop()

    run(main)


def test_hold_ends_one_compute_time_before_a_queued_deadline() -> None:
    async def main() -> None:
        fake, clock, recorder = FakeRuntime(gated=True), FakeClock(), Recorder()

        def compute() -> None:
            clock.now += 0.5  # every batch takes half a second

        fake.on_run = compute
        batcher = held_batcher(fake, clock, recorder)
        tasks, _ = await hold_batch(fake, batcher, clock, gap=1.0, queued=6)
        assert batcher.queue_rows == 6  # the stream pauses only two seconds after the last arrival
        inputs = make_inputs(np.random.default_rng(33), 1, 300)
        urgent = asyncio.create_task(batcher.submit(inputs, deadline=clock.now + 0.25))
        assert await fake.next_batch() == 7  # not full, but waiting longer would miss the deadline
        assert_matches_model(inputs, await answer(urgent))
        await answer(asyncio.gather(*tasks))
        await batcher.stop()

    run(main)


def test_stop_releases_a_held_batch() -> None:
    async def main() -> None:
        fake, clock, recorder = FakeRuntime(gated=True), FakeClock(), Recorder()
        batcher = held_batcher(fake, clock, recorder)
        tasks, requests = await hold_batch(fake, batcher, clock, gap=1.0)
        assert batcher.queue_rows == 7
        await answer(batcher.stop(drain=True))
        for inputs, task in zip(requests, tasks, strict=True):
            assert_matches_model(inputs, task.result())
        assert fake.batches == [1, 7]

    run(main)


def test_fixed_wait_holds_a_lone_request_for_the_whole_delay() -> None:
    async def main() -> None:
        fake, clock, recorder = FakeRuntime(), FakeClock(), Recorder()
        batcher = held_batcher(fake, clock, recorder, max_queue_delay_us=20_000, wait="fixed")
        rng = np.random.default_rng(34)
        lone = asyncio.create_task(batcher.submit(make_inputs(rng, 1, 0)))
        await settle()
        assert batcher.queue_rows == 1  # the old rule: wait for company that never comes
        clock.now += 0.02
        await answer(lone)
        assert recorder.waits == [pytest.approx(0.02)]
        await batcher.stop()

    run(main)


# ---- the background lane ----------------------------------------------------------------------------


def test_predictions_go_before_background_work_queued_earlier() -> None:
    async def main() -> None:
        fake = FakeRuntime(gated=True)
        batcher = make_batcher(fake, max_batch_size=8)
        rng = np.random.default_rng(40)
        computing = asyncio.create_task(batcher.submit(make_inputs(rng, 1, 0)))
        assert await fake.next_batch() == 1
        background = [
            asyncio.create_task(batcher.submit(make_inputs(rng, 4, 100 + 10 * i), background=True))
            for i in range(3)
        ]
        await settle()
        prediction = make_inputs(rng, 2, 50)
        predicted = asyncio.create_task(batcher.submit(prediction))
        await settle()
        assert (batcher.queue_rows, batcher.background_rows, batcher.pending) == (14, 12, 5)
        fake.gate.set()
        results = await answer(asyncio.gather(computing, predicted, *background))
        assert_matches_model(prediction, results[1])
        # The prediction goes alone; background jobs follow in batches of their own, whole and in order.
        assert [r["k"].tolist() for r in fake.received[1:]] == [
            [50, 51],
            [100, 101, 102, 103, 110, 111, 112, 113],
            [120, 121, 122, 123],
        ]
        assert batcher.pending == 0
        await batcher.stop()

    run(main)


def test_queued_background_rows_never_refuse_a_prediction() -> None:
    async def main() -> None:
        fake = FakeRuntime(gated=True)
        batcher = make_batcher(fake, max_queue_rows=10)
        rng = np.random.default_rng(41)
        computing = asyncio.create_task(batcher.submit(make_inputs(rng, 1, 0)))
        assert await fake.next_batch() == 1
        filling = asyncio.create_task(batcher.submit(make_inputs(rng, 10, 100), background=True))
        await settle()
        with pytest.raises(Overloaded) as caught:  # background work sees the whole queue
            await batcher.submit(make_inputs(rng, 1, 200), background=True)
        assert caught.value.message == "model 'digits' queue is full (10 rows queued, limit 10)"
        admitted = asyncio.create_task(batcher.submit(make_inputs(rng, 10, 300)))  # predictions their lane
        await settle()
        assert batcher.queue_rows == 20
        with pytest.raises(Overloaded):
            await batcher.submit(make_inputs(rng, 1, 400))
        fake.gate.set()
        await answer(asyncio.gather(computing, filling, admitted))
        assert fake.seen_ids().isdisjoint({200, 400})
        await batcher.stop()

    run(main)


def test_background_work_is_counted_in_batches_but_not_in_queue_times() -> None:
    async def main() -> None:
        fake = FakeRuntime()
        recorder = Recorder()
        batcher = make_batcher(fake, observer=recorder)
        rng = np.random.default_rng(49)
        await answer(batcher.submit(make_inputs(rng, 3, 0), background=True))
        await answer(batcher.submit(make_inputs(rng, 2, 10)))
        assert recorder.batches == [3, 2]
        assert len(recorder.waits) == 2 and len(recorder.queued_seconds) == 1  # the prediction's
        await batcher.stop()

    run(main)


def test_background_work_does_not_hold_a_batch_and_is_not_held() -> None:
    async def main() -> None:
        fake = FakeRuntime()
        recorder = Recorder()
        # The fixed policy holds every prediction for the whole (huge) delay; background work goes at once.
        batcher = make_batcher(fake, max_queue_delay_us=1_000_000_000, wait="fixed", observer=recorder)
        inputs = make_inputs(np.random.default_rng(42), 3, 0)
        assert_matches_model(inputs, await answer(batcher.submit(inputs, background=True)))
        assert (fake.batches, recorder.waits) == ([3], [0.0])
        await batcher.stop()

    run(main)


def test_cancelled_background_submit_releases_its_rows_uncomputed() -> None:
    async def main() -> None:
        fake = FakeRuntime(gated=True)
        recorder = Recorder()
        batcher = make_batcher(fake, max_batch_size=4, observer=recorder)
        rng = np.random.default_rng(43)
        computing = asyncio.create_task(batcher.submit(make_inputs(rng, 1, 0)))
        assert await fake.next_batch() == 1
        gone = asyncio.create_task(batcher.submit(make_inputs(rng, 12, 100), background=True))
        await settle()
        assert batcher.background_rows == 12
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert (batcher.queue_rows, batcher.background_rows, recorder.queue_rows[-1]) == (0, 0, 0)
        fake.gate.set()
        await answer(computing)
        await answer(batcher.submit(make_inputs(rng, 1, 20), background=True))
        assert fake.batches == [1, 1]
        assert fake.seen_ids() == {0, 20}
        await batcher.stop()

    run(main)


def test_background_deadline_passing_while_queued_answers_at_the_deadline() -> None:
    async def main() -> None:
        fake = FakeRuntime(gated=True)
        batcher = make_batcher(fake)
        rng = np.random.default_rng(44)
        computing = asyncio.create_task(batcher.submit(make_inputs(rng, 1, 0)))
        assert await fake.next_batch() == 1
        late = make_inputs(rng, 3, 10)
        with pytest.raises(DeadlineExceeded):
            await answer(batcher.submit(late, deadline=time.monotonic() + 0.05, background=True))
        assert batcher.background_rows == 0
        fake.gate.set()
        await answer(computing)
        assert fake.seen_ids() == {0}
        await batcher.stop()

    run(main)


def test_stop_without_drain_fails_queued_background_work() -> None:
    async def main() -> None:
        fake = FakeRuntime(gated=True)
        batcher = make_batcher(fake)
        rng = np.random.default_rng(45)
        computing = asyncio.create_task(batcher.submit(make_inputs(rng, 1, 0)))
        assert await fake.next_batch() == 1
        queued = asyncio.create_task(batcher.submit(make_inputs(rng, 3, 10), background=True))
        await settle()
        stopping = asyncio.create_task(batcher.stop(drain=False))
        with pytest.raises(Unavailable):
            await answer(queued)
        fake.gate.set()
        await answer(asyncio.gather(computing, stopping))
        assert fake.seen_ids() == {0}

    run(main)


def test_background_work_waits_while_any_prediction_is_pending() -> None:
    async def main() -> None:
        fake = FakeRuntime(gated=True)
        batcher = make_batcher(fake, max_batch_size=8, max_background_rows=3)
        rng = np.random.default_rng(46)
        computing = asyncio.create_task(batcher.submit(make_inputs(rng, 1, 0), background=True))
        assert await fake.next_batch() == 1
        background = [
            asyncio.create_task(batcher.submit(make_inputs(rng, 2, 100 + 10 * i), background=True))
            for i in range(3)
        ]
        predicted = asyncio.create_task(batcher.submit(make_inputs(rng, 1, 50)))
        await settle()
        fake.gate.set()
        await answer(asyncio.gather(computing, predicted, *background))
        # The prediction waited only for the background batch already computing; background batches
        # hold at most max_background_rows rows unless a single job is larger.
        assert [r["k"].tolist() for r in fake.received] == [[0], [50], [100, 101], [110, 111], [120, 121]]
        await batcher.stop()

    run(main)


def test_background_work_goes_once_the_last_prediction_is_answered() -> None:
    async def main() -> None:
        fake = FakeRuntime(gated=True)
        batcher = make_batcher(fake)
        rng = np.random.default_rng(47)
        predicted = asyncio.create_task(batcher.submit(make_inputs(rng, 1, 0)))
        assert await fake.next_batch() == 1
        queued = asyncio.create_task(batcher.submit(make_inputs(rng, 2, 100), background=True))
        await settle()
        assert fake.batches == [1]  # a prediction is computing: the background lane waits
        fake.gate.set()
        await answer(asyncio.gather(predicted, queued))
        assert fake.batches == [1, 2]
        await batcher.stop()

    run(main)


def test_a_prediction_wakes_a_consumer_waiting_for_the_prediction_lane_to_go_idle() -> None:
    async def main() -> None:
        fake = FakeRuntime(gated=True)
        loop = asyncio.get_running_loop()
        rng = np.random.default_rng(48)
        second = make_inputs(rng, 1, 60)
        later: list[asyncio.Task[Arrays]] = []

        class SubmitAfterFirstBatch(Recorder):
            def on_batch(self, rows: int, compute_seconds: float) -> None:
                super().on_batch(rows, compute_seconds)
                if len(self.batches) == 1:  # runs before the first prediction's answer reaches it
                    loop.call_soon(lambda: later.append(asyncio.create_task(batcher.submit(second))))

        batcher = make_batcher(fake, observer=SubmitAfterFirstBatch())
        first = asyncio.create_task(batcher.submit(make_inputs(rng, 1, 50)))
        assert await fake.next_batch() == 1
        queued = asyncio.create_task(batcher.submit(make_inputs(rng, 2, 100), background=True))
        await settle()
        fake.gate.set()
        await answer(first)
        await answer(
            asyncio.gather(queued, *later)
        )  # the second prediction arrived while the first was pending
        assert [r["k"].tolist() for r in fake.received] == [[50], [60], [100, 101]]
        await batcher.stop()

    run(main)


def test_the_observer_is_called_on_the_event_loops_thread_only() -> None:
    """The per-version metrics count without locks (service/telemetry/metrics.py): every observer call,
    the batch's included, must come on the loop's thread, never on the compute worker's."""

    class ThreadRecorder(Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.threads: set[int] = set()

        def on_batch(self, rows: int, compute_seconds: float) -> None:
            self.threads.add(threading.get_ident())
            super().on_batch(rows, compute_seconds)

        def on_dequeue(self, queued_seconds: float) -> None:
            self.threads.add(threading.get_ident())
            super().on_dequeue(queued_seconds)

        def on_queue_rows(self, rows: int) -> None:
            self.threads.add(threading.get_ident())
            super().on_queue_rows(rows)

        def on_wait(self, seconds: float) -> None:
            self.threads.add(threading.get_ident())
            super().on_wait(seconds)

    async def main() -> None:
        fake = FakeRuntime()
        recorder = ThreadRecorder()
        batcher = make_batcher(fake, max_batch_size=4, observer=recorder)
        rng = np.random.default_rng(18)
        await answer(asyncio.gather(*(batcher.submit(make_inputs(rng, n, 100 * n)) for n in (1, 3, 6))))
        await batcher.stop()
        assert recorder.batches and recorder.waits and recorder.queued_seconds
        assert recorder.threads == {threading.get_ident()}

    run(main)
