"""A repository's location as an operator writes it: a directory or ``s3://bucket/prefix``."""

from __future__ import annotations

import os
import re
from pathlib import Path

#: A repository location as given on a command line or in ``SERVE_MODEL_REPOSITORY``.
Location = str | os.PathLike[str]
#: The scheme of object-storage locations.
S3_SCHEME = "s3://"
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def is_remote(location: Location) -> bool:
    """True for ``s3://`` locations."""
    return str(location).startswith(S3_SCHEME)


def parse_location(text: str) -> str | Path:
    """A command-line repository argument: ``s3://bucket/prefix`` stays a string, anything else is a
    path (``Path`` would fold the ``//`` of a URL). ValueError for another URL scheme."""
    if is_remote(text):
        split_url(text)  # raises ValueError with the reason
        return text
    if "://" in text:
        raise ValueError(f"unsupported repository {text!r}: use a directory or s3://bucket/prefix")
    return Path(text)


def split_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` to ``("bucket", "some/prefix/")``; ValueError naming the problem."""
    if not url.startswith(S3_SCHEME):
        raise ValueError(f"{url!r} is not an s3:// URL")
    bucket, _, prefix = url[len(S3_SCHEME) :].partition("/")
    if not _BUCKET_RE.fullmatch(bucket):
        raise ValueError(f"{url!r}: {bucket!r} is not a valid bucket name")
    parts = [p for p in prefix.split("/") if p]
    if any(p in (".", "..") for p in parts) or "//" in prefix.strip("/"):
        raise ValueError(f"{url!r}: the prefix must be plain path segments")
    return bucket, "".join(p + "/" for p in parts)
