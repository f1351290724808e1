"""The model repository, writer's side: the promotion guard and atomic publishing.

Names, versions and the layout are the repository contract (:mod:`service.contract`,
``docs/repository.md``)::

    <repository>/<name>/<version>/model.onnx
    <repository>/<name>/<version>/metadata.json
    <repository>/<name>/<version>/report/*.png
    <repository>/<name>/<version>/train/model.keras    the Keras model, for retraining; never served

A version is written in full under ``<repository>/<name>/.tmp-<uuid>`` and then renamed onto its number.
``rename`` of a directory onto an existing non-empty one fails, so two concurrent publishers never share
a number: the loser rewrites its ``metadata.json`` with the next number and tries again. Readers that only
accept integer directory names never see the temporary one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import uuid
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
    parse_version,
    valid_model_name,
)
from training.errors import PromotionRefused, PublishError, UsageError

#: What ``metadata.json`` is written from: a :class:`Metadata` (validated, what the pipeline writes) or a
#: plain mapping, written as given (for tools and tests that write partial records).
MetadataSource = Metadata | Mapping[str, Any]
#: Give up after this many versions were taken by concurrent publishers in a row.
MAX_ATTEMPTS = 1000


@dataclass(frozen=True)
class Published:
    """Where a version landed."""

    name: str
    version: int
    path: Path


def validate_name(name: str) -> str:
    """``name`` if it matches ``[a-z0-9][a-z0-9_-]{0,63}``, else :class:`UsageError`."""
    if not valid_model_name(name):
        raise UsageError(
            f"invalid model name {name!r}: use 1-64 of a-z 0-9 _ -, starting with a letter or digit"
        )
    return name


def versions(repository: Path, name: str) -> list[int]:
    """Published version numbers of ``name``, ascending: directories named by a positive integer (``7``,
    not ``07`` or ``.tmp-...``)."""
    directory = repository / validate_name(name)
    if not directory.is_dir():
        return []
    found = (parse_version(p.name) for p in directory.iterdir() if p.is_dir())
    return sorted(v for v in found if v is not None)


def newest_metadata(repository: Path, name: str) -> dict[str, Any] | None:
    """``metadata.json`` of the newest version of ``name`` that has a readable one, or ``None``."""
    for version in reversed(versions(repository, name)):
        path = repository / name / str(version) / METADATA_FILE
        try:
            metadata: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        return metadata
    return None


def check_promotion(
    repository: Path, name: str, accuracy: float, max_regression_points: float, *, force: bool = False
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
    repository: Path,
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
    with path.open("xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_metadata(directory: Path, metadata: MetadataSource) -> None:
    if isinstance(metadata, Metadata):
        data = metadata_json(metadata)
    else:
        data = (json.dumps(dict(metadata), indent=2) + "\n").encode()
    path = directory / METADATA_FILE
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    _write(path, data)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(
    repository: Path,
    name: str,
    model_bytes: bytes,
    metadata: Callable[[int], MetadataSource],
    write_extra: Callable[[Path], None] | None = None,
    *,
    candidate: bool = False,
) -> Published:
    """Publish ``model_bytes`` as the next version of ``name`` in ``repository``, atomically.

    ``metadata(version)`` returns the ``metadata.json`` content for a version number (called again if a
    concurrent publisher takes the number first). ``write_extra(directory)`` may add files such as
    ``report/``. If anything fails, the temporary directory is removed and no version appears.
    ``candidate`` publishes it marked as a candidate (``docs/rollout.md``): loaded by the service, never
    the answer to an unversioned request until a rollout promotes it.
    """
    parent = repository / validate_name(name)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = parent / f".tmp-{uuid.uuid4().hex}"
        staging.mkdir()
    except OSError as exc:
        raise PublishError(f"cannot write to {parent}: {exc.strerror or exc}") from exc
    try:
        _write(staging / MODEL_FILE, model_bytes)
        if write_extra is not None:
            write_extra(staging)
        if candidate:
            _write(staging / CANDIDATE_FILE, b"")
        return _claim_version(repository, name, staging, sha256_hex(model_bytes), metadata)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise PublishError(f"cannot publish {name} to {parent}: {exc}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _claim_version(
    repository: Path, name: str, staging: Path, digest: str, metadata: Callable[[int], MetadataSource]
) -> Published:
    """Rename ``staging`` onto the next free version number, rewriting its metadata for each try."""
    parent = staging.parent
    version = max(versions(repository, name), default=0) + 1
    for _ in range(MAX_ATTEMPTS):
        content = metadata(version)
        recorded: tuple[Any, Any]
        if isinstance(content, Metadata):
            recorded = (content.version, content.sha256)
        else:
            recorded = (content.get("version"), content.get("sha256"))
        if recorded != (version, digest):
            raise PublishError("metadata must carry the version number and the model's sha256")
        _write_metadata(staging, content)
        target = parent / str(version)
        try:
            staging.rename(target)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            version = max([version, *versions(repository, name)]) + 1
            continue
        _fsync_dir(parent)
        return Published(name, version, target)
    raise PublishError(f"could not publish {name}: {MAX_ATTEMPTS} version numbers taken concurrently")
