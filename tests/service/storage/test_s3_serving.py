"""The service process serving from a real S3 API server (moto, its own process): new versions while a
client streams requests, a corrupted version refused, the store going away and coming back, the cache
reused by a restart, and the start-up errors for a bucket that cannot be used."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from service.contract import METADATA_FILE, MODEL_FILE, metadata_json
from tests.helpers.data import ROOT, load_digits
from tests.helpers.s3server import S3Server
from tests.helpers.server import running_service
from tests.helpers.waiting import until
from tests.service.storage.test_s3 import publish_shipped, shipped

pytestmark = pytest.mark.slow


def metric(url: str, name: str, labels: str = "") -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def served_versions(url: str) -> list[str]:
    response = httpx.get(f"{url}/v2/models/mnist-cnn", timeout=5)
    return list(response.json().get("versions", [])) if response.status_code == 200 else []


class Stream:
    """One client sending infer requests back to back until stopped (bounded by ``limit`` seconds)."""

    def __init__(self, url: str, limit: float = 120.0) -> None:
        images, _ = load_digits()
        data = images[0].ravel().tolist()
        image = {"name": "image", "shape": [1, 28, 28, 1], "datatype": "FP32", "data": data}
        self.body = {"inputs": [image]}
        self.url, self.limit = url, limit
        self.statuses: Counter[int] = Counter()
        self.versions: Counter[str] = Counter()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Stream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    response = client.post(f"{self.url}/v2/models/mnist-cnn/infer", json=self.body)
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                    continue
                self.statuses[response.status_code] += 1
                if response.status_code != 200:
                    self.errors.append(f"{response.status_code} {response.text}")
                elif response.status_code == 200:
                    self.versions[response.json()["model_version"]] += 1


def upload_corrupt_version(s3: S3Server, bucket: str, prefix: str, version: int) -> None:
    """A committed version whose model.onnx is not the one its metadata records."""
    model, metadata = shipped()
    client = s3.client()
    key = f"{prefix}/mnist-cnn/{version}"
    client.put_object(Bucket=bucket, Key=f"{key}/{MODEL_FILE}", Body=model[:-1] + b"\0")
    document = metadata_json(metadata.model_copy(update={"version": version}))
    client.put_object(Bucket=bucket, Key=f"{key}/{METADATA_FILE}", Body=document)


def test_serving_from_s3_through_updates_corruption_and_an_outage(
    bucket: str, s3: S3Server, tmp_path: Path
) -> None:
    url = f"s3://{bucket}/models"
    publish_shipped(url)
    env = {
        **s3.env(),
        "SERVE_MODEL_REPOSITORY": url,
        "SERVE_MODEL_CACHE_DIR": str(tmp_path / "cache"),
        "SERVE_POLL_INTERVAL_S": "0.2",
        "SERVE_GRPC_PORT": "0",
    }
    with running_service(tmp_path, env=env) as service, Stream(service.url) as stream:
        assert served_versions(service.url) == ["1"]
        until(lambda: stream.statuses[200] > 20, "requests answered")

        publish_shipped(url)
        until(lambda: stream.versions["2"] > 20, "version 2 served")

        upload_corrupt_version(s3, bucket, "models", 3)
        until(lambda: "sha256 mismatch" in service.log(), "version 3 refused")
        assert metric(service.url, "model_load_total", '{model="mnist-cnn",result="error"}') >= 1
        assert served_versions(service.url) == ["2"]

        s3.proxy.stop()
        try:
            until(lambda: metric(service.url, "model_repository_up") == 0.0, "outage noticed")
            served = stream.statuses[200]
            until(lambda: stream.statuses[200] > served + 20, "serving during the outage")
            assert httpx.get(f"{service.url}/v2/health/ready", timeout=5).status_code == 200
            assert metric(service.url, "model_repository_errors_total") >= 1
        finally:
            s3.proxy.start()
        until(lambda: metric(service.url, "model_repository_up") == 1.0, "store back")
        assert publish_shipped(url) == 4
        until(lambda: stream.versions["4"] > 20, "version 4 served")

    assert stream.errors == []
    assert set(stream.statuses) == {200}
    assert set(stream.versions) == {"1", "2", "4"}
    log = service.log()
    assert "model repository failed: " in log and "answers again" in log
    # Each version downloaded once; the refused one is not tried again while its objects are unchanged.
    for version in (1, 2, 3, 4):
        assert log.count(f"downloading {url}/mnist-cnn/{version} ") == 1, version

    # A restart finds version 4 in the cache: nothing downloaded.
    with running_service(tmp_path, env=env) as again:
        assert served_versions(again.url) == ["4"]
    assert "downloading" not in again.log()


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("absent", "bucket '{absent}' does not exist"),
        ("empty", "no model versions"),
    ],
)
def test_an_unusable_bucket_stops_the_service_at_start_up(
    bucket: str, s3: S3Server, where: str, message: str
) -> None:
    absent = f"{bucket}-absent"
    url = f"s3://{absent}/models" if where == "absent" else f"s3://{bucket}/models"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVE_")}
    env.update({**s3.env(), "SERVE_MODEL_REPOSITORY": url})
    result = subprocess.run(
        [sys.executable, "-m", "service", "--port", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "error: SERVE_MODEL_REPOSITORY: " in result.stderr
    assert message.format(absent=absent) in result.stderr


def test_the_load_api_over_a_bucket(bucket: str, s3: S3Server, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    url = f"s3://{bucket}/models"
    publish_shipped(url)
    client = s3.client()
    model, metadata = shipped()
    document = metadata_json(metadata.model_copy(update={"name": "broken", "version": 1}))
    client.put_object(Bucket=bucket, Key="models/broken/1/model.onnx", Body=model[:-1] + b"\0")
    client.put_object(Bucket=bucket, Key="models/broken/1/metadata.json", Body=document)
    token = "s3cret-token-for-tests"
    settings = Settings(
        model_repository=url, models=["mnist-cnn"], admin_token=token, model_cache_dir=tmp_path / "cache"
    )
    auth = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(settings)) as c:
        assert c.get("/v2/health/ready").status_code == 200
        absent = c.post("/v2/repository/models/absent/load", headers=auth)
        assert absent.status_code == 404 and "no complete version" in absent.json()["error"]
        s3.proxy.stop()
        try:
            away = c.post("/v2/repository/models/mnist-cnn/load", headers=auth)
            assert away.status_code == 503
            assert "model repository is unavailable" in away.json()["error"]
            assert c.get("/v2/health/ready").status_code == 200
            assert c.get("/v2/models/mnist-cnn").json()["versions"] == ["1"]
        finally:
            s3.proxy.start()
        again = c.post("/v2/repository/models/mnist-cnn/load", headers=auth)
        assert again.status_code == 200 and again.json()["versions"] == ["1"]
        # Last: a model that failed its load counts against readiness, as with a directory.
        broken = c.post("/v2/repository/models/broken/load", headers=auth)
        assert broken.status_code == 503 and "failed to load" in broken.json()["error"]
