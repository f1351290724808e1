"""The local model cache: entries keyed by the metadata's sha256, filled atomically, bounded by LRU."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from service.storage.cache import ModelCache


def key_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def writer(metadata: bytes, model_size: int) -> Callable[[Path], None]:
    def write(directory: Path) -> None:
        (directory / "metadata.json").write_bytes(metadata)
        (directory / "model.onnx").write_bytes(b"x" * model_size)

    return write


def test_fill_then_get_returns_the_same_directory(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path, max_bytes=10_000)
    metadata = b'{"v": 1}'
    path = cache.fill(key_of(metadata), "m", 1, writer(metadata, 100))
    assert path == tmp_path / key_of(metadata) / "m" / "1"
    assert (path / "model.onnx").stat().st_size == 100
    assert cache.get(key_of(metadata), "m", 1) == path
    # A second fill does not call the writer again.
    assert cache.fill(key_of(metadata), "m", 1, lambda d: pytest.fail("written twice")) == path


def test_a_failed_fill_leaves_nothing(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path, max_bytes=10_000)

    def broken(directory: Path) -> None:
        (directory / "model.onnx").write_bytes(b"half")
        raise OSError("connection reset")

    with pytest.raises(OSError, match="connection reset"):
        cache.fill(key_of(b"m"), "m", 1, broken)
    assert list(tmp_path.iterdir()) == []


def test_least_recently_used_entries_go_first(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path, max_bytes=2_500)
    documents = [f'{{"v": {i}}}'.encode() for i in range(3)]
    keys = [key_of(d) for d in documents]
    cache.fill(keys[0], "m", 1, writer(documents[0], 1000))
    cache.fill(keys[1], "m", 2, writer(documents[1], 1000))
    os.utime(tmp_path / keys[1], (1, 1))  # entry 1 is now the least recently used
    cache.fill(keys[2], "m", 3, writer(documents[2], 1000))
    assert sorted(cache.entries()) == sorted([keys[0], keys[2]])


def test_an_entry_larger_than_the_bound_is_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = ModelCache(tmp_path, max_bytes=500)
    path = cache.fill(key_of(b"big"), "m", 1, writer(b"big", 1000))
    assert path.is_dir() and cache.entries() == [key_of(b"big")]
    assert "more than its bound" in caplog.text


def test_a_damaged_entry_is_fetched_again(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path, max_bytes=10_000)
    metadata = b'{"v": 1}'
    path = cache.fill(key_of(metadata), "m", 1, writer(metadata, 10))
    (path / "metadata.json").write_bytes(b'{"v": 2}')
    assert cache.get(key_of(metadata), "m", 1) is None
    assert cache.fill(key_of(metadata), "m", 1, writer(metadata, 10)) == path
    assert (path / "metadata.json").read_bytes() == metadata


@pytest.mark.parametrize("key", ["", "../x", "A" * 64, "0" * 63])
def test_keys_are_sha256_hex(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError, match="64 lowercase hex"):
        ModelCache(tmp_path, max_bytes=1).fill(key, "m", 1, writer(b"", 1))
