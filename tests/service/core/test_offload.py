"""service.core.offload: batches computed in real child processes on the real onnxruntime."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.core import zygote
from service.core.batching import Batcher
from service.core.offload import ProcessRuntime
from service.core.providers import CPU
from service.core.runtime import ModelLoadError, load_model
from service.core.zygote import Child
from service.errors import InferenceFailed
from tests.helpers.modelfactory import write_model_version

GUARD_S = 30.0  # only reached when something is broken
Answer = tuple[dict[str, np.ndarray] | None, float, str | None]
Compute = Callable[..., Awaitable[Answer]]


def _images(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, 28, 28, 1)).astype(np.float32)


def _gone(pid: int) -> bool:
    return not zygote.running(pid)


def _until_gone(pid: int) -> None:
    deadline = time.monotonic() + GUARD_S
    while not _gone(pid):
        assert time.monotonic() < deadline, f"process {pid} is still running"
        time.sleep(0.01)


@pytest.fixture
def started(tmp_path: Path) -> Iterator[ProcessRuntime]:
    written = write_model_version(tmp_path, "tiny", 1)
    runtime = ProcessRuntime.start(written.path, providers=[CPU], intra_op_threads=1, warmup=[1, 4])
    yield runtime
    runtime.close()


def on_loop(runtime: ProcessRuntime, test: Callable[[Compute], Awaitable[None]]) -> None:
    """Run ``test`` on an event loop the runtime is attached to; it gets ``compute(*parts)``."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        runtime.attach(loop)

        async def compute(*parts: dict[str, np.ndarray]) -> Answer:
            answer: asyncio.Future[Answer] = loop.create_future()
            runtime.submit(list(parts), lambda o, s, e: answer.set_result((o, s, e)))
            return await asyncio.wait_for(answer, GUARD_S)

        await asyncio.wait_for(test(compute), 2 * GUARD_S)

    asyncio.run(main())


def test_a_batch_computes_in_a_child_process_as_it_does_in_this_one(tmp_path: Path) -> None:
    written = write_model_version(tmp_path, "tiny", 3, labels=[f"digit {i}" for i in range(10)])
    here = load_model(written.path, providers=[CPU], intra_op_threads=1)
    runtime = ProcessRuntime.start(written.path, providers=[CPU], intra_op_threads=1, warmup=[1])
    try:
        assert runtime.pid is not None and runtime.pid != os.getpid() and not _gone(runtime.pid)
        assert (runtime.name, runtime.version, runtime.path) == ("tiny", 3, written.path)
        assert runtime.provider == "CPUExecutionProvider" and runtime.intra_op_threads == 1
        assert runtime.signature == here.signature and runtime.labels == here.labels
        assert runtime.metadata.sha256 == here.metadata.sha256
        images = _images(5)

        async def test(compute: Compute) -> None:
            outputs, seconds, error = await compute({"image": images})
            assert error is None and outputs is not None and seconds > 0
            assert list(outputs) == ["probabilities"]
            # The same session options on the same onnxruntime: the same bits.
            assert np.array_equal(outputs["probabilities"], here.run({"image": images})["probabilities"])

        on_loop(runtime, test)
    finally:
        runtime.close()
        here.close()


def test_parts_are_joined_in_order_and_a_batch_larger_than_the_memory_grows_it(
    started: ProcessRuntime, tmp_path: Path
) -> None:
    here = load_model(started.path, providers=[CPU], intra_op_threads=1)
    images = _images(1 + 3 + 600)  # 600 images are 1.9 MB, the memory starts at 1 MiB

    async def test(compute: Compute) -> None:
        for parts in ([images[:1], images[1:4], images[4:]], [images[:4]], [images[4:], images[:4]]):
            outputs, _, error = await compute(*({"image": part} for part in parts))
            assert error is None and outputs is not None
            expected = here.run({"image": np.concatenate(parts)})["probabilities"]
            assert np.array_equal(outputs["probabilities"], expected)

    on_loop(started, test)
    here.close()


def test_outputs_that_do_not_fit_are_placed_by_the_child_after_growing_the_memory(
    started: ProcessRuntime,
) -> None:
    here = load_model(started.path, providers=[CPU], intra_op_threads=1)
    images = _images(334)  # 1047424 bytes of inputs fit in the first MiB; their outputs do not

    async def test(compute: Compute) -> None:
        assert started._child is not None and started._child.memory.size == 1 << 20
        outputs, _, error = await compute({"image": images})
        assert error is None and outputs is not None
        assert np.array_equal(outputs["probabilities"], here.run({"image": images})["probabilities"])
        assert started._child.memory.size == 2 << 20  # grown by the child, followed by this process

    on_loop(started, test)
    here.close()


def test_inputs_that_do_not_join_fail_their_batch_and_the_child_goes_on(started: ProcessRuntime) -> None:
    pid = started.pid

    async def test(compute: Compute) -> None:
        outputs, _, error = await compute({"image": _images(2)}, {"image": _images(1)[:, :10]})
        assert outputs is None and error is not None and error.startswith("ValueError: all the input array")
        outputs, _, error = await compute({"image": _images(2)})
        assert error is None and outputs is not None and outputs["probabilities"].shape == (2, 10)

    on_loop(started, test)
    assert started.pid == pid


def test_a_failed_run_in_the_child_fails_its_batch_with_onnxruntimes_reason(started: ProcessRuntime) -> None:
    async def test(compute: Compute) -> None:
        outputs, _, error = await compute({"image": np.zeros((2, 28, 28, 3), np.float32)})  # 3 channels
        assert outputs is None and error is not None and "image" in error
        assert error.split(":")[0] in {"InvalidArgument", "Fail", "RuntimeException"}, error
        outputs, _, error = await compute({"image": _images(1)})
        assert error is None and outputs is not None

    on_loop(started, test)


@pytest.mark.parametrize("variant", ["corrupt", "output_dims", "input_rank"])
def test_a_version_the_child_refuses_is_refused_as_load_model_refuses_it(
    tmp_path: Path, variant: str
) -> None:
    written = write_model_version(tmp_path, "tiny", 1, variant=variant)  # type: ignore[arg-type]
    with pytest.raises(ModelLoadError) as here:
        load_model(written.path, providers=[CPU])
    with pytest.raises(ModelLoadError) as there:
        ProcessRuntime.start(written.path, providers=[CPU])
    assert str(there.value) == str(here.value)


def test_the_child_loads_the_metadata_the_parent_read(tmp_path: Path) -> None:
    written = write_model_version(tmp_path, "tiny", 1)
    with pytest.raises(ModelLoadError, match=r"metadata\.json changed while the version was loading"):
        zygote.start_child(written.path, "0" * 64, [CPU], 1, 0, [])


def test_a_killed_child_fails_its_batch_and_a_new_one_computes_the_next(started: ProcessRuntime) -> None:
    first = started.pid
    assert first is not None

    async def test(compute: Compute) -> None:
        os.kill(first, signal.SIGKILL)
        _until_gone(first)  # the loop has not run since: the batch goes to the dead child
        outputs, _, error = await compute({"image": _images(3)})
        assert outputs is None and error == f"the compute process {first} exited"
        outputs, _, error = await compute({"image": _images(3)})
        assert error is None and outputs is not None and outputs["probabilities"].shape == (3, 10)

    on_loop(started, test)
    assert started.pid not in (None, first)


def test_requests_through_the_batcher_get_inference_failed_when_the_child_dies(
    started: ProcessRuntime,
) -> None:
    async def main() -> None:
        batcher = Batcher(started, max_batch_size=8, max_queue_delay_us=0, max_queue_rows=64, name="tiny/1")
        batcher.start()
        try:
            answer = await batcher.submit({"image": _images(3)})
            assert answer["probabilities"].shape == (3, 10)
            pid = started.pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)  # the batch reaches the child, which dies before it answers
            failing = asyncio.create_task(batcher.submit({"image": _images(2)}))
            deadline = time.monotonic() + GUARD_S
            while started._inflight is None:
                assert time.monotonic() < deadline, "the batch never went to the child"
                await asyncio.sleep(0.001)
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(InferenceFailed):
                await asyncio.wait_for(failing, GUARD_S)
            answers = await asyncio.wait_for(
                asyncio.gather(*(batcher.submit({"image": _images(2, seed)}) for seed in range(5))), GUARD_S
            )
            assert [a["probabilities"].shape for a in answers] == [(2, 10)] * 5
        finally:
            await batcher.stop()

    asyncio.run(main())


def test_when_no_child_can_start_batches_fail_until_the_backoff_has_passed(started: ProcessRuntime) -> None:
    model = started.path / "model.onnx"
    good = model.read_bytes()
    first = started.pid
    assert first is not None
    tries: list[int] = []
    restart = started._restart

    def counted() -> Child:
        tries.append(1)
        return restart()

    started._restart = counted

    async def test(compute: Compute) -> None:
        model.write_bytes(good[:100])  # the next child refuses the version: its sha256 no longer matches
        os.kill(first, signal.SIGKILL)
        _until_gone(first)
        outputs, _, error = await compute({"image": _images(1)})  # the dead child's batch
        assert outputs is None and error == f"the compute process {first} exited"
        await asyncio.sleep(0)
        outputs, _, error = await compute({"image": _images(1)})  # waits for the restart, which fails
        assert outputs is None and error == "the compute process could not be restarted"
        assert started.pid is None and len(tries) == 1
        outputs, _, error = await compute({"image": _images(1)})  # within the backoff: no new try
        assert error == "the compute process could not be restarted" and len(tries) == 1
        model.write_bytes(good)
        started._broken_until = 0.0  # the backoff has passed
        outputs, _, error = await compute({"image": _images(1)})
        assert error is None and outputs is not None and len(tries) == 2
        assert started.pid not in (None, first)

    on_loop(started, test)


def test_closing_stops_the_child_and_fails_later_batches(started: ProcessRuntime) -> None:
    pid = started.pid
    assert pid is not None

    async def test(compute: Compute) -> None:
        started.close()
        _until_gone(pid)
        outputs, _, error = await compute({"image": _images(1)})
        assert outputs is None and error == "the model version is closed"
        started.close()  # idempotent

    on_loop(started, test)


def test_a_dead_zygote_is_started_again(tmp_path: Path) -> None:
    written = write_model_version(tmp_path, "tiny", 1)
    ProcessRuntime.start(written.path, providers=[CPU]).close()
    first = zygote._zygote
    assert first is not None
    first.process.kill()
    first.process.wait(GUARD_S)
    runtime = ProcessRuntime.start(written.path, providers=[CPU])
    try:
        assert zygote._zygote is not None and zygote._zygote is not first and runtime.pid is not None
    finally:
        runtime.close()


def test_the_children_exit_when_the_service_process_dies(tmp_path: Path) -> None:
    written = write_model_version(tmp_path, "tiny", 1)
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from service.core import offload, zygote\n"
        "runtime = offload.ProcessRuntime.start(Path(sys.argv[1]), providers=['CPUExecutionProvider'])\n"
        "print(runtime.pid, zygote._zygote.process.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(written.path)], stdout=subprocess.PIPE, text=True, cwd=Path.cwd()
    )
    try:
        assert parent.stdout is not None
        child, forks = map(int, parent.stdout.readline().split())
        assert not _gone(child) and not _gone(forks)
    finally:
        parent.kill()
        parent.wait(GUARD_S)
    _until_gone(child)
    _until_gone(forks)


class FakeOffload:
    """An offload that answers each batch on the next turn of the loop, recording the batches' rows."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def submit(self, parts: Any, done: Any) -> None:
        rows = sum(len(part["x"]) for part in parts)
        self.batches.append(rows)
        self.loop.call_soon(done, {"y": np.concatenate([part["x"] for part in parts]) * 2}, 0.001, None)


def test_a_lone_request_computes_in_this_process_and_company_goes_to_the_offload() -> None:
    offloaded, here = FakeOffload(), []

    def lone(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        here.append(len(inputs["x"]))
        return {"y": inputs["x"] * 2}

    async def main() -> None:
        batcher = Batcher(offloaded, max_batch_size=8, max_queue_delay_us=0, max_queue_rows=64, lone=lone)
        batcher.start()
        try:
            for rows in (1, 3):  # one client, one request at a time
                answer = await batcher.submit({"x": np.ones((rows, 2), np.float32)})
                assert answer["y"].shape == (rows, 2) and (answer["y"] == 2).all()
            assert here == [1, 3] and offloaded.batches == []
            answers = await asyncio.gather(
                *(batcher.submit({"x": np.full((1, 2), i, np.float32)}) for i in range(6))
            )
            assert [a["y"][0, 0] for a in answers] == [2 * i for i in range(6)]
            assert sum(offloaded.batches) + sum(here[2:]) == 6 and offloaded.batches  # company: the offload
            assert all(rows == 1 for rows in here[2:])  # only a request alone in flight stays here
        finally:
            await batcher.stop()

    asyncio.run(main())
