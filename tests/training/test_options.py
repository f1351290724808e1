"""Command-line value types: image sizes, value ranges, label lists and repositories."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from training.options import image_size, labels, repository, value_range


@pytest.mark.parametrize(
    ("text", "expected"), [("64x64", (64, 64)), ("28X32", (28, 32)), (" 4096 x 1 ", (4096, 1))]
)
def test_image_size(text: str, expected: tuple[int, int]) -> None:
    assert image_size(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("64", "expected HxW"),
        ("64x", "expected HxW"),
        ("0x4", "1..4096"),
        ("5000x5", "1..4096"),
        ("-1x3", "HxW"),
    ],
)
def test_bad_image_size(text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        image_size(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0..1", (0.0, 1.0)),
        ("0..255", (0.0, 255.0)),
        ("-1..1", (-1.0, 1.0)),
        ("255..0", (255.0, 0.0)),
        ("-.5..1e2", (-0.5, 100.0)),
    ],
)
def test_value_range(text: str, expected: tuple[float, float]) -> None:
    assert value_range(text) == expected


@pytest.mark.parametrize(
    ("text", "message"), [("0-1", "BLACK..WHITE"), ("a..b", "BLACK..WHITE"), ("2..2", "must differ")]
)
def test_bad_value_range(text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        value_range(text)


def test_labels_from_a_list_or_a_file(tmp_path: Path) -> None:
    assert labels("cat, dog ,bird") == ("cat", "dog", "bird")
    file = tmp_path / "labels.txt"
    file.write_text("T-shirt/top\n\n  Trouser  \nAnkle boot\n", encoding="utf-8")
    assert labels(str(file)) == ("T-shirt/top", "Trouser", "Ankle boot")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cat", "at least two labels"),
        ("cat,,dog", "non-empty labels"),
        ("a,b,a", "duplicate label"),
        ("", "non-empty"),
    ],
)
def test_bad_labels(text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        labels(text)


def test_repository_keeps_urls_whole_and_refuses_other_schemes() -> None:
    assert repository("s3://bucket/models") == "s3://bucket/models"  # Path would fold the "//"
    assert repository("models/") == Path("models")
    for text, message in (("gs://b/x", "unsupported repository"), ("s3://B/x", "not a valid bucket")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            repository(text)
