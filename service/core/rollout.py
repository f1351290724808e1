"""The core's rollouts: routing unversioned requests, gathering live evidence, deciding, operating.

A model's plan is its :class:`service.rollout.policy.RolloutRecord`, held by the registry and stored by
:mod:`service.rollout.records`. This desk reads it on every unversioned request (:meth:`RolloutDesk.route`):

* **shadow**: the champion answers; a share of requests is then computed on the candidate too, in a
  task of its own, at most ``rollout_shadow_max_pending`` at once (beyond it the comparison is skipped,
  never the answer delayed); the top labels are compared;
* **canary**: the candidate answers the stage's share, chosen by a hash of the rollout id and the
  routing key (``X-Routing-Key`` / gRPC ``routing-key``) so a key keeps its version as the share grows;
  without a key, per request;
* otherwise the champion answers.

Labelled feedback during a rollout is scored by both versions on the same image
(:meth:`RolloutDesk.on_paired`). With ``rollout_decider="local"`` this process folds its evidence into
the record every ``rollout_interval_s`` and applies :func:`service.rollout.policy.next_step`; with
``"controller"`` it only follows the record that ``python -m service.controller`` writes from
Prometheus (``docs/rollout.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from service.core.evidence import Live, counts_of, fold, subtract
from service.core.registry import ModelRegistry
from service.core.served import ServedVersion
from service.errors import Conflict, DeadlineExceeded, Unavailable
from service.rollout.policy import RolloutRecord, apply_decision, mcnemar, next_step
from service.settings import Settings
from service.telemetry.metrics import Metrics
from service.telemetry.tracing import Tracing

log = logging.getLogger("service")


@dataclass(frozen=True)
class Route:
    """Where an unversioned request goes: the version that answers, and a shadow to compute after."""

    answer: ServedVersion
    stage: str
    tap: Callable[[int, str, float], None] | None = None
    shadow: Callable[[Mapping[str, np.ndarray], Mapping[str, np.ndarray]], None] | None = None


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def routing_share(rollout_id: str, key: str | None) -> float:
    """Where a request falls in [0, 1): fixed for a key within a rollout, random without one."""
    if key is None:
        return random.random()
    digest = hashlib.blake2b(f"{rollout_id}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class RolloutDesk:
    """Rollouts of one process (see the module docstring)."""

    def __init__(self, settings: Settings, metrics: Metrics, tracing: Tracing | None = None) -> None:
        """``tracing``: a lifecycle span (``rollout.start``, ``rollout.decision``) around storing each
        start and decision of this process, when tracing is on."""
        self.settings = settings
        self.metrics = metrics
        self.tracing = tracing
        #: Set when the process drains: nothing is decided from then on (its failures are the drain's).
        self.frozen = False
        self._registry: ModelRegistry | None = None
        #: Per model, the evidence of its current rollout not yet folded into the record.
        self.live: dict[str, Live] = {}
        self._shadows: set[asyncio.Task[None]] = set()
        #: Held while the record is changed (a decision, a start), so changes never interleave.
        self.lock = asyncio.Lock()

    def attach(self, registry: ModelRegistry) -> None:
        self._registry = registry

    @property
    def registry(self) -> ModelRegistry:
        if self._registry is None:
            raise RuntimeError("the rollout desk has no registry yet")
        return self._registry

    # ---- the request path (event loop, no awaits) ------------------------------------------------------

    def route(self, name: str, key: str | None) -> Route:
        """The version that answers an unversioned request for ``name`` (see the module docstring)."""
        registry = self.registry
        champion = registry.get(name)
        record = registry.record(name)
        if record is None or record.state not in ("shadow", "canary") or record.candidate is None:
            return Route(champion, "stable" if record is None else record.state)
        candidate = registry.served(name, record.candidate)
        if candidate is None:
            return Route(champion, record.state)
        live = self._live_for(name, record)
        share = routing_share(record.id, key)
        if record.state == "canary" and share < record.weight:
            return Route(candidate, "canary", tap=self._tapper(live, candidate.version))
        shadow = None
        if record.state == "shadow" and random.random() < record.shadow_share:
            shadow = self._shadower(live, candidate)
        return Route(champion, record.state, tap=self._tapper(live, champion.version), shadow=shadow)

    def _live_for(self, name: str, record: RolloutRecord) -> Live:
        live = self.live.get(name)
        if live is None or live.rollout_id != record.id:
            live = self.live[name] = Live(name, record.id)
        return live

    def _tapper(self, live: Live, version: int) -> Callable[[int, str, float], None]:
        def tap(_: int, status: str, seconds: float) -> None:
            record = self.registry.record(live.name)
            if record is None or record.id != live.rollout_id:
                return
            role = "candidate" if version == record.candidate else "champion"
            tally = live.candidate if role == "candidate" else live.champion
            if status in ("ok", "error", "timeout"):
                tally.requests += 1
                tally.errors += status != "ok"
                tally.latencies.append(seconds)
                live.changed = True
                self._count(live, role, seconds, **{f"{role}_requests": 1, f"{role}_errors": status != "ok"})

        return tap

    def _shadower(
        self, live: Live, candidate: ServedVersion
    ) -> Callable[[Mapping[str, np.ndarray], Mapping[str, np.ndarray]], None]:
        def shadow(inputs: Mapping[str, np.ndarray], answer: Mapping[str, np.ndarray]) -> None:
            if len(self._shadows) >= self.settings.rollout_shadow_max_pending:
                live.shadow_skipped += 1
                self.metrics.rollout_shadow.labels(candidate.name, "skipped").inc()
                self._count(live, shadow_skipped=1)
                return
            task = asyncio.get_running_loop().create_task(
                self._compute_shadow(live, candidate, inputs, answer)
            )
            self._shadows.add(task)
            task.add_done_callback(self._shadows.discard)

        return shadow

    async def _compute_shadow(
        self,
        live: Live,
        candidate: ServedVersion,
        inputs: Mapping[str, np.ndarray],
        answer: Mapping[str, np.ndarray],
    ) -> None:
        started = time.perf_counter()
        output = candidate.runtime.signature.outputs[0].name
        try:
            computed = await candidate.batcher.submit(
                dict(inputs), deadline=time.monotonic() + self.settings.default_timeout_s
            )
        except (Unavailable, DeadlineExceeded):  # shed or draining: no evidence either way
            live.shadow_skipped += 1
            self.metrics.rollout_shadow.labels(candidate.name, "skipped").inc()
            self._count(live, shadow_skipped=1)
            return
        except Exception as exc:  # a candidate's failure is evidence, never the client's problem
            live.candidate.requests += 1
            live.candidate.errors += 1
            live.shadow_errors += 1
            live.changed = True
            self.metrics.rollout_shadow.labels(candidate.name, "error").inc()
            self._count(live, candidate_requests=1, candidate_errors=1, shadow_errors=1)
            log.warning("shadow request on %s version %d failed: %s", candidate.name, candidate.version, exc)
            return
        seconds = time.perf_counter() - started
        live.candidate.requests += 1
        live.candidate.latencies.append(seconds)
        agreed = bool(
            np.array_equal(np.argmax(computed[output], axis=-1), np.argmax(answer[output], axis=-1))
        )
        live.shadow_compared += 1
        live.shadow_agreed += agreed
        live.changed = True
        self.metrics.rollout_shadow.labels(candidate.name, "agree" if agreed else "disagree").inc()
        self._count(live, "candidate", seconds, candidate_requests=1, shadow_compared=1, shadow_agreed=agreed)

    def paired_versions(self, name: str, key: str | None) -> tuple[RolloutRecord, int, int, int] | None:
        """For feedback during a rollout: ``(record, answering version, champion, candidate)``; None
        when no rollout gathers evidence or its candidate is not loaded here."""
        registry = self.registry
        record = registry.record(name)
        if record is None or not record.active or record.candidate is None:
            return None
        if registry.served(name, record.candidate) is None:
            return None
        champion = registry.get(name).version
        answering = record.candidate if routing_share(record.id, key) < record.weight else champion
        return record, answering, champion, record.candidate

    def on_paired(self, name: str, record: RolloutRecord, label: str, champion: str, candidate: str) -> None:
        """One labelled item scored by both versions: ``champion`` and ``candidate`` are their labels."""
        live = self._live_for(name, record)
        for tally, predicted, version in (
            (live.champion, champion, record.champion),
            (live.candidate, candidate, record.candidate),
        ):
            tally.labelled += 1
            tally.correct += predicted == label
            self.metrics.rollout_paired.labels(
                name, str(version), "correct" if predicted == label else "wrong"
            ).inc()
        live.champion_only += champion == label and candidate != label
        live.candidate_only += candidate == label and champion != label
        live.changed = True
        self._count(
            live,
            champion_labelled=1,
            candidate_labelled=1,
            champion_correct=champion == label,
            candidate_correct=candidate == label,
            champion_only=champion == label and candidate != label,
            candidate_only=candidate == label and champion != label,
        )

    def _count(self, live: Live, role: str | None = None, seconds: float = 0.0, **counts: int) -> None:
        """Count evidence in ``rollout_evidence_total`` (and a latency in ``rollout_latency_seconds``)
        under the rollout's id, for ``python -m service.controller`` to add up over replicas."""
        for kind, n in counts.items():
            if n:
                self.metrics.rollout_evidence.labels(live.name, live.rollout_id, kind).inc(n)
        if role is not None:
            self.metrics.rollout_latency.labels(live.name, live.rollout_id, role).observe(seconds)

    # ---- deciding ------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Every ``rollout_interval_s``: fold evidence and decide (local), or follow the record."""
        while True:
            await asyncio.sleep(self.settings.rollout_interval_s)
            try:
                await self.tick()
            except Exception:
                log.exception("rollout tick failed")

    async def tick(self) -> None:
        """Follow records written elsewhere, end grace periods, and decide (``local``)."""
        registry = self.registry
        for name in registry.names():
            if self.lock.locked():
                return  # a change of this process is being written: its record is newer than the file
            fresh = await registry.fetch_record(name)  # the store, polled: a directory or a bucket
            if self.lock.locked():
                return
            cached = registry.record(name)
            if fresh is not None and (cached is None or fresh.revision != cached.revision):
                await registry.sync([name])  # another writer (a controller, an operator elsewhere)
            record = registry.record(name)
            if record is None:
                continue
            self.export(name, record)
            grace = record.grace_until
            if record.previous is not None and grace is not None and time.time() >= grace:
                updated = record.model_copy(deep=True)
                updated.previous, updated.grace_until = None, None
                updated.revision += 1
                await registry.apply_record(name, updated)
            if self.settings.rollout_decider == "local" and record.active and not self.frozen:
                await self.decide(name)

    async def decide(self, name: str, *, by_operator: str | None = None) -> RolloutRecord:
        """Fold this process's evidence into the record, apply the rule (or ``by_operator``'s decision:
        ``promote``, ``rollback``, ``pause``, ``resume``), and store the record when it changed."""
        async with self.lock:
            registry = self.registry
            record = registry.record(name)
            if record is None:
                raise Conflict(f"model '{name}' has no rollout")
            updated = record.model_copy(deep=True)
            live = self.live.get(name)
            changed = False
            folded: Live | None = None
            local = self.settings.rollout_decider == "local"  # a controller owns the evidence otherwise
            if local and live is not None and live.rollout_id == record.id and live.changed and record.active:
                folded = counts_of(live)
                fold(updated, folded)
                live.changed = False
                changed = True
            updated.evidence = mcnemar(updated.evidence)
            step: tuple[str, str] | None
            if by_operator is not None:
                step = (by_operator, f"operator: {by_operator}")
            else:
                step = next_step(updated) if updated.state in ("shadow", "canary") else None
            if step is not None:
                apply_decision(updated, step[0], step[1], by="operator" if by_operator else "rule")
                self.metrics.rollout_decisions.labels(name, step[0]).inc()
                log.info("rollout of %s version %s: %s (%s)", name, updated.candidate, step[0], step[1])
                changed = True
            if changed:
                updated.revision += 1 if step is None else 0
                # Swap the record and take its counts out of the live ones in one step of the event
                # loop, so a reader never sees them twice or not at all; then store it.
                registry.cache_record(name, updated)
                if folded is not None and live is not None:
                    subtract(live, folded)
                if step is None:
                    await registry.apply_record(name, updated)
                else:
                    decision = {"rollout.decision": step[0], "rollout.reason": step[1]}
                    with self.span("rollout.decision", updated, decision):
                        await registry.apply_record(name, updated)
            self.export(name, updated)
            return updated

    def span(
        self, name: str, record: RolloutRecord, attributes: Mapping[str, object] | None = None
    ) -> AbstractContextManager[object]:
        """A lifecycle span about ``record`` (under the operator's request if there is one), or nothing
        with tracing off."""
        if self.tracing is None:
            return contextlib.nullcontext()
        about = {
            "inference.model.name": record.model,
            "rollout.id": record.id,
            "rollout.state": record.state,
            "rollout.champion": record.champion,
            "rollout.candidate": record.candidate,
            "rollout.weight": record.weight,
            **(attributes or {}),
        }
        return self.tracing.lifecycle(name, {k: v for k, v in about.items() if v is not None})

    def export(self, name: str, record: RolloutRecord) -> None:
        self.metrics.set_rollout(name, record.state, record.weight)

    async def drain(self) -> None:
        """Let running shadow computations end (the batchers' drain answers or fails them)."""
        if self._shadows:
            await asyncio.gather(*self._shadows, return_exceptions=True)
