"""The compose stack's own commands, run as processes on loopback: service, Prometheus, trainer.

While a client streams requests, the trainer publishes a new version; the service switches to it with
no failed request, and Prometheus (scraping with the shipped config, only its target rewritten) has the
service's request counter for both versions.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml

from tests.helpers.data import DATA_DIR, ROOT, load_digits
from tests.helpers.prometheus import start_prometheus as prometheus
from tests.helpers.server import serve_on_free_ports, stop_process

pytestmark = pytest.mark.slow

MODEL = "e2e-digits"


def dockerfile_cmd(path: Path) -> list[str]:
    """The exec-form CMD of a Dockerfile (continuation lines joined)."""
    text = path.read_text().replace("\\\n", " ")
    [line] = [ln for ln in text.splitlines() if ln.startswith("CMD [")]
    command: list[str] = json.loads(line[len("CMD ") :])
    return command


def trainer_command(repository: Path) -> list[str]:
    """The training image's default command (train and publish), with paths mapped to this machine and a
    small, quick model. (The compose trainer retrains on feedback instead: tests/loop/ runs that.)"""
    args = dockerfile_cmd(ROOT / "deploy" / "train.Dockerfile")
    assert args[0] == "train" and "--publish" in args and "--force" not in args
    mapping = {"/data": str(DATA_DIR), "/models": str(repository)}
    args = [mapping.get(a, a) for a in args]
    small = {"--preset": "tiny-mlp", "--epochs": "1", "--name": MODEL}
    for flag, value in small.items():
        args[args.index(flag) + 1] = value
    # The promotion guard stays on; its threshold is widened because two one-epoch runs on 1,000
    # images may differ by more than half a point, and this test is about the rollout, not the guard.
    return [sys.executable, "-m", "training", *args, "--limit-train", "1000", "--max-regression", "20"]


def run_trainer(repository: Path) -> None:
    result = subprocess.run(
        trainer_command(repository), cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def start_prometheus(config_dir: Path, api_address: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Prometheus with the deployment's configuration, scraping ``api_address``: its process and URL."""
    config = (config_dir / "prometheus.yml").read_text()
    assert config.count('"api:8000"') == 1
    (config_dir / "prometheus.yml").write_text(config.replace('"api:8000"', f'"{api_address}"'))
    return prometheus(config_dir / "prometheus.yml", config_dir / "data", log)


def test_retrain_rolls_out_with_zero_failed_requests(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    repository.mkdir()
    run_trainer(repository)
    assert (repository / MODEL / "1" / "metadata.json").is_file()

    serve_cmd = dockerfile_cmd(ROOT / "deploy" / "serve.Dockerfile")
    assert serve_cmd[:3] == ["python", "-m", "service"]
    serve_cmd = [sys.executable, *serve_cmd[1:]]
    serve_cmd[serve_cmd.index("--host") + 1] = "127.0.0.1"
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    api_env = {str(k): str(v) for k, v in compose["services"]["api"]["environment"].items() if v is not None}
    api_env.update({"SERVE_MODEL_REPOSITORY": str(repository), "SERVE_POLL_INTERVAL_S": "0.5"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVE_")} | api_env

    def command(port: int, grpc_port: int) -> tuple[list[str], dict[str, str]]:
        argv = list(serve_cmd)
        argv[argv.index("--port") + 1] = str(port)
        return argv, {**env, "SERVE_GRPC_PORT": str(grpc_port)}

    running = serve_on_free_ports(command, lambda port: tmp_path / "api.log")
    api, api_port, api_url = running.proc, running.port, running.url
    config_dir = tmp_path / "prometheus"
    shutil.copytree(ROOT / "deploy" / "prometheus", config_dir)
    try:
        prom, prom_url = start_prometheus(config_dir, f"127.0.0.1:{api_port}", tmp_path / "prometheus.log")
    except BaseException:
        stop_process(api)
        raise
    try:
        images, _ = load_digits("mnist")
        outcomes: list[list[tuple[int, str]]] = [[], []]
        stop_streaming = threading.Event()

        def stream(results: list[tuple[int, str]], offset: int) -> None:
            with httpx.Client(base_url=api_url, timeout=30) as client:
                i = offset
                while not stop_streaming.is_set():
                    image = images[i % 1000 : i % 1000 + 1]
                    body = {
                        "inputs": [
                            {
                                "name": "image",
                                "datatype": "FP32",
                                "shape": [1, 28, 28, 1],
                                "data": image.ravel().tolist(),
                            }
                        ]
                    }
                    try:
                        r = client.post(f"/v2/models/{MODEL}/infer", json=body)
                        results.append((r.status_code, r.json().get("model_version", "")))
                    except httpx.HTTPError as exc:
                        results.append((-1, type(exc).__name__))
                    i += 1

        threads = [threading.Thread(target=stream, args=(outcomes[k], k * 500)) for k in range(2)]
        for t in threads:
            t.start()
        query = f'inference_requests_total{{model="{MODEL}",status="ok"}}'

        def scraped_versions() -> set[str]:
            """The versions Prometheus has scraped a served request for, from its own query API."""
            data = httpx.get(f"{prom_url}/api/v1/query", params={"query": query}, timeout=5).json()
            assert data["status"] == "success"
            return {r["metric"]["version"] for r in data["data"]["result"] if float(r["value"][1]) > 0}

        def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
            deadline = time.monotonic() + timeout  # the bound only ends a failure
            while not condition():
                assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
                time.sleep(0.2)

        wait_until(lambda: "1" in scraped_versions(), "a Prometheus scrape while version 1 serves")
        run_trainer(repository)
        wait_until(lambda: any(o[-1][1] == "2" for o in outcomes if o), "clients answered by version 2")
        wait_until(lambda: scraped_versions() == {"1", "2"}, "a Prometheus scrape after the switch")
        stop_streaming.set()
        for t in threads:
            t.join(timeout=60)

        for results in outcomes:
            assert results, "the client sent nothing"
            failures = [r for r in results if r[0] != 200]
            assert failures == [], failures[:5]
            versions = [v for _, v in results]
            assert versions[0] == "1" and versions[-1] == "2"
            switch = versions.index("2")
            assert set(versions[switch:]) == {"2"}, "a response from version 1 came after version 2"

        # Prometheus' own query API has the service's counter for both versions.
        assert scraped_versions() == {"1", "2"}
        targets = httpx.get(f"{prom_url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        api_target = [t for t in targets if t["labels"]["job"] == "api"]
        assert api_target and api_target[0]["health"] == "up"
        log = (tmp_path / "api.log").read_text()
        assert f"serving {MODEL} version 2" in log and f"retiring {MODEL} version 1" in log
    finally:
        stop_process(api)
        stop_process(prom)
