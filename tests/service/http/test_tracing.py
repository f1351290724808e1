"""service.http.tracing: the request id on every answer with JSON logs on; the route naming a span."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.http.tracing import RequestContext, route_of
from service.settings import Settings
from tests.helpers.modelfactory import write_model_version


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_model_version(root, "tiny", 1)
    return root


def test_json_logs_alone_answer_a_request_id_on_every_route(root: Path) -> None:
    app = create_app(Settings(model_repository=root, log_format="json"))
    assert any(m.cls is RequestContext for m in app.user_middleware)
    with TestClient(app) as client:
        given = client.get("/v2/health/live", headers={"x-request-id": "mine-1"})
        assert given.headers["x-request-id"] == "mine-1"
        made = client.post("/v2/models/nope/infer", content=b"{}")
        assert made.status_code == 404 and len(made.headers["x-request-id"]) == 16
        replaced = client.get("/v2", headers={"x-request-id": "has space"})
        assert replaced.headers["x-request-id"] != "has space"


def test_without_tracing_or_json_logs_there_is_no_request_context(root: Path) -> None:
    app = create_app(Settings(model_repository=root))
    assert not any(m.cls is RequestContext for m in app.user_middleware)
    with TestClient(app) as client:
        assert "x-request-id" not in client.get("/v2/health/live").headers


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/v2/models/m/infer", "/v2/models/{model_name}/infer"),
        ("/v2/models/m/versions/2/infer", "/v2/models/{model_name}/versions/{version}/infer"),
        ("/v2/models/m/ready", None),
    ],
)
def test_the_fast_paths_routes_are_named_by_their_template(path: str, route: str | None) -> None:
    assert route_of({"path": path}) == route
