"""IDX reading, data set loading and seeded stratified sampling, on the real shared data."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest

from training.data import (
    DATASETS,
    load_dataset,
    read_idx,
    resolve_data_dir,
    stratified_sample,
    train_validation_split,
)
from training.errors import DataError, IdxFormatError

MNIST_TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_read_idx_mnist_files(data_dir: Path) -> None:
    images = read_idx(data_dir / "mnist" / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28)
    assert images.dtype == np.uint8
    assert labels.shape == (10000,)
    assert labels.dtype == np.uint8
    assert np.bincount(labels).tolist() == MNIST_TEST_CLASS_COUNTS


def test_mnist_loads_with_known_statistics(mnist) -> None:
    assert mnist.x_train.shape == (60000, 28, 28, 1)
    assert mnist.x_test.shape == (10000, 28, 28, 1)
    assert mnist.x_train.dtype == np.uint8
    assert mnist.y_train.dtype == np.int64
    assert np.bincount(mnist.y_test).tolist() == MNIST_TEST_CLASS_COUNTS
    assert mnist.x_train.mean() / 255 == pytest.approx(0.1307, abs=1e-4)
    assert mnist.labels == tuple("0123456789")


def test_fashion_mnist_loads_balanced(data_dir: Path) -> None:
    fashion = load_dataset("fashion-mnist", data_dir, download=False)
    assert fashion.x_train.shape == (60000, 28, 28, 1)
    assert np.bincount(fashion.y_train).tolist() == [6000] * 10
    assert np.bincount(fashion.y_test).tolist() == [1000] * 10
    assert fashion.x_train.mean() / 255 == pytest.approx(0.2860, abs=1e-4)
    assert fashion.labels[0] == "T-shirt/top"
    assert fashion.labels[9] == "Ankle boot"


def test_cifar10_subset_loads(data_dir: Path) -> None:
    cifar = load_dataset("cifar10", data_dir, download=False)
    assert cifar.x_train.shape == (4000, 32, 32, 3)
    assert cifar.x_test.shape == (1000, 32, 32, 3)
    assert cifar.y_train.shape == (4000,)
    assert cifar.y_test[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert cifar.labels == DATASETS["cifar10"].labels
    assert len(cifar.labels) == 10


def _idx_bytes(data_dir: Path) -> bytes:
    return gzip.decompress((data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes())


def test_truncated_idx_file_is_refused(data_dir: Path, tmp_path: Path) -> None:
    raw = _idx_bytes(data_dir)
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(raw[:5000]))
    with pytest.raises(IdxFormatError, match=r"truncated IDX file.*needs 10000 bytes, found 4992"):
        read_idx(path)


def test_truncated_gzip_stream_is_refused(data_dir: Path, tmp_path: Path) -> None:
    compressed = (data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes()
    path = tmp_path / "labels.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(IdxFormatError, match=r"labels\.gz: cannot read"):
        read_idx(path)


def test_wrong_magic_is_refused(data_dir: Path, tmp_path: Path) -> None:
    raw = _idx_bytes(data_dir)
    path = tmp_path / "labels"
    path.write_bytes(b"\x00\x00\x07\x01" + raw[4:])
    with pytest.raises(IdxFormatError, match=r"not an IDX file.*magic 0x00000701"):
        read_idx(path)


def test_trailing_bytes_are_refused(data_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "labels"
    path.write_bytes(_idx_bytes(data_dir) + b"\x00\x01")
    with pytest.raises(IdxFormatError, match="2 unexpected bytes"):
        read_idx(path)


def test_plain_idx_file_reads_like_the_gzipped_one(data_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "labels"
    path.write_bytes(_idx_bytes(data_dir))
    assert np.array_equal(read_idx(path), read_idx(data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz"))


def test_labels_file_in_place_of_images_is_refused(data_dir: Path, tmp_path: Path) -> None:
    directory = tmp_path / "mnist"
    directory.mkdir()
    for name in DATASETS["mnist"].files:
        source = "t10k-labels-idx1-ubyte.gz" if name == "train-images-idx3-ubyte.gz" else name
        (directory / name).write_bytes((data_dir / "mnist" / source).read_bytes())
    with pytest.raises(IdxFormatError, match="expected IDX images"):
        load_dataset("mnist", tmp_path, download=False)


def test_missing_files_without_download_name_the_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=re.escape(f"no fashion-mnist data in {tmp_path / 'fashion-mnist'}")):
        load_dataset("fashion-mnist", tmp_path, download=False)


def test_data_dir_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    assert resolve_data_dir("elsewhere") == Path("elsewhere")
    monkeypatch.delenv("DATA_DIR")
    assert resolve_data_dir(None) == Path("../shared/data")


def test_stratified_sample_keeps_class_shares() -> None:
    labels = np.repeat(np.arange(4), [400, 300, 200, 100])
    picked = stratified_sample(labels, 100, np.random.default_rng(0))
    assert len(picked) == len(set(picked.tolist())) == 100
    assert np.bincount(labels[picked]).tolist() == [40, 30, 20, 10]


def test_stratified_sample_rounds_to_exact_size() -> None:
    labels = np.repeat(np.arange(3), [10, 10, 10])
    picked = stratified_sample(labels, 10, np.random.default_rng(0))
    assert len(picked) == 10
    assert sorted(np.bincount(labels[picked], minlength=3).tolist()) == [3, 3, 4]


def test_split_is_seeded_stratified_and_disjoint(mnist) -> None:
    labels = mnist.y_train
    train, validation = train_validation_split(labels, 0.1, seed=7)
    assert len(validation) == 6000
    assert len(np.intersect1d(train, validation)) == 0
    assert len(train) + len(validation) == len(labels)
    expected = np.bincount(labels) * 0.1
    assert np.abs(np.bincount(labels[validation]) - expected).max() <= 1
    again_train, again_validation = train_validation_split(labels, 0.1, seed=7)
    assert np.array_equal(validation, again_validation)
    assert np.array_equal(train, again_train)
    _, other = train_validation_split(labels, 0.1, seed=8)
    assert not np.array_equal(validation, other)


def test_zero_validation_split_keeps_everything() -> None:
    labels = np.arange(50) % 5
    train, validation = train_validation_split(labels, 0.0, seed=0)
    assert len(validation) == 0
    assert train.tolist() == list(range(50))
