"""POST /v2/models/{m}/feedback through the real app (lifespan included), on the shipped mnist-cnn."""

from __future__ import annotations

import hmac
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.feedback.store import log_path, read_log
from service.settings import Settings
from tests.helpers.data import MODELS, load_digits
from tests.helpers.filesystems import tiny_filesystem
from tests.helpers.server import running_service

TOKEN = "feedback-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
URL = "/v2/models/mnist-cnn/feedback"


def image_bytes(index: int, fmt: str = "PNG") -> bytes:
    images, _ = load_digits("mnist")
    buffer = io.BytesIO()
    Image.fromarray(images[index].astype(np.uint8).squeeze()).save(buffer, format=fmt)
    return buffer.getvalue()


def settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "model_repository": MODELS,
        "models": ["mnist-cnn", "fashion-cnn"],
        "feedback_dir": tmp_path / "feedback",
        "feedback_token": TOKEN,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(settings(tmp_path))) as c:
        yield c


def assert_error(response: Any, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and fragment in body["error"], body


def stored(tmp_path: Path, model: str = "mnist-cnn") -> list[Any]:
    return read_log(log_path(tmp_path / "feedback", model)).items


def feedback_counts(client: TestClient) -> dict[tuple[str, str, str], float]:
    families = text_string_to_metric_families(client.get("/metrics").text)
    family = next(f for f in families if f.name == "feedback_items")
    return {
        (s.labels["model"], s.labels["label"], s.labels["result"]): s.value
        for s in family.samples
        if s.name == "feedback_items_total"
    }


def test_an_image_is_stored_with_the_serving_version_and_its_answer(
    client: TestClient, tmp_path: Path
) -> None:
    data = image_bytes(0)  # a 7
    classified = client.post("/v2/models/mnist-cnn/classify", content=data).json()
    response = client.post(URL, params={"label": "2"}, content=data, headers=AUTH)
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"id", "model_name", "model_version", "label", "predicted"}
    assert (body["model_name"], body["model_version"], body["label"]) == ("mnist-cnn", "1", "2")
    assert body["predicted"] == classified["predictions"][0]["label"] == "7"
    (item,) = stored(tmp_path)
    assert (item.id, item.label, item.version, item.predicted) == (body["id"], "2", 1, "7")
    assert (tmp_path / "feedback" / "mnist-cnn" / "2" / f"{body['id']}.png").read_bytes() == data


def test_multipart_and_jpeg_bodies_are_accepted(client: TestClient, tmp_path: Path) -> None:
    jpeg = image_bytes(1, "JPEG")
    files = {"file": ("digit.jpg", jpeg, "image/jpeg")}
    response = client.post(URL, params={"label": "2"}, files=files, headers=AUTH)
    assert response.status_code == 201, response.text
    (item,) = stored(tmp_path)
    assert item.file.endswith(".jpg") and (tmp_path / "feedback" / item.file).read_bytes() == jpeg


def test_a_version_in_the_url_is_honoured(client: TestClient) -> None:
    response = client.post(
        "/v2/models/mnist-cnn/versions/1/feedback?label=7", content=image_bytes(0), headers=AUTH
    )
    assert response.status_code == 201 and response.json()["model_version"] == "1"
    missing = client.post(
        "/v2/models/mnist-cnn/versions/9/feedback?label=7", content=image_bytes(0), headers=AUTH
    )
    assert_error(missing, 404, "no served version 9")


def test_labels_are_the_models_own(client: TestClient, tmp_path: Path) -> None:
    assert_error(
        client.post(URL, params={"label": "seven"}, content=image_bytes(0), headers=AUTH),
        400,
        "'seven' is not one of model 'mnist-cnn''s labels: 0, 1, 2",
    )
    assert_error(client.post(URL, content=image_bytes(0), headers=AUTH), 400, "label")
    fashion = client.post(
        "/v2/models/fashion-cnn/feedback",
        params={"label": "T-shirt/top"},
        content=image_bytes(0),
        headers=AUTH,
    )
    assert fashion.status_code == 201
    assert stored(tmp_path) == [] and [i.label for i in stored(tmp_path, "fashion-cnn")] == ["T-shirt/top"]
    assert feedback_counts(client)[("mnist-cnn", "", "bad_label")] == 1


@pytest.mark.parametrize(
    ("headers", "status", "message"),
    [
        ({}, 401, "missing bearer token"),
        ({"Authorization": f"Basic {TOKEN}"}, 401, "expected 'Authorization: Bearer <token>'"),
        ({"Authorization": "Bearer "}, 401, "expected 'Authorization: Bearer <token>'"),
        ({"Authorization": "Bearer wrong-token-wrong-token"}, 403, "invalid feedback token"),
    ],
)
def test_the_token_is_required(
    client: TestClient, tmp_path: Path, headers: dict[str, str], status: int, message: str
) -> None:
    response = client.post(URL, params={"label": "7"}, content=image_bytes(0), headers=headers)
    assert_error(response, status, message)
    if status == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert stored(tmp_path) == []
    assert feedback_counts(client)[("mnist-cnn", "7", "unauthorized")] == 1


def test_the_token_is_compared_in_constant_time_and_never_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    caplog.set_level(logging.DEBUG)
    with TestClient(create_app(settings(tmp_path))) as c:
        c.post(
            URL,
            params={"label": "7"},
            content=image_bytes(0),
            headers={"Authorization": "Bearer guess-guess-guess"},
        )
        c.post(URL, params={"label": "7"}, content=image_bytes(0), headers=AUTH)
    assert calls == [(b"guess-guess-guess", TOKEN.encode()), (TOKEN.encode(), TOKEN.encode())]
    assert "feedback_token" in caplog.text  # the settings echo ran, masked
    assert TOKEN not in caplog.text


def test_bad_bodies_get_the_classify_answers_and_store_nothing(tmp_path: Path) -> None:
    with TestClient(create_app(settings(tmp_path, max_body_bytes=4096, max_image_pixels=10_000))) as c:
        post = lambda body, **kw: c.post(URL, params={"label": "7"}, content=body, headers=AUTH, **kw)  # noqa: E731
        assert_error(post(b"GIF89a" + b"\0" * 100), 415, "send PNG or JPEG")
        assert_error(post(b"\x89PNG\r\n\x1a\n" + b"\0" * 40), 400, "corrupt")
        assert_error(post(b""), 400, "empty image")
        assert_error(post(b"\0" * 5000), 413, "exceeds the limit of 4096 bytes")
        big = io.BytesIO()
        Image.new("L", (200, 200)).save(big, format="PNG")
        assert_error(post(big.getvalue()), 413, "the limit is 10000")
        counts = feedback_counts(c)
    assert stored(tmp_path) == [] and not (tmp_path / "feedback" / "mnist-cnn").exists()
    assert counts[("mnist-cnn", "7", "bad_image")] == 5


def test_a_full_quota_is_a_507_saying_which(tmp_path: Path) -> None:
    with TestClient(create_app(settings(tmp_path, feedback_max_items=2))) as c:
        for _ in range(2):
            assert c.post(URL, params={"label": "7"}, content=image_bytes(0), headers=AUTH).status_code == 201
        full = c.post(URL, params={"label": "1"}, content=image_bytes(2), headers=AUTH)
        assert_error(full, 507, "feedback quota for model 'mnist-cnn' is full: 2 of 2 items")
        counts = feedback_counts(c)
        gauges = c.get("/metrics").text
    assert counts[("mnist-cnn", "7", "accepted")] == 2 and counts[("mnist-cnn", "1", "quota_items")] == 1
    assert 'feedback_stored_items{model="mnist-cnn"} 2.0' in gauges
    assert len(stored(tmp_path)) == 2


def test_usage_gauges_start_from_what_is_on_disk(tmp_path: Path) -> None:
    with TestClient(create_app(settings(tmp_path))) as c:
        c.post(URL, params={"label": "7"}, content=image_bytes(0), headers=AUTH)
    size = stored(tmp_path)[0].bytes
    with TestClient(create_app(settings(tmp_path))) as c:
        text = c.get("/metrics").text
    assert 'feedback_stored_items{model="mnist-cnn"} 1.0' in text
    assert f'feedback_stored_bytes{{model="mnist-cnn"}} {float(size)}' in text


def test_unknown_models_are_404_and_not_counted(client: TestClient) -> None:
    assert_error(
        client.post("/v2/models/nope/feedback?label=7", content=image_bytes(0), headers=AUTH),
        404,
        "unknown model 'nope'",
    )
    assert all(model != "nope" for model, _, _ in feedback_counts(client))


@pytest.mark.parametrize(
    "overrides", [{"feedback_dir": None, "feedback_token": None}, {"feedback_token": None}]
)
def test_without_a_directory_and_a_token_feedback_is_off(tmp_path: Path, overrides: dict[str, Any]) -> None:
    with TestClient(create_app(settings(tmp_path, **overrides))) as c:
        response = c.post(URL, params={"label": "7"}, content=image_bytes(0), headers=AUTH)
        assert_error(response, 404, "feedback is not enabled on this server")
        assert c.get("/v2/models/mnist-cnn").json()["parameters"]["feedback"] is False
    assert not (tmp_path / "feedback").exists()


def test_model_metadata_says_feedback_is_on(client: TestClient) -> None:
    assert client.get("/v2/models/mnist-cnn").json()["parameters"]["feedback"] is True


def test_an_unwritable_feedback_directory_fails_start_up(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    app = create_app(settings(tmp_path, feedback_dir=blocker / "feedback"))
    with pytest.raises(RuntimeError, match="cannot create the feedback directory"), TestClient(app):
        pass


@pytest.mark.slow
def test_a_disk_that_fills_is_507_and_leaves_no_torn_line_or_stray_image(tmp_path: Path) -> None:
    # The real process, storing on a real 256 KiB tmpfs until it is full.
    with tiny_filesystem(tmp_path / "fs", 256) as root:
        env = {"SERVE_MODELS": "mnist-cnn", "SERVE_FEEDBACK_DIR": str(root), "SERVE_FEEDBACK_TOKEN": TOKEN}
        with running_service(tmp_path, env=env) as service:
            url = f"{service.url}{URL}?label=7"
            statuses: list[int] = []
            with httpx.Client(timeout=30) as client:
                while len(statuses) < 2000 and (not statuses or statuses[-1] == 201):
                    statuses.append(
                        client.post(url, content=image_bytes(len(statuses)), headers=AUTH).status_code
                    )
                full = client.post(url, content=image_bytes(0), headers=AUTH)
                assert client.get(f"{service.url}/v2/health/ready").status_code == 200
            assert statuses[-1] == 507 and statuses.count(201) == len(statuses) - 1 > 10
            assert full.status_code == 507 and full.json() == {"error": "no space left to store feedback"}
        read = read_log(log_path(root, "mnist-cnn"))
        assert not read.torn and len(read.items) == statuses.count(201)
        named = {item.file for item in read.items}
        on_disk = {p.relative_to(root).as_posix() for p in (root / "mnist-cnn").rglob("*") if p.is_file()}
        assert on_disk == named
