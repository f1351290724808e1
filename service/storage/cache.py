"""The local copies of remotely stored model versions: downloaded once, keyed by sha256, bounded.

An entry is ``<cache>/<key>/<name>/<version>/{metadata.json, model.onnx}`` where ``key`` is the sha256 of
the version's ``metadata.json`` (which records the model's sha256), so the same bytes are never fetched
twice, a republished version under the same number gets a new entry, and a restarted process finds its
entries again. An entry is filled under a temporary name and renamed into place, so a crash never leaves
a half-written entry under a key. When the entries exceed ``max_bytes`` the least recently used ones
are removed (a served version's session holds its bytes in memory, so removing its files costs only a
download after a restart). ``docs/cluster.md`` describes it.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from service.contract import METADATA_FILE, version_dir

log = logging.getLogger(__name__)

_KEY_RE = re.compile(r"[0-9a-f]{64}")


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class ModelCache:
    """Verified local copies of model versions, at most ``max_bytes`` of them (the newest entry always
    stays, even when it alone is larger)."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.root = root
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def get(self, key: str, name: str, version: int) -> Path | None:
        """The entry's version directory when it is present and its metadata still hashes to ``key``."""
        path = version_dir(self.root / self._check(key), name, version)
        try:
            data = (path / METADATA_FILE).read_bytes()
        except OSError:
            return None
        if hashlib.sha256(data).hexdigest() != key:
            log.warning("model cache entry %s is damaged; fetching it again", path)
            shutil.rmtree(self.root / key, ignore_errors=True)
            return None
        now = time.time()
        os.utime(self.root / key, (now, now))  # least recently used goes first
        return path

    def fill(self, key: str, name: str, version: int, write: Callable[[Path], None]) -> Path:
        """The entry for ``key``, made by ``write(directory)`` unless present; ``write`` raises to refuse
        the version, and then nothing is kept."""
        with self._lock:
            found = self.get(key, name, version)
            if found is not None:
                return found
            self.root.mkdir(parents=True, exist_ok=True)
            staging = self.root / f".tmp-{uuid.uuid4().hex}"
            try:
                target = version_dir(staging, name, version)
                target.mkdir(parents=True)
                write(target)
                final = self.root / self._check(key)
                try:
                    staging.rename(final)
                except OSError as exc:  # another worker process filled the same key first
                    if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            self._evict(keep=key)
            return version_dir(final, name, version)

    def entries(self) -> list[str]:
        """Keys present, least recently used first."""
        try:
            found = [p for p in self.root.iterdir() if _KEY_RE.fullmatch(p.name) and p.is_dir()]
        except FileNotFoundError:
            return []
        return [p.name for p in sorted(found, key=lambda p: p.stat().st_mtime)]

    def _evict(self, keep: str) -> None:
        keys = self.entries()
        sizes = {key: _size(self.root / key) for key in keys}
        total = sum(sizes.values())
        for key in keys:
            if total <= self.max_bytes:
                break
            if key == keep:
                continue
            shutil.rmtree(self.root / key, ignore_errors=True)
            total -= sizes[key]
            log.info("model cache: removed %s (least recently used; %d bytes kept)", key[:12], total)
        if total > self.max_bytes:
            log.warning(
                "model cache %s holds %d bytes, more than its bound of %d (SERVE_MODEL_CACHE_BYTES): "
                "the newest version alone exceeds it",
                self.root,
                total,
                self.max_bytes,
            )

    @staticmethod
    def _check(key: str) -> str:
        if not _KEY_RE.fullmatch(key):
            raise ValueError(f"cache key must be 64 lowercase hex digits, got {key!r}")
        return key
