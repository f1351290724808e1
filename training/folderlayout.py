"""The layout of an image folder, as Keras' ``image_dataset_from_directory`` reads it::

    DIR/train/<class>/**/*.{png,jpg,jpeg}   with an optional   DIR/test/<class>/**/*.{png,jpg,jpeg}
    DIR/<class>/**/*.{png,jpg,jpeg}         (flat)

Class names are the folder names, sorted. Hidden entries and files that are not PNG or JPEG by name are
skipped. A layout that cannot train is a :class:`DataError`: missing or empty, one class only, a class
folder without images, no image files, ``train/`` and ``test/`` with different classes, other folders
beside ``train/``. Nothing here opens an image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from training.errors import DataError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})


@dataclass(frozen=True)
class Part:
    """The image files of one split with their class ids."""

    files: tuple[Path, ...]
    labels: np.ndarray


@dataclass(frozen=True)
class Layout:
    """What :func:`scan` found: the classes and the files of ``train`` (and ``test``, when given)."""

    root: Path
    kind: Literal["split", "flat"]
    classes: tuple[str, ...]
    train: Part
    test: Part | None
    #: Files under the class folders that are not PNG or JPEG by name (READMEs, .DS_Store, ...).
    ignored: int


def _visible(entries: Sequence[Path]) -> list[Path]:
    return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def _images_under(directory: Path) -> tuple[list[Path], int]:
    """Image files below ``directory`` (any depth, hidden entries skipped), sorted; and the other files."""
    found, ignored = [], 0
    for parent, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append(Path(parent) / name)
            else:
                ignored += 1
    return found, ignored


def read_classes(directory: Path, min_classes: int = 2) -> tuple[tuple[str, ...], Part, int]:
    """The class folders of ``directory`` (at least ``min_classes``), their image files and labels, and
    the number of other files skipped."""
    if not directory.is_dir():
        raise DataError(
            f"{directory}: no such directory" if not directory.exists() else f"{directory}: not a directory"
        )
    entries = _visible(list(directory.iterdir()))
    class_dirs = [e for e in entries if e.is_dir()]
    loose = [e for e in entries if e.is_file() and e.suffix.lower() in IMAGE_SUFFIXES]
    if not class_dirs:
        if loose:
            raise DataError(
                f"{directory}: {len(loose)} images but no class folders; put each class's images in a "
                f"folder named after it ({directory}/<class>/...)"
            )
        raise DataError(f"{directory}: empty; expected one folder of images per class")
    files: list[Path] = []
    labels: list[int] = []
    ignored = len(entries) - len(class_dirs)
    empty = []
    for class_id, class_dir in enumerate(class_dirs):
        images, other = _images_under(class_dir)
        ignored += other
        if not images:
            empty.append(class_dir.name)
        files += images
        labels += [class_id] * len(images)
    if not files:
        raise DataError(f"{directory}: no image files (.png, .jpg, .jpeg) in any class folder")
    if empty:
        raise DataError(f"{directory}: class folder(s) with no image files: {', '.join(empty)}")
    if len(class_dirs) < min_classes:
        raise DataError(
            f"{directory}: only one class ({class_dirs[0].name}); a classifier needs at least two "
            "class folders"
        )
    classes = tuple(d.name for d in class_dirs)
    return classes, Part(tuple(files), np.asarray(labels, dtype=np.int64)), ignored


def scan(root: Path) -> Layout:
    """List the classes and image files of ``root``; :class:`DataError` for a layout that cannot train."""
    if not root.exists():
        raise DataError(f"{root}: no such directory")
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    if not (root / "train").is_dir():
        classes, train, ignored = read_classes(root)
        return Layout(root, "flat", classes, train, None, ignored)
    others = [
        e.name for e in _visible(list(root.iterdir())) if e.is_dir() and e.name not in ("train", "test")
    ]
    if others:
        raise DataError(
            f"{root}: unexpected folder(s) {', '.join(others)} beside train/; the layout is "
            f"{root}/train/<class>/... with an optional {root}/test/<class>/..., or {root}/<class>/..."
        )
    classes, train, ignored = read_classes(root / "train")
    if not (root / "test").exists():
        return Layout(root, "split", classes, train, None, ignored)
    test_classes, test, test_ignored = read_classes(root / "test", min_classes=1)
    if test_classes != classes:
        only_train = sorted(set(classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(classes))
        raise DataError(
            f"{root}: train/ and test/ have different classes (only in train/: "
            f"{', '.join(only_train) or '-'}; only in test/: {', '.join(only_test) or '-'})"
        )
    return Layout(root, "split", classes, train, test, ignored + test_ignored)
