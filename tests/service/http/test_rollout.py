"""The rollout API over HTTP: who may call it and what bad input gets (service/http/rollout.py)."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.core import registry as registry_module
from service.settings import Settings
from tests.helpers.data import MODELS
from tests.helpers.modelfactory import write_model_version
from tests.helpers.rolloutdrive import infer_body
from tests.helpers.variants import publish_variant

TOKEN = "admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
NAME = "mnist-mlp"
START = f"/v2/repository/models/{NAME}/rollout"


def candidate_repository(tmp_path: Path) -> Path:
    """A repository with version 1 of the model and version 2 as a candidate."""
    root = tmp_path / "models"
    publish_variant(MODELS / NAME / "1", root, NAME, 1)
    publish_variant(MODELS / NAME / "1", root, NAME, 2, candidate=True)
    return root


def fail_record_writes(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """Every rollout-record write raises OSError ``code``, as the repository's filesystem would."""

    def fail(*_: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(registry_module, "write_record", fail)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    root = candidate_repository(tmp_path)
    # Version 3 classifies 32x32 RGB images: another signature.
    write_model_version(root, NAME, 3, input_shape=(32, 32, 3))
    (root / NAME / "3" / "candidate").write_text("")
    settings = Settings(
        model_repository=root, models=[NAME], grpc_port=0, admin_token=TOKEN, version_policy="all"
    )
    with TestClient(create_app(settings)) as c:
        yield c


def test_reading_needs_no_token_and_shows_idle(client: TestClient) -> None:
    body = client.get(f"/v2/models/{NAME}/rollout").json()
    assert (body["state"], body["champion"]) == ("idle", 1)
    assert client.get("/v2/models/nope/rollout").status_code == 404


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong-token-0123456789"}, 403),
        ({"Authorization": "Basic x"}, 401),
    ],
)
def test_every_change_needs_the_admin_token(client: TestClient, headers: dict[str, str], status: int) -> None:
    for path in (START, f"{START}/promote", f"{START}/rollback", f"{START}/pause"):
        answer = client.post(path, json={"candidate": "2"}, headers=headers)
        assert answer.status_code == status, (path, answer.text)
        assert "error" in answer.json()
    assert client.get(f"/v2/models/{NAME}/rollout").json()["state"] == "idle"


def test_bad_starts_are_refused_with_their_reason(client: TestClient) -> None:
    unknown = client.post(START, json={"candidate": "9"}, headers=ADMIN)
    assert unknown.status_code == 404 and "no version 9" in unknown.json()["error"]
    other = client.post(START, json={"candidate": "3"}, headers=ADMIN)
    assert other.status_code == 400 and "signature differs" in other.json()["error"]
    assert client.get(f"/v2/models/{NAME}/rollout").json()["state"] == "idle"  # nothing left behind
    for body, words in (
        ({"candidate": "two"}, "positive integer"),
        ({}, "candidate"),
        ({"candidate": "2", "alpha": 0.9}, "alpha"),
        ({"candidate": "2", "stages": []}, "stages"),
        ({"candidate": "2", "surprise": 1}, "surprise"),
    ):
        answer = client.post(START, json=body, headers=ADMIN)
        assert answer.status_code == 400 and words in answer.json()["error"], (body, answer.text)
    same = client.post(START, json={"candidate": "1"}, headers=ADMIN)
    assert same.status_code == 400 and "champion already" in same.json()["error"]
    assert client.post(START, content=b"{", headers=ADMIN).status_code == 400


def test_one_rollout_at_a_time_and_the_operator_steers_it(client: TestClient) -> None:
    assert client.post(f"{START}/promote", headers=ADMIN).status_code == 409  # none runs
    started = client.post(START, json={"candidate": "2"}, headers=ADMIN)
    assert started.status_code == 200 and started.json()["state"] == "shadow"
    again = client.post(START, json={"candidate": "2"}, headers=ADMIN)
    assert again.status_code == 409 and "already has a rollout" in again.json()["error"]
    paused = client.post(f"{START}/pause", headers=ADMIN).json()
    assert (paused["state"], paused["weight"]) == ("paused", 0.0)
    assert client.post(f"{START}/pause", headers=ADMIN).status_code == 409
    assert client.post(f"{START}/resume", headers=ADMIN).json()["state"] == "shadow"
    promoted = client.post(f"{START}/promote", headers=ADMIN).json()
    assert (promoted["state"], promoted["champion"], promoted["reason"]) == (
        "promoted",
        2,
        "operator: promote",
    )
    assert [h["decision"] for h in promoted["history"]] == ["start", "pause", "resume", "promote"]
    assert all(h["by"] == "operator" for h in promoted["history"])
    assert client.post(f"{START}/bogus", headers=ADMIN).status_code in (400, 404)


def test_a_read_only_repository_answers_why_it_cannot_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = candidate_repository(tmp_path)
    fail_record_writes(monkeypatch, errno.EROFS)  # what a read-only mount answers (tests run as root in CI)
    settings = Settings(model_repository=root, models=[NAME], grpc_port=0, admin_token=TOKEN)
    with TestClient(create_app(settings)) as client:
        answer = client.post(START, json={"candidate": "2"}, headers=ADMIN)
        assert answer.status_code == 409, answer.text  # the process's configuration, not a fault
        assert "Read-only file system" in answer.json()["error"]
        assert "read-only for this process" in answer.json()["error"]
        assert client.get(f"/v2/models/{NAME}/rollout").json()["state"] == "idle"
        assert client.post(f"/v2/models/{NAME}/infer", json=infer_body(0)).json()["model_version"] == "1"


def test_a_repository_that_fails_the_write_answers_503_and_keeps_the_old_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = candidate_repository(tmp_path)
    fail_record_writes(monkeypatch, errno.ENOSPC)  # a disk that fills up, or a share that drops, for a moment
    settings = Settings(model_repository=root, models=[NAME], grpc_port=0, admin_token=TOKEN)
    with TestClient(create_app(settings)) as client:
        answer = client.post(START, json={"candidate": "2"}, headers=ADMIN)
        assert answer.status_code == 503, answer.text
        assert answer.headers["retry-after"] == "1"
        assert "No space left on device" in answer.json()["error"]
        assert client.get(f"/v2/models/{NAME}/rollout").json()["state"] == "idle"
        monkeypatch.undo()  # the repository takes writes again: the same call now starts the rollout
        assert client.post(START, json={"candidate": "2"}, headers=ADMIN).status_code == 200


def test_a_record_read_that_a_write_overtakes_does_not_bring_back_the_older_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = candidate_repository(tmp_path)
    real_read, real_write = registry_module.read_record, registry_module.write_record
    read_started, written = threading.Event(), threading.Event()

    def slow_read(store: object, name: str) -> object:
        data = real_read(store, name)  # the store before the write: no record yet
        read_started.set()
        assert written.wait(10)
        return data

    def write(store: object, name: str, data: object) -> None:
        real_write(store, name, data)
        written.set()

    # No follower polls of its own during the test: the read below is the only one.
    settings = Settings(
        model_repository=root, models=[NAME], grpc_port=0, admin_token=TOKEN, rollout_interval_s=3600
    )
    with TestClient(create_app(settings)) as client:
        registry = client.app.state.models  # type: ignore[attr-defined]
        monkeypatch.setattr(registry_module, "read_record", slow_read)
        monkeypatch.setattr(registry_module, "write_record", write)
        assert client.portal is not None
        fetch = client.portal.start_task_soon(registry.fetch_record, NAME)
        assert read_started.wait(10)
        assert client.post(START, json={"candidate": "2"}, headers=ADMIN).status_code == 200
        fetched = fetch.result(10)
        assert fetched is not None and fetched.candidate == 2  # the record written, not the read's
        assert client.get(f"/v2/models/{NAME}/rollout").json()["candidate"] == 2
