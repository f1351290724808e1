"""Session fixtures of the docker tests (test_compose.py, test_gpu_image.py): the engine, the local base
image and every image built from the repository's Dockerfiles, each made once for the whole run.

Only tests marked ``docker`` ask for them; plain `pytest` deselects those, so nothing here runs there.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.deploy.dockerstack import Builder, Image, Images, docker, tool
from tests.helpers.data import ROOT

MEASUREMENTS = ROOT / "test-artifacts" / "deploy-measurements.json"


@pytest.fixture(scope="session")
def measurements() -> Iterator[dict[str, Any]]:
    found: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    start = time.monotonic()
    yield found
    found["total_s"] = round(time.monotonic() - start, 1)
    MEASUREMENTS.parent.mkdir(exist_ok=True)
    MEASUREMENTS.write_text(json.dumps(found, indent=2) + "\n")


@pytest.fixture(scope="session")
def engine() -> Iterator[None]:
    """A Docker engine: the one running, or one started here and stopped at the end."""
    before = tool("dockerd.sh", "status").stdout.strip()
    if before == "none":
        started = tool("dockerd.sh", "start", timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield
    finally:
        if before == "none":
            stopped = tool("dockerd.sh", "stop", timeout=120)
            assert stopped.returncode == 0, stopped.stdout + stopped.stderr


@pytest.fixture(scope="session")
def base_image(engine: None, measurements: dict[str, Any]) -> str:
    start = time.monotonic()
    made = tool("local-base-image.sh", timeout=600)
    assert made.returncode == 0, made.stderr
    measurements["local_base_s"] = round(time.monotonic() - start, 1)
    measurements["local_base_reused"] = "debootstrap" not in made.stderr
    image = made.stdout.strip().splitlines()[-1]
    labels = json.loads(docker("image", "inspect", "--format", "{{json .Config.Labels}}", image).stdout)
    assert labels["org.digits-serving.role"] == "local-base"
    return image


@pytest.fixture(scope="session")
def run_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def builder(engine: None, run_id: str) -> Iterator[Builder]:
    """Builds the repository's Dockerfiles; every image it made is removed at the end."""
    images = Builder(f"org.digits-serving.test-run={run_id}")
    try:
        yield images
    finally:
        assert images.remove() == [], "images of this run could not be removed"


@pytest.fixture(scope="session")
def images(base_image: str, builder: Builder, run_id: str, measurements: dict[str, Any]) -> Images:
    """Every image, in two lanes side by side: the training image, and the three others one by one."""

    def serving_images() -> tuple[Image, Image, Image]:
        serve = builder.build(
            "deploy/serve.Dockerfile", f"digits-test-serving:{run_id}", BASE_IMAGE=base_image
        )
        prometheus = builder.build(
            "deploy/test/prometheus.Dockerfile",
            f"digits-test-prometheus:{run_id}",
            context=ROOT / "deploy" / "test",
            BASE_IMAGE=base_image,
        )
        gpu = builder.build(
            "deploy/serve.Dockerfile",
            f"digits-test-serving-gpu:{run_id}",
            BASE_IMAGE=base_image,
            ONNXRUNTIME="gpu",
        )
        return serve, prometheus, gpu

    start = time.monotonic()
    with ThreadPoolExecutor(2) as lanes:
        train = lanes.submit(
            builder.build, "deploy/train.Dockerfile", f"digits-test-training:{run_id}", BASE_IMAGE=base_image
        )
        serving = lanes.submit(serving_images)
        (serve, prometheus, gpu), trainer = serving.result(), train.result()
    measurements["images_build_wall_s"] = round(time.monotonic() - start, 1)
    built = Images(serve=serve, serve_gpu=gpu, train=trainer, prometheus=prometheus)
    for name, image in vars(built).items():
        measurements[f"image_{name}"] = {
            "build_s": round(image.build_seconds, 1),
            "size_mb": image.size_bytes // 10**6,
        }
    return built
