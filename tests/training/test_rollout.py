"""The trainer's side of rollouts (training/rollout.py, publish --candidate): which version serves, and
the rollout ``retrain`` starts, on real repositories."""

from __future__ import annotations

from pathlib import Path

from service.contract import CANDIDATE_FILE
from service.rollout.records import read_record, write_record
from tests.helpers.data import MODELS
from tests.helpers.variants import publish_variant
from tests.training.test_publish import MODEL, metadata_for
from training.publish import publish
from training.rollout import serving_champion, start_rollout

NAME = "mnist-mlp"


def test_publish_as_a_candidate_writes_the_mark_with_the_version(tmp_path: Path) -> None:
    plain = publish(tmp_path, "m", MODEL, metadata_for())
    marked = publish(tmp_path, "m", MODEL, metadata_for(), candidate=True)
    assert not (plain.path / CANDIDATE_FILE).exists()
    assert (marked.path / CANDIDATE_FILE).is_file()


def test_the_serving_champion_skips_candidates_and_rejected_versions(tmp_path: Path) -> None:
    source = MODELS / NAME / "1"
    for version, candidate in ((1, False), (2, False), (3, True)):
        publish_variant(source, tmp_path, NAME, version, candidate=candidate)
    assert serving_champion(tmp_path, NAME) == 2  # 3 is a candidate, never promoted
    write_record(tmp_path, NAME, {"model": NAME, "state": "rolled_back", "rejected": [2], "candidate": 2})
    assert serving_champion(tmp_path, NAME) == 1
    write_record(tmp_path, NAME, {"model": NAME, "state": "promoted", "promoted": [3], "candidate": 3})
    assert serving_champion(tmp_path, NAME) == 3
    assert serving_champion(tmp_path, "absent") is None


def test_retrain_starts_a_rollout_unless_one_runs(tmp_path: Path) -> None:
    source = MODELS / NAME / "1"
    publish_variant(source, tmp_path, NAME, 1)
    publish_variant(source, tmp_path, NAME, 2, candidate=True)
    publish_variant(source, tmp_path, NAME, 3, candidate=True)
    said = start_rollout(tmp_path, NAME, 2, 1)
    assert "rollout of version 2 against version 1 started" in said
    record = read_record(tmp_path, NAME)
    assert record is not None
    assert (record["state"], record["champion"], record["candidate"]) == ("shadow", 1, 2)
    assert record["history"][-1]["by"] == "retrain" and record["revision"] == 1
    waiting = start_rollout(tmp_path, NAME, 3, 1)
    assert "version 3 is published as a candidate" in waiting and "still shadow" in waiting
    assert read_record(tmp_path, NAME) == record  # the running rollout is left alone
