"""The feedback log format: ids, label folder names, and the reader that tolerates a torn last line."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from service.feedback.log import FeedbackLogError, format_id, label_dir_name, new_id, read_log


def test_ids_are_unique_unguessable_and_sort_by_time() -> None:
    ids = [new_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 26 and i.isalnum() and i.isupper() for i in ids)
    first = new_id()
    later = new_id()
    deadline = time.monotonic() + 5  # the bound only ends a failure
    while later[:10] == first[:10]:  # the same millisecond: wait for the clock, never a fixed time
        assert time.monotonic() < deadline, "the millisecond clock did not move"
        later = new_id()
    assert later > first
    # 80 random bits: two ids from the same millisecond differ in their random part.
    assert len({i[10:] for i in ids}) == len(ids)


def test_an_id_is_its_milliseconds_then_its_random_bits_in_crockford_base32() -> None:
    assert format_id(0, 0) == "0" * 26
    assert format_id((1 << 48) - 1, (1 << 80) - 1) == "7" + "Z" * 25
    assert format_id(1, 0) == "0" * 9 + "1" + "0" * 16
    assert format_id(0, 31) == "0" * 25 + "Z"
    # The milliseconds lead, so ids sort by them before their random part.
    assert format_id(2, 0) > format_id(1, (1 << 80) - 1)
    now = time.time_ns() // 1_000_000
    assert new_id()[:10] >= format_id(now, 0)[:10]
    for millis, bits in ((-1, 0), (1 << 48, 0), (0, -1), (0, 1 << 80)):
        with pytest.raises(ValueError, match="48 bits of milliseconds and 80 random bits"):
            format_id(millis, bits)


@pytest.mark.parametrize(
    ("label", "folder"),
    [
        ("7", "7"),
        ("Ankle boot", "Ankle boot"),
        ("T-shirt/top", "T-shirt%2Ftop"),
        ("..", "%2E."),
        (".hidden", "%2Ehidden"),
        ("100%", "100%25"),
        ("a\\b", "a%5Cb"),
        ("tab\there", "tab%09here"),
    ],
)
def test_label_folders_are_safe_path_components(label: str, folder: str) -> None:
    assert label_dir_name(label) == folder


def test_a_long_label_gets_a_bounded_unique_folder_name() -> None:
    a, b = label_dir_name("x" * 300 + "a"), label_dir_name("x" * 300 + "b")
    assert a != b and len(a.encode()) <= 200 and len(b.encode()) <= 200


def test_a_missing_log_reads_empty(tmp_path: Path) -> None:
    read = read_log(tmp_path / "none.jsonl")
    assert (read.items, read.complete_bytes, read.torn) == ([], 0, False)


def test_only_bytes_after_the_last_newline_are_torn(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    record = (
        b'{"id":"01A","time":"t","model":"m","label":"1","version":1,"predicted":"2",'
        b'"file":"m/1/01A.png","bytes":3,"sha256":"x"}'
    )
    path.write_bytes(record + b"\n" + record[:40])
    read = read_log(path)
    assert [i.id for i in read.items] == ["01A"] and read.torn and read.complete_bytes == len(record) + 1
    assert read_log(path, start=len(record) + 1).items == []  # reading on from a line boundary
    path.write_bytes(record + b"\n" + b"\0" * 64)  # a power cut can leave zeros after the last write
    assert read_log(path).torn
    path.write_bytes(record.replace(b'"bytes":3,', b"") + b"\n")  # a complete line, a field missing
    with pytest.raises(FeedbackLogError, match="line at byte 0 is not a feedback record"):
        read_log(path)
