"""The feedback log format, shared by the service (which writes it) and training (which reads it).

One JSON object per line in ``<root>/<model>.jsonl``, in the order items were stored: a
:class:`FeedbackItem`. Every record is written as one line ending in a newline, so bytes after the last
newline are a write cut short (a kill or power loss during the append): :func:`read_log` reports them as
``torn`` and never as a record. Ids are ULID-like (:func:`new_id`); label folder names come from
:func:`label_dir_name`.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from service.contract import valid_model_name

LOG_SUFFIX = ".jsonl"
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_MAX_DIR_NAME = 200


class FeedbackLogError(ValueError):
    """A complete feedback log line is not a record: the log was damaged or edited by hand."""


@dataclass(frozen=True)
class FeedbackItem:
    """One stored example, as its log line records it."""

    id: str
    time: str
    model: str
    #: The label the client says is right.
    label: str
    #: The model version that classified the image when the feedback arrived, and what it answered.
    version: int
    predicted: str
    #: Path of the image relative to the feedback root.
    file: str
    bytes: int
    sha256: str
    #: Lineage of an item that arrived during a rollout (docs/rollout.md): the rollout's id and stage,
    #: champion and candidate versions, and what each answered. Absent otherwise.
    rollout: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        if data["rollout"] is None:
            del data["rollout"]
        return data


@dataclass(frozen=True)
class LogRead:
    """The complete records of a log, the bytes they span, and whether a torn last line followed them."""

    items: list[FeedbackItem]
    complete_bytes: int
    torn: bool


_OPTIONAL = ("rollout",)
_FIELDS = tuple(f for f in FeedbackItem.__dataclass_fields__ if f not in _OPTIONAL)


def new_id() -> str:
    """26 characters of Crockford base32: 48 bits of milliseconds since the epoch, then 80 random bits
    (the ULID layout), so ids sort by time and cannot be guessed."""
    return format_id(time.time_ns() // 1_000_000, secrets.randbits(80))


def format_id(millis: int, random_bits: int) -> str:
    """The id of ``millis`` (48 bits) and ``random_bits`` (80 bits), in :func:`new_id`'s layout."""
    if not (0 <= millis < 1 << 48 and 0 <= random_bits < 1 << 80):
        raise ValueError("an id holds 48 bits of milliseconds and 80 random bits")
    value = millis << 80 | random_bits
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def label_dir_name(label: str) -> str:
    """The folder name for ``label``: percent-encode what a path component cannot hold safely."""
    out = []
    for i, char in enumerate(label):
        unsafe = char in "/\\%" or not char.isprintable() or (i == 0 and char == ".")
        out.append("".join(f"%{b:02X}" for b in char.encode()) if unsafe else char)
    name = "".join(out) or "%00"
    if len(name.encode()) > _MAX_DIR_NAME:  # file systems allow 255 bytes per name
        digest = hashlib.sha256(label.encode()).hexdigest()[:16]
        name = name.encode()[: _MAX_DIR_NAME - 17].decode(errors="ignore") + "~" + digest
    return name


def log_path(root: Path, model: str) -> Path:
    """The feedback log of ``model`` under ``root``."""
    return root / f"{checked_model(model)}{LOG_SUFFIX}"


def read_log(path: Path, *, start: int = 0) -> LogRead:
    """The records of the log at ``path`` from byte ``start`` (a line boundary) on; a missing log is empty.

    Bytes after the last newline are a write cut short (every record is written as one line ending in a
    newline) and are reported as ``torn``; a complete line that is not a record raises
    :class:`FeedbackLogError` naming it.
    """
    try:
        with path.open("rb") as stream:
            stream.seek(start)
            data = stream.read()
    except FileNotFoundError:
        return LogRead([], start, torn=False)
    lines = data.split(b"\n")
    tail = lines.pop()  # after the last newline: b"" unless the last write was cut short
    items: list[FeedbackItem] = []
    offset = start
    for line in lines:
        try:
            items.append(_parse(line))
        except (ValueError, TypeError, KeyError) as exc:
            raise FeedbackLogError(f"{path}: line at byte {offset} is not a feedback record ({exc})") from exc
        offset += len(line) + 1
    return LogRead(items, offset, torn=bool(tail))


def _parse(line: bytes) -> FeedbackItem:
    record = orjson.loads(line)
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    item = FeedbackItem(
        **{key: record[key] for key in _FIELDS},  # KeyError for a missing field
        **{key: record[key] for key in _OPTIONAL if record.get(key) is not None},
    )
    if not isinstance(item.id, str) or not isinstance(item.bytes, int) or not isinstance(item.file, str):
        raise ValueError("bad field types")
    return item


def checked_model(model: str) -> str:
    if not valid_model_name(model):
        raise ValueError(f"invalid model name {model!r}")
    return model
