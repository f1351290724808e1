"""The core's explain operation on its own: rows in the background lane, cancellation, deadlines."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from service.core import ExplainRequest, InferenceService, InferRequest
from service.core.batching import Batcher
from service.errors import DeadlineExceeded, InvalidInput
from service.settings import Settings
from service.telemetry.metrics import Metrics
from tests.helpers.modelfactory import WrittenModel, write_model_version

GUARD_S = 10.0  # only reached when something is broken


class Gate:
    """Wraps a batcher's compute, in a thread (its blocking run) or in a process (its offload's submit):
    lets ``free`` batches through, then holds each until opened."""

    def __init__(self, batcher: Batcher, free: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.open = threading.Event()
        self.held = asyncio.Event()
        self.rows: list[int] = []
        self.batches: list[np.ndarray] = []
        self._free = free
        self._offload = batcher._offload  # the runtime's own; the test only delays it
        if self._offload is not None:
            batcher._offload = self
        else:
            self._run = batcher._run
            batcher._run = self

    def _holds(self, batch: np.ndarray) -> bool:
        self.batches.append(batch)
        self.rows.append(len(batch))
        return len(self.rows) > self._free

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._holds(next(iter(inputs.values()))):
            self.loop.call_soon_threadsafe(self.held.set)
            if not self.open.wait(GUARD_S):
                raise TimeoutError("the test never opened the gate")
        assert self._run is not None
        return self._run(inputs)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        raise AssertionError("the gate wraps an offload already attached")

    def submit(self, parts: Any, done: Any) -> None:
        assert self._offload is not None
        if not self._holds(np.concatenate([next(iter(part.values())) for part in parts])):
            self._offload.submit(parts, done)
            return
        self.held.set()

        async def later() -> None:
            if not await asyncio.to_thread(self.open.wait, GUARD_S):
                raise TimeoutError("the test never opened the gate")
            assert self._offload is not None
            self._offload.submit(parts, done)

        self.loop.create_task(later())


async def until(condition: Callable[[], bool]) -> None:
    """Bounded polling on the event loop for a state the batcher reaches without telling anyone."""
    deadline = time.monotonic() + GUARD_S
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.001)


def run(test: Callable[[InferenceService, WrittenModel], Awaitable[None]], tmp_path: Path, **kw: Any) -> None:
    model = write_model_version(tmp_path, "tiny", 1)
    settings = Settings(model_repository=tmp_path, max_batch_size=8, explain_job_rows=4, **kw)

    async def main() -> None:
        core = InferenceService(settings, Metrics(CollectorRegistry()))
        await core.start()
        try:
            await asyncio.wait_for(test(core, model), 3 * GUARD_S)
        finally:
            await core.stop()

    asyncio.run(main())


def explanations(core: InferenceService, result: str) -> float:
    value = core.metrics.registry.get_sample_value(
        "explanations_total", {"model": "tiny", "method": "rise", "result": result}
    )
    return value or 0.0


def picture() -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (28, 28, 1)).astype(np.float32)


def test_attribution_matches_the_models_answer_on_its_own_input(tmp_path: Path) -> None:
    async def test(core: InferenceService, model: WrittenModel) -> None:
        image = picture()
        answer = await core.explain("tiny", ExplainRequest(input=image, patch=1, stride=1))
        probabilities = model.reference(image[None])[0]
        assert answer.class_id == int(np.argmax(probabilities))
        assert answer.score == pytest.approx(probabilities[answer.class_id], abs=1e-5)
        # Hiding one pixel (baseline: mid grey) is what the attribution says it costs the class.
        hidden = image.copy()
        hidden[3, 5, 0] = 127.5
        drop = probabilities[answer.class_id] - model.reference(hidden[None])[0, answer.class_id]
        assert answer.attribution[3, 5] == pytest.approx(drop, abs=1e-5)
        assert answer.rows == 28 * 28 + 1

    run(test, tmp_path)


@pytest.mark.parametrize("compute", ["process", "thread"])
def test_a_prediction_queued_behind_explanation_rows_goes_first(tmp_path: Path, compute: str) -> None:
    async def test(core: InferenceService, model: WrittenModel) -> None:
        batcher = core.registry.get("tiny").batcher
        gate = Gate(batcher, free=1)  # the unperturbed row passes; the first perturbed batch is held
        explaining = asyncio.create_task(
            core.explain("tiny", ExplainRequest(input=picture(), patch=2, stride=2))
        )
        await asyncio.wait_for(gate.held.wait(), GUARD_S)
        await until(lambda: batcher.background_rows > 0)
        predicting = asyncio.create_task(core.infer("tiny", InferRequest({"image": picture()[None]})))
        await until(lambda: batcher.queue_rows > batcher.background_rows)
        gate.open.set()
        await asyncio.wait_for(asyncio.gather(explaining, predicting), GUARD_S)
        # Batch 0 is the unperturbed row, batch 1 the held explanation job (4 rows); the prediction (the
        # only row equal to the picture but batch 0's) is batch 2 on its own, ahead of the queued job.
        unperturbed = [i for i, b in enumerate(gate.batches) for row in b if np.array_equal(row, picture())]
        assert unperturbed == [0, 2]
        assert gate.rows[:3] == [1, 4, 1]
        assert max(gate.rows[3:]) == 4  # explanation batches never exceed SERVE_EXPLAIN_JOB_ROWS
        assert sum(gate.rows) == 1 + 14 * 14 + 1

    run(test, tmp_path, compute=compute)


@pytest.mark.parametrize("compute", ["process", "thread"])
def test_cancelling_an_explanation_drops_its_queued_rows(tmp_path: Path, compute: str) -> None:
    async def test(core: InferenceService, model: WrittenModel) -> None:
        batcher = core.registry.get("tiny").batcher
        gate = Gate(batcher, free=1)
        explaining = asyncio.create_task(
            core.explain("tiny", ExplainRequest(input=picture(), method="rise", masks=400))
        )
        await asyncio.wait_for(gate.held.wait(), GUARD_S)
        await until(lambda: batcher.background_rows > 0)
        explaining.cancel()
        with pytest.raises(asyncio.CancelledError):
            await explaining
        assert batcher.background_rows == 0  # nothing of it waits any more
        gate.open.set()
        await until(lambda: batcher.pending == 0)
        assert sum(gate.rows) <= 1 + 4  # the input and the one batch that was computing
        assert explanations(core, "cancelled") == 1
        await core.explain("tiny", ExplainRequest(input=picture(), method="rise", masks=10))
        assert explanations(core, "ok") == 1

    run(test, tmp_path, compute=compute)


def test_an_explanation_past_its_deadline_is_a_timeout(tmp_path: Path) -> None:
    async def test(core: InferenceService, model: WrittenModel) -> None:
        batcher = core.registry.get("tiny").batcher
        gate = Gate(batcher, free=1)
        request = ExplainRequest(input=picture(), method="rise", masks=400, deadline=time.monotonic() + 0.2)
        explaining = asyncio.create_task(core.explain("tiny", request))
        with pytest.raises(DeadlineExceeded):
            await asyncio.wait_for(explaining, GUARD_S)
        gate.open.set()
        await until(lambda: batcher.pending == 0)
        assert explanations(core, "timeout") == 1

    run(test, tmp_path)


def test_the_input_must_have_the_models_shape(tmp_path: Path) -> None:
    async def test(core: InferenceService, model: WrittenModel) -> None:
        with pytest.raises(InvalidInput, match=r"shape \[28, 28, 1\], got \[28, 28\]"):
            await core.explain("tiny", ExplainRequest(input=np.zeros((28, 28), np.float32)))
        with pytest.raises(InvalidInput, match="exactly one image"):
            await core.explain("tiny", ExplainRequest())

    run(test, tmp_path)


def test_a_larger_colour_input_makes_its_rows_off_the_event_loop(tmp_path: Path) -> None:
    model = write_model_version(tmp_path, "colour", 1, input_shape=(64, 64, 3))
    settings = Settings(model_repository=tmp_path, explain_job_rows=8)  # 8 x 64 x 64 x 3 values a job

    async def main() -> None:
        core = InferenceService(settings, Metrics(CollectorRegistry()))
        await core.start()
        try:
            image = np.random.default_rng(2).uniform(0, 255, (64, 64, 3)).astype(np.float32)
            answer = await core.explain("colour", ExplainRequest(input=image, patch=16, stride=16))
            assert answer.attribution.shape == (64, 64) and answer.rows == 16 + 1
            hidden = image.copy()
            hidden[16:32, 48:64] = 127.5  # one patch of grey
            probabilities = model.reference(np.stack([image, hidden]))
            drop = probabilities[0, answer.class_id] - probabilities[1, answer.class_id]
            assert answer.attribution[20, 50] == pytest.approx(drop, abs=1e-5)
        finally:
            await core.stop()

    asyncio.run(main())
