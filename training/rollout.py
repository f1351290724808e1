"""The trainer's side of rollouts (``docs/rollout.md``): which version serves, and starting a rollout.

``retrain`` fine-tunes the *serving champion* (not a candidate under test, nor a rolled-back version),
publishes the challenger as a candidate, and starts its rollout by writing the model's rollout record;
every service replica polling the repository follows it. The record is read and written only through
:mod:`service.rolloutstore`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from service.contract import CANDIDATE_FILE, version_dir
from service.repository import scan_repository
from service.rollout import Options, RolloutRecord, begin, eligible_champions
from service.rolloutstore import read_record, write_record


def current_record(repository: Path, name: str) -> RolloutRecord | None:
    data = read_record(repository, name)
    return None if data is None else RolloutRecord.model_validate(data)


def serving_champion(repository: Path, name: str) -> int | None:
    """The version the service answers unversioned requests with (as the registry picks it), or None."""
    available = scan_repository(repository, [name]).get(name, [])
    marked = {v for v in available if (version_dir(repository, name, v) / CANDIDATE_FILE).is_file()}
    eligible = eligible_champions(available, marked, current_record(repository, name))
    return max(eligible, default=None)


def start_rollout(repository: Path, name: str, candidate: int, champion: int) -> str:
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
