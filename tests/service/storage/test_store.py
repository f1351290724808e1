"""The local-directory model store: discovery, atomic commits, records; and repository locations."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.storage import LocalStore, StoreError, open_store, parse_location


def test_locations() -> None:
    assert parse_location("models") == Path("models")
    assert parse_location("s3://bucket/a/b") == "s3://bucket/a/b"
    assert isinstance(open_store("models"), LocalStore)


def test_commit_renames_into_place_and_a_taken_number_is_refused(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    with store.staging("m") as staging:
        (staging / "model.onnx").write_bytes(b"first")
        assert store.commit("m", 1, staging, b"{}") == str(tmp_path / "m" / "1")
    with store.staging("m") as staging:
        (staging / "model.onnx").write_bytes(b"second")
        assert store.commit("m", 1, staging, b"{}") is None
    assert store.read_file("m", 1, "model.onnx") == b"first"
    assert store.numbers("m") == [1]
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1"]  # no staging left behind
    assert store.scan() == {"m": [1]}


def test_records_are_replaced_atomically(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    assert store.read_record("m", "rollout") is None
    store.write_record("m", "rollout", {"weight": 0.1})
    store.write_record("m", "rollout", {"weight": 0.2})
    assert store.read_record("m", "rollout") == {"weight": 0.2}
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["rollout.json"]
    (tmp_path / "m" / "rollout.json").write_text("[1]")
    with pytest.raises(StoreError, match="not a JSON object"):
        store.read_record("m", "rollout")


def test_a_missing_directory_fails_the_check(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        open_store(tmp_path / "absent").check()
