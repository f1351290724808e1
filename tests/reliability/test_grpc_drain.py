"""SIGTERM while gRPC clients stream requests and others sit in a batch queue, against the real process."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc

from tests.helpers.modelfactory import write_model_version
from tests.helpers.server import running_service
from tests.reliability.support import images, metric

DRAIN_SECONDS = 4.0
#: What grpc-core says when a call cannot reach a server whose port is closed (no answer was possible).
CONNECT_FAILURES = ("failed to connect", "Connection refused", "connections to all backends failing")


@dataclass
class Outcome:
    """One call: its answer, or the status and message it failed with."""

    result: Any
    status: str | None
    message: str
    after_sigterm: bool


class Recorder:
    """Calls ``send(client)`` over and over on one gRPC channel, recording every outcome."""

    def __init__(
        self, address: str, send: Callable[[triton_grpc.InferenceServerClient], Any], sigterm: threading.Event
    ):
        self.address, self.send, self.sigterm = address, send, sigterm
        self.stop = threading.Event()
        self.outcomes: list[Outcome] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with triton_grpc.InferenceServerClient(self.address) as client:
            while not self.stop.is_set():
                try:
                    result = self.send(client)
                except triton_grpc.InferenceServerException as exc:
                    after = self.sigterm.is_set()
                    self.outcomes.append(Outcome(None, exc.status(), exc.message() or "", after))
                    if after and any(f in (exc.message() or "") for f in CONNECT_FAILURES):
                        return  # the port is closed: nothing more can be sent
                    continue
                self.outcomes.append(Outcome(result, None, "", self.sigterm.is_set()))
                time.sleep(0.002)

    def answered(self) -> int:
        return sum(o.status is None for o in self.outcomes)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def infer_input(batch: np.ndarray, datatype: str = "FP32") -> triton_grpc.InferInput:
    array = batch.astype(np.uint8 if datatype == "UINT8" else np.float32)
    return triton_grpc.InferInput("image", list(batch.shape), datatype).set_data_from_numpy(array)


@pytest.mark.slow
def test_sigterm_under_grpc_load_answers_every_call(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    tiny = write_model_version(repo, "tiny", 1, seed=1)
    held = write_model_version(repo, "held", 1, seed=2)
    env = {
        "SERVE_MODEL_REPOSITORY": str(repo),
        # A batch leaves when it holds 64 rows or after 10 s: the 64-row stream calls go at once, the
        # 1-row calls to "held" stay queued until the drain flushes them.
        "SERVE_MAX_BATCH_SIZE": "64",
        "SERVE_MAX_QUEUE_DELAY_US": "10000000",
        "SERVE_BATCH_WAIT": "fixed",
        "SERVE_DRAIN_SECONDS": str(DRAIN_SECONDS),
        "SERVE_INTRA_OP_THREADS": "1",
    }
    stream_batch = images(64, seed=3).round()
    expected_stream = tiny.reference(stream_batch)
    held_batches = [images(1, seed=10 + i) for i in range(6)]
    sigterm = threading.Event()

    with running_service(tmp_path, env=env) as service:
        address = service.grpc_address
        streams = [
            Recorder(address, lambda c: c.infer("tiny", [infer_input(stream_batch, "UINT8")]), sigterm)
            for _ in range(3)
        ]
        ready = Recorder(address, lambda c: c.is_server_ready(), sigterm)
        for recorder in [*streams, ready]:
            recorder.thread.start()
        wait_for(lambda: all(s.answered() >= 5 for s in streams), 30, "the streams to flow")

        held_results: list[Any] = [None] * len(held_batches)
        held_client = triton_grpc.InferenceServerClient(address)
        for i, batch in enumerate(held_batches):

            def done(result: Any, error: Any, i: int = i) -> None:
                held_results[i] = error or result

            held_client.async_infer("held", [infer_input(batch)], done)

        def held_queued() -> bool:
            text = httpx.get(f"{service.url}/metrics").text
            return metric(text, "inference_queue_rows", model="held") == len(held_batches)

        wait_for(held_queued, 30, "the held calls to be queued")

        sigterm.set()
        signalled = time.monotonic()
        service.proc.send_signal(signal.SIGTERM)
        returncode = service.proc.wait(timeout=DRAIN_SECONDS + 15)
        exited_after = time.monotonic() - signalled
        for recorder in [*streams, ready]:
            recorder.thread.join(timeout=15)
            recorder.stop.set()
        wait_for(lambda: all(r is not None for r in held_results), 10, "the held calls' answers")
        held_client.close()
        log = service.log()

    assert returncode == 0, log[-3000:]
    assert exited_after < DRAIN_SECONDS + 5, (exited_after, log[-3000:])

    # The calls in flight at SIGTERM were computed and answered, each with its own numbers.
    for batch, result in zip(held_batches, held_results, strict=True):
        assert isinstance(result, triton_grpc.InferResult), result
        np.testing.assert_allclose(result.as_numpy("probabilities"), held.reference(batch), atol=1e-5)

    # Every stream call got an answer (the right numbers, or UNAVAILABLE from the draining server) until
    # the port closed; then the connection is refused. One exception is grpc-core's own: a call reaching
    # the server in the instant its port closes is CANCELLED unprocessed (a bare "CANCELLED", which a
    # standalone grpc.aio server shows too); it can only be the call right before the refusal.
    for stream in streams:
        last = stream.outcomes[-1]
        assert any(f in last.message for f in CONNECT_FAILURES), last
        for i, outcome in enumerate(stream.outcomes[:-1]):
            if outcome.status is None:
                np.testing.assert_allclose(
                    outcome.result.as_numpy("probabilities"), expected_stream, atol=1e-5
                )
            elif outcome.status == "StatusCode.CANCELLED":
                assert outcome.after_sigterm and i == len(stream.outcomes) - 2, outcome
                assert outcome.message == "CANCELLED", outcome
            else:
                assert outcome.after_sigterm and outcome.status == "StatusCode.UNAVAILABLE", outcome
                assert "draining" in outcome.message or "shutting down" in outcome.message, outcome
    refused = sum("draining" in o.message for s in streams for o in s.outcomes)
    assert refused >= 1, "no call reached the server while it drained"

    # ServerReady turned false while the server still answered, before the port closed.
    after = [o.result for o in ready.outcomes if o.after_sigterm and o.status is None]
    assert False in after, ready.outcomes[-5:]
    assert all(o.result is True for o in ready.outcomes if not o.after_sigterm)
    assert "draining" in log
