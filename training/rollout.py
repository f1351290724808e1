"""The trainer's side of rollouts (``docs/rollout.md``): which version serves, and starting a rollout.

``retrain`` fine-tunes the *serving champion* (not a candidate under test, nor a rolled-back version),
publishes the challenger as a candidate, and starts its rollout by writing the model's rollout record;
every service replica polling the repository follows it. The repository is a directory or an
``s3://`` bucket (a :class:`service.storage.store.ModelStore`); the record is read and written only through
:mod:`service.rollout.records`, beside the model in that store.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from service.contract import CANDIDATE_FILE
from service.rollout.policy import Options, RolloutRecord, begin, eligible_champions
from service.rollout.records import read_record, write_record
from service.storage import Location, ModelStore, open_store


def _store(repository: Location | ModelStore) -> ModelStore:
    return repository if isinstance(repository, ModelStore) else open_store(repository)


def current_record(repository: Location | ModelStore, name: str) -> RolloutRecord | None:
    data = read_record(repository, name)
    return None if data is None else RolloutRecord.model_validate(data)


def serving_champion(repository: Location | ModelStore, name: str) -> int | None:
    """The version the service answers unversioned requests with (as the registry picks it), or None."""
    store = _store(repository)
    available = store.scan([name]).get(name, [])
    marked = {v for v in available if store.has_file(name, v, CANDIDATE_FILE)}
    eligible = eligible_champions(available, marked, current_record(store, name))
    return max(eligible, default=None)


def start_rollout(repository: Location | ModelStore, name: str, candidate: int, champion: int) -> str:
    """Start the rollout of ``candidate`` with the default options; what happened, in words. A rollout
    already running is left alone: the candidate then waits, loaded, for an operator to start its own."""
    current = current_record(repository, name)
    if current is not None and current.active:
        return (
            f"version {candidate} is published as a candidate; the rollout of version {current.candidate} "
            f"is still {current.state}, start this one once it is decided (docs/rollout.md)"
        )
    at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    record = begin(
        current, name, champion, candidate, Options(), at=at, now_ms=int(time.time() * 1000), by="retrain"
    )
    write_record(repository, name, record.model_dump(mode="json"))
    return f"rollout of version {candidate} against version {champion} started ({record.state} first)"
