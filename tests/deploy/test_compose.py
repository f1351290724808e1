"""The compose deployment for real: images built from the repository's Dockerfiles, the shipped
docker-compose.yml started in a Docker engine, requests served, a retrain rolled out, a drain, a restart.

Not part of plain `pytest` (marked ``docker``, deselected by default): `make test-deploy` runs it, and CI
after `make test`. It needs root, Debian's docker.io, docker-compose and debootstrap (the make target
installs them), and starts a dockerd of its own when none runs (stopped again at the end). Nothing is
pulled: every image is built on a local Debian base (tools/local-base-image.sh, kept between runs by its
label); Prometheus is Debian's package in a test-only image (deploy/test/prometheus.Dockerfile).
Everything runs on the host network on free loopback ports (deploy/test/compose.yml). Clean-up removes
the images this run's builds created (by id), and the compose project's containers and volumes.
Engine, base image and images are session fixtures (conftest.py), shared with test_gpu_image.py.

Timings and image sizes go to test-artifacts/deploy-measurements.json; no test asserts them.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton
import yaml

from tests.deploy.dockerstack import (
    Compose,
    Images,
    Stream,
    docker,
    health,
    streaming,
    volume_files,
    wait_for,
)
from tests.helpers.data import DATA_DIR, MODELS, ROOT, load_digits
from tests.helpers.server import free_port

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]

MODEL = "mnist-cnn"  # the shipped trainer's model: the retrain publishes its version 2
APP_UID = (10001, 10001)
HEALTHY_WITHIN_S = 150  # the shipped healthcheck: 10 s interval, 60 s start period, 3 retries


#: How the one request a client writes onto its kept-alive connection as the server closes it fails.
KEEP_ALIVE_RACE = {"ConnectionResetError", "HTTPConnectionClosed"}


def trainer_args() -> list[str]:
    """The trainer service with its command replaced by a quick from-scratch training of the shipped
    trainer's model: a small preset, one epoch, limited data.

    The shipped command retrains on client feedback (``tests/training/test_retrain.py`` covers that path);
    here the rollout is what is tested, so the run must publish without feedback. The promotion guard stays
    on; its threshold is opened because a one-epoch model trails the shipped 99 % mnist-cnn by far.
    """
    shipped = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["trainer"]["command"]
    args = [str(a) for a in shipped]
    assert args[0] == "retrain" and args[args.index("--name") + 1] == MODEL and "--force" not in args
    return [
        "train", "--data-dir", "/data", "--dataset", "mnist", "--preset", "mlp", "--epochs", "1",
        "--name", MODEL, "--publish", args[args.index("--repository") + 1],
        "--limit-train", "3000", "--max-regression", "100",
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------- fixtures


@dataclass
class Stack:
    compose: Compose
    api_url: str
    prometheus_url: str
    images: Images
    grpc_address: str

    @property
    def api_address(self) -> str:
        return self.api_url.removeprefix("http://")

    @property
    def api(self) -> str:
        return self.compose.container("api")

    def api_log(self) -> str:
        result = docker("logs", self.api)
        return result.stdout + result.stderr

    def up(self) -> float:
        """``up -d`` api and prometheus; seconds until Docker's healthcheck calls the api healthy."""
        start = time.monotonic()
        self.compose("up", "-d", "--no-build", "api", "prometheus")
        api = self.api
        wait_for("api healthy by its HEALTHCHECK", lambda: health(api) == "healthy", HEALTHY_WITHIN_S)
        return time.monotonic() - start


@pytest.fixture(scope="module")
def stack(
    images: Images, run_id: str, tmp_path_factory: pytest.TempPathFactory, measurements: dict[str, Any]
) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("compose")
    api_port, grpc_port, prometheus_port = free_port(), free_port(), free_port()
    prometheus_config = workdir / "prometheus"
    shutil.copytree(ROOT / "deploy" / "prometheus", prometheus_config)
    config = (prometheus_config / "prometheus.yml").read_text()
    assert config.count('"api:8000"') == 1
    (prometheus_config / "prometheus.yml").write_text(config.replace('"api:8000"', f'"127.0.0.1:{api_port}"'))
    compose = Compose(
        f"digits-test-{run_id}",
        workdir,
        {
            "DIGITS_TEST_SERVE_IMAGE": images.serve.tag,
            "DIGITS_TEST_TRAIN_IMAGE": images.train.tag,
            "DIGITS_TEST_PROMETHEUS_IMAGE": images.prometheus.tag,
            "DIGITS_TEST_API_PORT": str(api_port),
            "DIGITS_TEST_GRPC_PORT": str(grpc_port),
            "DIGITS_TEST_PROMETHEUS_PORT": str(prometheus_port),
            "DIGITS_TEST_PROMETHEUS_CONFIG": str(prometheus_config),
            "DATA_DIR": str(DATA_DIR),
        },
    )
    running = Stack(
        compose,
        f"http://127.0.0.1:{api_port}",
        f"http://127.0.0.1:{prometheus_port}",
        images,
        f"127.0.0.1:{grpc_port}",
    )
    try:
        measurements["up_to_healthy_s"] = round(running.up(), 1)
        yield running
    finally:
        compose.remove()
        assert compose.leftovers() == {"containers": [], "volumes": [], "networks": []}


@dataclass
class Rollout:
    trainer_s: float
    trainer_output: str
    streams: list[Stream]


@pytest.fixture(scope="module")
def rollout(stack: Stack, measurements: dict[str, Any]) -> Rollout:
    """The trainer publishes version 2 while two tritonclient streams run, until the api serves it."""
    images, _ = load_digits("mnist")
    query = f'inference_requests_total{{model="{MODEL}",status="ok"}} > 0'

    def scraped(version: str) -> bool:
        """Prometheus has scraped a served request of ``version`` (its own query API)."""
        answer = httpx.get(f"{stack.prometheus_url}/api/v1/query", params={"query": query}, timeout=10).json()
        return version in {r["metric"]["version"] for r in answer.get("data", {}).get("result", [])}

    with streaming(stack.api_address, MODEL, images[:1000]) as streams:
        wait_for("requests answered by version 1", lambda: all(len(s.outcomes) >= 20 for s in streams), 60)
        wait_for("a Prometheus scrape while version 1 serves", lambda: scraped("1"), 60)
        start = time.monotonic()
        result = stack.compose(
            "--profile", "train", "run", "--rm", "-T", "trainer", *trainer_args(), timeout=600
        )
        trainer_s = time.monotonic() - start
        wait_for(
            "every stream answered by version 2",
            lambda: all(s.outcomes and s.outcomes[-1].version == "2" for s in streams),
            60,
        )
        wait_for("a Prometheus scrape after the switch", lambda: scraped("2"), 60)
    measurements["trainer_run_s"] = round(trainer_s, 1)
    measurements["rollout_requests"] = sum(len(s.outcomes) for s in streams)
    return Rollout(trainer_s, result.stdout + result.stderr, streams)


# ------------------------------------------------------------------------------------------------ tests


def test_images_build_on_the_local_base_and_keep_their_contracts(images: Images, base_image: str) -> None:
    base_layers = json.loads(
        docker("image", "inspect", "--format", "{{json .RootFS.Layers}}", base_image).stdout
    )
    for image in (images.serve, images.train):
        layers = json.loads(
            docker("image", "inspect", "--format", "{{json .RootFS.Layers}}", image.id).stdout
        )
        assert layers[: len(base_layers)] == base_layers, f"{image.tag} is not built on {base_image}"
        assert image.config()["User"] == "10001:10001"
    serve = images.serve.config()
    assert "/v2/health/ready" in " ".join(serve["Healthcheck"]["Test"])
    assert serve["Cmd"][:3] == ["python", "-m", "service"]
    assert images.train.config()["Entrypoint"] == ["python", "-m", "training"]
    # The default serving image: CPU onnxruntime, and no TensorFlow.
    probe = docker(
        *("run", "--rm", "--network", "none", "--entrypoint", "python", images.serve.id, "-c"),
        "import importlib.util, json, onnxruntime as ort; "
        "print(json.dumps([ort.get_available_providers(), importlib.util.find_spec('tensorflow') is None]))",
    )
    providers, no_tensorflow = json.loads(probe.stdout)
    assert "CPUExecutionProvider" in providers and "CUDAExecutionProvider" not in providers, providers
    assert no_tensorflow


def test_api_is_healthy_by_docker_healthcheck_and_says_why_cuda_is_unused(stack: Stack) -> None:
    state = json.loads(docker("inspect", "--format", "{{json .State.Health}}", stack.api).stdout)
    assert state["Status"] == "healthy"
    assert state["Log"] and state["Log"][-1]["ExitCode"] == 0
    # The healthcheck that ran is the shipped one, only its port changed.
    shipped = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["api"]["healthcheck"][
        "test"
    ]
    ran = json.loads(docker("inspect", "--format", "{{json .Config.Healthcheck.Test}}", stack.api).stdout)
    port = stack.api_url.rsplit(":", 1)[1]
    assert ran == [part.replace(":8000/", f":{port}/") for part in shipped]
    log = stack.api_log()
    assert (
        "CUDAExecutionProvider unusable, serving on the CPU: this onnxruntime has no CUDAExecutionProvider"
        in log
    )
    metrics = httpx.get(f"{stack.api_url}/metrics", timeout=10).text
    assert f'model_info{{model="{MODEL}",provider="CPUExecutionProvider",version="1"}} 1.0' in metrics


def test_named_volume_is_seeded_from_the_image(stack: Stack) -> None:
    files = volume_files(stack.compose.volume("models"), stack.images.serve.id)
    shipped = {str(p.relative_to(MODELS)) for p in MODELS.rglob("*")}
    assert set(files) == shipped
    assert set(files.values()) == {APP_UID}, "the trainer (uid 10001) must be able to publish next to them"


def test_tritonclient_requests_are_served(stack: Stack) -> None:
    client = triton.InferenceServerClient(stack.api_address, network_timeout=30)
    try:
        assert client.is_server_live() and client.is_server_ready()
        index = {m["name"] for m in client.get_model_repository_index()}
        assert index == {p.name for p in MODELS.iterdir() if p.is_dir()}
        images, labels = load_digits("mnist")
        request = triton.InferInput("image", [64, 28, 28, 1], "FP32")
        request.set_data_from_numpy(images[:64], binary_data=True)
        result = client.infer(MODEL, [request])
        assert result.get_response()["model_version"] == "1"
        predicted = result.as_numpy("probabilities").argmax(axis=1)
        assert (predicted == labels[:64]).sum() >= 62, "the shipped mnist-cnn is 99 % accurate"
    finally:
        client.close()
    # gRPC: the image's listener is the native one (its C extension compiled in the builder stage).
    grpc_client = triton_grpc.InferenceServerClient(stack.grpc_address)
    try:
        assert grpc_client.is_server_ready() and grpc_client.is_model_ready(MODEL)
        grpc_input = triton_grpc.InferInput("image", [64, 28, 28, 1], "FP32")
        grpc_input.set_data_from_numpy(images[:64])
        over_grpc = grpc_client.infer(MODEL, [grpc_input]).as_numpy("probabilities")
        np.testing.assert_allclose(over_grpc, result.as_numpy("probabilities"), atol=1e-6)
    finally:
        grpc_client.close()
    assert "gRPC listening on" in stack.api_log() and "libnghttp2" in stack.api_log()


def test_retrain_publishes_into_the_volume_as_uid_10001(stack: Stack, rollout: Rollout) -> None:
    assert re.search(rf"published\s+/models/{MODEL}/2 \(version 2\)", rollout.trainer_output), (
        rollout.trainer_output[-2000:]
    )
    files = volume_files(stack.compose.volume("models"), stack.images.serve.id)
    new = {p: owner for p, owner in files.items() if p.startswith(f"{MODEL}/2")}
    assert {f"{MODEL}/2/model.onnx", f"{MODEL}/2/metadata.json"} <= set(new)
    assert set(new.values()) == {APP_UID}
    assert not any(Path(p).name.startswith(".") for p in files), "a temporary publishing directory was left"


def test_api_switches_to_the_new_version_with_zero_failed_requests(stack: Stack, rollout: Rollout) -> None:
    for stream in rollout.streams:
        failures = [o for o in stream.outcomes if not o.ok]
        assert failures == [], failures[:5]
        versions = [o.version for o in stream.outcomes]
        assert versions[0] == "1" and versions[-1] == "2"
        switch = versions.index("2")
        assert set(versions[switch:]) == {"2"}, "version 1 answered after version 2 had"
    log = stack.api_log()
    assert f"serving {MODEL} version 2" in log and f"retiring {MODEL} version 1" in log


def test_prometheus_has_the_metrics_of_both_versions(stack: Stack, rollout: Rollout) -> None:
    def query(expr: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{stack.prometheus_url}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert answer["status"] == "success", answer
        return list(answer["data"]["result"])

    # A range: version 1's series went stale when it was retired, but its samples stay.
    requests = f'max_over_time(inference_requests_total{{model="{MODEL}",status="ok"}}[1h])'
    seen: dict[str, float] = {}

    def both() -> bool:
        seen.update({r["metric"]["version"]: float(r["value"][1]) for r in query(requests)})
        return {"1", "2"} <= {v for v, n in seen.items() if n > 0}

    wait_for(f"Prometheus samples of {MODEL} versions 1 and 2 (seen {seen})", both, 30)
    served = query(f'model_info{{model="{MODEL}"}} == 1')
    assert [(r["metric"]["version"], r["metric"]["provider"]) for r in served] == [
        ("2", "CPUExecutionProvider")
    ]
    targets = httpx.get(f"{stack.prometheus_url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    assert [t["health"] for t in targets if t["labels"]["job"] == "api"] == ["up"]


def test_stop_drains_without_failures_and_up_keeps_every_version(
    stack: Stack, rollout: Rollout, measurements: dict[str, Any]
) -> None:
    images, _ = load_digits("mnist")
    with streaming(stack.api_address, MODEL, images[:1000]) as streams:
        wait_for("requests answered before the stop", lambda: all(len(s.outcomes) >= 20 for s in streams), 60)
        for s in streams:
            s.mark.set()
        start = time.monotonic()
        stack.compose("stop", timeout=120)
        measurements["stop_s"] = round(time.monotonic() - start, 1)
        wait_for(
            "every stream finding the api gone",
            lambda: all(
                any(o.after_mark and o.status is None and not o.ok for o in s.outcomes) for s in streams
            ),
            30,
        )
    after_stop = [o for s in streams for o in s.outcomes if o.after_mark]
    measurements["stop_requests"] = {
        "answered_200": sum(o.ok for o in after_stop),
        "refused_503_draining": sum(o.status == 503 for o in after_stop),
        "reset_at_close": sum(o.version in KEEP_ALIVE_RACE for o in after_stop),
        "refused_connections_after_close": sum(o.version == "ConnectionRefusedError" for o in after_stop),
    }
    api = stack.api
    state = json.loads(docker("inspect", "--format", "{{json .State}}", api).stdout)
    assert (state["Status"], state["ExitCode"]) == ("exited", 0), "stopped by the drain, not killed"
    log = stack.api_log()
    assert "draining" in log and "drained" in log
    for stream in streams:
        before = [o for o in stream.outcomes if not o.after_mark]
        assert before and all(o.ok for o in before), [o for o in before if not o.ok][:5]
        after = [o for o in stream.outcomes if o.after_mark]
        # Every answer was 200, or 503 + "draining" for requests that came once the drain began. Then the
        # server closed: refused connections only, but for at most one reset first, the request a stream
        # had just written onto its kept-alive connection as uvicorn closed it unread (the HTTP/1.1
        # keep-alive race: it was never processed; the client sees a reset or a close, depending on whether
        # the request reached the socket before or after the close). Nothing answered after that.
        refused = [o for o in after if not o.ok and o.status == 503]
        assert all("draining" in o.version or "shutting down" in o.version for o in refused), refused[:3]
        unconnected = [i for i, o in enumerate(after) if not o.ok and o.status is None]
        assert unconnected, "the api still answered after `docker compose stop`"
        answered, closed = after[: unconnected[0]], after[unconnected[0] :]
        assert all(o.ok or o.status == 503 for o in answered), [o for o in answered if not o.ok][:5]
        if closed[0].version in KEEP_ALIVE_RACE:
            closed = closed[1:]
        assert closed and {o.version for o in closed} == {"ConnectionRefusedError"}, closed[:5]

    measurements["up_again_to_healthy_s"] = round(stack.up(), 1)
    files = volume_files(stack.compose.volume("models"), stack.images.serve.id)
    versions = {str(Path(p).parent) for p in files if Path(p).name == "model.onnx"}
    shipped = {str(p.parent.relative_to(MODELS)) for p in MODELS.rglob("model.onnx")}
    assert versions == shipped | {f"{MODEL}/2"}
    client = triton.InferenceServerClient(stack.api_address, network_timeout=30)
    try:
        request = triton.InferInput("image", [1, 28, 28, 1], "FP32")
        request.set_data_from_numpy(images[:1], binary_data=True)
        assert client.infer(MODEL, [request]).get_response()["model_version"] == "2"
    finally:
        client.close()
