"""service.http.openapi: the document says what the service does, and /docs works without internet."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.http.openapi import VERSION_PATTERN
from service.settings import Settings
from tests.helpers.modelfactory import write_model_version


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root: Path = tmp_path_factory.mktemp("models")
    write_model_version(root, "tiny", 1)
    with TestClient(create_app(Settings(model_repository=root))) as c:
        yield c


def test_docs_page_loads_every_asset_locally(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    # No absolute URL anywhere: an offline cluster must render the page.
    assert re.findall(r"""(?:https?:)?//[\w.-]+""", html) == []
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert {"/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"} <= set(assets)
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200, asset
        assert len(response.content) > 100, asset
    assert "javascript" in client.get("/docs/assets/swagger-ui-bundle.js").headers["content-type"]
    assert "'/openapi.json'" in html or '"/openapi.json"' in html
    assert client.get("/openapi.json").status_code == 200


def test_redoc_is_not_served(client: TestClient) -> None:
    # ReDoc only comes from a CDN, which an offline cluster cannot reach.
    assert client.get("/redoc").status_code == 404


def test_document_has_no_422_and_typed_versions(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in document["components"]["schemas"]
    assert "ErrorBody" in document["components"]["schemas"]
    versions = 0
    for path, operations in document["paths"].items():
        for operation in operations.values():
            assert "422" not in operation["responses"], path
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "version":
                    versions += 1
                    assert parameter["schema"] == {"type": "string", "pattern": VERSION_PATTERN}
    assert versions >= 5
    infer = document["paths"]["/v2/models/{model_name}/infer"]["post"]
    assert set(infer["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
    assert {"400", "404", "413", "503", "504"} <= set(infer["responses"])
    assert "/docs" not in document["paths"] and "/" not in document["paths"]
