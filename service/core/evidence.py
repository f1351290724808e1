"""A rollout's evidence as one process gathers it, before it is folded into the record.

:class:`Live` holds what this process counted for one rollout (per version: requests, errors, a window
of latencies, labelled and correct items; shadow comparisons; discordant pairs) since it last folded
them into the model's :class:`service.rollout.policy.RolloutRecord` (:func:`fold`). ``docs/rollout.md``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from service.rollout.policy import RolloutRecord

#: Latencies kept per version for the p99 (the newest; older ones fall out).
LATENCY_WINDOW = 2000


@dataclass
class Tally:
    """One version's live counts since the last fold into the record."""

    requests: int = 0
    errors: int = 0
    labelled: int = 0
    correct: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def p99_ms(self) -> float | None:
        if len(self.latencies) < 10:
            return None
        return float(np.percentile(np.fromiter(self.latencies, float), 99)) * 1000


@dataclass
class Live:
    """Evidence gathered by this process for one rollout (``rollout_id``) not yet in the record."""

    name: str
    rollout_id: str
    champion: Tally = field(default_factory=Tally)
    candidate: Tally = field(default_factory=Tally)
    shadow_compared: int = 0
    shadow_agreed: int = 0
    shadow_errors: int = 0
    shadow_skipped: int = 0
    champion_only: int = 0
    candidate_only: int = 0
    changed: bool = False


def fold(record: RolloutRecord, live: Live) -> None:
    """Add ``live``'s counts to ``record``'s evidence; p99s from the live windows when they have one."""
    evidence = record.evidence
    for target, tally in ((evidence.champion, live.champion), (evidence.candidate, live.candidate)):
        target.requests += tally.requests
        target.errors += tally.errors
        target.labelled += tally.labelled
        target.correct += tally.correct
        p99 = tally.p99_ms()
        if p99 is not None:
            target.p99_ms = p99
    evidence.shadow_compared += live.shadow_compared
    evidence.shadow_agreed += live.shadow_agreed
    evidence.shadow_errors += live.shadow_errors
    evidence.shadow_skipped += live.shadow_skipped
    evidence.champion_only += live.champion_only
    evidence.candidate_only += live.candidate_only


def counts_of(live: Live) -> Live:
    """A copy of ``live``'s counts (its latency windows shared: they are a window, not a count)."""
    copy = Live(live.name, live.rollout_id)
    for attr in _COUNTS:
        setattr(copy, attr, getattr(live, attr))
    for part in ("champion", "candidate"):
        mine, theirs = getattr(copy, part), getattr(live, part)
        for attr in ("requests", "errors", "labelled", "correct"):
            setattr(mine, attr, getattr(theirs, attr))
        mine.latencies = theirs.latencies
    return copy


def subtract(live: Live, folded: Live) -> None:
    """Remove the counts already folded into the record from ``live``."""
    for attr in _COUNTS:
        setattr(live, attr, getattr(live, attr) - getattr(folded, attr))
    for part in ("champion", "candidate"):
        mine, theirs = getattr(live, part), getattr(folded, part)
        for attr in ("requests", "errors", "labelled", "correct"):
            setattr(mine, attr, getattr(mine, attr) - getattr(theirs, attr))
    live.changed = live.changed or any(getattr(live, attr) for attr in _COUNTS)


_COUNTS = (
    "shadow_compared",
    "shadow_agreed",
    "shadow_errors",
    "shadow_skipped",
    "champion_only",
    "candidate_only",
)
