"""Image folders as data sets: class counts the splits need, test-split carving, size and colour inference,
and loading real MNIST and CIFAR-10 images written out as PNG and JPEG files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.imagefiles import classes, image
from training.diskimages import DiskImages
from training.errors import DataError, UnreadableImage
from training.folderlayout import scan
from training.imagefolder import (
    FolderOptions,
    carve_test,
    check_counts,
    choose_preprocessing,
    load_folder,
)

from .conftest import CIFAR5, Folders


def test_classes_with_too_few_images_for_the_splits(tmp_path: Path) -> None:
    layout = scan(classes(tmp_path / "d", {"a": 10, "b": 2, "c": 1}))
    with pytest.raises(
        DataError, match=r"class\(es\) b \(2\), c \(1\); the training \+ test \+ validation splits"
    ):
        check_counts(layout.classes, layout.train.labels, True, FolderOptions(), "d")
    check_counts(layout.classes[:2], layout.train.labels[:12], True, FolderOptions(validation_split=0), "d")
    with pytest.raises(DataError, match=r"c \(1\); the training \+ validation splits need at least 2"):
        check_counts(layout.classes, layout.train.labels, False, FolderOptions(), "d")


def test_carved_test_split_is_seeded_stratified_and_disjoint() -> None:
    labels = np.repeat([0, 1, 2], [50, 10, 3])
    train, test = carve_test(labels, 0.2, seed=5)
    assert np.bincount(labels[test]).tolist() == [10, 2, 1]
    assert len(np.intersect1d(train, test)) == 0
    assert sorted([*train, *test]) == list(range(len(labels)))
    again_train, again_test = carve_test(labels, 0.2, seed=5)
    assert np.array_equal(test, again_test) and np.array_equal(train, again_train)
    assert not np.array_equal(test, carve_test(labels, 0.2, seed=6)[1])


def test_size_and_colour_default_to_the_data(tmp_path: Path) -> None:
    files = [image(tmp_path / f"{i}.png", size=(12, 10)) for i in range(3)]
    files.append(image(tmp_path / "big.png", size=(40, 30)))
    assert choose_preprocessing(files, FolderOptions()).model_dump() == {
        "height": 10,
        "width": 12,
        "color": "grayscale",
        "input_range": (0.0, 255.0),
        "resize": "stretch",
    }
    files.append(image(tmp_path / "colour.jpg", mode="RGB"))
    assert choose_preprocessing(files, FolderOptions()).color == "rgb"
    stated = choose_preprocessing(
        files, FolderOptions(image_size=(64, 32), color="grayscale", resize="center_crop")
    )
    assert (stated.height, stated.width, stated.color, stated.resize) == (64, 32, "grayscale", "center_crop")
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(UnreadableImage, match=r"bad\.png"):
        choose_preprocessing([*files, tmp_path / "bad.png"], FolderOptions(strict=True))


@pytest.mark.slow
def test_mnist_png_folder_loads_the_exact_pixels(folders: Folders, mnist, tmp_path: Path) -> None:
    log = io.StringIO()
    dataset = load_folder(folders.mnist, FolderOptions(), tmp_path / "cache", log=log)
    assert dataset.labels == tuple(str(d) for d in range(10))
    assert dataset.input_shape == (28, 28, 1)
    assert isinstance(dataset.x_train, DiskImages) and isinstance(dataset.x_test, DiskImages)
    assert (len(dataset.y_train), len(dataset.y_test)) == (300, 100)
    assert dataset.preprocessing.model_dump(mode="json")["color"] == "grayscale"
    assert dataset.source is not None and dataset.source["test"] == {"source": "test/"}
    # The files are listed sorted by class, then name: their MNIST rows in the same order.
    train_files = sorted(
        (p for p in folders.mnist_index if p.parts[-3] == "train"), key=lambda p: (p.parts[-2], p.name)
    )
    rows = [folders.mnist_index[p] for p in train_files]
    assert np.array_equal(dataset.x_train.take(np.arange(300)), mnist.x_test[rows])
    assert np.array_equal(dataset.y_train, mnist.y_test[rows])
    assert "10 classes, 400 images (split layout)" in log.getvalue()


@pytest.mark.slow
def test_cifar_jpeg_folder_carves_and_records_a_test_split(folders: Folders, tmp_path: Path) -> None:
    options = FolderOptions(image_size=(48, 40), test_split=0.25, seed=3)
    dataset = load_folder(folders.cifar, options, tmp_path / "cache", log=io.StringIO())
    assert dataset.labels == CIFAR5
    assert dataset.input_shape == (48, 40, 3)
    assert np.bincount(dataset.y_test).tolist() == [15] * 5
    assert np.bincount(dataset.y_train).tolist() == [45] * 5
    assert dataset.source is not None
    test = dataset.source["test"]
    assert (test["source"], test["fraction"], test["seed"]) == ("carved", 0.25, 3)
    assert len(test["files"]) == 75
    assert [CIFAR5.index(f.split("/")[0]) for f in test["files"]] == dataset.y_test.tolist()
    first = (
        Image.open(folders.cifar / test["files"][0])
        .convert("RGB")
        .resize((40, 48), Image.Resampling.BILINEAR)
    )
    assert np.array_equal(dataset.x_test.take(np.array([0]))[0], np.asarray(first))


def test_unreadable_images_are_skipped_counted_and_listed(tmp_path: Path) -> None:
    root = classes(tmp_path / "d", {"a": 6, "b": 6})
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    (root / "b" / "empty.jpg").write_bytes(b"")
    log = io.StringIO()
    dataset = load_folder(root, FolderOptions(), tmp_path / "cache", log=log)
    assert len(dataset.y_train) + len(dataset.y_test) == 12
    assert dataset.source is not None
    unreadable = dataset.source["unreadable"]
    assert unreadable["count"] == 2
    assert sorted(f for f, _ in unreadable["files"]) == ["a/broken.png", "b/empty.jpg"]
    assert "skipped 2 unreadable image(s):" in log.getvalue()
    with pytest.raises(UnreadableImage, match=r"broken\.png"):
        load_folder(root, FolderOptions(strict=True), tmp_path / "cache2", log=io.StringIO())


def test_a_class_left_too_small_by_unreadable_images_is_refused(tmp_path: Path) -> None:
    root = classes(tmp_path / "d", {"a": 6, "b": 1})
    for i in range(2):
        (root / "b" / f"bad{i}.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"readable images\): too few images in class\(es\) b \(1\)"):
        load_folder(root, FolderOptions(), tmp_path / "cache", log=io.StringIO())
