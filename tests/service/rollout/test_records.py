"""The rollout record's store (service/rollout/records.py): atomic, durable, and strict about damage."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.rollout.records import RECORD_FILE, RecordError, read_record, remove_record, write_record


def test_write_then_read_round_trips_and_leaves_no_temporary(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    assert read_record(tmp_path, "m") is None
    write_record(tmp_path, "m", {"state": "shadow", "revision": 1})
    write_record(tmp_path, "m", {"state": "canary", "revision": 2})
    assert read_record(tmp_path, "m") == {"state": "canary", "revision": 2}
    assert sorted(os.listdir(tmp_path / "m")) == [RECORD_FILE]
    remove_record(tmp_path, "m")
    assert read_record(tmp_path, "m") is None


def test_a_failed_write_keeps_the_old_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "m").mkdir()
    write_record(tmp_path, "m", {"revision": 1})

    def fail(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        write_record(tmp_path, "m", {"revision": 2})
    assert read_record(tmp_path, "m") == {"revision": 1}
    assert sorted(os.listdir(tmp_path / "m")) == [RECORD_FILE]


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]"])
def test_a_damaged_record_is_an_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / RECORD_FILE).write_bytes(content)
    with pytest.raises(RecordError):
        read_record(tmp_path, "m")


def test_model_names_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid model name"):
        read_record(tmp_path, "../etc")
