"""The operator's side of rollouts: read a model's rollout, start one, promote, roll back, pause, resume.

:class:`RolloutOperator` works on a :class:`service.core.rollout.RolloutDesk`; the core's
``rollout_state``, ``start_rollout`` and ``operate_rollout`` call it (``docs/rollout.md``: the API, its
answers and its errors).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from service.contract import METADATA_FILE, parse_metadata
from service.core.evidence import fold
from service.core.rollout import RolloutDesk, now_iso
from service.core.served import ServedVersion
from service.core.signature import ModelSignature
from service.errors import Conflict, InvalidInput, NotFound, Unavailable
from service.rollout.policy import Options, RolloutRecord, begin, mcnemar
from service.storage import StoreError, StoreUnavailable


class RolloutOperator:
    """What an operator (or anyone, for :meth:`state`) asks of a process's rollouts."""

    def __init__(self, desk: RolloutDesk) -> None:
        self.desk = desk

    def state(self, name: str) -> dict[str, Any]:
        """``GET /v2/models/{m}/rollout``: the record with the serving champion, or ``idle``."""
        registry = self.desk.registry
        champion = registry.get(name).version
        record = registry.record(name)
        if record is None:
            return {
                "model": name,
                "state": "idle",
                "champion": champion,
                "candidate": None,
                "weight": 0.0,
                "evidence": None,
                "reason": "",
                "history": [],
            }
        data = record.model_dump(mode="json")
        live = self.desk.live.get(name)
        if live is not None and live.rollout_id == record.id and record.active:
            shown = record.model_copy(deep=True)
            fold(shown, live)
            data["evidence"] = mcnemar(shown.evidence).model_dump(mode="json")
        evidence = data["evidence"]
        compared = evidence["shadow_compared"]
        evidence["shadow_agreement"] = evidence["shadow_agreed"] / compared if compared else None
        # ``champion`` serves now; ``rollout_champion`` is the one the candidate was measured against.
        data.update(
            champion=champion,
            rollout_champion=record.champion,
            weight=record.weight,
            serving_candidate=record.active,
        )
        return data

    async def start(self, name: str, candidate: int, options: Options) -> RolloutRecord:
        """Start a rollout of ``candidate`` against the serving champion (404, 409, 400 as documented)."""
        async with self.desk.lock:
            registry = self.desk.registry
            champion = registry.get(name)
            current = registry.record(name)
            if current is not None and current.active:
                raise Conflict(
                    f"model '{name}' already has a rollout of version {current.candidate} ({current.state})"
                )
            if candidate not in registry.available(name) and registry.served(name, candidate) is None:
                raise NotFound(f"model '{name}' has no version {candidate}")
            if candidate == champion.version:
                raise InvalidInput(f"version {candidate} is the champion already")
            await self._check_signature(name, candidate, champion)
            now_ms = int(time.time() * 1000)
            record = begin(current, name, champion.version, candidate, options, at=now_iso(), now_ms=now_ms)
            with self.desk.span("rollout.start", record, {"rollout.by": "operator"}):
                await registry.apply_record(name, record)
            served = registry.served(name, candidate)
            problem = None
            if served is None:
                problem = f"version {candidate} could not be loaded (see the server log)"
            elif served.runtime.signature != champion.runtime.signature:
                problem = (
                    f"version {candidate}'s signature differs from the champion's "
                    f"({served.runtime.signature!r} vs {champion.runtime.signature!r})"
                )
            if problem is not None:
                await registry.apply_record(name, current, remove=current is None)
                raise InvalidInput(problem)
            self.desk.metrics.rollout_decisions.labels(name, "start").inc()
            self.desk.export(name, record)
            return record

    async def _check_signature(self, name: str, candidate: int, champion: ServedVersion) -> None:
        """400 when the candidate's declared signature is not the champion's (read from its metadata in
        the model store)."""
        registry = self.desk.registry
        served = registry.served(name, candidate)
        if served is not None:
            signature = served.runtime.signature
        else:
            try:
                data = await asyncio.to_thread(registry.store.read_file, name, candidate, METADATA_FILE)
                metadata = parse_metadata(json.loads(data))
            except StoreUnavailable as exc:
                raise Unavailable(f"the model repository cannot be read now: {exc}") from None
            except (OSError, ValueError, StoreError) as exc:
                raise InvalidInput(f"version {candidate} has unreadable metadata: {exc}") from None
            signature = ModelSignature.from_metadata(metadata)
        if signature != champion.runtime.signature:
            raise InvalidInput(
                f"version {candidate}'s signature differs from the champion's "
                f"({signature!r} vs {champion.runtime.signature!r})"
            )

    async def operate(self, name: str, decision: str) -> RolloutRecord:
        """``promote``, ``rollback``, ``pause`` or ``resume`` now (409 when the state does not allow it)."""
        record = self.desk.registry.record(name)
        if record is None:
            self.desk.registry.get(name)  # 404 for an unknown model
            raise Conflict(f"model '{name}' has no rollout")
        allowed = {
            "promote": ("shadow", "canary", "paused"),
            "rollback": ("shadow", "canary", "paused", "promoted"),
            "pause": ("shadow", "canary"),
            "resume": ("paused",),
        }[decision]
        if record.state not in allowed:
            raise Conflict(f"cannot {decision} the rollout of model '{name}': it is {record.state}")
        if decision == "rollback" and record.state == "promoted" and record.previous is None:
            raise Conflict(f"the grace period of version {record.candidate} is over; start a new rollout")
        return await self.desk.decide(name, by_operator=decision)
