"""Where a model's rollout record lives: one small JSON file per model in the repository.

The record is the one plan every replica serving the repository follows (``docs/rollout.md``). This
module is its only reader and writer, with a narrow interface (read a model's record, write it
atomically, given the repository root), so another store (object storage) can take its place.

The file is ``<repository>/<model>/rollout.json``; the repository scan ignores it (it is not a
version directory). A write goes to a temporary file in the same directory, is fsynced, renamed over
the old record and the directory fsynced, so a reader sees the old record or the new one, never a
torn one, and a record written survives a power loss.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import orjson

from service.contract import valid_model_name

RECORD_FILE = "rollout.json"
#: A record larger than this is refused as damaged (its history is bounded far below it).
MAX_RECORD_BYTES = 4 * 1024 * 1024


class RecordError(ValueError):
    """A rollout record exists but is not a JSON object within the size bound."""


def record_path(root: Path, model: str) -> Path:
    """The rollout record of ``model`` under the repository ``root``."""
    if not valid_model_name(model):
        raise ValueError(f"invalid model name {model!r}")
    return root / model / RECORD_FILE


def read_record(root: Path, model: str) -> dict[str, Any] | None:
    """The record of ``model`` as JSON, or None when it has none; RecordError when it is damaged."""
    path = record_path(root, model)
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_RECORD_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if len(data) > MAX_RECORD_BYTES:
        raise RecordError(f"{path}: larger than {MAX_RECORD_BYTES} bytes")
    try:
        record = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise RecordError(f"{path}: not JSON ({exc})") from exc
    if not isinstance(record, dict):
        raise RecordError(f"{path}: not a JSON object")
    return record


def write_record(root: Path, model: str, record: dict[str, Any]) -> None:
    """Replace the record of ``model`` atomically and durably (temporary file, fsync, rename)."""
    path = record_path(root, model)
    data = orjson.dumps(record, option=orjson.OPT_INDENT_2)
    if len(data) > MAX_RECORD_BYTES:
        raise RecordError(f"{path}: a record of {len(data)} bytes is too large")
    fd, temp = tempfile.mkstemp(prefix=".rollout-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def remove_record(root: Path, model: str) -> None:
    """Remove the record of ``model`` (none is fine)."""
    record_path(root, model).unlink(missing_ok=True)
