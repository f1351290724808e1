"""Rollouts over a repository in an S3 bucket (moto's server mode, its own process): a candidate is
committed with its marker, and the rollout record the service writes lives beside the model in the
bucket, where every replica reads it again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.contract import CANDIDATE_FILE, METADATA_FILE
from service.rollout.policy import RolloutRecord, apply_decision
from service.rollout.records import RECORD_FILE, read_record, write_record
from service.settings import Settings
from service.storage.s3 import S3Store
from tests.helpers.s3server import S3Server
from tests.helpers.waiting import until
from tests.service.storage.test_s3 import publish_shipped, shipped
from training.publish import publish

pytestmark = pytest.mark.slow

NAME = "mnist-cnn"
TOKEN = "admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


class Recording:
    """A boto3 client that notes the key of every object written, in order."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.written: list[str] = []

    def put_object(self, **kwargs: Any) -> Any:
        self.written.append(kwargs["Key"])
        return self._client.put_object(**kwargs)

    def upload_file(self, path: str, bucket: str, key: str) -> Any:
        self.written.append(key)
        return self._client.upload_file(path, bucket, key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def publish_candidate(repository: str | S3Store) -> int:
    model, metadata = shipped()
    published = publish(
        repository, NAME, model, lambda v: metadata.model_copy(update={"version": v}), candidate=True
    )
    return published.version


def test_a_candidate_is_marked_before_its_commit_object(bucket: str, tmp_path: Path) -> None:
    url = f"s3://{bucket}/models"
    publish_shipped(url)
    store = S3Store.from_url(url, cache_dir=tmp_path / "cache")
    recording = Recording(store.client)
    store.client = recording
    assert publish_candidate(store) == 2
    written = [key.removeprefix("models/mnist-cnn/2/") for key in recording.written]
    assert written.index(CANDIDATE_FILE) < written.index(METADATA_FILE) == len(written) - 1
    fresh = S3Store.from_url(url, cache_dir=tmp_path / "cache")
    assert fresh.scan() == {NAME: [1, 2]}
    assert [fresh.has_file(NAME, v, CANDIDATE_FILE) for v in (1, 2)] == [False, True]


def test_the_rollout_record_lives_in_the_bucket_and_is_read_again(
    bucket: str, s3: S3Server, tmp_path: Path
) -> None:
    url = f"s3://{bucket}/models"
    publish_shipped(url)
    assert publish_candidate(url) == 2
    settings = Settings(
        model_repository=url,
        models=[NAME],
        admin_token=TOKEN,
        model_cache_dir=tmp_path / "cache",
        poll_interval_s=0.2,
        rollout_interval_s=0.1,
    )
    with TestClient(create_app(settings)) as client:
        idle = client.get(f"/v2/models/{NAME}/rollout").json()
        assert (idle["state"], idle["champion"]) == ("idle", 1)  # the marked version 2 waits
        started = client.post(f"/v2/repository/models/{NAME}/rollout", json={"candidate": "2"}, headers=ADMIN)
        assert started.status_code == 200, started.text

        # Written through the service into the bucket, beside the model's versions.
        stored = json.loads(
            s3.client().get_object(Bucket=bucket, Key=f"models/{NAME}/{RECORD_FILE}")["Body"].read()
        )
        assert (stored["state"], stored["champion"], stored["candidate"]) == ("shadow", 1, 2)
        assert stored["id"] == started.json()["id"]
        assert read_record(url, NAME) == stored

        # Another writer (a controller, another replica's operator) changes it in the bucket: this
        # service reads it again from there and follows.
        record = RolloutRecord.model_validate(stored)
        apply_decision(record, "pause", "operator: pause", by="operator")
        write_record(url, NAME, record.model_dump(mode="json"))
        until(
            lambda: client.get(f"/v2/models/{NAME}/rollout").json()["state"] == "paused",
            "the paused record followed",
        )
        assert client.get(f"/v2/models/{NAME}/rollout").json()["revision"] == record.revision
