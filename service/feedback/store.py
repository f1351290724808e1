"""Durable client feedback: labelled images kept as training data for the retraining job.

Layout under the feedback root (``SERVE_FEEDBACK_DIR``)::

    <root>/<model>/<label>/<id>.<ext>     the uploaded file, byte for byte (image-folder layout)
    <root>/<model>.jsonl                  one JSON line per stored item, in the order they were stored
    <root>/<model>.lock                   flock(2) target: one writer at a time, across processes

A file is written under a hidden temporary name (``.<id>.<ext>.partial``), fsynced, renamed into place and
its directory fsynced; only then is its log line appended (``O_APPEND``, one ``write``, fsync). So a reader
never sees a half-written image, every log line names a complete file, and a SIGKILL at any point loses at
most the request in flight: a stray temporary file or an image without a log line, both removed when the
next store opens the model's log. A torn last log line (a kill or power loss inside the append) is
tolerated by :func:`read_log` and cut off by the next writer before it appends. A full disk refuses the
item (507) and leaves nothing: an append cut short is truncated back, and the image it would have named is
removed.

Label folder names are the labels with ``/``, ``\\``, ``%``, control characters and a leading ``.``
percent-encoded (``T-shirt/top`` is stored under ``T-shirt%2Ftop``); the log keeps the label verbatim.
Quotas are per model, on the number of items and on the bytes of the stored files; they are checked under
the lock against the log, so several worker processes sharing one root respect them together.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson

from service.errors import InsufficientStorage, ServiceError
from service.feedback.log import (
    LOG_SUFFIX,
    FeedbackItem,
    FeedbackLogError,
    LogRead,
    checked_model,
    label_dir_name,
    log_path,
    new_id,
    read_log,
)

log = logging.getLogger(__name__)

#: The image types feedback accepts, by file extension.
EXTENSIONS = ("png", "jpg")
PARTIAL_SUFFIX = ".partial"
#: The name of a stored image: a 26-character id (:func:`new_id`) and one of :data:`EXTENSIONS`.
_ITEM_FILE = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}\.(?:png|jpg)")

__all__ = [
    "EXTENSIONS",
    "LOG_SUFFIX",
    "FeedbackItem",
    "FeedbackLogError",
    "FeedbackStore",
    "LogRead",
    "QuotaFull",
    "Usage",
    "label_dir_name",
    "log_path",
    "new_id",
    "read_log",
]


class QuotaFull(InsufficientStorage):
    """The model's feedback quota (items or bytes) is used up; an operator must archive feedback first."""

    def __init__(self, message: str, reason: Literal["quota_items", "quota_bytes"]) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Usage:
    """What a model's feedback holds: stored items and the bytes of their files."""

    items: int = 0
    bytes: int = 0


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(directory: Path, root: Path) -> None:
    """``mkdir -p`` below ``root``, fsyncing the parent of each new directory so its entry is durable."""
    if directory.is_dir():
        return
    if directory.parent != root:
        _make_dirs(directory.parent, root)
    with contextlib.suppress(FileExistsError):
        directory.mkdir()
        _fsync_dir(directory.parent)


def _remove(path: Path) -> None:
    """Unlink ``path`` and make it durable; a failure is logged (the next store's sweep retries)."""
    try:
        path.unlink()
        _fsync_dir(path.parent)
    except OSError as exc:
        log.error("cannot remove %s after a failed append: %s", path, exc)


class _ModelLog:
    """One model's log and lock: usage counted from the log, refreshed under the lock before each write."""

    def __init__(self, root: Path, model: str) -> None:
        self.path = log_path(root, model)
        self.directory = root / model
        self.lock_fd = os.open(root / f"{model}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        self.offset = 0
        self.usage = Usage()
        self.cleaned = False

    def refresh(self) -> None:
        """Under the lock: cut a torn tail, then add the lines other writers appended since last time."""
        size = self.path.stat().st_size if self.path.exists() else 0
        if size < self.offset:  # replaced or truncated by an operator: count again from the start
            self.offset, self.usage = 0, Usage()
        read = read_log(self.path, start=self.offset)
        if read.torn:
            log.warning("%s: cutting a torn last line at byte %d", self.path, read.complete_bytes)
            os.truncate(self.path, read.complete_bytes)
        self.offset = read.complete_bytes
        self.usage = Usage(
            self.usage.items + len(read.items), self.usage.bytes + sum(i.bytes for i in read.items)
        )

    def remove_partials(self) -> None:
        """Under the lock, so no live writer owns them: temporary files left by a killed writer, and
        images that no log line names (a writer killed, or a disk full, between the rename and the
        append), so that nothing is kept that retraining would not read and the quota does not count."""
        if self.cleaned or not self.directory.is_dir():
            self.cleaned = True
            return
        for partial in self.directory.glob(f"*/.*{PARTIAL_SUFFIX}"):
            with contextlib.suppress(OSError):
                partial.unlink()
                log.info("removed %s, left by an interrupted write", partial)
        named = {item.file for item in read_log(self.path).items}
        root = self.directory.parent
        for image in self.directory.glob("*/*"):
            if not _ITEM_FILE.fullmatch(image.name) or not image.is_file():
                continue
            if image.relative_to(root).as_posix() not in named:
                with contextlib.suppress(OSError):
                    image.unlink()
                    log.warning("removed %s: no line of %s names it", image, self.path.name)
        self.cleaned = True

    def append(self, item: FeedbackItem) -> None:
        """Append the item's line, or leave the log as it was: a write cut short (a full disk returns
        a short count before ENOSPC) is cut off again and reported as ENOSPC."""
        line = orjson.dumps(item.as_json()) + b"\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            start = os.fstat(fd).st_size  # under the lock: nobody else appends meanwhile
            try:
                if os.write(fd, line) != len(line):
                    raise OSError(errno.ENOSPC, "short write to the feedback log (disk full)")
                os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                    os.fsync(fd)
                raise
        finally:
            os.close(fd)
        self.offset += len(line)
        self.usage = Usage(self.usage.items + 1, self.usage.bytes + item.bytes)


class FeedbackStore:
    """Stores feedback under ``root`` with per-model quotas; safe across threads and processes."""

    def __init__(self, root: Path, *, max_items: int, max_bytes: int) -> None:
        self.root = root
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._logs: dict[str, _ModelLog] = {}

    def usage(self, model: str) -> Usage:
        """Items and bytes stored for ``model`` (as of this store's last look at the log)."""
        with self._lock:
            state = self._state(model)
            with self._flocked(state):
                state.refresh()
            return state.usage

    def cached_usage(self, model: str) -> Usage:
        """Items and bytes stored for ``model`` as of this store's last write or look, without I/O."""
        with self._lock:
            state = self._logs.get(model)
            return state.usage if state is not None else Usage()

    def store(
        self,
        model: str,
        label: str,
        data: bytes,
        ext: str,
        *,
        served_version: int,
        predicted: str,
        rollout: dict[str, Any] | None = None,
    ) -> FeedbackItem:
        """Keep ``data`` as an example of ``label`` for ``model``; returns the logged record once durable.
        ``rollout`` is the lineage of an item that arrived during a rollout (stage, both predictions).

        Raises :class:`QuotaFull` (507) when the item would exceed a quota, :class:`InsufficientStorage`
        (507) when the disk is full, and a plain :class:`ServiceError` (500) for other storage failures;
        nothing is logged then.
        """
        if ext not in EXTENSIONS:
            raise ValueError(f"extension must be one of {EXTENSIONS}, got {ext!r}")
        with self._lock:
            state = self._state(model)
            with self._flocked(state):
                try:
                    state.refresh()
                except FeedbackLogError as exc:
                    log.error("cannot store feedback for %s: %s", model, exc)
                    raise ServiceError("feedback could not be stored") from exc
                state.remove_partials()
                self._check_quota(model, state.usage, len(data))
                try:
                    item = self._write(model, label, data, ext, served_version, predicted, rollout)
                    try:
                        state.append(item)
                    except OSError:
                        _remove(self.root / item.file)  # no line names it: it must not stay
                        raise
                except OSError as exc:
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise InsufficientStorage("no space left to store feedback") from exc
                    log.error("cannot store feedback for %s: %s", model, exc)
                    raise ServiceError("feedback could not be stored") from exc
                return item

    def close(self) -> None:
        with self._lock:
            for state in self._logs.values():
                os.close(state.lock_fd)
            self._logs.clear()

    def _state(self, model: str) -> _ModelLog:
        state = self._logs.get(checked_model(model))
        if state is None:
            self.root.mkdir(parents=True, exist_ok=True)
            state = self._logs[model] = _ModelLog(self.root, model)
        return state

    @contextlib.contextmanager
    def _flocked(self, state: _ModelLog) -> Any:
        fcntl.flock(state.lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(state.lock_fd, fcntl.LOCK_UN)

    def _check_quota(self, model: str, usage: Usage, size: int) -> None:
        if usage.items + 1 > self.max_items:
            raise QuotaFull(
                f"feedback quota for model '{model}' is full: {usage.items} of {self.max_items} items",
                "quota_items",
            )
        if usage.bytes + size > self.max_bytes:
            raise QuotaFull(
                f"feedback quota for model '{model}' is full: {usage.bytes} bytes stored, this image "
                f"needs {size} more, the limit is {self.max_bytes}",
                "quota_bytes",
            )

    def _write(
        self,
        model: str,
        label: str,
        data: bytes,
        ext: str,
        served_version: int,
        predicted: str,
        rollout: dict[str, Any] | None = None,
    ) -> FeedbackItem:
        item_id = new_id()
        directory = self.root / model / label_dir_name(label)
        _make_dirs(directory, self.root)
        final = directory / f"{item_id}.{ext}"
        partial = directory / f".{item_id}.{ext}{PARTIAL_SUFFIX}"
        try:
            with partial.open("xb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            partial.rename(final)
        except BaseException:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise
        _fsync_dir(directory)
        return FeedbackItem(
            id=item_id,
            time=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            model=model,
            label=label,
            version=served_version,
            predicted=predicted,
            file=final.relative_to(self.root).as_posix(),
            bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            rollout=rollout,
        )
