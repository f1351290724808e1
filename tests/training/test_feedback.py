"""Feedback as training data: stable seeded parts, checked files, the classify preprocessing, oversampling."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.contract import Preprocessing
from service.feedback.store import FeedbackStore, log_path, new_id
from service.images.preprocess import prepare_all
from tests.helpers.modelfactory import write_model_version
from training.errors import DataError
from training.feedback import FeedbackSet, assign_part, load_feedback, new_since_newest, oversample

LABELS = tuple(str(d) for d in range(10))


def png(image: np.ndarray, size: int = 28) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image.astype(np.uint8)).resize((size, size)).save(buffer, format="PNG")
    return buffer.getvalue()


def digit(seed: int) -> np.ndarray:
    image = np.zeros((28, 28), np.uint8)
    image[4 + seed % 10 : 20, 10:18] = 255
    return image


def fill(root: Path, labels: list[str], model: str = "m") -> list[str]:
    store = FeedbackStore(root, max_items=10_000, max_bytes=1 << 30)
    return [
        store.store(model, label, png(digit(i)), "png", served_version=1, predicted="0").id
        for i, label in enumerate(labels)
    ]


DIGIT = Preprocessing(height=28, width=28, color="grayscale", resize="digit")


def load(root: Path, since_id: str | None = None, pre: Preprocessing = DIGIT) -> FeedbackSet:
    return load_feedback(root, "m", LABELS, pre, since_id=since_id, seed=1, holdout=0.3, validation=0.1)


def test_parts_depend_on_the_id_and_seed_only_and_have_the_asked_for_sizes() -> None:
    ids = [new_id() for _ in range(6000)]
    parts = [assign_part(i, 7, 0.3, 0.1) for i in ids]
    assert parts == [assign_part(i, 7, 0.3, 0.1) for i in ids]
    assert parts != [assign_part(i, 8, 0.3, 0.1) for i in ids]
    share = {p: parts.count(p) / len(parts) for p in ("train", "validation", "holdout")}
    assert share["holdout"] == pytest.approx(0.3, abs=0.03)
    assert share["validation"] == pytest.approx(0.07, abs=0.02)
    assert share["train"] == pytest.approx(0.63, abs=0.03)


@pytest.mark.parametrize(
    "pre",
    [DIGIT, Preprocessing(height=14, width=14, color="rgb", input_range=(0.0, 1.0), resize="stretch")],
    ids=["digit", "stretch-rgb-0..1"],
)
def test_items_become_exactly_what_classify_computes(tmp_path: Path, pre: Preprocessing) -> None:
    store = FeedbackStore(tmp_path, max_items=10, max_bytes=1 << 20)
    data = png(255 - digit(3), size=84)  # dark ink on light paper, not the model's size
    store.store("m", "4", data, "png", served_version=1, predicted="1")
    feedback = load(tmp_path, pre=pre)
    expected = prepare_all([(None, data)], pre)  # what the core's classify computes for this file
    assert feedback.x.shape == (1, pre.height, pre.width, pre.channels) and feedback.x.dtype == np.float32
    np.testing.assert_array_equal(feedback.x, expected)
    assert feedback.y.tolist() == [4]


def test_a_blank_image_is_skipped_for_a_digit_model(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path, max_items=10, max_bytes=1 << 20)
    store.store("m", "1", png(np.zeros((28, 28), np.uint8)), "png", served_version=1, predicted="1")
    assert load(tmp_path).skipped == {"image the model cannot read": 1}  # "no digit found" for /classify


def test_new_counts_items_after_the_last_one_seen(tmp_path: Path) -> None:
    ids = fill(tmp_path, ["1", "2", "3", "4"])
    assert load(tmp_path).new == 4
    assert load(tmp_path, since_id=ids[1]).new == 2
    assert load(tmp_path, since_id=ids[3]).new == 0
    assert load(tmp_path, since_id="an id from an archived log").new == 4
    feedback = load(tmp_path, since_id=ids[3])
    assert feedback.last_id == ids[3] and len(feedback.items) == 4
    assert feedback.log_bytes == log_path(tmp_path, "m").stat().st_size


def test_unusable_items_are_skipped_and_counted(tmp_path: Path) -> None:
    ids = fill(tmp_path, ["1", "2", "3", "4", "5"])
    (tmp_path / "m" / "1" / f"{ids[0]}.png").unlink()
    (tmp_path / "m" / "3" / f"{ids[2]}.png").write_bytes(png(digit(9)))
    feedback = load_feedback(
        tmp_path, "m", ("1", "3", "4", "5"), DIGIT, since_id=None, seed=1, holdout=0.3, validation=0.1
    )
    assert [i.id for i in feedback.items] == [ids[3], ids[4]]
    assert feedback.y.tolist() == [2, 3]
    assert feedback.skipped == {
        "label not among the model's labels": 1,
        "file does not match its logged sha256": 1,
        "file missing": 1,
    }
    assert feedback.new == 2 and feedback.last_id == ids[4]


def test_a_file_that_no_longer_decodes_is_skipped(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path, max_items=10, max_bytes=1 << 20)
    store.store("m", "1", b"\x89PNG\r\n\x1a\n truncated", "png", served_version=1, predicted="1")
    feedback = load(tmp_path)
    assert feedback.skipped == {"image the model cannot read": 1} and feedback.x.shape == (0, 28, 28, 1)


def test_a_damaged_log_is_a_data_error(tmp_path: Path) -> None:
    fill(tmp_path, ["1"])
    with log_path(tmp_path, "m").open("ab") as f:
        f.write(b"garbage\n")
    with pytest.raises(DataError, match="cannot read the feedback log"):
        load(tmp_path)


def test_no_log_is_no_feedback(tmp_path: Path) -> None:
    feedback = load(tmp_path)
    assert (len(feedback.items), feedback.new, feedback.last_id) == (0, 0, None)


@pytest.mark.parametrize(("share", "repeats"), [(0.0, 1), (0.2, 20), (0.5, 80)])
def test_oversampling_gives_feedback_its_share(share: float, repeats: int) -> None:
    x, y = np.zeros((800, 2, 2, 1), np.uint8), np.zeros(800, np.int64)
    x_extra, y_extra = np.ones((10, 2, 2, 1), np.float32), np.ones(10, np.int64)
    x_all, y_all, used = oversample(x, y, x_extra, y_extra, share)
    assert used == repeats
    assert len(y_all) == 800 + 10 * repeats and x_all.dtype == np.float32
    assert int(y_all.sum()) == 10 * repeats and float(x_all.sum()) == 4 * 10 * repeats
    if share:
        assert (10 * repeats) / len(y_all) == pytest.approx(share, abs=0.01)


def test_oversampling_nothing_changes_nothing() -> None:
    x, y = np.zeros((5, 2, 2, 1), np.uint8), np.zeros(5, np.int64)
    x_all, y_all, used = oversample(x, y, np.zeros((0, 2, 2, 1), np.float32), np.zeros(0, np.int64), 0.3)
    assert used == 0 and x_all is x and y_all is y


def test_new_since_newest_reads_the_newest_versions_record(tmp_path: Path) -> None:
    repository, root = tmp_path / "models", tmp_path / "feedback"
    assert new_since_newest(repository, "m", root) == (0, None)
    ids = fill(root, ["1", "2", "3"])
    write_model_version(repository, "m", 1)
    assert new_since_newest(repository, "m", root) == (3, 1)  # version 1 was trained on no feedback
    write_model_version(repository, "m", 2, metadata_overrides={"retrain": {"feedback": {"last_id": ids[1]}}})
    assert new_since_newest(repository, "m", root) == (1, 2)
    write_model_version(repository, "m", 3, metadata_overrides={"retrain": {"feedback": {"last_id": ids[2]}}})
    assert new_since_newest(repository, "m", root) == (0, 3)
    (repository / "m" / "4").mkdir()
    (repository / "m" / "4" / "metadata.json").write_text("{not json")
    assert new_since_newest(repository, "m", root) == (0, None)  # left to the full run to report
