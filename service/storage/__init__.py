"""Where the model repository lives, for the service and for publishers: ``store.py`` (the
:class:`ModelStore` interface, per-model records, :class:`LocalStore` for a directory), ``s3.py`` (an S3
bucket, imported only for ``s3://`` locations), ``cache.py`` (verified local copies of remote versions),
``discovery.py`` (which complete versions a directory holds, version policies) and ``location.py``
(``s3://bucket/prefix`` or a directory). :func:`open_store` picks the store for a location; the names
that callers outside this package use are handed on here."""

from __future__ import annotations

import os
from pathlib import Path

from service.storage.location import Location, is_remote, parse_location
from service.storage.store import (
    LocalStore,
    ModelStore,
    RecordCorrupt,
    StoreError,
    StoreUnavailable,
    VersionCorrupt,
)

__all__ = [
    "LocalStore",
    "Location",
    "ModelStore",
    "RecordCorrupt",
    "StoreError",
    "StoreUnavailable",
    "VersionCorrupt",
    "is_remote",
    "open_store",
    "parse_location",
]


def open_store(
    location: Location, *, cache_dir: Path | None = None, cache_bytes: int | None = None
) -> ModelStore:
    """The store for ``location``: ``s3://bucket/prefix`` or a directory. ``cache_dir`` and
    ``cache_bytes`` bound the local copies a remote store downloads for serving."""
    text = os.fspath(location)
    if is_remote(text):
        from service.storage.s3 import S3Store  # boto3 is imported only for remote repositories

        return S3Store.from_url(text, cache_dir=cache_dir, cache_bytes=cache_bytes)
    return LocalStore(Path(text))
