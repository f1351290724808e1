"""service.server: the drain on the installed uvicorn, and the service as a real process driven by real
clients (tritonclient, httpx) over loopback."""

from __future__ import annotations

import inspect
import signal
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.server import DrainingServer
from service.settings import Settings
from tests.helpers.data import load_digits
from tests.helpers.modelfactory import write_model_version
from tests.helpers.server import RunningService, free_port, running_service

# ---- what the drain relies on in uvicorn -------------------------------------------------------------


def test_the_uvicorn_hooks_the_drain_overrides_are_there() -> None:
    # DrainingServer overrides these and calls them through super(); a rename or a new signature in a
    # uvicorn release must fail here (see the upper bound of the uvicorn pin in pyproject.toml).
    hooks = {
        "handle_exit": (["self", "sig", "frame"], False),
        "on_tick": (["self", "counter"], True),
        "shutdown": (["self", "sockets"], True),
    }
    for name, (parameters, coroutine) in hooks.items():
        method = getattr(uvicorn.Server, name)
        assert list(inspect.signature(method).parameters) == parameters, name
        assert inspect.iscoroutinefunction(method) is coroutine, name
    assert "on_tick" in inspect.getsource(uvicorn.Server.main_loop)
    assert "timeout_graceful_shutdown" in inspect.getsource(uvicorn.Server.shutdown)


def _post(url: str, images: np.ndarray, results: list[int]) -> None:
    body = {
        "inputs": [
            {
                "name": "image",
                "datatype": "FP32",
                "shape": list(images.shape),
                "data": images.ravel().tolist(),
            }
        ]
    }
    results.append(httpx.post(url, content=orjson.dumps(body), timeout=30).status_code)


def test_the_drain_on_the_installed_uvicorn(tmp_path: Path) -> None:
    write_model_version(tmp_path, "tiny", 1)
    # Batches wait for 8 rows or 10 s, longer than the drain: only its flush computes them in time.
    settings = Settings(
        model_repository=tmp_path,
        max_batch_size=8,
        max_queue_delay_us=10_000_000,
        drain_seconds=5,
        batch_wait="fixed",
    )
    app = create_app(settings)
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=None
    )
    server = DrainingServer(config)
    server.drain_seconds = settings.drain_seconds
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(3000):
        if server.started:
            break
        threading.Event().wait(0.01)
    assert server.started and httpx.get(f"{url}/v2/health/ready").status_code == 200
    assert [len(s.sockets) for s in server.servers] == [1]
    core = app.state.core
    images = np.random.default_rng(0).uniform(0, 50, (2, 28, 28, 1)).astype(np.float32)
    results: list[int] = []
    clients = [
        threading.Thread(target=_post, args=(f"{url}/v2/models/tiny/infer", images, results))
        for _ in range(2)
    ]
    for client in clients:
        client.start()
    for _ in range(3000):
        if core.pending() == 2:
            break
        threading.Event().wait(0.01)
    assert core.pending() == 2  # both queued, neither computed
    server.handle_exit(signal.SIGTERM, None)
    assert core.draining
    for client in clients:
        client.join(timeout=30)
    thread.join(timeout=30)
    assert not thread.is_alive() and server.should_exit
    assert results == [200, 200]  # flushed by on_tick, answered before the listener closed
    assert isinstance(config.timeout_graceful_shutdown, int)  # set from the drain's time left by shutdown()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


# ---- the real process ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    env = {
        "SERVE_MODELS": "mnist-cnn,mnist-mlp",
        "SERVE_MAX_QUEUE_DELAY_US": "20000",
        "SERVE_BATCH_WAIT": "fixed",
    }
    with running_service(tmp_path_factory.mktemp("serve"), env=env) as running:
        yield running


@pytest.mark.slow
def test_tritonclient_readiness_and_metadata(service: RunningService) -> None:
    client = triton.InferenceServerClient(service.address)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("mnist-cnn")
    assert client.is_model_ready("mnist-cnn", "1")
    assert not client.is_model_ready("no-such-model")
    server = client.get_server_metadata()
    assert server["name"] == "digits-serving"
    meta = client.get_model_metadata("mnist-cnn")
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 28, 28, 1]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert meta["parameters"]["provider"] == "CPUExecutionProvider"
    stats = client.get_inference_statistics("mnist-cnn")
    assert stats["model_stats"][0]["name"] == "mnist-cnn"
    index = client.get_model_repository_index()
    assert {"name": "mnist-cnn", "version": "1", "state": "READY", "reason": ""} in index


@pytest.mark.slow
@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_infer(service: RunningService, binary: bool) -> None:
    images, labels = load_digits("mnist")
    client = triton.InferenceServerClient(service.address)
    inp = triton.InferInput("image", [8, 28, 28, 1], "FP32")
    inp.set_data_from_numpy(images[:8], binary_data=binary)
    out = triton.InferRequestedOutput("probabilities", binary_data=binary)
    result = client.infer("mnist-cnn", [inp], outputs=[out], request_id="abc")
    probs = result.as_numpy("probabilities")
    assert probs.shape == (8, 10)
    assert result.get_response()["id"] == "abc"
    assert result.get_response()["model_version"] == "1"
    assert probs[0].argmax() == labels[0]
    assert (probs.argmax(axis=1) == labels[:8]).mean() >= 0.85


@pytest.mark.slow
def test_tritonclient_reports_server_errors(service: RunningService) -> None:
    client = triton.InferenceServerClient(service.address)
    inp = triton.InferInput("image", [1, 28, 28], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 28, 28), np.float32))
    with pytest.raises(
        triton.InferenceServerException, match=r"expected shape \[-1,28,28,1\], got \[1,28,28\]"
    ):
        client.infer("mnist-cnn", [inp])


def batch_size_histogram(url: str, model: str) -> tuple[float, float]:
    text = httpx.get(f"{url}/metrics").text
    count = total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("model") != model:
                continue
            if s.name == "inference_batch_size_count":
                count = s.value
            elif s.name == "inference_batch_size_sum":
                total = s.value
    return count, total


@pytest.mark.slow
def test_concurrent_burst_is_batched_and_answers_match(service: RunningService) -> None:
    images, _ = load_digits("mnist")
    rows = images[:96]
    client = triton.InferenceServerClient(service.address)

    def one(i: int) -> np.ndarray:
        inp = triton.InferInput("image", [1, 28, 28, 1], "FP32")
        inp.set_data_from_numpy(rows[i : i + 1], binary_data=True)
        return client.infer("mnist-cnn", [inp]).as_numpy("probabilities")[0]

    singles = [one(i) for i in range(len(rows))]  # sequential: each alone in its batch
    count_before, rows_before = batch_size_histogram(service.url, "mnist-cnn")
    burst_client = triton.InferenceServerClient(service.address, concurrency=32)
    pending = []
    for i in range(len(rows)):
        inp = triton.InferInput("image", [1, 28, 28, 1], "FP32")
        inp.set_data_from_numpy(rows[i : i + 1], binary_data=True)
        pending.append(burst_client.async_infer("mnist-cnn", [inp]))
    burst = [p.get_result().as_numpy("probabilities")[0] for p in pending]
    count_after, rows_after = batch_size_histogram(service.url, "mnist-cnn")
    assert rows_after - rows_before == len(rows)
    batches = count_after - count_before
    assert batches < len(rows), "no request was batched with another"
    for single, batched in zip(singles, burst, strict=True):
        np.testing.assert_allclose(batched, single, atol=1e-5)


@pytest.mark.slow
def test_httpx_concurrent_json(service: RunningService) -> None:
    images, labels = load_digits("mnist")

    def post(i: int) -> int:
        body = {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "FP32",
                    "shape": [1, 28, 28, 1],
                    "data": images[i].ravel().tolist(),
                }
            ]
        }
        r = httpx.post(f"{service.url}/v2/models/mnist-mlp/infer", json=body, timeout=30)
        assert r.status_code == 200, r.text
        return int(np.argmax(r.json()["outputs"][0]["data"]))

    with ThreadPoolExecutor(16) as pool:
        predicted = list(pool.map(post, range(64)))
    assert (np.array(predicted) == labels[:64]).mean() >= 0.9


@pytest.mark.slow
def test_process_logs_provider_and_settings(service: RunningService, tmp_path: Path) -> None:
    log = service.log()
    assert "execution providers: CPUExecutionProvider" in log
    assert "serving mnist-cnn version 1 on CPUExecutionProvider" in log
    assert "CUDA" not in log.replace("CUDAExecutionProvider", "")


@pytest.mark.slow
def test_workers_share_the_port_and_each_drains(tmp_path: Path) -> None:
    images, labels = load_digits("mnist")
    with running_service(tmp_path, env={"SERVE_MODELS": "mnist-mlp"}, args=["--workers", "2"]) as svc:
        pid = svc.proc.pid
        children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        assert len(children) == 2
        # running_service saw one worker ready; the kernel spreads new connections over both, so wait
        # until 20 fresh connections in a row find a ready worker (both have loaded, barring a 1-in-2^20).
        for _ in range(600):
            if all(httpx.get(f"{svc.url}/v2/health/ready").status_code == 200 for _ in range(20)):
                break
        # Both workers serve gRPC on the one gRPC port as well (SO_REUSEPORT there too).
        with triton_grpc.InferenceServerClient(svc.grpc_address) as over_grpc:
            assert all(over_grpc.is_server_ready() for _ in range(8))
        client = triton.InferenceServerClient(svc.address, concurrency=8)
        pending = []
        for i in range(64):
            inp = triton.InferInput("image", [1, 28, 28, 1], "FP32")
            inp.set_data_from_numpy(images[i : i + 1], binary_data=True)
            pending.append(client.async_infer("mnist-mlp", [inp]))
        predicted = [int(p.get_result().as_numpy("probabilities")[0].argmax()) for p in pending]
        assert (np.array(predicted) == labels[:64]).mean() >= 0.9
        svc.proc.send_signal(signal.SIGTERM)
        assert svc.proc.wait(timeout=30) == 0
        for child in children:
            assert not Path(f"/proc/{child}").exists()  # reaped by the supervisor
        assert svc.log().count("draining (readiness now 503") == 2


def test_the_collector_is_settled_once_the_models_serve() -> None:
    import gc

    from service.errors import Unavailable
    from service.server import GC_THRESHOLDS, _settle_gc

    class Core:
        ready = False

        def check_ready(self) -> None:
            if not self.ready:
                raise Unavailable("loading")

    core = Core()
    before = gc.get_threshold()
    assert not _settle_gc(None)
    assert not _settle_gc(core)  # type: ignore[arg-type]
    assert gc.get_threshold() == before
    core.ready = True
    try:
        assert _settle_gc(core)  # type: ignore[arg-type]
        assert gc.get_threshold() == GC_THRESHOLDS and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
