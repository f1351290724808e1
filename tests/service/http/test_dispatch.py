"""service.http.dispatch: the infer route answered from ASGI, everything else passed on, on a real core."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry
from starlette.types import Receive, Scope, Send

from service.core import InferenceService
from service.http import infer
from service.http.dispatch import CloseWhileDraining, FastPath
from service.http.paths import MAX_ROUTING_KEY
from service.settings import Settings
from service.telemetry.metrics import Metrics
from tests.helpers.modelfactory import WrittenModel, write_model_version

IMAGES = np.random.default_rng(5).uniform(0, 50, (3, 28, 28, 1)).astype(np.float32)
BODY = orjson.dumps(
    {
        "inputs": [
            {"name": "image", "datatype": "FP32", "shape": [3, 28, 28, 1], "data": IMAGES.ravel().tolist()}
        ]
    }
)
Client = httpx.AsyncClient


def serve(
    tmp_path: Path, test: Callable[[Client, list[str], InferenceService, WrittenModel], Awaitable[None]]
) -> None:
    """Run ``test`` against ``CloseWhileDraining(FastPath(downstream))`` over a started core."""
    model = write_model_version(tmp_path, "tiny", 1)

    async def main() -> None:
        core = InferenceService(
            Settings(model_repository=tmp_path, max_queue_delay_us=0), Metrics(CollectorRegistry())
        )
        await core.start()
        passed_on: list[str] = []

        async def downstream(scope: Scope, receive: Receive, send: Send) -> None:
            passed_on.append(f"{scope['method']} {scope['path']}")
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        app = CloseWhileDraining(FastPath(downstream, core), core)
        try:
            async with Client(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
                await test(client, passed_on, core, model)
        finally:
            await core.stop()

    asyncio.run(main())


def test_infer_is_answered_without_the_app_behind(tmp_path: Path) -> None:
    async def test(client: Client, passed_on: list[str], core: InferenceService, model: WrittenModel) -> None:
        for path in ("/v2/models/tiny/infer", "/v2/models/tiny/versions/1/infer"):
            response = await client.post(path, content=BODY)
            assert response.status_code == 200, response.text
            assert response.headers["content-length"] == str(len(response.content))
            probabilities = np.asarray(response.json()["outputs"][0]["data"]).reshape(3, 10)
            np.testing.assert_allclose(probabilities, model.reference(IMAGES), atol=1e-5)
        assert passed_on == []
        for method, path in [
            ("GET", "/v2/models/tiny/infer"),
            ("POST", "/v2/models/tiny/ready"),
            ("POST", "/v2/models/tiny/infer/more"),
            ("POST", "/v1/models/tiny/infer"),
        ]:
            assert (await client.request(method, path)).status_code == 204
        assert passed_on == [
            "GET /v2/models/tiny/infer",
            "POST /v2/models/tiny/ready",
            "POST /v2/models/tiny/infer/more",
            "POST /v1/models/tiny/infer",
        ]

    serve(tmp_path, test)


def test_the_routing_key_reaches_the_core_cut_to_its_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def test(client: Client, passed_on: list[str], core: InferenceService, model: WrittenModel) -> None:
        keys: list[str | None] = []
        call = core.call

        def recording_call(name: str, version: int | None = None, **kwargs: Any) -> Any:
            keys.append(kwargs.get("routing_key"))
            return call(name, version, **kwargs)

        monkeypatch.setattr(core, "call", recording_call)
        for headers in ({}, {"X-Routing-Key": "client-7"}, {"X-Routing-Key": "k" * (MAX_ROUTING_KEY + 10)}):
            response = await client.post("/v2/models/tiny/infer", content=BODY, headers=headers)
            assert response.status_code == 200, response.text
        assert keys == [None, "client-7", "k" * MAX_ROUTING_KEY]

    serve(tmp_path, test)


def test_errors_are_answered_as_json_with_their_headers(tmp_path: Path) -> None:
    async def test(client: Client, passed_on: list[str], core: InferenceService, model: WrittenModel) -> None:
        bad = await client.post("/v2/models/tiny/infer", content=b"{")
        assert bad.status_code == 400 and bad.headers["content-type"] == "application/json"
        assert "invalid JSON" in bad.json()["error"]
        assert (await client.post("/v2/models/tiny/versions/0/infer", content=BODY)).status_code == 400
        assert (await client.post("/v2/models/nope/infer", content=BODY)).status_code == 404
        core.lifecycle.draining = True
        refused = await client.post("/v2/models/tiny/infer", content=BODY)
        assert refused.status_code == 503 and refused.json() == {"error": "server is draining"}
        assert refused.headers["retry-after"] == "1" and refused.headers["connection"] == "close"
        core.lifecycle.draining = False
        assert "connection" not in (await client.post("/v2/models/tiny/infer", content=BODY)).headers

    serve(tmp_path, test)


def test_an_unexpected_failure_is_a_generic_logged_500(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> object:
        raise KeyError("internal detail")

    monkeypatch.setattr(infer, "encode_infer_response", broken)

    async def test(client: Client, passed_on: list[str], core: InferenceService, model: WrittenModel) -> None:
        response = await client.post("/v2/models/tiny/infer", content=BODY)
        assert response.status_code == 500
        assert response.json() == {"error": "internal server error"}
        assert "internal detail" not in response.text

    with caplog.at_level(logging.ERROR, logger="service"):
        serve(tmp_path, test)
    assert "unhandled error on POST /v2/models/tiny/infer" in caplog.text


# ---- outermost: what python -m service hands to uvicorn ----------------------------------------------


def _layers(app: Any) -> list[str]:
    names = []
    while app is not None and type(app).__name__ != "FastAPI":
        names.append(type(app).__name__)
        app = getattr(app, "app", None)
    return names


def test_outermost_answers_infer_ahead_of_the_app_only_when_nothing_must_see_it(tmp_path: Path) -> None:
    from starlette.middleware.gzip import GZipMiddleware

    from service.app import create_app
    from service.http.dispatch import outermost

    settings = Settings(model_repository=tmp_path)
    plain = create_app(settings, metrics_registry=CollectorRegistry())
    served = outermost(plain, plain.state.core)
    assert isinstance(served, FastPath) and served.closes_while_draining and served.app is plain

    logged = create_app(
        settings.model_copy(update={"log_format": "json"}), metrics_registry=CollectorRegistry()
    )
    assert outermost(logged, logged.state.core) is logged  # RequestContext must see every request

    embedded = create_app(settings, metrics_registry=CollectorRegistry())
    embedded.add_middleware(GZipMiddleware)
    assert outermost(embedded, embedded.state.core) is embedded
    without_fast_path = create_app(settings, metrics_registry=CollectorRegistry(), fast_path=False)
    assert outermost(without_fast_path, without_fast_path.state.core) is without_fast_path
    assert _layers(served) == ["FastPath"]


def test_the_outermost_fast_path_says_connection_close_while_draining(tmp_path: Path) -> None:
    write_model_version(tmp_path, "tiny", 1)

    async def main() -> None:
        core = InferenceService(
            Settings(model_repository=tmp_path, max_queue_delay_us=0), Metrics(CollectorRegistry())
        )
        await core.start()

        async def downstream(scope: Scope, receive: Receive, send: Send) -> None:
            raise AssertionError("infer must not be passed on")

        app = FastPath(downstream, core, closes_while_draining=True)
        try:
            async with Client(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
                answer = await client.post("/v2/models/tiny/infer", content=BODY)
                assert answer.status_code == 200 and "connection" not in answer.headers
                core.begin_drain()
                answer = await client.post("/v2/models/tiny/infer", content=BODY)
                assert answer.status_code == 503 and answer.headers["connection"] == "close"
                assert "error" in answer.json()
        finally:
            await core.stop()

    asyncio.run(main())
