"""The durable feedback store: layout, log, quotas, ids, torn lines, and a real SIGKILL mid-write."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest

from service.errors import InsufficientStorage, ServiceError
from service.feedback.store import (
    FeedbackLogError,
    FeedbackStore,
    QuotaFull,
    log_path,
    new_id,
    read_log,
)
from tests.helpers.data import ROOT
from tests.helpers.filesystems import tiny_filesystem

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


def store(root: Path, **quota: int) -> FeedbackStore:
    return FeedbackStore(
        root, max_items=quota.get("max_items", 1000), max_bytes=quota.get("max_bytes", 1 << 30)
    )


def put(s: FeedbackStore, label: str = "7", data: bytes = PNG, model: str = "mnist-cnn") -> str:
    return s.store(model, label, data, "png", served_version=3, predicted="1").id


def test_an_item_is_stored_in_image_folder_layout_and_logged(tmp_path: Path) -> None:
    s = store(tmp_path)
    item = s.store("mnist-cnn", "7", PNG, "png", served_version=3, predicted="1")
    path = tmp_path / "mnist-cnn" / "7" / f"{item.id}.png"
    assert path.read_bytes() == PNG
    assert item.file == f"mnist-cnn/7/{item.id}.png"
    lines = log_path(tmp_path, "mnist-cnn").read_bytes().splitlines()
    assert [orjson.loads(line) for line in lines] == [item.as_json()]
    record = item.as_json()
    assert (record["model"], record["label"], record["version"], record["predicted"]) == (
        "mnist-cnn",
        "7",
        3,
        "1",
    )
    assert record["bytes"] == len(PNG) and record["sha256"] == hashlib.sha256(PNG).hexdigest()
    assert record["time"].endswith("Z")
    assert not list(tmp_path.rglob("*.partial"))


def test_a_label_with_a_slash_stays_inside_its_model_folder(tmp_path: Path) -> None:
    s = store(tmp_path)
    item = s.store("fashion-cnn", "T-shirt/top", PNG, "png", served_version=1, predicted="Shirt")
    assert (tmp_path / "fashion-cnn" / "T-shirt%2Ftop" / f"{item.id}.png").is_file()
    assert read_log(log_path(tmp_path, "fashion-cnn")).items[0].label == "T-shirt/top"


def test_quota_on_items_is_per_model_and_refuses_with_507(tmp_path: Path) -> None:
    s = store(tmp_path, max_items=2)
    put(s)
    put(s)
    with pytest.raises(QuotaFull, match="2 of 2 items") as refused:
        put(s)
    assert refused.value.status == 507 and refused.value.reason == "quota_items"
    assert isinstance(refused.value, InsufficientStorage)
    put(s, model="mnist-mlp")  # another model has its own quota
    assert len(read_log(log_path(tmp_path, "mnist-cnn")).items) == 2
    assert len(list((tmp_path / "mnist-cnn" / "7").iterdir())) == 2


def test_quota_on_bytes_counts_the_stored_files(tmp_path: Path) -> None:
    s = store(tmp_path, max_bytes=200)
    put(s, data=b"a" * 120)
    with pytest.raises(QuotaFull, match="120 bytes stored, this image needs 81 more, the limit is 200"):
        put(s, data=b"a" * 81)
    put(s, data=b"a" * 80)
    assert s.usage("mnist-cnn").bytes == 200


def test_usage_survives_a_restart_and_counts_other_writers(tmp_path: Path) -> None:
    first, second = store(tmp_path, max_items=3), store(tmp_path, max_items=3)
    put(first)
    put(second)
    put(first)
    assert store(tmp_path).usage("mnist-cnn").items == 3
    with pytest.raises(QuotaFull):
        put(second)  # it learns of first's two items from the log, under the lock


def test_concurrent_threads_never_exceed_the_quota(tmp_path: Path) -> None:
    s = store(tmp_path, max_items=25)
    outcomes: list[str] = []

    def worker() -> None:
        for _ in range(10):
            try:
                put(s)
                outcomes.append("ok")
            except QuotaFull:
                outcomes.append("full")

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == 25 and outcomes.count("full") == 15
    assert len(read_log(log_path(tmp_path, "mnist-cnn")).items) == 25


def test_a_torn_last_line_is_tolerated_then_cut_before_the_next_append(tmp_path: Path) -> None:
    s = store(tmp_path)
    kept = put(s)
    path = log_path(tmp_path, "mnist-cnn")
    with path.open("ab") as f:
        f.write(b'{"id": "01ABC", "time": "2026-')  # what a kill inside the append leaves
    read = read_log(path)
    assert read.torn and [i.id for i in read.items] == [kept]
    fresh = store(tmp_path)
    added = put(fresh)
    read = read_log(path)
    assert not read.torn and [i.id for i in read.items] == [kept, added]
    assert read.complete_bytes == path.stat().st_size


def test_a_bad_line_before_the_last_is_an_error(tmp_path: Path) -> None:
    s = store(tmp_path)
    put(s)
    path = log_path(tmp_path, "mnist-cnn")
    with path.open("ab") as f:
        f.write(b"not json\n")  # a complete line: damage, not a write cut short
    with pytest.raises(FeedbackLogError, match="line at byte 269 is not a feedback record"):
        read_log(path)
    with pytest.raises(ServiceError, match="feedback could not be stored") as refused:
        put(s)
    assert refused.value.status == 500
    assert len(list((tmp_path / "mnist-cnn" / "7").iterdir())) == 1


def test_invalid_model_names_and_extensions_are_refused(tmp_path: Path) -> None:
    s = store(tmp_path)
    with pytest.raises(ValueError, match="invalid model name"):
        s.store("../x", "7", PNG, "png", served_version=1, predicted="7")
    with pytest.raises(ValueError, match="extension"):
        s.store("mnist-cnn", "7", PNG, "gif", served_version=1, predicted="7")
    assert not any(tmp_path.iterdir())


def test_a_full_disk_is_a_507_and_logs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = store(tmp_path)
    put(s)

    def no_space(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(InsufficientStorage, match="no space left"):
        put(s)
    monkeypatch.undo()
    assert len(read_log(log_path(tmp_path, "mnist-cnn")).items) == 1
    assert len(list((tmp_path / "mnist-cnn" / "7").iterdir())) == 1  # the temporary file is gone


def test_a_log_append_cut_short_by_a_full_disk_is_507_and_leaves_nothing(tmp_path: Path) -> None:
    with tiny_filesystem(tmp_path / "fs", 256) as root:
        s = store(root)
        log = log_path(root, "mnist-cnn")
        page = os.statvfs(root).f_frsize
        put(s)
        line = log.stat().st_size
        while page - log.stat().st_size % page >= line:  # until the log's last page holds part of a line
            put(s)
        before = log.read_bytes()
        assert 0 < page - len(before) % page < line
        # Fill the disk but for the image's one page: the image is stored, the log line is cut short.
        stat = os.statvfs(root)
        (root / "filler").write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - page))
        with pytest.raises(InsufficientStorage, match="no space left"):
            put(s)
        assert log.read_bytes() == before  # no torn line
        named = {item.file for item in read_log(log).items}
        on_disk = {p.relative_to(root).as_posix() for p in (root / "mnist-cnn").rglob("*") if p.is_file()}
        assert on_disk == named  # the refused item's image is gone, no partial file is left
        (root / "filler").unlink()
        put(s)
        read = read_log(log)
        assert not read.torn and len(read.items) == len(named) + 1


def test_images_no_log_line_names_are_swept_when_a_store_opens(tmp_path: Path) -> None:
    first = store(tmp_path)
    put(first)
    first.close()
    folder = tmp_path / "mnist-cnn" / "7"
    orphan = folder / f"{new_id()}.png"  # an image stored by a writer that died before its log line
    orphan.write_bytes(PNG)
    unrelated = folder / "notes.txt"
    unrelated.write_text("an operator's file, not an item")
    put(store(tmp_path))
    assert not orphan.exists() and unrelated.exists()
    assert all((tmp_path / item.file).exists() for item in read_log(log_path(tmp_path, "mnist-cnn")).items)


# ---- a real SIGKILL ----------------------------------------------------------------------------------

WRITER = """
import os, random, sys, hashlib
from pathlib import Path
from service.feedback.store import FeedbackStore
store = FeedbackStore(Path(sys.argv[1]), max_items=10**6, max_bytes=1 << 40)
rng = random.Random(int(sys.argv[2]))
while True:
    body = rng.randbytes(rng.randrange(1, 2 << 20))
    label = rng.choice(["0", "1", "T-shirt/top"])
    store.store("mnist-cnn", label, body + hashlib.sha256(body).digest(), "png", served_version=1,
                predicted="0")
"""


def self_checked(data: bytes) -> bool:
    return len(data) > 32 and hashlib.sha256(data[:-32]).digest() == data[-32:]


@pytest.mark.slow
def test_sigkill_mid_write_loses_at_most_the_item_in_flight(tmp_path: Path) -> None:
    path = log_path(tmp_path, "mnist-cnn")
    rng = random.Random(7)
    logged_before = 0
    for round_ in range(4):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), str(round_)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            deadline = time.monotonic() + 60
            while len(read_log(path).items) < logged_before + 3 and time.monotonic() < deadline:
                assert writer.poll() is None, "the writer died on its own"
                time.sleep(0.01)
            time.sleep(rng.uniform(0, 0.05))  # somewhere inside a write, most likely
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait()
        assert writer.returncode == -signal.SIGKILL

        read = read_log(path)  # raises if any line but the last is damaged
        assert len(read.items) >= logged_before + 3
        images = [p for p in (tmp_path / "mnist-cnn").rglob("*") if p.is_file()]
        complete = [p for p in images if not p.name.startswith(".")]
        assert all(p.name.endswith(".partial") for p in images if p.name.startswith("."))
        assert all(self_checked(p.read_bytes()) for p in complete), "a visible image is incomplete"
        for item in read.items:
            data = (tmp_path / item.file).read_bytes()
            assert len(data) == item.bytes and hashlib.sha256(data).hexdigest() == item.sha256
        # At most the image in flight at each kill has no log line.
        assert len(complete) - len(read.items) <= round_ + 1
        logged_before = len(read.items)

    # A writer after the kills repairs the tail, removes the leftovers and logs cleanly.
    s = store(tmp_path)
    put(s, label="0", data=b"x" * 40)
    read = read_log(path)
    assert not read.torn and len(read.items) == logged_before + 1
    assert not list((tmp_path / "mnist-cnn").rglob(".*.partial"))
