"""Feedback as training data: what the service stored for a model, checked, split and made model input.

Each item goes to one part, decided by a seeded hash of its id alone, so an item never changes sides as
more feedback arrives: a held-out item is never trained on by any version, and the holdout compares
champion and challenger on examples neither has seen. Images become model input through the very function
``/classify`` uses on an upload, so training sees what serving sees.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from service.contract import METADATA_FILE, Preprocessing
from service.errors import ServiceError
from service.feedback.log import FeedbackItem, log_path, read_log
from service.images.preprocess import prepare
from service.storage import StoreError, open_store
from training.errors import DataError
from training.publish import versions

Part = Literal["train", "validation", "holdout"]
#: Images larger than this many pixels are skipped (the service's default upload limit).
MAX_PIXELS = 4096 * 4096


@dataclass(frozen=True)
class FeedbackSet:
    """The usable feedback of one model: images (float32 ``(N, H, W, C)``, the model's input) and labels,
    each item's part, and an account of what was left out and why."""

    items: list[FeedbackItem]
    x: np.ndarray
    y: np.ndarray
    parts: list[Part]
    #: Items logged after the last one the base version was trained on (all of them when it saw none).
    new: int
    #: The id of the last item in the log, and the log's complete bytes: what a version trained on this
    #: set has seen.
    last_id: str | None
    log_bytes: int
    skipped: dict[str, int] = field(default_factory=dict)

    def part(self, name: Part) -> tuple[np.ndarray, np.ndarray]:
        """Images and labels of one part."""
        mask = np.array([p == name for p in self.parts], dtype=bool)
        return self.x[mask], self.y[mask]

    def count(self, name: Part) -> int:
        return sum(p == name for p in self.parts)


def new_since_newest(repository: Path | str, name: str, root: Path) -> tuple[int, int | None]:
    """(items logged after the last one the newest version of ``name`` was trained on, that version), or
    ``(0, None)`` when there is no readable newest version; decodes nothing, so a run with nothing new
    can stop before it loads TensorFlow."""
    store = open_store(repository)
    found = versions(store, name)
    if not found:
        return 0, None
    try:
        metadata = json.loads(store.read_file(name, found[-1], METADATA_FILE))
        seen = (metadata.get("retrain") or {}).get("feedback") or {}
    except (OSError, ValueError, AttributeError, StoreError):
        return 0, None  # the full run reports what is wrong with it
    try:
        items = read_log(log_path(root, name)).items
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the feedback log: {exc}") from exc
    ids = [item.id for item in items]
    since = seen.get("last_id")
    first_new = ids.index(since) + 1 if since in ids else 0
    return len(ids) - first_new, found[-1]


def assign_part(item_id: str, seed: int, holdout: float, validation: float) -> Part:
    """``holdout`` of the items (by a hash of ``seed`` and the id) are held out, ``validation`` of the rest
    validate, the others train."""
    digest = hashlib.sha256(f"{seed}:{item_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < holdout:
        return "holdout"
    if u < holdout + (1 - holdout) * validation:
        return "validation"
    return "train"


def model_input(data: bytes, preprocessing: Preprocessing) -> np.ndarray:
    """One stored file as the model's input ``(H, W, C)`` float32: exactly what ``/classify`` computes
    (the version's ``preprocessing`` entry, through :func:`service.images.preprocess.prepare`)."""
    return prepare(data, preprocessing, max_pixels=MAX_PIXELS)


def load_feedback(
    root: Path,
    model: str,
    labels: tuple[str, ...],
    preprocessing: Preprocessing,
    *,
    since_id: str | None,
    seed: int,
    holdout: float,
    validation: float,
) -> FeedbackSet:
    """Read ``model``'s feedback log under ``root`` and every file it names.

    Items are left out (and counted in ``skipped``) when their label is not one of ``labels``, their
    file is missing or does not match the logged sha256, or it cannot be decoded. ``since_id`` is the last
    item the base version was trained on: items after it in the log are ``new``; when it is ``None`` or
    not in the log (archived), every item is.
    """
    path = log_path(root, model)
    try:
        read = read_log(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the feedback log: {exc}") from exc
    index = {label: i for i, label in enumerate(labels)}
    position = {item.id: n for n, item in enumerate(read.items)}
    first_new = position[since_id] + 1 if since_id in position else 0
    kept: list[FeedbackItem] = []
    images: list[np.ndarray] = []
    skipped: Counter[str] = Counter()
    new = 0
    for n, item in enumerate(read.items):
        reason, data = _read_checked(root, item, index)
        if data is not None:
            try:
                images.append(model_input(data, preprocessing))
            except ServiceError:
                reason = "image the model cannot read"
        if reason is not None:
            skipped[reason] += 1
            continue
        kept.append(item)
        new += n >= first_new
    shape = (preprocessing.height, preprocessing.width, preprocessing.channels)
    x = np.stack(images) if images else np.zeros((0, *shape), np.float32)
    y = np.array([index[item.label] for item in kept], dtype=np.int64)
    return FeedbackSet(
        items=kept,
        x=x.astype(np.float32, copy=False),
        y=y,
        parts=[assign_part(item.id, seed, holdout, validation) for item in kept],
        new=new,
        last_id=read.items[-1].id if read.items else None,
        log_bytes=read.complete_bytes,
        skipped=dict(skipped),
    )


def _read_checked(root: Path, item: FeedbackItem, index: dict[str, int]) -> tuple[str | None, bytes | None]:
    """``(None, file bytes)`` for a usable item, else ``(why not, None)``."""
    if item.label not in index:
        return "label not among the model's labels", None
    file = root / item.file
    if not file.resolve().is_relative_to(root.resolve()):
        return "file outside the feedback directory", None
    try:
        data = file.read_bytes()
    except OSError:
        return "file missing", None
    if len(data) != item.bytes or hashlib.sha256(data).hexdigest() != item.sha256:
        return "file does not match its logged sha256", None
    return None, data


def oversample(
    x: np.ndarray, y: np.ndarray, x_extra: np.ndarray, y_extra: np.ndarray, share: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """``x`` and ``y`` with ``x_extra``/``y_extra`` appended, repeated so that they make up ``share`` of
    the result (never fewer than once); returns the arrays and the repeat count."""
    if len(y_extra) == 0:
        return x, y, 0
    wanted = share * len(y) / (1 - share) if share < 1 else len(y_extra)
    repeats = max(1, round(wanted / len(y_extra)))
    x_all = np.concatenate([x.astype(np.float32, copy=False), np.repeat(x_extra, repeats, axis=0)])
    y_all = np.concatenate([y, np.repeat(y_extra, repeats)])
    return x_all, y_all, repeats
