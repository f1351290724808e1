"""Where the model repository lives: one interface over a local directory and object storage.

The service (:mod:`service.core.registry`) and the publisher (:mod:`training.publish`) both go through a
:class:`ModelStore`, so neither knows whether the repository is ``models/`` or ``s3://bucket/prefix``
(``docs/cluster.md``). :func:`service.storage.open_store` picks the implementation from the location:

- :class:`LocalStore`: a directory; a version is published by renaming a staging directory onto its
  number (``docs/repository.md``), discovery is :mod:`service.storage.discovery`.
- :class:`service.storage.s3.S3Store`: an S3 bucket and prefix (AWS or anything that speaks its API,
  through boto3's standard credential chain and ``AWS_ENDPOINT_URL``); a version is published by a
  conditional claim, its files, and ``metadata.json`` last, which is the commit; the service downloads
  each version it serves into a local :class:`service.storage.cache.ModelCache`.

Besides versions, a store keeps small per-model JSON *records* beside the model
(``<model>/<record>.json``), each replaced atomically (a rename; on S3 one PUT). The rollout record of
progressive delivery (:mod:`service.rollout.records`, ``docs/rollout.md``) lives there, so every replica
polling the store follows it.

Errors::

    StoreError              the repository cannot be used as configured (missing bucket, wrong
    │                       credentials, no models): a clear message at start-up or from the load API
    ├── StoreUnavailable    the store cannot be reached now (network, 5xx): what serves keeps serving
    ├── VersionCorrupt      a version's files do not match their sha256, or its metadata is unreadable:
    │                       refused, never served
    └── RecordCorrupt       a per-model record is not a JSON object within the size bound
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

from service.contract import METADATA_FILE, MODEL_FILE, parse_version, valid_model_name, version_dir
from service.storage.discovery import incomplete_versions, scan_repository

#: Name of a per-model record: the same rule as a model name, stored as ``<model>/<record>.json``.
RECORD_SUFFIX = ".json"
#: Largest record accepted, so a stray object can never fill memory.
MAX_RECORD_BYTES = 1024 * 1024


class StoreError(Exception):
    """The repository cannot be used as configured; the message says what to fix."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now; what is already served keeps serving."""


class VersionCorrupt(StoreError):
    """A version's files do not match the sha256 its ``metadata.json`` records; it is never served."""


class RecordCorrupt(StoreError):
    """A per-model record exists but is not a JSON object within :data:`MAX_RECORD_BYTES`."""


class ModelStore(ABC):
    """A model repository: discovery and download for the service, claims and commits for publishers."""

    #: The location, for messages: a path or ``s3://bucket/prefix``.
    url: str

    # ---- the service's side -------------------------------------------------------------------------

    @abstractmethod
    def check(self) -> None:
        """Raise :class:`StoreError` with a clear message when the repository is unusable as configured."""

    @abstractmethod
    def scan(self, names: Collection[str] | None = None) -> dict[str, list[int]]:
        """Each model (restricted to ``names``) with its committed versions, ascending; may raise
        :class:`StoreUnavailable`."""

    def known(self, names: Collection[str] | None = None) -> dict[str, list[int]]:
        """What :meth:`scan` found last, without asking the store again (the repository index)."""
        return self.scan(names)

    @abstractmethod
    def incomplete(self, name: str) -> dict[int, list[str]]:
        """Versions of ``name`` that exist but lack a required file: ``{version: [missing]}``."""

    @abstractmethod
    def stamp(self, name: str, version: int) -> str:
        """Changes whenever the version's committed content changes (to retry a refused version)."""

    @abstractmethod
    def has_file(self, name: str, version: int, file: str) -> bool:
        """Whether a version holds ``file`` (a marker such as a rollout candidate's), as of the last
        :meth:`scan` where the store lists remotely."""

    @abstractmethod
    def local_version(self, name: str, version: int) -> Path:
        """A local ``<name>/<version>`` directory holding the version's ``model.onnx`` and
        ``metadata.json``, verified against their sha256 where they were downloaded."""

    # ---- records beside a model ---------------------------------------------------------------------

    @abstractmethod
    def read_record(self, name: str, record: str) -> dict[str, Any] | None:
        """The JSON object ``<name>/<record>.json``, or None when there is none."""

    @abstractmethod
    def write_record(self, name: str, record: str, document: Mapping[str, Any]) -> None:
        """Replace ``<name>/<record>.json`` atomically: a reader sees the old or the new one."""

    @abstractmethod
    def remove_record(self, name: str, record: str) -> None:
        """Remove ``<name>/<record>.json`` (none is fine)."""

    # ---- the publisher's side -----------------------------------------------------------------------

    @abstractmethod
    def numbers(self, name: str) -> list[int]:
        """Every version number of ``name`` taken (committed or being written), ascending."""

    @abstractmethod
    def read_file(self, name: str, version: int, file: str) -> bytes:
        """One file of a version (``metadata.json``, ``train/model.keras``); OSError when absent."""

    @abstractmethod
    @contextlib.contextmanager
    def staging(self, name: str) -> Iterator[Path]:
        """A local directory to write a new version into; removed afterwards unless committed."""

    @abstractmethod
    def commit(self, name: str, version: int, staging: Path, metadata: bytes) -> str | None:
        """Publish ``staging`` (plus ``metadata``) as ``name/version``; its location, or None when the
        number was taken by another publisher (choose the next and try again)."""

    @abstractmethod
    def fetch_version(self, name: str, version: int, destination: Path) -> Path:
        """A local directory with every file of a version (retraining reads ``train/model.keras``
        there): downloaded under ``destination/<name>/<version>`` and checked against the sha256 its
        metadata records, or the version's own directory when the store is local."""


def _record_name(name: str, record: str) -> str:
    if not valid_model_name(name) or not valid_model_name(record):
        raise ValueError(f"invalid model or record name {name!r}/{record!r}")
    return f"{name}/{record}{RECORD_SUFFIX}"


def decode_record(data: bytes, where: str) -> dict[str, Any]:
    """A record's bytes as a JSON object; :class:`StoreError` naming ``where`` otherwise."""
    if len(data) > MAX_RECORD_BYTES:
        raise RecordCorrupt(f"{where}: record larger than {MAX_RECORD_BYTES} bytes")
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise RecordCorrupt(f"{where}: not JSON ({exc})") from None
    if not isinstance(document, dict):
        raise RecordCorrupt(f"{where}: not a JSON object")
    return document


def encode_record(document: Mapping[str, Any], where: str = "record") -> bytes:
    """A record's bytes; :class:`RecordCorrupt` when they would be over :data:`MAX_RECORD_BYTES`."""
    data = (json.dumps(dict(document), indent=2, sort_keys=True) + "\n").encode()
    if len(data) > MAX_RECORD_BYTES:
        raise RecordCorrupt(f"{where}: a record of {len(data)} bytes is over {MAX_RECORD_BYTES}")
    return data


class LocalStore(ModelStore):
    """A repository in a local directory (a volume, a PVC): versions renamed into place."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)

    def check(self) -> None:
        # Reported at start-up; the versions are served once the directory appears.
        if not self.root.is_dir():
            raise StoreError(f"{self.root} does not exist")

    def scan(self, names: Collection[str] | None = None) -> dict[str, list[int]]:
        return scan_repository(self.root, names)

    def incomplete(self, name: str) -> dict[int, list[str]]:
        return incomplete_versions(self.root, name)

    def stamp(self, name: str, version: int) -> str:
        path = version_dir(self.root, name, version)
        try:
            return str(max((path / METADATA_FILE).stat().st_mtime, (path / MODEL_FILE).stat().st_mtime))
        except OSError:
            return "missing"

    def has_file(self, name: str, version: int, file: str) -> bool:
        return (version_dir(self.root, name, version) / file).is_file()

    def local_version(self, name: str, version: int) -> Path:
        return version_dir(self.root, name, version)

    def read_record(self, name: str, record: str) -> dict[str, Any] | None:
        path = self.root / _record_name(name, record)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"{path}: cannot read ({exc.strerror or exc})") from exc
        return decode_record(data, str(path))

    def write_record(self, name: str, record: str, document: Mapping[str, Any]) -> None:
        path = self.root / _record_name(name, record)
        data = encode_record(document, str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".tmp-{uuid.uuid4().hex}")
        try:
            with temporary.open("xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            temporary.replace(path)
        finally:
            temporary.unlink(missing_ok=True)
        _fsync_directory(path.parent)  # the rename survives a power loss

    def remove_record(self, name: str, record: str) -> None:
        (self.root / _record_name(name, record)).unlink(missing_ok=True)

    def numbers(self, name: str) -> list[int]:
        directory = self.root / name
        if not valid_model_name(name) or not directory.is_dir():
            return []
        found = (parse_version(p.name) for p in directory.iterdir() if p.is_dir())
        return sorted(v for v in found if v is not None)

    def read_file(self, name: str, version: int, file: str) -> bytes:
        return (version_dir(self.root, name, version) / file).read_bytes()

    def fetch_version(self, name: str, version: int, destination: Path) -> Path:
        return version_dir(self.root, name, version)

    @contextlib.contextmanager
    def staging(self, name: str) -> Iterator[Path]:
        # Beside the versions, so that the commit is a rename on one file system.
        parent = self.root / name
        parent.mkdir(parents=True, exist_ok=True)
        directory = parent / f".tmp-{uuid.uuid4().hex}"
        directory.mkdir()
        try:
            yield directory
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def commit(self, name: str, version: int, staging: Path, metadata: bytes) -> str | None:
        path = staging / METADATA_FILE
        path.unlink(missing_ok=True)
        with path.open("xb") as f:
            f.write(metadata)
            f.flush()
            os.fsync(f.fileno())
        target = version_dir(self.root, name, version)
        try:
            staging.rename(target)  # fails when the number exists: the other publisher won it
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            return None
        _fsync_directory(target.parent)
        return str(target)


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
