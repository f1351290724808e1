"""The S3 model store against a real S3 API server (moto's server mode, its own process).

Publishing through ``training.publish`` (claim, files, metadata last), discovery that ignores what is not
committed, downloads checked against every sha256, the local cache, records, racing publishers, and the
errors an operator gets for a missing bucket, wrong credentials, an empty prefix and an unreachable store.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from service.contract import METADATA_FILE, MODEL_FILE, Metadata, read_metadata
from service.storage import StoreError, StoreUnavailable, VersionCorrupt, open_store
from service.storage.s3 import CLAIM_FILE, S3Store
from tests.helpers.data import MODELS
from tests.helpers.s3server import S3Server, moto_server
from training.publish import publish, versions

pytestmark = pytest.mark.slow


def shipped(name: str = "mnist-cnn") -> tuple[bytes, Metadata]:
    metadata, _ = read_metadata(MODELS / name / "1" / METADATA_FILE)
    return (MODELS / name / "1" / MODEL_FILE).read_bytes(), metadata


def publish_shipped(url: str, name: str = "mnist-cnn", extra: bool = False) -> int:
    model, metadata = shipped(name)

    def write_extra(directory: Path) -> None:
        (directory / "train").mkdir()
        (directory / "train" / "model.keras").write_bytes(b"keras bytes")

    published = publish(
        url,
        name,
        model,
        lambda v: metadata.model_copy(update={"version": v}),
        write_extra if extra else None,
    )
    return published.version


def store_for(url: str, tmp_path: Path) -> S3Store:
    store = open_store(url, cache_dir=tmp_path / "cache", cache_bytes=64 * 1024**2)
    assert isinstance(store, S3Store)
    return store


def test_publish_then_serve_from_the_cache(bucket: str, s3: S3Server, tmp_path: Path) -> None:
    url = f"s3://{bucket}/repo"
    assert (publish_shipped(url, extra=True), publish_shipped(url)) == (1, 2)
    keys = sorted(o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket)["Contents"])
    assert f"repo/mnist-cnn/1/{CLAIM_FILE}" in keys and "repo/mnist-cnn/1/train/model.keras" in keys
    stored = s3.client().get_object(Bucket=bucket, Key="repo/mnist-cnn/1/metadata.json")
    document = json.loads(stored["Body"].read())
    assert document["version"] == 1
    assert document["files"]["train/model.keras"] == hashlib.sha256(b"keras bytes").hexdigest()
    assert document["files"][MODEL_FILE] == document["sha256"]

    store = store_for(url, tmp_path)
    store.check()
    assert store.scan() == {"mnist-cnn": [1, 2]}
    path = store.local_version("mnist-cnn", 2)
    assert path.parts[-2:] == ("mnist-cnn", "2")
    assert (path / MODEL_FILE).read_bytes() == shipped()[0]
    # Downloaded once: with the object gone the cached copy still answers, in a new store (a restart).
    s3.client().delete_object(Bucket=bucket, Key="repo/mnist-cnn/2/model.onnx")
    assert store_for(url, tmp_path).local_version("mnist-cnn", 2) == path


def test_a_version_without_its_commit_object_is_not_a_version(
    bucket: str, s3: S3Server, tmp_path: Path
) -> None:
    url = f"s3://{bucket}/repo"
    publish_shipped(url)
    client = s3.client()
    client.put_object(Bucket=bucket, Key=f"repo/mnist-cnn/2/{CLAIM_FILE}", Body=b"x")
    client.put_object(Bucket=bucket, Key="repo/mnist-cnn/2/model.onnx", Body=b"half")
    store = store_for(url, tmp_path)
    assert store.scan() == {"mnist-cnn": [1]}
    assert store.incomplete("mnist-cnn") == {}  # an upload in progress is not reported...
    store.stale_upload_s = 0
    assert store.incomplete("mnist-cnn") == {2: [METADATA_FILE]}  # ...one abandoned is
    # The next publisher skips the number being written.
    assert publish_shipped(url) == 3
    assert store.scan() == {"mnist-cnn": [1, 3]}


def test_a_corrupted_object_is_refused_and_not_cached(bucket: str, s3: S3Server, tmp_path: Path) -> None:
    url = f"s3://{bucket}"
    publish_shipped(url)
    model = shipped()[0]
    s3.client().put_object(Bucket=bucket, Key="mnist-cnn/1/model.onnx", Body=model[:-1] + b"\0")
    store = store_for(url, tmp_path)
    assert store.scan() == {"mnist-cnn": [1]}
    with pytest.raises(VersionCorrupt, match=r"mnist-cnn/1/model.onnx: sha256 mismatch"):
        store.local_version("mnist-cnn", 1)
    assert store.cache is not None and store.cache.entries() == []


def test_metadata_that_breaks_the_contract_is_refused(bucket: str, s3: S3Server, tmp_path: Path) -> None:
    s3.client().put_object(Bucket=bucket, Key="m/1/metadata.json", Body=b'{"name": "m", "version": "1"}')
    store = store_for(f"s3://{bucket}", tmp_path)
    with pytest.raises(VersionCorrupt, match="'version' must be of type int"):
        store.local_version("m", 1)


def test_racing_publishers_get_distinct_complete_versions(bucket: str, tmp_path: Path) -> None:
    url = f"s3://{bucket}/race"
    results: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def publisher() -> None:
        try:
            start.wait(timeout=30)
            results.append(publish_shipped(url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=publisher) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert sorted(results) == [1, 2, 3, 4]
    store = store_for(url, tmp_path)
    assert store.scan() == {"mnist-cnn": [1, 2, 3, 4]}
    for version in results:
        path = store.local_version("mnist-cnn", version)
        assert json.loads((path / METADATA_FILE).read_text())["version"] == version


def test_a_claimed_number_is_not_committed_twice(bucket: str, tmp_path: Path) -> None:
    store = store_for(f"s3://{bucket}", tmp_path)
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / MODEL_FILE).write_bytes(b"first")
    assert store.commit("m", 1, staging, b"{}") == f"s3://{bucket}/m/1"
    (staging / MODEL_FILE).write_bytes(b"second")
    assert store.commit("m", 1, staging, b"{}") is None
    assert store.read_file("m", 1, MODEL_FILE) == b"first"
    assert versions(f"s3://{bucket}", "m") == [1]


def test_records_beside_the_model(bucket: str, tmp_path: Path) -> None:
    store = store_for(f"s3://{bucket}/p", tmp_path)
    assert store.read_record("mnist-cnn", "rollout") is None
    record: dict[str, Any] = {"stable": 1, "canary": 2, "weight": 0.1}
    store.write_record("mnist-cnn", "rollout", record)
    assert store.read_record("mnist-cnn", "rollout") == record
    store.write_record("mnist-cnn", "rollout", {**record, "weight": 0.5})
    assert store.read_record("mnist-cnn", "rollout") == {**record, "weight": 0.5}
    # A record is not a version, and not a model of its own.
    assert store.scan() == {"mnist-cnn": []}
    with pytest.raises(ValueError, match="invalid"):
        store.write_record("mnist-cnn", "../x", record)


def test_a_missing_bucket_is_a_clear_error(bucket: str, tmp_path: Path) -> None:
    store = store_for(f"s3://{bucket}-absent/models", tmp_path)
    with pytest.raises(StoreError, match=f"bucket '{bucket}-absent' does not exist"):
        store.check()


def test_a_prefix_without_models_is_a_clear_error(bucket: str, tmp_path: Path) -> None:
    publish_shipped(f"s3://{bucket}/elsewhere")
    with pytest.raises(StoreError, match="no model versions"):
        store_for(f"s3://{bucket}/models", tmp_path).check()


def test_an_unreachable_store_is_unavailable_not_broken(bucket: str, s3: S3Server, tmp_path: Path) -> None:
    publish_shipped(f"s3://{bucket}")
    store = store_for(f"s3://{bucket}", tmp_path)
    assert store.scan() == {"mnist-cnn": [1]}
    path = store.local_version("mnist-cnn", 1)
    s3.proxy.stop()
    try:
        with pytest.raises(StoreUnavailable, match="unreachable"):
            store.scan()
        assert store.known() == {"mnist-cnn": [1]}  # the index answers from the last listing
        assert (path / MODEL_FILE).is_file()
    finally:
        s3.proxy.start()
    assert store.scan() == {"mnist-cnn": [1]}


def test_wrong_credentials_are_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # moto checks signatures only when told to: a second server that does, with no known keys.
    with moto_server(tmp_path, env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as strict:
        for key, value in strict.env().items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG0")
        with pytest.raises(StoreError, match=r"access denied .*check the credentials"):
            store_for("s3://models/repo", tmp_path).check()


@pytest.mark.parametrize(
    "url, message",
    [
        ("s3://UPPER/x", "not a valid bucket name"),
        ("s3:///x", "not a valid bucket name"),
        ("s3://bucket/a/../b", "plain path segments"),
        ("gs://bucket/x", "unsupported repository"),
    ],
)
def test_bad_urls_are_refused(url: str, message: str) -> None:
    from service.storage import parse_location

    with pytest.raises(ValueError, match=message):
        parse_location(url)
