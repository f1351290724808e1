"""Rollouts through the real app (lifespan, registry, batchers) on the shipped mnist-mlp and variants of it
with two classes swapped: shadow, sticky canary, paired feedback, automatic rollback and promotion, the
record on disk, a restart resuming it, and candidates that never answer unversioned requests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.feedback.store import log_path, read_log
from service.rollout.records import read_record
from service.settings import Settings
from tests.helpers.data import MODELS, load_digits
from tests.helpers.modelfactory import write_model_version
from tests.helpers.variants import png, publish_variant

ADMIN = {"Authorization": "Bearer admin-token-0123456789"}
FEEDBACK = {"Authorization": "Bearer feedback-token-0123456789", "Content-Type": "image/png"}
SOURCE = MODELS / "mnist-mlp" / "1"
NAME = "mnist-mlp"
FAST_STAGES = [
    {"kind": "shadow", "weight": 1.0, "min_requests": 10},
    {"kind": "canary", "weight": 0.5, "min_requests": 10},
]


def settings(root: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "model_repository": root / "models",
        "models": [NAME],
        "grpc_port": 0,
        "admin_token": "admin-token-0123456789",
        "feedback_dir": root / "feedback",
        "feedback_token": "feedback-token-0123456789",
        "rollout_interval_s": 0.05,
    }
    values.update(overrides)
    return Settings(**values)


def infer_body(index: int) -> dict[str, Any]:
    images, _ = load_digits()
    return {
        "inputs": [
            {
                "name": "image",
                "datatype": "FP32",
                "shape": [1, 28, 28, 1],
                "data": images[index].ravel().tolist(),
            }
        ]
    }


def digits_of(classes: tuple[int, ...], count: int) -> list[int]:
    """Indices of test images whose label is one of ``classes``."""
    _, labels = load_digits()
    return [int(i) for i in np.flatnonzero(np.isin(labels, classes))[:count]]


def wait_for(client: TestClient, state: str, timeout: float = 20.0, model: str = NAME) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, Any] = client.get(f"/v2/models/{model}/rollout").json()
        if body["state"] == state:
            return body
        time.sleep(0.05)
    raise AssertionError(f"rollout not {state} after {timeout} s: {body}")


def stream_and_label(client: TestClient, indices: list[int], until: str) -> tuple[int, dict[str, Any]]:
    """Unversioned requests, each followed by one labelled feedback item, until the state is ``until``;
    every request must succeed. Returns the items sent and the final state."""
    _, labels = load_digits()
    images, _ = load_digits()
    for sent, index in enumerate(indices, 1):
        answer = client.post(f"/v2/models/{NAME}/infer", json=infer_body(index))
        assert answer.status_code == 200, answer.text
        stored = client.post(
            f"/v2/models/{NAME}/feedback?label={labels[index]}", content=png(images[index]), headers=FEEDBACK
        )
        assert stored.status_code == 201, stored.text
        body: dict[str, Any] = client.get(f"/v2/models/{NAME}/rollout").json()
        if body["state"] == until:
            return sent, body
    raise AssertionError(f"not {until} after {len(indices)} items: {body}")


@pytest.fixture
def worse(tmp_path: Path) -> Iterator[TestClient]:
    """v1 the shipped model, v2 a candidate that reads 3 as 5 and 5 as 3."""
    publish_variant(SOURCE, tmp_path / "models", NAME, 1)
    publish_variant(SOURCE, tmp_path / "models", NAME, 2, swap=(3, 5), candidate=True)
    with TestClient(create_app(settings(tmp_path))) as client:
        yield client


def test_a_candidate_never_answers_unversioned_requests_until_a_rollout(worse: TestClient) -> None:
    answers = {
        worse.post(f"/v2/models/{NAME}/infer", json=infer_body(i)).json()["model_version"] for i in range(20)
    }
    assert answers == {"1"}
    explicit = worse.post(f"/v2/models/{NAME}/versions/2/infer", json=infer_body(0))
    assert explicit.status_code == 200 and explicit.json()["model_version"] == "2"
    idle = worse.get(f"/v2/models/{NAME}/rollout").json()
    assert (idle["state"], idle["champion"], idle["candidate"], idle["weight"]) == ("idle", 1, None, 0.0)


def test_a_worse_candidate_is_rolled_back_on_paired_feedback(worse: TestClient, tmp_path: Path) -> None:
    started = worse.post(
        f"/v2/repository/models/{NAME}/rollout",
        json={"candidate": "2", "stages": FAST_STAGES, "min_labelled": 40},
        headers=ADMIN,
    )
    assert started.status_code == 200, started.text
    assert started.json()["state"] == "shadow"
    # Labelled items of every class, the swapped ones among them: only they tell the versions apart.
    sent, state = stream_and_label(worse, list(range(400)), "rolled_back")
    evidence = state["evidence"]
    assert evidence["champion_only"] >= 7 and evidence["candidate_only"] == 0
    assert evidence["p_value_worse"] < 0.01
    assert "less accurate" in state["reason"]
    assert state["history"][-1]["decision"] == "rollback"
    # From now on: the champion answers, the candidate is unloaded, marked and never loaded again.
    answers = {
        worse.post(f"/v2/models/{NAME}/infer", json=infer_body(i)).json()["model_version"] for i in range(10)
    }
    assert answers == {"1"}
    rejected = {"name": NAME, "version": "2", "state": "UNAVAILABLE", "reason": "rolled back"}
    deadline = time.monotonic() + 10  # retired once the decision's record is applied
    while rejected not in worse.post("/v2/repository/index").json():
        assert time.monotonic() < deadline, worse.post("/v2/repository/index").json()
        time.sleep(0.05)
    # The decision is answered at once and stored just after (in a worker thread): read it once applied.
    stored = read_record(tmp_path / "models", NAME)
    assert stored is not None and stored["rejected"] == [2] and stored["state"] == "rolled_back"
    # Lineage: items of the rollout record its stage and both versions' answers.
    items = read_log(log_path(tmp_path / "feedback", NAME)).items
    assert len(items) == sent
    # (The last one may have met the decision: then the candidate is gone and it is an ordinary item.)
    assert all(i.rollout is not None and i.rollout["candidate"] == 2 for i in items[:-1])
    assert {i.rollout["stage"] for i in items if i.rollout} <= {"shadow", "canary"}
    # The candidate is the champion with 3 and 5 exchanged, and the pairs show exactly that.
    swap = {"3": "5", "5": "3"}
    pairs = [(i.rollout["champion_predicted"], i.rollout["candidate_predicted"]) for i in items if i.rollout]
    assert all(candidate == swap.get(champion, champion) for champion, candidate in pairs)
    assert any(champion in swap for champion, _ in pairs)
    metrics = worse.get("/metrics").text
    assert 'rollout_decisions_total{decision="rollback",model="mnist-mlp"} 1.0' in metrics
    assert 'rollout_state{model="mnist-mlp"} 5.0' in metrics


def test_a_better_candidate_is_promoted_and_the_old_champion_kept_for_rollback(tmp_path: Path) -> None:
    publish_variant(SOURCE, tmp_path / "models", NAME, 1, swap=(3, 5))  # a degraded champion
    publish_variant(SOURCE, tmp_path / "models", NAME, 2, candidate=True)
    with TestClient(create_app(settings(tmp_path))) as client:
        started = client.post(
            f"/v2/repository/models/{NAME}/rollout",
            json={"candidate": "2", "stages": FAST_STAGES, "min_labelled": 40},
            headers=ADMIN,
        )
        assert started.status_code == 200, started.text
        sent, state = stream_and_label(client, list(range(400)), "promoted")
        assert sent >= 40
        assert state["evidence"]["candidate_only"] > state["evidence"]["champion_only"]
        assert state["champion"] == 2 and state["previous"] == 1 and state["weight"] == 1.0
        answers = {
            client.post(f"/v2/models/{NAME}/infer", json=infer_body(i)).json()["model_version"]
            for i in range(10)
        }
        assert answers == {"2"}
        # Instant rollback during the grace period: version 1 is still loaded.
        assert client.post(f"/v2/models/{NAME}/versions/1/infer", json=infer_body(0)).status_code == 200
        back = client.post(f"/v2/repository/models/{NAME}/rollout/rollback", headers=ADMIN)
        assert back.status_code == 200 and back.json()["state"] == "rolled_back"
        assert back.json()["champion"] == 1
        assert client.post(f"/v2/models/{NAME}/infer", json=infer_body(0)).json()["model_version"] == "1"


def test_canary_is_sticky_per_routing_key(worse: TestClient) -> None:
    stages = [{"kind": "canary", "weight": 0.5, "min_requests": 1_000_000}]
    started = worse.post(
        f"/v2/repository/models/{NAME}/rollout", json={"candidate": "2", "stages": stages}, headers=ADMIN
    )
    assert started.status_code == 200 and started.json()["weight"] == 0.5
    seen: dict[str, set[str]] = {}
    for key in (f"client-{n}" for n in range(12)):
        for _ in range(5):
            answer = worse.post(
                f"/v2/models/{NAME}/infer", json=infer_body(0), headers={"X-Routing-Key": key}
            )
            seen.setdefault(key, set()).add(answer.json()["model_version"])
    assert all(len(versions) == 1 for versions in seen.values()), seen
    assert set().union(*seen.values()) == {"1", "2"}  # half the keys each side, not all on one
    unkeyed = {
        worse.post(f"/v2/models/{NAME}/infer", json=infer_body(0)).json()["model_version"] for _ in range(40)
    }
    assert unkeyed == {"1", "2"}  # without a key, per request


def test_a_restart_resumes_the_rollout_from_its_record(tmp_path: Path) -> None:
    publish_variant(SOURCE, tmp_path / "models", NAME, 1)
    publish_variant(SOURCE, tmp_path / "models", NAME, 2, candidate=True)
    stages = [
        {"kind": "shadow", "weight": 1.0, "min_requests": 5},
        {"kind": "canary", "weight": 0.3, "min_requests": 10_000},
    ]
    with TestClient(create_app(settings(tmp_path))) as client:
        client.post(
            f"/v2/repository/models/{NAME}/rollout", json={"candidate": "2", "stages": stages}, headers=ADMIN
        )
        sent, before = stream_and_label(client, list(range(100)), "canary")
    stored = read_record(tmp_path / "models", NAME)
    assert stored is not None and stored["state"] == "canary"
    with TestClient(create_app(settings(tmp_path))) as client:
        after = client.get(f"/v2/models/{NAME}/rollout").json()
        assert (after["id"], after["state"], after["stage"], after["weight"]) == (
            before["id"],
            "canary",
            1,
            0.3,
        )
        assert after["evidence"]["candidate"]["labelled"] >= sent - 1
        # Both versions are loaded again and the canary share answers from the candidate.
        answers = {
            client.post(f"/v2/models/{NAME}/infer", json=infer_body(0)).json()["model_version"]
            for _ in range(40)
        }
        assert answers == {"1", "2"}


def test_shadow_never_changes_the_answer_and_compares_top_labels(worse: TestClient) -> None:
    stages = [{"kind": "shadow", "weight": 1.0, "min_requests": 1_000_000}]
    worse.post(
        f"/v2/repository/models/{NAME}/rollout", json={"candidate": "2", "stages": stages}, headers=ADMIN
    )
    fives = digits_of((5,), 20)
    others = digits_of((0, 1), 20)
    for index in fives + others:
        answer = worse.post(f"/v2/models/{NAME}/infer", json=infer_body(index))
        assert answer.json()["model_version"] == "1"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        evidence = worse.get(f"/v2/models/{NAME}/rollout").json()["evidence"]
        if evidence["shadow_compared"] + evidence["shadow_skipped"] >= 40:
            break
        time.sleep(0.05)
    # The 5s read as 3s by the candidate disagree; 0s and 1s agree.
    assert evidence["shadow_compared"] == 40
    assert 15 <= evidence["shadow_compared"] - evidence["shadow_agreed"] <= 20
    assert evidence["shadow_agreement"] == pytest.approx(evidence["shadow_agreed"] / 40)


def test_a_version_shows_where_it_came_from(worse: TestClient) -> None:
    stages = [{"kind": "canary", "weight": 0.5, "min_requests": 1_000_000}]
    worse.post(
        f"/v2/repository/models/{NAME}/rollout", json={"candidate": "2", "stages": stages}, headers=ADMIN
    )
    candidate = worse.get(f"/v2/models/{NAME}/versions/2").json()["parameters"]["lineage"]
    assert candidate["role"] == "candidate"
    assert [h["decision"] for h in candidate["rollouts"]] == ["start"]
    worse.post(f"/v2/repository/models/{NAME}/rollout/rollback", headers=ADMIN)
    champion = worse.get(f"/v2/models/{NAME}/versions/1").json()["parameters"]["lineage"]
    assert (champion["role"], champion["rollouts"]) == ("champion", [])
    wait_for(worse, "rolled_back")
    # The rolled-back candidate is unloaded; its history stays in the record.
    assert worse.get(f"/v2/models/{NAME}/versions/2").status_code == 404
    state = worse.get(f"/v2/models/{NAME}/rollout").json()
    assert [(h["decision"], h["candidate"]) for h in state["history"]] == [("start", 2), ("rollback", 2)]


def test_a_candidate_failing_in_shadow_never_fails_an_answer_and_is_rolled_back(tmp_path: Path) -> None:
    """The candidate fails inside onnxruntime on bright images: in shadow every client still gets the
    champion's answer, and the error guardrail rolls the candidate back."""
    root = tmp_path / "models"
    write_model_version(root, "tiny", 1)
    write_model_version(root, "tiny", 2, variant="value_trap")
    (root / "tiny" / "2" / "candidate").write_text("")
    with TestClient(create_app(settings(tmp_path, models=["tiny"]))) as client:
        stages = [{"kind": "shadow", "weight": 1.0, "min_requests": 1_000_000}]
        started = client.post(
            "/v2/repository/models/tiny/rollout",
            json={"candidate": "2", "stages": stages, "guard_min_requests": 20},
            headers=ADMIN,
        )
        assert started.status_code == 200, started.text
        bright = {
            "inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 28, 28, 1], "data": [255.0] * 784}]
        }
        sent = 0
        while sent < 200 and client.get("/v2/models/tiny/rollout").json()["state"] != "rolled_back":
            answer = client.post("/v2/models/tiny/infer", json=bright)
            assert answer.status_code == 200 and answer.json()["model_version"] == "1", answer.text
            sent += 1
        state = wait_for(client, "rolled_back", model="tiny")
        assert "error rate" in state["reason"] and state["evidence"]["shadow_errors"] >= 20
        assert state["evidence"]["champion"]["errors"] == 0
        assert sent < 200  # decided while the requests went on
        # Unloaded once the decision's record is applied (explicit versions reach it until then).
        deadline = time.monotonic() + 10
        while client.post("/v2/models/tiny/versions/2/infer", json=bright).status_code != 404:
            assert time.monotonic() < deadline, "the rolled-back candidate is still loaded"
            time.sleep(0.05)
