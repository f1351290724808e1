"""service.app: the factory, its lifespan, and middleware around every request, the hot route included."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from fastapi.middleware.cors import CORSMiddleware
from fastapi.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send

from service.app import create_app
from service.core import InferenceService
from service.core.offload import ProcessRuntime
from service.core.runtime import ModelRuntime
from service.core.zygote import running
from service.settings import Settings
from tests.helpers.modelfactory import WrittenModel, write_model_version

IMAGES = np.random.default_rng(3).uniform(0, 50, (2, 28, 28, 1)).astype(np.float32)
BODY = orjson.dumps(
    {
        "inputs": [
            {"name": "image", "datatype": "FP32", "shape": [2, 28, 28, 1], "data": IMAGES.ravel().tolist()}
        ]
    }
)


class Recorder:
    """A pure ASGI middleware that notes every request it sees and tags every answer."""

    seen: list[tuple[str, str]] = []

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            Recorder.seen.append((scope["method"], scope["path"]))

            async def tagged(message: dict) -> None:  # type: ignore[type-arg]
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message["headers"], (b"x-recorded", b"yes")]}
                await send(message)

            await self.app(scope, receive, tagged)
            return
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, WrittenModel]]:
    root = tmp_path_factory.mktemp("models")
    yield root, write_model_version(root, "tiny", 1)


def test_middleware_added_to_the_app_sees_the_hot_route(model: tuple[Path, WrittenModel]) -> None:
    root, written = model
    app = create_app(Settings(model_repository=root, max_queue_delay_us=0))
    app.add_middleware(Recorder)
    Recorder.seen.clear()
    with TestClient(app) as client:
        response = client.post("/v2/models/tiny/infer", content=BODY)
        assert response.status_code == 200, response.text
        assert response.headers["x-recorded"] == "yes"
        probabilities = np.asarray(response.json()["outputs"][0]["data"]).reshape(2, 10)
        np.testing.assert_allclose(probabilities, written.reference(IMAGES), atol=1e-5)
        refused = client.post("/v2/models/tiny/infer", content=b"{bad")
        assert refused.status_code == 400 and refused.headers["x-recorded"] == "yes"
        assert client.get("/v2/health/ready").headers["x-recorded"] == "yes"
    assert Recorder.seen == [
        ("POST", "/v2/models/tiny/infer"),
        ("POST", "/v2/models/tiny/infer"),
        ("GET", "/v2/health/ready"),
    ]


def test_cors_middleware_applies_to_infer(model: tuple[Path, WrittenModel]) -> None:
    root, _ = model
    app = create_app(Settings(model_repository=root, max_queue_delay_us=0))
    app.add_middleware(CORSMiddleware, allow_origins=["https://page.example"], allow_methods=["POST"])
    with TestClient(app) as client:
        origin = {"Origin": "https://page.example"}
        response = client.post("/v2/models/tiny/infer", content=BODY, headers=origin)
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "https://page.example"
        preflight = client.options(
            "/v2/models/tiny/infer", headers={**origin, "Access-Control-Request-Method": "POST"}
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://page.example"


def test_with_and_without_the_fast_path_the_answers_are_the_same(model: tuple[Path, WrittenModel]) -> None:
    root, _ = model
    settings = Settings(model_repository=root, max_queue_delay_us=0)
    answers = []
    for fast_path in (True, False):
        with TestClient(create_app(settings, fast_path=fast_path)) as client:
            ok = client.post("/v2/models/tiny/infer", content=BODY, headers={"x": "1"})
            bad = client.post("/v2/models/tiny/versions/01/infer", content=BODY)
            missing = client.post("/v2/models/nope/infer", content=BODY)
            answers.append(
                [(r.status_code, r.content, r.headers["content-type"]) for r in (ok, bad, missing)]
            )
    assert answers[0] == answers[1]
    assert [a[0] for a in answers[0]] == [200, 400, 404]


@pytest.mark.parametrize("compute", ["process", "thread", "auto"])
def test_lifespan_starts_and_stops_the_core(model: tuple[Path, WrittenModel], compute: str) -> None:
    root, _ = model
    app = create_app(Settings(model_repository=root, compute=compute))
    core: InferenceService = app.state.core
    with pytest.raises(RuntimeError, match="not been started"):
        _ = core.registry
    with TestClient(app) as client:
        assert client.get("/v2/health/ready").status_code == 200
        runtime = core.registry.get("tiny").runtime
        child = runtime.pid if isinstance(runtime, ProcessRuntime) else None
        local = runtime.local if isinstance(runtime, ProcessRuntime) else runtime
        assert (local is not None) == (compute != "process")
        assert app.state.models is core.registry and app.state.lifecycle is core.lifecycle
    assert core.draining
    if local is not None:  # the session in this process: thread, or auto's for lone requests
        with pytest.raises(RuntimeError, match="closed"):
            local.run({"image": IMAGES})
    if isinstance(runtime, ModelRuntime):
        return
    assert child is not None and runtime.pid is None  # closed: its compute process was told to exit
    deadline = time.monotonic() + 30
    while running(child):
        assert time.monotonic() < deadline, "the compute process outlived the service's stop"
        time.sleep(0.01)


def test_draining_answers_close_the_connection(model: tuple[Path, WrittenModel]) -> None:
    root, _ = model
    with TestClient(create_app(Settings(model_repository=root))) as client:
        assert "connection" not in client.get("/v2/health/live").headers
        client.app.state.lifecycle.draining = True  # type: ignore[attr-defined]
        try:
            assert client.get("/v2/health/live").headers["connection"] == "close"
            refused = client.post("/v2/models/tiny/infer", content=BODY)
            assert refused.status_code == 503 and refused.headers["connection"] == "close"
        finally:
            client.app.state.lifecycle.draining = False  # type: ignore[attr-defined]


def test_the_demo_page_and_its_assets(model: tuple[Path, WrittenModel]) -> None:
    root, _ = model
    with TestClient(create_app(Settings(model_repository=root))) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert client.get("/static/app.js").status_code == 200
