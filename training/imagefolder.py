"""Image folders as data sets: the layout (:mod:`training.folderlayout`), checked, split, decoded.

Without ``test/`` a seeded test split, stratified per class, is carved out and its files are recorded. The
images are decoded once into a cache on disk (:mod:`training.imagecache`) as the ``preprocessing`` entry
says; its size and colour default to the data's: the most common size, grayscale only if every image is.
The class names, sorted, become the model's labels.

Everything that makes a folder unusable is a :class:`DataError` (exit code 2), raised before any pixel is
decoded where it can be: a bad layout, or a class with fewer images than the splits need. Unreadable
images are skipped and listed, or fatal with ``strict``.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

import numpy as np

from service.contract import Preprocessing
from training.data import Dataset, train_validation_split
from training.diskimages import DiskImages
from training.errors import DataError, UnreadableImage
from training.folderlayout import Layout, read_classes, scan
from training.imagecache import MAX_PIXELS, Cache, Progress, build_cache, read_header

#: Unreadable files named on the console and in the metadata; the count is always complete.
LISTED_FAILURES = 20


@dataclass(frozen=True)
class FolderOptions:
    """How to read a folder; ``None`` size or colour means: inferred from the images."""

    image_size: tuple[int, int] | None = None
    color: Literal["grayscale", "rgb"] | None = None
    resize: Literal["stretch", "center_crop", "digit"] = "stretch"
    #: Share of each class carved out as the test split when there is no ``test/``.
    test_split: float = 0.2
    validation_split: float = 0.1
    seed: int = 1337
    strict: bool = False
    max_pixels: int = MAX_PIXELS
    workers: int = 0


def carve_test(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split of ``labels``' indices into (train, test): each class gives
    ``max(1, round(n * fraction))`` images to the test split. Both returned sorted."""
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        test.append(rng.choice(members, size=max(1, round(len(members) * fraction)), replace=False))
    test_idx = np.sort(np.concatenate(test)) if test else np.zeros(0, dtype=np.int64)
    return np.setdiff1d(np.arange(len(labels)), test_idx, assume_unique=True), test_idx


def check_counts(
    classes: Sequence[str], train_labels: np.ndarray, carve: bool, options: FolderOptions, what: str
) -> None:
    """:class:`DataError` naming every class with fewer images than the splits need: at least one for
    training, one for the test split (when it is carved) and one for validation (when there is one)."""
    need = 1 + int(carve) + int(options.validation_split > 0)
    counts = np.bincount(train_labels, minlength=len(classes))
    short = [i for i, n in enumerate(counts) if n < need]
    if not short:  # the splits as they will be drawn: every class keeps at least one training image
        kept = (
            train_labels[carve_test(train_labels, options.test_split, options.seed)[0]]
            if carve
            else train_labels
        )
        fit_idx, _ = train_validation_split(kept, options.validation_split, options.seed)
        left = np.bincount(kept[fit_idx], minlength=len(classes))
        short = [i for i, n in enumerate(left) if n == 0]
    if short:
        named = ", ".join(f"{classes[i]} ({int(counts[i])})" for i in short)
        splits = [
            name for name, on in (("training", True), ("test", carve), ("validation", need > 1 + carve)) if on
        ]
        raise DataError(
            f"{what}: too few images in class(es) {named}; the {' + '.join(splits)} splits need at least "
            f"{need} per class"
        )


def choose_preprocessing(
    files: Sequence[Path], options: FolderOptions, progress: Callable[[int, int, int], None] | None = None
) -> Preprocessing:
    """The ``preprocessing`` entry for ``files``: the options' size and colour, else the data's (the most
    common size; grayscale only if every image is), read from the headers alone."""
    sizes: Counter[tuple[int, int]] = Counter()
    all_gray = True
    if options.image_size is None or options.color is None:
        failed = 0
        for done, file in enumerate(files, 1):
            try:
                header = read_header(file, options.max_pixels)
            except UnreadableImage as exc:
                if options.strict:
                    raise UnreadableImage(f"{exc} (--strict)") from None
                failed += 1  # listed by the decoding pass
            else:
                sizes[(header.height, header.width)] += 1
                all_gray = all_gray and header.grayscale
            if progress is not None and (done % 1000 == 0 or done == len(files)):
                progress(done, len(files), failed)
        if not sizes:
            raise DataError(f"none of the {len(files):,} image files can be read")
    height, width = options.image_size or sizes.most_common(1)[0][0]
    color = options.color or ("grayscale" if all_gray else "rgb")
    return Preprocessing(height=height, width=width, color=color, resize=options.resize)


def load_folder(root: Path, options: FolderOptions, cache_dir: Path, *, log: TextIO | None = None) -> Dataset:
    """The folder ``root`` as a :class:`Dataset` whose images stay on disk in ``cache_dir``."""
    log = log or sys.stderr
    layout = scan(root)
    carve = layout.test is None
    check_counts(layout.classes, layout.train.labels, carve, options, str(root))
    files = layout.train.files + (layout.test.files if layout.test else ())
    labels = np.concatenate([layout.train.labels, *([layout.test.labels] if layout.test else [])])
    print(f"{root}: {len(layout.classes)} classes, {len(files):,} images ({layout.kind} layout)", file=log)
    pre = choose_preprocessing(files, options, Progress("reading headers of", stream=log))
    print(f"images become {pre.height}x{pre.width} (HxW) {pre.color} ({pre.resize})", file=log)
    cache = build_cache(
        files,
        pre,
        cache_dir,
        max_pixels=options.max_pixels,
        strict=options.strict,
        workers=options.workers,
        progress=Progress(stream=log),
    )
    _report_failures(cache, root, log)
    kept_labels = labels[cache.kept]
    in_train = cache.kept < len(layout.train.files)
    train_rows, test_rows = np.flatnonzero(in_train), np.flatnonzero(~in_train)
    check_counts(layout.classes, kept_labels[train_rows], carve, options, f"{root} (readable images)")
    if carve:
        fit_part, test_part = carve_test(kept_labels[train_rows], options.test_split, options.seed)
        train_rows, test_rows = train_rows[fit_part], train_rows[test_part]
    elif len(np.unique(kept_labels[test_rows])) < len(layout.classes):
        missing = sorted(set(layout.classes) - {layout.classes[i] for i in kept_labels[test_rows]})
        raise DataError(f"{root}/test: no readable images of class(es) {', '.join(missing)}")
    return Dataset(
        name=str(root),
        x_train=cache.images.subset(train_rows),
        y_train=kept_labels[train_rows],
        x_test=cache.images.subset(test_rows),
        y_test=kept_labels[test_rows],
        labels=layout.classes,
        resize=pre.resize,
        source=_record(layout, cache, files, test_rows if carve else None, options),
    )


def _report_failures(cache: Cache, root: Path, log: TextIO) -> None:
    if not cache.failures:
        return
    print(f"skipped {len(cache.failures):,} unreadable image(s):", file=log)
    for file, reason in cache.failures[:LISTED_FAILURES]:
        print(f"  {file}: {reason}", file=log)
    if len(cache.failures) > LISTED_FAILURES:
        print(f"  ... and {len(cache.failures) - LISTED_FAILURES:,} more", file=log)


def _relative(root: Path, file: str | Path) -> str:
    return Path(file).relative_to(root).as_posix()


def _record(
    layout: Layout, cache: Cache, files: Sequence[Path], test_rows: np.ndarray | None, options: FolderOptions
) -> dict[str, Any]:
    """The ``data`` entry of the metadata: where the images came from, and which files are the test set."""
    root = layout.root
    test: dict[str, Any]
    if test_rows is None:
        test = {"source": "test/"}
    else:
        test = {
            "source": "carved",
            "fraction": options.test_split,
            "seed": options.seed,
            "files": [_relative(root, files[i]) for i in cache.kept[test_rows]],
        }
    return {
        "images": str(root),
        "layout": layout.kind,
        "n_images": len(cache.kept),
        "test": test,
        "unreadable": {
            "count": len(cache.failures),
            "files": [[_relative(root, f), reason] for f, reason in cache.failures[:LISTED_FAILURES]],
        },
        "ignored_files": layout.ignored,
    }


def load_labelled(
    root: Path,
    labels: Sequence[str],
    pre: Preprocessing,
    cache_dir: Path,
    *,
    strict: bool = False,
    max_pixels: int = MAX_PIXELS,
    log: TextIO | None = None,
) -> tuple[DiskImages, np.ndarray, dict[str, Any]]:
    """An evaluation folder (``root/<class>/...``, or ``root/test/<class>/...``) decoded with ``pre``:
    (images, class ids into ``labels``, a record for the metadata). Its classes must be among ``labels``."""
    log = log or sys.stderr
    base = root / "test" if (root / "test").is_dir() and (root / "train").is_dir() else root
    if not base.is_dir():
        raise DataError(f"{root}: no such directory" if not root.exists() else f"{root}: not a directory")
    classes, part, _ = read_classes(base, min_classes=1)  # one class measures that class's accuracy
    unknown = sorted(set(classes) - set(labels))
    if unknown:
        raise DataError(
            f"{base}: class folder(s) {', '.join(unknown)} are not among the model's labels "
            f"({', '.join(labels)})"
        )
    cache = build_cache(
        part.files, pre, cache_dir, max_pixels=max_pixels, strict=strict, progress=Progress(stream=log)
    )
    _report_failures(cache, base, log)
    ids = np.asarray([labels.index(classes[c]) for c in part.labels[cache.kept]], dtype=np.int64)
    record = {
        "images": str(base),
        "n_images": len(cache.kept),
        "unreadable": {
            "count": len(cache.failures),
            "files": [[_relative(base, f), r] for f, r in cache.failures[:LISTED_FAILURES]],
        },
    }
    return cache.images, ids, record
