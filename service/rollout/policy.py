"""Progressive delivery of a model version: the rollout record, its evidence, and the decision rule.

Pure logic, no I/O and no clock of its own (``now`` is passed in): the record is read and written by
:mod:`service.rollout.records`, routed and fed by :mod:`service.core.rollout`. ``docs/rollout.md`` states
the rule; in short, a candidate goes through its stages (``shadow``, then ``canary`` steps), each with
a minimum of candidate requests and of labelled items gathered in it, and is

* **rolled back** at once when a guardrail trips (its error rate, or its p99 against the champion's)
  or when paired labelled feedback shows it less accurate: the one-sided exact binomial (McNemar) test
  on the discordant pairs, ``P(X >= b | b + c, 1/2) < alpha``, where ``b`` counts items only the
  champion got right and ``c`` items only the candidate got right;
* **promoted** after its last stage once ``min_labelled`` labelled items were scored by both and the
  candidate is not worse (``promote_when="not_worse"``: ``c >= b`` and the test above does not reject)
  or significantly better (``promote_when="better"``: ``P(X >= c | b + c, 1/2) < alpha``).

Without labelled evidence a rollout waits in its last stage; only an operator promotes it then.

One module of this size on purpose: the record, the test and the rule that reads them are one
contract, shared by every replica, the controller and the trainer; kept together so they cannot drift.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

State = Literal["idle", "shadow", "canary", "promoted", "rolled_back", "paused"]
ACTIVE_STATES = ("shadow", "canary", "paused")
#: The numeric value of ``rollout_state{model}``.
STATE_CODES: dict[str, int] = {
    "idle": 0,
    "shadow": 1,
    "canary": 2,
    "paused": 3,
    "promoted": 4,
    "rolled_back": 5,
}
#: Most decisions a record keeps (oldest dropped first), so the record stays small.
MAX_HISTORY = 200


class Stage(BaseModel):
    """One stage: ``weight`` is the candidate's share of unversioned requests (0 for shadow, which
    computes a ``weight`` share of them on the candidate too, after the champion answered)."""

    kind: Literal["shadow", "canary"]
    weight: float = Field(ge=0.0, le=1.0)
    min_requests: int = Field(100, ge=0, le=10_000_000)
    min_labelled: int = Field(0, ge=0, le=10_000_000)


def default_stages() -> list[Stage]:
    return [
        Stage(kind="shadow", weight=1.0, min_requests=100),
        Stage(kind="canary", weight=0.1, min_requests=100),
        Stage(kind="canary", weight=0.5, min_requests=100),
    ]


class Options(BaseModel):
    """What an operator may set when starting a rollout (the service's settings give the defaults)."""

    stages: list[Stage] = Field(default_factory=default_stages, min_length=1, max_length=10)
    alpha: float = Field(0.01, gt=0.0, lt=0.5)
    min_labelled: int = Field(100, ge=1, le=10_000_000)
    promote_when: Literal["not_worse", "better"] = "not_worse"
    max_error_rate: float = Field(0.02, ge=0.0, le=1.0)
    p99_factor: float = Field(2.0, ge=1.0, le=100.0)
    p99_slack_ms: float = Field(20.0, ge=0.0, le=60_000.0)
    guard_min_requests: int = Field(50, ge=1, le=10_000_000)
    grace_s: float = Field(300.0, ge=0.0, le=7 * 86_400.0)


class VersionEvidence(BaseModel):
    """What one version did during the rollout: live requests and errors, p99, paired labelled items."""

    requests: int = 0
    errors: int = 0
    p99_ms: float | None = None
    labelled: int = 0
    correct: int = 0


class Evidence(BaseModel):
    """Evidence of the whole rollout. ``champion_only``/``candidate_only``: the discordant pairs."""

    champion: VersionEvidence = Field(default_factory=VersionEvidence)
    candidate: VersionEvidence = Field(default_factory=VersionEvidence)
    shadow_compared: int = 0
    shadow_agreed: int = 0
    shadow_errors: int = 0
    shadow_skipped: int = 0
    champion_only: int = 0
    candidate_only: int = 0
    statistic: int = 0
    p_value_worse: float | None = None
    p_value_better: float | None = None

    @property
    def shadow_agreement(self) -> float | None:
        return self.shadow_agreed / self.shadow_compared if self.shadow_compared else None


class Decision(BaseModel):
    """One entry of the history: what was decided, when (UTC, ISO 8601), why, on which figures."""

    at: str
    decision: Literal["start", "advance", "promote", "rollback", "pause", "resume"]
    by: Literal["rule", "operator", "retrain"]
    #: The rollout and its candidate (a record's history spans its rollouts).
    rollout: str = ""
    candidate: int | None = None
    stage: int
    reason: str
    labelled: int
    champion_only: int
    candidate_only: int
    p_value_worse: float | None = None
    p_value_better: float | None = None


class RolloutRecord(BaseModel):
    """A model's rollout plan and its outcome: the JSON of ``<repository>/<model>/rollout.json``.

    ``promoted`` and ``rejected`` outlive the rollout that wrote them: a version marked as a candidate
    becomes eligible as champion only once promoted, and a rejected version is never served
    unversioned nor loaded again by the repository poller.
    """

    model: str
    id: str = ""
    revision: int = 0
    state: State = "idle"
    champion: int | None = None
    candidate: int | None = None
    stage: int = 0
    options: Options = Field(default_factory=Options)
    started_at: str | None = None
    stage_base_requests: int = 0
    stage_base_labelled: int = 0
    evidence: Evidence = Field(default_factory=Evidence)
    reason: str = ""
    history: list[Decision] = Field(default_factory=list)
    promoted: list[int] = Field(default_factory=list)
    rejected: list[int] = Field(default_factory=list)
    previous: int | None = None
    grace_until: float | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def weight(self) -> float:
        """The candidate's share of unversioned answers (0 while shadowing, paused or rolled back)."""
        if self.state == "canary":
            return self.options.stages[self.stage].weight
        return 1.0 if self.state == "promoted" else 0.0

    @property
    def shadow_share(self) -> float:
        """The share of unversioned requests also computed on the candidate (shadow stage only)."""
        if self.state == "shadow":
            return self.options.stages[self.stage].weight
        return 0.0

    def log(self, decision: Decision) -> None:
        self.history.append(decision)
        del self.history[:-MAX_HISTORY]
        self.reason = decision.reason
        self.revision += 1


def eligible_champions(available: list[int], candidates: set[int], record: RolloutRecord | None) -> list[int]:
    """Versions that may answer unversioned requests: not rejected, not the rollout's candidate, and
    not marked as a candidate unless promoted."""
    if record is None:
        return [v for v in available if v not in candidates]
    held = {record.candidate} if record.active else set()
    return [
        v
        for v in available
        if v not in record.rejected and v not in held and (v not in candidates or v in record.promoted)
    ]


def binomial_tail(k: int, n: int) -> float:
    """``P(X >= k)`` for ``X ~ Binomial(n, 1/2)``, exactly (n up to a few thousand)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    total = sum(math.comb(n, i) for i in range(k, n + 1))
    return float(total / 2**n) if n < 1000 else math.exp(math.log(total) - n * math.log(2))


def mcnemar(evidence: Evidence) -> Evidence:
    """The evidence with the exact one-sided McNemar p-values of its discordant pairs filled in."""
    b, c = evidence.champion_only, evidence.candidate_only
    n = b + c
    return evidence.model_copy(
        update={
            "statistic": b - c,
            "p_value_worse": binomial_tail(b, n) if n else None,
            "p_value_better": binomial_tail(c, n) if n else None,
        }
    )


def p99_guard_tripped(evidence: Evidence, options: Options) -> str | None:
    """Why the latency or error guardrail trips, or None."""
    cand, champ = evidence.candidate, evidence.champion
    if cand.requests >= options.guard_min_requests:
        rate = cand.errors / cand.requests
        champion_rate = champ.errors / champ.requests if champ.requests else 0.0
        if rate > options.max_error_rate and rate > champion_rate:
            return (
                f"candidate error rate {rate:.3f} over {cand.requests} requests exceeds "
                f"{options.max_error_rate:.3f} (champion {champion_rate:.3f})"
            )
    if (
        cand.p99_ms is not None
        and champ.p99_ms is not None
        and cand.requests >= options.guard_min_requests
        and champ.requests >= options.guard_min_requests
        and cand.p99_ms > champ.p99_ms * options.p99_factor + options.p99_slack_ms
    ):
        return (
            f"candidate p99 {cand.p99_ms:.1f} ms exceeds {options.p99_factor:g} x champion's "
            f"{champ.p99_ms:.1f} ms + {options.p99_slack_ms:g} ms"
        )
    return None


def next_step(record: RolloutRecord) -> tuple[str, str] | None:
    """The rule's decision for an active, unpaused rollout: ``(decision, reason)`` or None to wait."""
    if record.state not in ("shadow", "canary"):
        return None
    options, evidence = record.options, mcnemar(record.evidence)
    tripped = p99_guard_tripped(evidence, options)
    if tripped is not None:
        return "rollback", tripped
    b, c, labelled = evidence.champion_only, evidence.candidate_only, evidence.candidate.labelled
    if evidence.p_value_worse is not None and evidence.p_value_worse < options.alpha:
        return "rollback", (
            f"candidate less accurate on {labelled} paired labelled items: {b} right only by the "
            f"champion, {c} only by the candidate, one-sided exact binomial p = "
            f"{evidence.p_value_worse:.2g} < alpha {options.alpha:g}"
        )
    stage = options.stages[record.stage]
    requests = _stage_requests(record) - record.stage_base_requests
    stage_labelled = labelled - record.stage_base_labelled
    if requests < stage.min_requests or stage_labelled < stage.min_labelled:
        return None
    if record.stage + 1 < len(options.stages):
        following = options.stages[record.stage + 1]
        return "advance", (
            f"stage {record.stage} ({stage.kind}) met its minimum ({requests} candidate requests, "
            f"{stage_labelled} labelled); next: {following.kind} at {following.weight:g}"
        )
    if labelled < options.min_labelled:
        return None
    if options.promote_when == "better":
        if evidence.p_value_better is None or evidence.p_value_better >= options.alpha:
            return None
        return "promote", (
            f"candidate more accurate on {labelled} paired labelled items ({c} right only by the "
            f"candidate, {b} only by the champion, p = {evidence.p_value_better:.2g} < {options.alpha:g})"
        )
    if c < b:
        return None
    worse = evidence.p_value_worse
    return "promote", (
        f"candidate not worse on {labelled} paired labelled items ({c} right only by the candidate, "
        f"{b} only by the champion, p(worse) = {1.0 if worse is None else worse:.2g} >= {options.alpha:g}); "
        "guardrails held"
    )


def _stage_requests(record: RolloutRecord) -> int:
    """Candidate computations so far: shadow computations and requests it answered, both counted."""
    return record.evidence.candidate.requests


def begin(
    current: RolloutRecord | None,
    model: str,
    champion: int,
    candidate: int,
    options: Options,
    *,
    at: str,
    now_ms: int,
    by: Literal["operator", "retrain"] = "operator",
) -> RolloutRecord:
    """A record starting the rollout of ``candidate`` against ``champion`` (the caller checks that none
    is active), keeping ``current``'s history and its promoted and rejected versions."""
    record = RolloutRecord(model=model) if current is None else current.model_copy(deep=True)
    record.id = f"{model}-{candidate}-{now_ms}"
    record.state, record.stage = options.stages[0].kind, 0
    record.champion, record.candidate, record.options = champion, candidate, options
    record.started_at = at
    record.stage_base_requests = record.stage_base_labelled = 0
    record.evidence = Evidence()
    record.rejected = [v for v in record.rejected if v != candidate]
    record.previous = record.grace_until = None
    record.log(
        Decision(
            at=at,
            decision="start",
            by=by,
            stage=0,
            reason=f"rollout of version {candidate} against version {champion} started",
            labelled=0,
            champion_only=0,
            candidate_only=0,
            rollout=record.id,
            candidate=candidate,
        )
    )
    return record


def apply_decision(record: RolloutRecord, decision: str, reason: str, *, by: str) -> None:
    """Move ``record`` on by ``decision`` and log it in its history."""
    who = "operator" if by == "operator" else "rule"
    if decision == "advance":
        record.stage += 1
        record.state = record.options.stages[record.stage].kind
        record.stage_base_requests = record.evidence.candidate.requests
        record.stage_base_labelled = record.evidence.candidate.labelled
    elif decision == "promote" and record.candidate is not None:
        record.state = "promoted"
        record.promoted = sorted({*record.promoted, record.candidate})
        record.previous = record.champion
        record.grace_until = time.time() + record.options.grace_s
    elif decision == "rollback":
        if record.state == "promoted":
            record.promoted = [v for v in record.promoted if v != record.candidate]
        record.state = "rolled_back"
        record.rejected = sorted({*record.rejected, *([record.candidate] if record.candidate else [])})
        record.previous = record.grace_until = None
    elif decision == "pause":
        record.state = "paused"
    elif decision == "resume":
        record.state = record.options.stages[record.stage].kind
    record.log(_decision(record, decision, who, reason))


def _decision(record: RolloutRecord, decision: str, by: str, reason: str) -> Decision:
    evidence = record.evidence
    return Decision.model_validate(
        {
            "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "decision": decision,
            "by": by,
            "stage": record.stage,
            "reason": reason,
            "labelled": evidence.candidate.labelled,
            "champion_only": evidence.champion_only,
            "candidate_only": evidence.candidate_only,
            "p_value_worse": evidence.p_value_worse,
            "p_value_better": evidence.p_value_better,
            "rollout": record.id,
            "candidate": record.candidate,
        }
    )
