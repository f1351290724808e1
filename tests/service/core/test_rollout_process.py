"""Rollouts on real service processes, with a client streaming unversioned requests throughout: a worse
candidate is rolled back and a better one promoted, each on labelled feedback alone, with zero failed
requests; a restart in the middle of a rollout resumes it from the record."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.helpers.data import MODELS
from tests.helpers.rolloutdrive import Stream, feed_until, sticky, wait_state
from tests.helpers.server import running_service
from tests.helpers.variants import publish_variant

pytestmark = pytest.mark.slow

NAME = "mnist-mlp"
ADMIN_TOKEN = "admin-token-0123456789"
FEEDBACK_TOKEN = "feedback-token-0123456789"
STAGES = [
    {"kind": "shadow", "weight": 1.0, "min_requests": 50},
    {"kind": "canary", "weight": 0.1, "min_requests": 20},
    {"kind": "canary", "weight": 0.5, "min_requests": 50},
]


def env(tmp_path: Path) -> dict[str, str]:
    return {
        "SERVE_MODEL_REPOSITORY": str(tmp_path / "models"),
        "SERVE_MODELS": NAME,
        "SERVE_ADMIN_TOKEN": ADMIN_TOKEN,
        "SERVE_FEEDBACK_DIR": str(tmp_path / "feedback"),
        "SERVE_FEEDBACK_TOKEN": FEEDBACK_TOKEN,
        "SERVE_ROLLOUT_INTERVAL_S": "0.2",
        "SERVE_INTRA_OP_THREADS": "1",
    }


def start(url: str, candidate: int) -> None:
    answer = httpx.post(
        f"{url}/v2/repository/models/{NAME}/rollout",
        # These runs are about the accuracy decision: the latency guardrail (tests/service/rollout/) is
        # widened so that a busy machine's scheduling stalls cannot roll a candidate back first.
        json={"candidate": str(candidate), "stages": STAGES, "min_labelled": 100, "p99_slack_ms": 5000},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text


def test_a_worse_candidate_is_rolled_back_while_clients_stream(tmp_path: Path) -> None:
    publish_variant(MODELS / NAME / "1", tmp_path / "models", NAME, 1)
    publish_variant(MODELS / NAME / "1", tmp_path / "models", NAME, 2, swap=(3, 5), candidate=True)
    with running_service(tmp_path, env=env(tmp_path)) as service:
        with Stream(service.url, NAME) as stream:
            start(service.url, 2)
            outcome = feed_until(service.url, NAME, "rolled_back", FEEDBACK_TOKEN)
            answered_before = stream.requests
            wait = httpx.get(f"{service.url}/v2/models/{NAME}/rollout", timeout=10).json()
            # Keep streaming a little after the decision: the champion alone answers.
            stream.wait_requests(answered_before + 50)
        assert stream.failures == [], stream.failures[:5]
        assert wait["rejected"] == [2] and "less accurate" in wait["reason"]
        print(f"rolled back after {outcome.items} labelled items, {outcome.seconds:.1f} s: {outcome.stages}")
        after = httpx.post(f"{service.url}/v2/models/{NAME}/infer", json=_body(), timeout=10).json()
        assert after["model_version"] == "1"


def test_a_better_candidate_is_promoted_and_a_restart_resumes_its_rollout(tmp_path: Path) -> None:
    publish_variant(MODELS / NAME / "1", tmp_path / "models", NAME, 1, swap=(3, 5))  # degraded champion
    publish_variant(MODELS / NAME / "1", tmp_path / "models", NAME, 2, candidate=True)
    with running_service(tmp_path, env=env(tmp_path)) as service:
        with Stream(service.url, NAME) as stream:
            start(service.url, 2)
            first = feed_until(service.url, NAME, "canary", FEEDBACK_TOKEN, limit=300)
        assert stream.failures == [], stream.failures[:5]
    # SIGTERM in the middle of the canary; a new process on the same repository resumes the rollout.
    with running_service(tmp_path, env=env(tmp_path)) as service:
        resumed = httpx.get(f"{service.url}/v2/models/{NAME}/rollout", timeout=10).json()
        assert (resumed["id"], resumed["state"]) == (first.state["id"], "canary")
        assert resumed["evidence"]["candidate"]["labelled"] >= first.items - 1
        with Stream(service.url, NAME) as stream:
            second = feed_until(service.url, NAME, "promoted", FEEDBACK_TOKEN, start=first.items)
            stream.wait_requests(50)
        assert stream.failures == [], stream.failures[:5]
        assert sticky(stream.by_key), {k: "".join(v) for k, v in stream.by_key.items()}
        assert second.state["champion"] == 2 and second.state["evidence"]["candidate_only"] > 0
        print(  # the numbers in docs/rollout.md come from bench/rollout.py; these help read a failure
            f"canary after {first.items} items ({first.seconds:.1f} s), promoted after "
            f"{first.items + second.items} items ({second.seconds:.1f} s more): "
            f"{first.stages} {second.stages}"
        )
        promoted = wait_state(service.url, NAME, "promoted")
        assert [h["decision"] for h in promoted["history"]][-1] == "promote"
        after = httpx.post(f"{service.url}/v2/models/{NAME}/infer", json=_body(), timeout=10).json()
        assert after["model_version"] == "2"


def _body() -> dict[str, object]:
    from tests.helpers.rolloutdrive import infer_body

    return infer_body(0)


def test_two_replicas_follow_one_record(tmp_path: Path) -> None:
    """One replica decides (``local``), the other only follows the record (``controller``): both route
    by the same plan and both switch when the decision is written."""
    publish_variant(MODELS / NAME / "1", tmp_path / "models", NAME, 1)
    publish_variant(MODELS / NAME / "1", tmp_path / "models", NAME, 2, swap=(3, 5), candidate=True)
    follower_env = {**env(tmp_path), "SERVE_ROLLOUT_DECIDER": "controller"}
    with (
        running_service(tmp_path, env=env(tmp_path)) as decider,
        running_service(tmp_path, env=follower_env) as follower,
    ):
        start(decider.url, 2)
        following = wait_state(follower.url, NAME, "shadow")
        assert (
            following["id"] == httpx.get(f"{decider.url}/v2/models/{NAME}/rollout", timeout=10).json()["id"]
        )
        with Stream(follower.url, NAME) as stream:
            feed_until(decider.url, NAME, "rolled_back", FEEDBACK_TOKEN)
            after = wait_state(follower.url, NAME, "rolled_back")
            answered = stream.requests
            stream.wait_requests(answered + 30)
        assert stream.failures == [], stream.failures[:5]
        assert after["rejected"] == [2]
        for replica in (decider, follower):
            answer = httpx.post(f"{replica.url}/v2/models/{NAME}/infer", json=_body(), timeout=10).json()
            assert answer["model_version"] == "1"
        # The follower decided nothing itself: its decision counter holds no rollback.
        metrics = httpx.get(f"{follower.url}/metrics", timeout=10).text
        assert 'rollout_decisions_total{decision="rollback"' not in metrics
        assert 'rollout_state{model="mnist-mlp"} 5.0' in metrics
