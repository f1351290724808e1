"""The model repository in an S3 bucket (AWS S3, or Ceph, SeaweedFS, R2... through ``AWS_ENDPOINT_URL``).

Layout, under ``s3://<bucket>/<prefix>/`` (``docs/cluster.md``)::

    <name>/<version>/.claim           written first, conditionally: the publisher owns the number
    <name>/<version>/model.onnx       and every other file of the version (report/, train/, the
                                      ``candidate`` marker of a rollout candidate)
    <name>/<version>/metadata.json    written last: the commit; records every file's sha256
    <name>/<record>.json              small per-model records (the rollout record), one PUT each

Object storage has no rename, so publishing is: claim the number with a conditional PUT
(``If-None-Match: *``: of two publishers exactly one gets it, the other takes the next number), upload
the files, then ``metadata.json``. A reader lists only versions that have ``metadata.json``, and
verifies each file it downloads against the sha256 recorded there, so a half-uploaded or corrupted
version is never served. Credentials come from boto3's standard chain (environment, shared files,
web identity, instance profile); ``AWS_ENDPOINT_URL`` points it at an S3-compatible store.

One module of this size on purpose: :class:`S3Store` is one implementation of the
:class:`~service.storage.store.ModelStore` interface, method for method.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from service.contract import (
    METADATA_FILE,
    MODEL_FILE,
    VERSION_FILES,
    Metadata,
    MetadataError,
    parse_metadata,
    parse_version,
    valid_model_name,
    version_dir,
)
from service.storage.cache import ModelCache
from service.storage.location import S3_SCHEME, split_url
from service.storage.store import (
    ModelStore,
    StoreError,
    StoreUnavailable,
    VersionCorrupt,
    decode_record,
    encode_record,
)

log = logging.getLogger(__name__)

#: The object a publisher creates first, conditionally, to own a version number.
CLAIM_FILE = ".claim"
#: A version without ``metadata.json`` whose newest object is younger than this is an upload in progress,
#: not worth reporting; older, its publisher is presumed gone and the version is reported as incomplete.
STALE_UPLOAD_S = 600.0
#: Default bound of the local cache when none is given.
DEFAULT_CACHE_BYTES = 4 * 1024**3
_CREDENTIAL_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "403",
}
_MISSING_BUCKET = {"NoSuchBucket", "404"}
_CHUNK = 1024 * 1024


def _code(exc: ClientError) -> tuple[str, int]:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return str(error.get("Code", "")), int(status or 0)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class S3Store(ModelStore):
    """A model repository under ``s3://bucket/prefix``; versions served from a local :class:`ModelCache`."""

    def __init__(self, client: Any, bucket: str, prefix: str, cache: ModelCache | None) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.cache = cache
        self.url = f"{S3_SCHEME}{bucket}/{prefix}".rstrip("/")
        self.stale_upload_s = STALE_UPLOAD_S
        # name -> version -> file -> ETag, as the last listing saw it.
        self._listing: dict[str, dict[int, dict[str, str]]] = {}
        # (name, version) -> newest LastModified (epoch seconds) among the version's objects.
        self._modified: dict[tuple[str, int], float] = {}

    @classmethod
    def from_url(cls, url: str, *, cache_dir: Path | None = None, cache_bytes: int | None = None) -> S3Store:
        bucket, prefix = split_url(url)
        config = Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"})
        client = boto3.session.Session().client("s3", config=config)
        root = cache_dir or Path(tempfile.gettempdir()) / "digits-serving-models"
        return cls(client, bucket, prefix, ModelCache(root, cache_bytes or DEFAULT_CACHE_BYTES))

    # ---- errors ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _calls(self, what: str, *, bucket_check: bool = False) -> Iterator[None]:
        """Translate boto3's exceptions into the store's, with a message that says what to fix.
        ``bucket_check``: a bare 404 (HEAD has no body to name the error) means the bucket is missing."""
        try:
            yield
        except NoCredentialsError as exc:
            raise StoreError(
                f"{self.url}: no credentials found ({exc}): set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or a role"
            ) from None
        except ClientError as exc:
            code, status = _code(exc)
            if code == "NoSuchBucket" or (bucket_check and code in _MISSING_BUCKET):
                raise StoreError(f"{self.url}: bucket {self.bucket!r} does not exist") from None
            if code in _CREDENTIAL_CODES or status == 403:
                raise StoreError(
                    f"{self.url}: access denied ({code}) while {what}: check the credentials and the "
                    "bucket policy"
                ) from None
            if status >= 500 or status in (0, 429):
                raise StoreUnavailable(f"{self.url}: {code or 'error'} ({status}) while {what}") from None
            raise
        except BotoCoreError as exc:  # connection refused, timeouts, DNS: the store is away
            raise StoreUnavailable(f"{self.url}: unreachable while {what}: {exc}") from None

    # ---- the service's side ----------------------------------------------------------------------

    def check(self) -> None:
        with self._calls("checking the bucket", bucket_check=True):
            self.client.head_bucket(Bucket=self.bucket)
        if not any(self.scan().values()):
            raise StoreError(
                f"{self.url}: no model versions (expected <model>/<version>/metadata.json under the prefix)"
            )

    def scan(self, names: Collection[str] | None = None) -> dict[str, list[int]]:
        listing: dict[str, dict[int, dict[str, str]]] = {}
        prefixes = [f"{self.prefix}{n}/" for n in sorted(names)] if names is not None else [self.prefix]
        with self._calls("listing the repository"):
            for prefix in prefixes:
                pages = self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=prefix
                )
                for page in pages:
                    for item in page.get("Contents", ()):
                        self._add(listing, item["Key"], item.get("ETag", ""), item.get("LastModified"))
        if names is None:
            self._listing = listing
        else:
            self._listing.update({n: listing.get(n, {}) for n in names})
        return self._complete(listing, names)

    def _add(self, listing: dict[str, dict[int, dict[str, str]]], key: str, etag: str, modified: Any) -> None:
        name, _, rest = key[len(self.prefix) :].partition("/")
        number, _, file = rest.partition("/")
        version = parse_version(number)
        if valid_model_name(name) and version is not None and file:
            listing.setdefault(name, {}).setdefault(version, {})[file] = etag
            if modified is not None:
                stamp = modified.timestamp()
                self._modified[(name, version)] = max(stamp, self._modified.get((name, version), stamp))
        elif valid_model_name(name):
            listing.setdefault(name, {})

    @staticmethod
    def _complete(
        listing: Mapping[str, Mapping[int, Mapping[str, str]]], names: Collection[str] | None
    ) -> dict[str, list[int]]:
        return {
            name: sorted(v for v, files in versions.items() if METADATA_FILE in files)
            for name, versions in sorted(listing.items())
            if names is None or name in names
        }

    def known(self, names: Collection[str] | None = None) -> dict[str, list[int]]:
        return self._complete(self._listing, names)

    def incomplete(self, name: str) -> dict[int, list[str]]:
        # Without metadata.json a version is being uploaded or was abandoned: reported only once nothing
        # has been written to it for stale_upload_s, so that publishing is not an error every time.
        now = time.time()
        return {
            version: [f for f in VERSION_FILES if f not in files]
            for version, files in self._listing.get(name, {}).items()
            if METADATA_FILE not in files
            and now - self._modified.get((name, version), now) >= self.stale_upload_s
        }

    def stamp(self, name: str, version: int) -> str:
        return self._listing.get(name, {}).get(version, {}).get(METADATA_FILE, "missing")

    def has_file(self, name: str, version: int, file: str) -> bool:
        return file in self._listing.get(name, {}).get(version, {})

    def local_version(self, name: str, version: int) -> Path:
        if self.cache is None:
            raise StoreError(f"{self.url}: no local cache to download into")
        data = self.read_file(name, version, METADATA_FILE)
        key = hashlib.sha256(data).hexdigest()
        cached = self.cache.get(key, name, version)
        if cached is not None:
            return cached
        metadata = self._metadata(name, version, data)

        def write(directory: Path) -> None:
            (directory / METADATA_FILE).write_bytes(data)
            self._download(name, version, MODEL_FILE, directory / MODEL_FILE, metadata)

        log.info("downloading %s/%s/%d into the model cache", self.url, name, version)
        return self.cache.fill(key, name, version, write)

    def fetch_version(self, name: str, version: int, destination: Path) -> Path:
        data = self.read_file(name, version, METADATA_FILE)
        metadata = self._metadata(name, version, data)
        target = version_dir(destination, name, version)
        target.mkdir(parents=True, exist_ok=True)
        (target / METADATA_FILE).write_bytes(data)
        files = dict(metadata.files or {MODEL_FILE: metadata.sha256})
        for file in sorted(files):
            self._download(name, version, file, target / file, metadata)
        return target

    def _metadata(self, name: str, version: int, data: bytes) -> Metadata:
        where = f"{self.url}/{name}/{version}/{METADATA_FILE}"
        try:
            return parse_metadata(json.loads(data))
        except (ValueError, MetadataError) as exc:
            raise VersionCorrupt(f"{where}: {exc}") from None

    def _download(self, name: str, version: int, file: str, path: Path, metadata: Metadata) -> None:
        """Stream one object to ``path``, hashing it; VersionCorrupt unless it matches the metadata."""
        expected = (metadata.files or {}).get(file)
        if file == MODEL_FILE:
            if expected is not None and expected != metadata.sha256:
                raise VersionCorrupt(f"{self.url}/{name}/{version}: 'files' and 'sha256' disagree")
            expected = metadata.sha256
        if expected is None:
            raise VersionCorrupt(f"{self.url}/{name}/{version}: no sha256 recorded for {file}")
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with self._calls(f"downloading {name}/{version}/{file}"):
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(name, version, file))["Body"]
            with path.open("wb") as f:
                for chunk in body.iter_chunks(_CHUNK):
                    digest.update(chunk)
                    f.write(chunk)
        if digest.hexdigest() != expected:
            raise VersionCorrupt(
                f"{self.url}/{name}/{version}/{file}: sha256 mismatch (metadata {expected[:12]}.., "
                f"object {digest.hexdigest()[:12]}..)"
            )

    # ---- records ---------------------------------------------------------------------------------

    def read_record(self, name: str, record: str) -> dict[str, Any] | None:
        key = self._record_key(name, record)
        try:
            with self._calls(f"reading {key}"):
                data = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if _code(exc)[0] in ("NoSuchKey", "404"):
                return None
            raise
        return decode_record(data, f"{S3_SCHEME}{self.bucket}/{key}")

    def write_record(self, name: str, record: str, document: Mapping[str, Any]) -> None:
        key = self._record_key(name, record)
        data = encode_record(document, f"{S3_SCHEME}{self.bucket}/{key}")
        with self._calls(f"writing {key}"):  # one PUT: readers see the old object or the new one
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType="application/json")

    def remove_record(self, name: str, record: str) -> None:
        key = self._record_key(name, record)
        with self._calls(f"removing {key}"):  # deleting an absent key succeeds
            self.client.delete_object(Bucket=self.bucket, Key=key)

    # ---- the publisher's side --------------------------------------------------------------------

    def numbers(self, name: str) -> list[int]:
        self.scan([name])
        return sorted(self._listing.get(name, {}))

    def read_file(self, name: str, version: int, file: str) -> bytes:
        key = self._key(name, version, file)
        try:
            with self._calls(f"reading {name}/{version}/{file}"):
                data: bytes = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if _code(exc)[0] in ("NoSuchKey", "404"):
                raise FileNotFoundError(f"{S3_SCHEME}{self.bucket}/{key}") from None
            raise
        return data

    @contextlib.contextmanager
    def staging(self, name: str) -> Iterator[Path]:
        directory = Path(tempfile.mkdtemp(prefix=f"publish-{name}-"))
        try:
            yield directory
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def commit(self, name: str, version: int, staging: Path, metadata: bytes) -> str | None:
        token = uuid.uuid4().hex.encode()
        claim = self._key(name, version, CLAIM_FILE)
        with self._calls(f"claiming {name}/{version}"):
            try:
                self.client.put_object(Bucket=self.bucket, Key=claim, Body=token, IfNoneMatch="*")
            except ClientError as exc:
                code, status = _code(exc)
                if status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict"):
                    return None  # another publisher owns this number
                raise
            # A store that ignores If-None-Match lets the later claim win; reading ours back makes the
            # earlier one step aside whenever the other PUT landed before this read.
            if self.client.get_object(Bucket=self.bucket, Key=claim)["Body"].read() != token:
                return None
            for path in sorted(p for p in staging.rglob("*") if p.is_file()):
                file = path.relative_to(staging).as_posix()
                if file != METADATA_FILE:
                    self.client.upload_file(str(path), self.bucket, self._key(name, version, file))
            self.client.put_object(
                Bucket=self.bucket,
                Key=self._key(name, version, METADATA_FILE),
                Body=metadata,
                ContentType="application/json",
                IfNoneMatch="*",
            )
        return f"{self.url}/{name}/{version}"

    # ---- keys ------------------------------------------------------------------------------------

    def _key(self, name: str, version: int, file: str) -> str:
        directory = version_dir(Path("."), name, version).as_posix()
        if not file or file.startswith("/") or ".." in file.split("/"):
            raise ValueError(f"invalid file name {file!r}")
        return f"{self.prefix}{directory}/{file}"

    def _record_key(self, name: str, record: str) -> str:
        if not valid_model_name(name) or not valid_model_name(record):
            raise ValueError(f"invalid model or record name {name!r}/{record!r}")
        return f"{self.prefix}{name}/{record}.json"
