"""Image-folder layouts, and the refusals that keep a folder that cannot train from training."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.imagefiles import classes, image
from training.errors import DataError
from training.folderlayout import scan


def test_flat_layout_sorted_classes_nested_files_and_ignored_entries(tmp_path: Path) -> None:
    root = classes(tmp_path / "d", {"zebra": 2, "ant": 3})
    image(root / "ant" / "more" / "deep.JPG", mode="RGB")
    (root / "ant" / "README.txt").write_text("notes")
    (root / "ant" / ".DS_Store").write_text("x")
    image(root / ".hidden" / "x.png")
    layout = scan(root)
    assert layout.kind == "flat"
    assert layout.classes == ("ant", "zebra")
    assert layout.test is None
    assert layout.ignored == 1
    names = [p.relative_to(root).as_posix() for p in layout.train.files]
    assert names == ["ant/0.png", "ant/1.png", "ant/2.png", "ant/more/deep.JPG", "zebra/0.png", "zebra/1.png"]
    assert layout.train.labels.tolist() == [0, 0, 0, 0, 1, 1]


def test_split_layout(tmp_path: Path) -> None:
    root = tmp_path / "d"
    classes(root / "train", {"a": 3, "b": 2})
    classes(root / "test", {"a": 1, "b": 1})
    layout = scan(root)
    assert (layout.kind, layout.classes) == ("split", ("a", "b"))
    assert layout.test is not None
    assert layout.test.labels.tolist() == [0, 1]
    assert scan(classes(tmp_path / "e" / "train", {"a": 1, "b": 1}).parent).test is None


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda r: None, "no such directory"),
        (lambda r: r.write_text("x"), "not a directory"),
        (lambda r: r.mkdir(), "empty; expected one folder of images per class"),
        (lambda r: image(r / "loose.png"), "1 images but no class folders"),
        (lambda r: classes(r, {"only": 3}), "only one class (only)"),
        (lambda r: (classes(r, {"a": 2}), (r / "b").mkdir()), "class folder(s) with no image files: b"),
        (
            lambda r: ((r / "a").mkdir(parents=True), (r / "b").mkdir(), (r / "a" / "x.gif").write_text("")),
            "no image files (.png, .jpg, .jpeg) in any class folder",
        ),
        (
            lambda r: (classes(r / "train", {"a": 2, "b": 2}), classes(r / "test", {"a": 1, "c": 1})),
            "train/ and test/ have different classes (only in train/: b; only in test/: c)",
        ),
        (
            lambda r: (classes(r / "train", {"a": 2, "b": 2}), classes(r / "validation", {"a": 1, "b": 1})),
            "unexpected folder(s) validation beside train/",
        ),
    ],
)
def test_unusable_folders_are_refused(tmp_path: Path, build, message: str) -> None:
    root = tmp_path / "d"
    build(root)
    with pytest.raises(DataError) as caught:
        scan(root)
    assert message in str(caught.value)
    assert str(root) in str(caught.value)
