"""The rollout rule (service/rollout/policy.py): the exact test, the guardrails, stages, eligibility."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from service.rollout.policy import (
    Evidence,
    Options,
    RolloutRecord,
    Stage,
    VersionEvidence,
    binomial_tail,
    eligible_champions,
    mcnemar,
    next_step,
)


def test_binomial_tail_is_exact() -> None:
    assert binomial_tail(0, 5) == 1.0
    assert binomial_tail(6, 5) == 0.0
    assert binomial_tail(5, 5) == 1 / 32
    assert binomial_tail(7, 7) == 1 / 128
    assert binomial_tail(3, 4) == 5 / 16  # C(4,3) + C(4,4) over 16
    # Large n falls back to logarithms and must agree with the exact fraction.
    exact = sum(math.comb(1200, i) for i in range(640, 1201)) / 2**1200
    assert binomial_tail(640, 1200) == pytest.approx(exact, rel=1e-9)


def test_mcnemar_fills_both_one_sided_p_values() -> None:
    evidence = mcnemar(Evidence(champion_only=7, candidate_only=0))
    assert evidence.p_value_worse == 1 / 128
    assert evidence.p_value_better == 1.0
    assert evidence.statistic == 7
    assert mcnemar(Evidence()).p_value_worse is None  # no discordant pair: no test


def record(**evidence: object) -> RolloutRecord:
    options = Options(
        stages=[
            Stage(kind="shadow", weight=1.0, min_requests=10),
            Stage(kind="canary", weight=0.5, min_requests=10),
        ],
        min_labelled=20,
    )
    return RolloutRecord(
        model="m",
        id="r",
        state="shadow",
        champion=1,
        candidate=2,
        options=options,
        evidence=Evidence.model_validate(evidence),
    )


def test_rollback_when_the_candidate_is_significantly_less_accurate() -> None:
    step = next_step(record(champion_only=7, candidate_only=0, candidate={"labelled": 7}))
    assert step is not None and step[0] == "rollback"
    assert "p = 0.0078" in step[1]
    # Six discordant pairs against it are not yet significant at alpha 0.01 (p = 1/64).
    assert next_step(record(champion_only=6, candidate={"labelled": 6})) is None


def test_stages_advance_on_their_minimum_and_promotion_waits_for_labels() -> None:
    assert next_step(record(candidate={"requests": 9})) is None
    step = next_step(record(candidate={"requests": 10}))
    assert step is not None and step[0] == "advance"
    last = record(candidate={"requests": 30, "labelled": 19})
    last.state, last.stage = "canary", 1
    assert next_step(last) is None  # 19 < min_labelled: it waits, never promotes blind
    last.evidence.candidate.labelled = 20
    last.evidence.candidate_only, last.evidence.champion_only = 2, 1
    step = next_step(last)
    assert step is not None and step[0] == "promote"
    last.evidence.candidate_only, last.evidence.champion_only = 1, 2
    assert next_step(last) is None  # not worse means c >= b


def test_promote_when_better_needs_a_significant_gain() -> None:
    last = record(candidate={"requests": 30, "labelled": 40}, champion_only=0, candidate_only=6)
    last.state, last.stage = "canary", 1
    last.options.promote_when = "better"
    assert next_step(last) is None  # p = 1/64 >= 0.01
    last.evidence.candidate_only = 7
    step = next_step(last)
    assert step is not None and step[0] == "promote"


def test_guardrails_roll_back_on_errors_and_latency() -> None:
    errors = record(candidate={"requests": 60, "errors": 5}, champion={"requests": 100})
    step = next_step(errors)
    assert step is not None and step[0] == "rollback" and "error rate" in step[1]
    slow = record(candidate={"requests": 60, "p99_ms": 80.0}, champion={"requests": 60, "p99_ms": 10.0})
    step = next_step(slow)
    assert step is not None and step[0] == "rollback" and "p99" in step[1]
    fine = record(candidate={"requests": 60, "p99_ms": 39.0}, champion={"requests": 60, "p99_ms": 10.0})
    step = next_step(fine)
    assert step is not None and step[0] == "advance"  # within 2 x 10 ms + 20 ms: no rollback


def test_eligible_champions_follow_marks_and_the_record() -> None:
    assert eligible_champions([1, 2, 3], {3}, None) == [1, 2]
    done = RolloutRecord(model="m", state="promoted", promoted=[3], rejected=[2])
    assert eligible_champions([1, 2, 3], {3}, done) == [1, 3]
    running = RolloutRecord(model="m", state="canary", candidate=2)
    assert eligible_champions([1, 2], set(), running) == [1]  # the candidate is never the champion


def test_weights_follow_the_state() -> None:
    canary = record()
    canary.state, canary.stage = "canary", 1
    assert (canary.weight, canary.shadow_share) == (0.5, 0.0)
    assert (record().weight, record().shadow_share) == (0.0, 1.0)
    canary.state = "paused"
    assert canary.weight == 0.0


def test_options_are_bounded() -> None:
    with pytest.raises(ValidationError):
        Options(alpha=0.7)
    with pytest.raises(ValidationError):
        Options(stages=[])
    with pytest.raises(ValidationError):
        Stage(kind="canary", weight=1.5)
    assert VersionEvidence().p99_ms is None
