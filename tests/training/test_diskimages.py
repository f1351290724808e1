"""Image rows on disk: selecting and reading them like an array, and refusing files that are not caches."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from training.diskimages import DiskImages, head, npy_header, select
from training.errors import DataError


@pytest.fixture
def stored(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rows = np.random.default_rng(0).integers(0, 256, (8, 5, 4, 3), dtype=np.uint8)
    path = tmp_path / "rows.npy"
    path.write_bytes(npy_header(rows.shape) + rows.tobytes())
    return path, rows


def test_the_header_makes_a_plain_npy_file(stored: tuple[Path, np.ndarray]) -> None:
    path, rows = stored
    assert len(npy_header((123456, 64, 64, 3))) == len(npy_header((1, 1, 1, 1))) == 128
    assert np.array_equal(np.load(path), rows)


def test_rows_are_selected_and_read_like_an_array(stored: tuple[Path, np.ndarray]) -> None:
    path, rows = stored
    images = DiskImages(path)
    assert images.shape == (8, 5, 4, 3) and len(images) == 8 and images.dtype == np.uint8
    picked = np.array([6, 1, 2, 3, 0, 0])
    assert np.array_equal(images.take(picked), rows[picked])
    subset = images.subset(np.array([7, 5, 3]))
    assert isinstance(subset, DiskImages)
    assert subset.shape == (3, 5, 4, 3)
    assert np.array_equal(subset.take(np.array([2, 0])), rows[[3, 7]])
    assert np.array_equal(select(subset, np.array([1])).take(np.array([0])), rows[[5]])
    assert np.array_equal(head(subset, 2), rows[[7, 5]])
    assert np.array_equal(head(subset, 99), rows[[7, 5, 3]])
    assert select(np.arange(10), np.array([3, 1])).tolist() == [3, 1]
    assert head(np.arange(10), 3).tolist() == [0, 1, 2]
    with pytest.raises(IndexError):
        images.subset(np.array([8]))


def test_any_version_1_npy_of_uint8_images_reads(tmp_path: Path) -> None:
    rows = np.arange(2 * 3 * 3 * 1, dtype=np.uint8).reshape(2, 3, 3, 1)
    np.save(tmp_path / "saved.npy", rows)
    assert np.array_equal(DiskImages(tmp_path / "saved.npy").take(np.array([1, 0])), rows[[1, 0]])


@pytest.mark.parametrize(
    ("array", "message"),
    [(np.zeros((2, 3, 3, 1), np.float32), "dtype float32"), (np.zeros((2, 3), np.uint8), "shape (2, 3)")],
)
def test_files_that_are_not_image_caches_are_refused(tmp_path: Path, array: np.ndarray, message: str) -> None:
    np.save(tmp_path / "other.npy", array)
    with pytest.raises(DataError, match=re.escape(message)):
        DiskImages(tmp_path / "other.npy")
    (tmp_path / "text.npy").write_text("hello")
    with pytest.raises(DataError, match="not an image cache"):
        DiskImages(tmp_path / "text.npy")


def test_a_truncated_cache_is_an_error_not_garbage(stored: tuple[Path, np.ndarray]) -> None:
    path, _ = stored
    path.write_bytes(path.read_bytes()[:-10])
    images = DiskImages(path)
    assert images.take(np.array([0])).shape == (1, 5, 4, 3)
    with pytest.raises(DataError, match="truncated at row 7"):
        images.take(np.array([7]))
