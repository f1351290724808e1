"""The model repository, writer's side: the promotion guard and atomic publishing.

Names, versions and the layout are the repository contract (:mod:`service.contract`,
``docs/repository.md``)::

    <repository>/<name>/<version>/model.onnx
    <repository>/<name>/<version>/metadata.json
    <repository>/<name>/<version>/report/*.png
    <repository>/<name>/<version>/train/model.keras    the Keras model, for retraining; never served

The repository is a directory or ``s3://bucket/prefix``; both are a :class:`service.storage.store.ModelStore`.
A version is written in full into a staging directory, its ``metadata.json`` records every file's
sha256 (``files``), and the store commits it onto the next number: a directory is renamed into place
(``rename`` onto an existing non-empty directory fails), an S3 version is claimed with a conditional
PUT, uploaded, and committed by ``metadata.json`` last (``docs/cluster.md``). Either way two concurrent
publishers never share a number: the loser rewrites its metadata with the next number and tries again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.contract import (
    CANDIDATE_FILE,
    METADATA_FILE,
    MODEL_FILE,
    Metadata,
    metadata_json,
    valid_model_name,
)
from service.storage import Location, ModelStore, StoreError, is_remote, open_store
from training.errors import PromotionRefused, PublishError, UsageError

#: What ``metadata.json`` is written from: a :class:`Metadata` (validated, what the pipeline writes) or a
#: plain mapping, written as given (for tools and tests that write partial records).
MetadataSource = Metadata | Mapping[str, Any]
#: Give up after this many versions were taken by concurrent publishers in a row.
MAX_ATTEMPTS = 1000


@dataclass(frozen=True)
class Published:
    """Where a version landed: ``path`` is its directory, or its ``s3://`` URL."""

    name: str
    version: int
    path: Path | str


def validate_name(name: str) -> str:
    """``name`` if it matches ``[a-z0-9][a-z0-9_-]{0,63}``, else :class:`UsageError`."""
    if not valid_model_name(name):
        raise UsageError(
            f"invalid model name {name!r}: use 1-64 of a-z 0-9 _ -, starting with a letter or digit"
        )
    return name


def _store(repository: Location | ModelStore) -> ModelStore:
    return repository if isinstance(repository, ModelStore) else open_store(repository)


def versions(repository: Location | ModelStore, name: str) -> list[int]:
    """Version numbers of ``name`` taken, ascending: directories (or S3 prefixes) named by a positive
    integer (``7``, not ``07`` or ``.tmp-...``). PublishError when the store cannot be read."""
    validate_name(name)
    store = _store(repository)
    try:
        return store.numbers(name)
    except StoreError as exc:
        raise PublishError(f"cannot read {store.url}: {exc}") from exc


def newest_metadata(repository: Location | ModelStore, name: str) -> dict[str, Any] | None:
    """``metadata.json`` of the newest version of ``name`` that has a readable one, or ``None``."""
    store = _store(repository)
    for version in reversed(versions(store, name)):
        try:
            metadata: dict[str, Any] = json.loads(store.read_file(name, version, METADATA_FILE))
        except (OSError, ValueError, StoreError):
            continue
        if isinstance(metadata, dict):
            return metadata
    return None


def check_promotion(
    repository: Location | ModelStore,
    name: str,
    accuracy: float,
    max_regression_points: float,
    *,
    force: bool = False,
) -> None:
    """Refuse (:class:`PromotionRefused`) a test ``accuracy`` more than ``max_regression_points``
    percentage points below the newest published version of ``name``, unless ``force``."""
    previous = newest_metadata(repository, name)
    if previous is None or force:
        return
    try:
        previous_accuracy = float(previous["metrics"]["accuracy"])
    except (KeyError, TypeError, ValueError):
        return  # a version without a recorded accuracy sets no bar
    drop = (previous_accuracy - accuracy) * 100
    if drop > max_regression_points:
        raise PromotionRefused(
            f"not publishing {name}: test accuracy {accuracy:.2%} is {drop:.2f} points below "
            f"version {previous.get('version')} ({previous_accuracy:.2%}); the limit is "
            f"{max_regression_points:g} points (--max-regression), --force publishes anyway"
        )


def check_signature(
    repository: Location | ModelStore,
    name: str,
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    *,
    force: bool = False,
) -> None:
    """Refuse (:class:`PromotionRefused`) a version whose inputs or outputs differ from the newest
    version's, unless ``force``: the service keeps serving that one and refuses the new one, so that no
    client sees a model change its signature under the same name."""
    previous = newest_metadata(repository, name)
    if previous is None or force or "inputs" not in previous or "outputs" not in previous:
        return  # a version without a recorded signature is not served, so it sets no bar
    if previous["inputs"] == inputs and previous["outputs"] == outputs:
        return

    def show(tensors: Any) -> str:
        if not isinstance(tensors, list):
            return "?"
        return ", ".join(f"{t.get('name')} {t.get('shape')}" for t in tensors if isinstance(t, dict))

    raise PromotionRefused(
        f"not publishing {name}: its signature ({show(inputs)} -> {show(outputs)}) differs from version "
        f"{previous.get('version')}'s ({show(previous.get('inputs'))} -> {show(previous.get('outputs'))}), "
        "and the service would keep serving that one; publish under another --name, or --force"
    )


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _file_digests(staging: Path) -> dict[str, str]:
    """sha256 of every file under ``staging`` but ``metadata.json``, by relative POSIX path."""
    return {
        path.relative_to(staging).as_posix(): sha256_hex(path.read_bytes())
        for path in sorted(staging.rglob("*"))
        if path.is_file() and path.relative_to(staging).as_posix() != METADATA_FILE
    }


def _metadata_bytes(content: MetadataSource, files: dict[str, str]) -> bytes:
    if isinstance(content, Metadata):
        return metadata_json(content.model_copy(update={"files": files}))
    return (json.dumps({**dict(content), "files": files}, indent=2) + "\n").encode()


def publish(
    repository: Location | ModelStore,
    name: str,
    model_bytes: bytes,
    metadata: Callable[[int], MetadataSource],
    write_extra: Callable[[Path], None] | None = None,
    *,
    candidate: bool = False,
) -> Published:
    """Publish ``model_bytes`` as the next version of ``name`` in ``repository``, atomically.

    ``metadata(version)`` returns the ``metadata.json`` content for a version number (called again if a
    concurrent publisher takes the number first); ``files`` (every file's sha256) is added to it.
    ``write_extra(directory)`` may add files such as ``report/``. If anything fails, no version appears.
    ``candidate`` publishes it marked as a candidate (``docs/rollout.md``): loaded by the service, never
    the answer to an unversioned request until a rollout promotes it. The marker is one of the version's
    files, so it is committed with them (on S3 before ``metadata.json``): the version appears as a
    candidate or not at all.
    """
    store = _store(repository)
    validate_name(name)
    try:
        with store.staging(name) as staging:
            _write(staging / MODEL_FILE, model_bytes)
            if write_extra is not None:
                write_extra(staging)
            if candidate:
                _write(staging / CANDIDATE_FILE, b"")
            return _claim_version(store, name, staging, sha256_hex(model_bytes), metadata)
    except StoreError as exc:
        raise PublishError(f"cannot publish {name} to {store.url}: {exc}") from exc
    except OSError as exc:
        raise PublishError(f"cannot write to {store.url}/{name}: {exc.strerror or exc}") from exc


def _claim_version(
    store: ModelStore, name: str, staging: Path, digest: str, metadata: Callable[[int], MetadataSource]
) -> Published:
    """Commit ``staging`` onto the next free version number, rewriting its metadata for each try."""
    files = _file_digests(staging)
    version = max(store.numbers(name), default=0) + 1
    for _ in range(MAX_ATTEMPTS):
        content = metadata(version)
        recorded: tuple[Any, Any]
        if isinstance(content, Metadata):
            recorded = (content.version, content.sha256)
        else:
            recorded = (content.get("version"), content.get("sha256"))
        if recorded != (version, digest):
            raise PublishError("metadata must carry the version number and the model's sha256")
        location = store.commit(name, version, staging, _metadata_bytes(content, files))
        if location is None:
            version = max([version, *store.numbers(name)]) + 1
            continue
        return Published(name, version, location if is_remote(location) else Path(location))
    raise PublishError(f"could not publish {name}: {MAX_ATTEMPTS} version numbers taken concurrently")
