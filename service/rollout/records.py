"""Where a model's rollout record lives: one small JSON object per model, in the model store.

The record is the one plan every replica serving the repository follows (``docs/rollout.md``). This
module is its only reader and writer for the service, the controller and the trainer, with a narrow
interface (read a model's record, write it atomically, remove it) over the repository's
:class:`service.storage.store.ModelStore` and its per-model records:

- a directory: ``<repository>/<model>/rollout.json``, written to a temporary file in the same
  directory, fsynced, renamed over the old record and the directory fsynced, so a reader sees the old
  record or the new one, never a torn one, and a record written survives a power loss;
- ``s3://bucket/prefix``: the object ``<prefix>/<model>/rollout.json`` beside the model's versions,
  replaced by one PUT, so every replica polling the bucket follows it.

The repository scan ignores it either way (it is not a version). ``store`` is a store, or a location
(a directory or an ``s3://`` URL) opened for the call.
"""

from __future__ import annotations

from typing import Any

from service.contract import valid_model_name
from service.storage import Location, ModelStore, RecordCorrupt, open_store

#: The record's name among the model's records (``<model>/rollout.json``).
RECORD = "rollout"
RECORD_FILE = f"{RECORD}.json"


class RecordError(ValueError):
    """A rollout record exists but is not a JSON object within the store's size bound."""


def _open(store: ModelStore | Location, model: str) -> ModelStore:
    if not valid_model_name(model):
        raise ValueError(f"invalid model name {model!r}")
    return store if isinstance(store, ModelStore) else open_store(store)


def read_record(store: ModelStore | Location, model: str) -> dict[str, Any] | None:
    """The record of ``model`` as JSON, or None when it has none; RecordError when it is damaged,
    :class:`service.storage.store.StoreError` when the store cannot be read."""
    try:
        return _open(store, model).read_record(model, RECORD)
    except RecordCorrupt as exc:
        raise RecordError(str(exc)) from exc


def write_record(store: ModelStore | Location, model: str, record: dict[str, Any]) -> None:
    """Replace the record of ``model`` atomically (and durably, in a directory); RecordError when it
    is too large, OSError or :class:`service.storage.store.StoreError` when it cannot be written."""
    try:
        _open(store, model).write_record(model, RECORD, record)
    except RecordCorrupt as exc:
        raise RecordError(str(exc)) from exc


def remove_record(store: ModelStore | Location, model: str) -> None:
    """Remove the record of ``model`` (none is fine)."""
    _open(store, model).remove_record(model, RECORD)
