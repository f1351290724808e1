"""Faults: SIGTERM under load, overload and broken versions appearing, each against the real process;
a model failing at run time, in process."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import orjson
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.helpers.modelfactory import write_model_version
from tests.helpers.server import running_service
from tests.reliability.support import (
    assert_error_body,
    binary_body,
    binary_probabilities,
    images,
    json_body,
    json_probabilities,
    metric,
    write_slow_model,
)

DRAIN_SECONDS = 4.0


@dataclass
class Outcome:
    """What one request got: an HTTP answer, or the name of the transport error."""

    status: int | None
    headers: httpx.Headers | None
    content: bytes
    error: str | None
    after_sigterm: bool


class Recorder:
    """Sends the same request over and over on one keep-alive connection, recording every outcome."""

    def __init__(self, send: Callable[[httpx.Client], httpx.Response], sigterm: threading.Event) -> None:
        self.send = send
        self.sigterm = sigterm
        self.stop = threading.Event()
        self.outcomes: list[Outcome] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=httpx.Timeout(30.0, connect=10.0)) as client:
            while not self.stop.is_set():
                try:
                    response = self.send(client)
                except httpx.HTTPError as exc:
                    after = self.sigterm.is_set()  # read once answered: the signal may come mid-request
                    self.outcomes.append(Outcome(None, None, b"", type(exc).__name__, after))
                    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout) and after:
                        return  # the listener is closed: nothing more can be sent
                    continue
                after = self.sigterm.is_set()
                self.outcomes.append(
                    Outcome(response.status_code, response.headers, response.content, None, after)
                )
                time.sleep(0.002)

    def count(self, status: int) -> int:
        return sum(o.status == status for o in self.outcomes)


def summary(outcomes: list[Outcome]) -> dict[str, int]:
    """Outcome counts by status or error name, and whether after SIGTERM (for failure messages)."""
    counts: dict[str, int] = {}
    for o in outcomes:
        key = f"{o.status or o.error}{' after SIGTERM' if o.after_sigterm else ''}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.mark.slow
def test_sigterm_under_load_answers_every_request(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    tiny = write_model_version(repo, "tiny", 1, seed=1)
    held = write_model_version(repo, "held", 1, seed=2)
    env = {
        "SERVE_MODEL_REPOSITORY": str(repo),
        # With the fixed wait a batch leaves when it holds 64 rows or after 10 s: the 64-row stream
        # requests go at once, the 1-row requests to "held" stay queued until the drain flushes them.
        "SERVE_MAX_BATCH_SIZE": "64",
        "SERVE_MAX_QUEUE_DELAY_US": "10000000",
        "SERVE_BATCH_WAIT": "fixed",
        "SERVE_DRAIN_SECONDS": str(DRAIN_SECONDS),
        "SERVE_INTRA_OP_THREADS": "1",
    }
    stream_batch = images(64, seed=3).round()
    stream_body, stream_headers = binary_body(stream_batch, "UINT8")
    expected_stream = tiny.reference(stream_batch)
    held_batches = [images(1, seed=10 + i) for i in range(6)]
    sigterm = threading.Event()

    with running_service(tmp_path, env=env) as service:
        infer_url = f"{service.url}/v2/models/tiny/infer"
        streams = [
            Recorder(lambda c: c.post(infer_url, content=stream_body, headers=stream_headers), sigterm)
            for _ in range(3)
        ]
        ready = Recorder(lambda c: c.get(f"{service.url}/v2/health/ready"), sigterm)
        for recorder in [*streams, ready]:
            recorder.thread.start()
        wait_for(lambda: all(s.count(200) >= 5 for s in streams), 30, "the stream to flow")

        pool = ThreadPoolExecutor(len(held_batches))
        held_futures = [
            pool.submit(
                httpx.post, f"{service.url}/v2/models/held/infer", content=json_body(batch), timeout=30
            )
            for batch in held_batches
        ]

        def held_queued() -> bool:
            text = httpx.get(f"{service.url}/metrics").text
            return metric(text, "inference_queue_rows", model="held") == len(held_batches)

        wait_for(held_queued, 30, "the held requests to be queued")

        sigterm.set()
        signalled = time.monotonic()
        service.proc.send_signal(signal.SIGTERM)
        returncode = service.proc.wait(timeout=DRAIN_SECONDS + 15)
        exited_after = time.monotonic() - signalled
        for recorder in [*streams, ready]:
            recorder.thread.join(timeout=15)
            recorder.stop.set()
        held_responses = [f.result(timeout=5) for f in held_futures]
        pool.shutdown()
        log = service.log()

    for recorder in [*streams, ready]:
        print(summary(recorder.outcomes))
    assert returncode == 0, log[-3000:]
    # Bounded by design: the drain may take SERVE_DRAIN_SECONDS; the margin covers interpreter exit.
    assert exited_after < DRAIN_SECONDS + 5, (exited_after, log[-3000:])

    # Queued work finished, with each request's own answer.
    for batch, response in zip(held_batches, held_responses, strict=True):
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(json_probabilities(response.json()), held.reference(batch), atol=1e-5)

    # Every stream request got an HTTP answer: 200 with the right numbers, or 503 + Retry-After once
    # draining. The only transport error allowed is a refused connection once the listener has closed.
    for stream in streams:
        assert stream.outcomes and stream.outcomes[-1].error in ("ConnectError", "ConnectTimeout")
        for outcome in stream.outcomes:
            if outcome.error is not None:
                assert outcome.after_sigterm and outcome.error in ("ConnectError", "ConnectTimeout"), outcome
                assert outcome is stream.outcomes[-1], [o.error for o in stream.outcomes if o.error]
            elif outcome.status == 200:
                assert outcome.headers is not None
                header_length = int(outcome.headers["Inference-Header-Content-Length"])
                probs = binary_probabilities(outcome.content, header_length)
                np.testing.assert_allclose(probs, expected_stream, atol=1e-5)
            else:
                assert outcome.after_sigterm, outcome
                message = assert_error_body(outcome.status or 0, outcome.content, (503,))
                assert outcome.headers is not None and outcome.headers["Retry-After"] == "1", outcome
                assert "draining" in message or "shutting down" in message, message
    assert sum(s.count(503) for s in streams) >= 1, "no request reached the server while it drained"

    # Readiness turned 503 while the server still answered, before the listener closed.
    ready_statuses = [o.status for o in ready.outcomes if o.after_sigterm]
    assert 503 in ready_statuses, ready_statuses
    assert all(o.status == 200 for o in ready.outcomes if not o.after_sigterm)
    assert "draining" in log


# ---- overload ------------------------------------------------------------------------------------------

QUEUE_ROWS = 64
BURST = 600
ROWS = 16


async def _burst(url: str, bodies: list[tuple[bytes, dict[str, str]]]) -> list[Outcome]:
    """Send every body at once, each on its own connection; one outcome per body, in order."""
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(60.0)) as client:

        async def one(body: bytes, headers: dict[str, str]) -> Outcome:
            try:
                r = await client.post(f"{url}/v2/models/slow/infer", content=body, headers=headers)
            except httpx.HTTPError as exc:
                return Outcome(None, None, b"", type(exc).__name__, False)
            return Outcome(r.status_code, r.headers, r.content, None, False)

        return list(await asyncio.gather(*(one(body, headers) for body, headers in bodies)))


class QueueSampler:
    """Reads the ``inference_queue_rows`` gauge over and over, from its own thread and connection."""

    def __init__(self, url: str, model: str) -> None:
        self.samples: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(url, model), daemon=True)

    def _run(self, url: str, model: str) -> None:
        with httpx.Client(timeout=60) as client:
            while not self.stop.is_set():
                text = client.get(f"{url}/metrics").text
                self.samples.append(metric(text, "inference_queue_rows", model=model))
                time.sleep(0.005)


@pytest.mark.slow
def test_overload_sheds_the_excess_and_serves_the_admitted(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    model_dir = write_slow_model(repo, "slow", 1, layers=400)
    env = {
        "SERVE_MODEL_REPOSITORY": str(repo),
        "SERVE_MAX_BATCH_SIZE": str(ROWS),
        "SERVE_MAX_REQUEST_ROWS": str(ROWS),
        "SERVE_MAX_QUEUE_ROWS": str(QUEUE_ROWS),
        "SERVE_MAX_QUEUE_DELAY_US": "1000",
        "SERVE_INTRA_OP_THREADS": "1",
    }
    distinct = [images(ROWS, seed=50 + i).round() for i in range(4)]
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    expected = [session.run(None, {"image": batch})[0] for batch in distinct]
    # Every request may wait up to 30 s: an admitted request must finish within it, not time out.
    bodies = [binary_body(distinct[i % 4], "UINT8", parameters={"timeout": 30_000_000}) for i in range(BURST)]
    with running_service(tmp_path, env=env) as service:
        rss_before = metric(httpx.get(f"{service.url}/metrics").text, "process_resident_memory_bytes")
        sampler = QueueSampler(service.url, "slow")
        sampler.thread.start()
        outcomes = asyncio.run(_burst(service.url, bodies))
        sampler.stop.set()
        sampler.thread.join(timeout=30)
        after = httpx.get(f"{service.url}/metrics").text
        fine = httpx.post(f"{service.url}/v2/models/slow/infer", content=json_body(distinct[0][:1]))

    statuses = summary(outcomes)
    admitted = [(i, o) for i, o in enumerate(outcomes) if o.status == 200]
    shed = [o for o in outcomes if o.status == 503]
    assert len(admitted) + len(shed) == BURST, statuses  # nothing else: no 504, no 5xx, no lost request
    assert len(shed) >= BURST // 2, statuses  # far above capacity: most of the burst is shed
    assert admitted, statuses
    for outcome in shed:
        assert outcome.headers is not None and outcome.headers["Retry-After"] == "1"
        assert "queue is full" in assert_error_body(503, outcome.content, (503,))
    for i, outcome in admitted:
        assert outcome.headers is not None
        probs = binary_probabilities(outcome.content, int(outcome.headers["Inference-Header-Content-Length"]))
        np.testing.assert_allclose(probs, expected[i % 4], atol=1e-5)
    # The queue bound held the whole time, and only admitted rows were ever computed.
    assert sampler.samples and max(sampler.samples) <= QUEUE_ROWS, sampler.samples
    assert metric(after, "inference_requests_total", model="slow", status="rejected") == len(shed)
    assert metric(after, "inference_rows_total", model="slow") == ROWS * len(admitted)
    assert metric(after, "inference_queue_rows", model="slow") == 0
    # Memory stays bounded: the shed requests' tensors were never kept (600 x 50 KB would be ~30 MB).
    rss_after = metric(after, "process_resident_memory_bytes")
    assert rss_after - rss_before < 24 * 2**20, (rss_before, rss_after)
    assert fine.status_code == 200, fine.text


# ---- a model failing at run time -------------------------------------------------------------------------


def test_failing_model_fails_its_batches_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    trap = write_model_version(tmp_path, "fragile", 1, variant="value_trap", seed=4)
    good = write_model_version(tmp_path, "good", 1, seed=5)
    dim = [images(1 + i % 3, seed=100 + i, high=50) for i in range(16)]  # served: every pixel < 51
    bright = [images(1, seed=200 + i) for i in range(4)]  # make the model raise inside onnxruntime
    plain = [images(2, seed=300 + i) for i in range(6)]
    # Requests wait up to 50 ms for company, so concurrent ones share batches.
    settings = Settings(
        model_repository=tmp_path, max_batch_size=32, max_queue_delay_us=50_000, batch_wait="fixed"
    )
    with TestClient(create_app(settings)) as client, ThreadPoolExecutor(26) as pool:

        def post(model: str, batch: np.ndarray) -> Any:
            return client.post(f"/v2/models/{model}/infer", content=json_body(batch))

        # Dim requests alone: batched together, each gets its own rows back.
        for batch, response in zip(dim, pool.map(lambda b: post("fragile", b), dim), strict=True):
            assert response.status_code == 200, response.text
            np.testing.assert_allclose(json_probabilities(response.json()), trap.reference(batch), atol=1e-5)
        batches_alone = metric(client.get("/metrics").text, "inference_batches_total", model="fragile")
        assert batches_alone < len(dim)  # they did share batches

        # Mixed with bright ones: a failed batch fails every request in it, with a generic message;
        # a request that is answered 200 always gets its own rows. The other model is unaffected.
        jobs = (
            [("fragile", "dim", b) for b in dim]
            + [("fragile", "bright", b) for b in bright]
            + [("good", "plain", b) for b in plain]
        )
        responses = list(pool.map(lambda job: post(job[0], job[2]), jobs))
        caplog_text = caplog.text
        for (model, kind, batch), response in zip(jobs, responses, strict=True):
            if response.status_code == 200:
                assert kind != "bright", "a request that makes the model fail was answered 200"
                reference = (good if model == "good" else trap).reference(batch)
                np.testing.assert_allclose(json_probabilities(response.json()), reference, atol=1e-5)
            else:
                assert model == "fragile" and response.status_code == 500, response.text
                assert response.json() == {"error": "inference failed"}
        assert "batch of" in caplog_text and "failed" in caplog_text  # the details went to the log

        # Afterwards the model serves what it can again.
        for batch in dim[:3]:
            response = post("fragile", batch)
            assert response.status_code == 200, response.text
            np.testing.assert_allclose(json_probabilities(response.json()), trap.reference(batch), atol=1e-5)
        text = client.get("/metrics").text
        assert metric(text, "inference_requests_total", model="fragile", status="error") >= len(bright)
        assert metric(text, "inference_requests_total", model="good", status="error") == 0


# ---- broken versions appearing while serving ----------------------------------------------------------


@pytest.mark.slow
def test_broken_versions_appearing_while_serving_are_refused_and_reported(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    v1 = write_model_version(repo, "tiny", 1, seed=1)
    staging = tmp_path / "staging"
    v3 = write_model_version(staging, "tiny", 3, seed=3)  # built elsewhere, copied in by halves below
    v3_bytes = (v3.path / "model.onnx").read_bytes()
    env = {"SERVE_MODEL_REPOSITORY": str(repo), "SERVE_POLL_INTERVAL_S": "0.2"}
    batch = images(2, seed=11)
    sigterm = threading.Event()
    with running_service(tmp_path, env=env) as service:
        url = f"{service.url}/v2/models/tiny/infer"
        stream = Recorder(lambda c: c.post(url, content=json_body(batch)), sigterm)
        stream.thread.start()

        def load_errors() -> float:
            return metric(
                httpx.get(f"{service.url}/metrics").text, "model_load_total", model="tiny", result="error"
            )

        # A corrupt version, published atomically.
        write_model_version(repo, "tiny", 2, variant="corrupt")
        wait_for(lambda: load_errors() == 1, 30, "the corrupt version to be refused")
        assert f"refused model version {repo / 'tiny' / '2'}" in service.log()

        # A version written in place, not atomically: metadata first, then half of the model.
        half = repo / "tiny" / "3"
        half.mkdir()
        (half / "metadata.json").write_bytes((v3.path / "metadata.json").read_bytes())
        wait_for(lambda: stream.count(200) >= 3, 30, "requests while version 3 has no model file")
        with (half / "model.onnx").open("wb") as model_file:
            model_file.write(v3_bytes[: len(v3_bytes) // 2])
        wait_for(lambda: load_errors() == 2, 30, "the half-written version to be refused")
        assert f"refused model version {half}" in service.log()
        assert httpx.get(f"{service.url}/v2/models/tiny").json()["versions"] == ["1"]

        # Finishing the file changes it: the watcher tries again and serves it.
        with (half / "model.onnx").open("ab") as model_file:
            model_file.write(v3_bytes[len(v3_bytes) // 2 :])
        wait_for(
            lambda: httpx.get(f"{service.url}/v2/models/tiny").json()["versions"] == ["3"], 30, "version 3"
        )
        wait_for(
            lambda: any(o.content and b'"model_version":"3"' in o.content for o in stream.outcomes), 30, "v3"
        )
        stream.stop.set()
        stream.thread.join(timeout=30)
        index = httpx.post(f"{service.url}/v2/repository/index").json()

    assert {(r["version"], r["state"]) for r in index} == {
        ("1", "UNAVAILABLE"),
        ("2", "UNAVAILABLE"),
        ("3", "READY"),
    }
    assert stream.outcomes and all(o.status == 200 for o in stream.outcomes), summary(stream.outcomes)
    for outcome in stream.outcomes:  # every answer came from a good version, with its own numbers
        body = orjson.loads(outcome.content)
        model = {"1": v1, "3": v3}[body["model_version"]]
        np.testing.assert_allclose(json_probabilities(body), model.reference(batch), atol=1e-5)
