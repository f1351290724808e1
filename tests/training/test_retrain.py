"""Retraining on feedback, in process, on a small real MNIST model and real feedback files.

The base model is an ``mlp`` fitted on 3,000 MNIST images; feedback is written by the service's own
store. Each test works on a fresh copy of the published repository.
"""

from __future__ import annotations

import io
import itertools
import json
import random
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from service.contract import CANDIDATE_FILE, KERAS_FILE, Preprocessing
from service.feedback import store as feedback_store
from service.feedback.log import format_id
from service.feedback.store import FeedbackStore
from service.rollout.records import read_record, write_record
from tests.helpers.modelfactory import DROP, write_model_version
from tests.helpers.s3server import moto_server
from training import pipeline
from training import retrain as retrain_module
from training.cli import main
from training.data import Dataset
from training.feedback import model_input
from training.presets import preset_defaults
from training.publish import sha256_hex, versions

pytestmark = pytest.mark.slow

NAME = "m"


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image.astype(np.uint8).squeeze(-1)).save(buffer, format="PNG")
    return buffer.getvalue()


def predict(version_dir: Path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"image": images.astype(np.float32)})[0]).argmax(axis=1)


@pytest.fixture(scope="module")
def published(mnist: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("retrain-base")
    hp = replace(preset_defaults("mlp"), epochs=2, limit_train=3000)
    config = pipeline.RunConfig("mnist", "mlp", hp, name=NAME, repository=repository, command="pytest")
    pipeline.run(mnist, config, verbose=0)
    return repository


@pytest.fixture
def repository(published: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "models"
    shutil.copytree(published, copy)
    return copy


@pytest.fixture
def feedback(tmp_path: Path) -> Path:
    root = tmp_path / "feedback"
    root.mkdir()
    return root


#: The millisecond of each test's first feedback id (2026-09-21); each further item is a millisecond later.
ID_EPOCH_MS = 1_790_000_000_000


@pytest.fixture(autouse=True)
def seeded_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """Feedback ids drawn from a seeded generator, in the store's own format.

    An item's part (train, validation or holdout) is a seeded hash of its id, and the parts decide what the
    challenger learns and what it is judged on: with the store's random ids, the same 300 rotated images
    gave challengers from 75.8 % to 90.0 % test accuracy (60 runs on one machine, and one CI run). Fixed
    ids make each test's split, and so its figures, the same on every run (the fit itself is seeded; one
    core or two, oneDNN on or off, gave the same figures). Seed 2 is a split on which 300 rotated digits help
    on both sets: the challenger's test accuracy is 89.98 % against the champion's 84.96 %, so the tests that
    publish pass the default guard.
    """
    bits = random.Random(2)
    millis = itertools.count(ID_EPOCH_MS)
    monkeypatch.setattr(feedback_store, "new_id", lambda: format_id(next(millis), bits.getrandbits(80)))


def send(root: Path, images: np.ndarray, labels: np.ndarray) -> None:
    store = FeedbackStore(root, max_items=100_000, max_bytes=1 << 32)
    for image, label in zip(images, labels, strict=True):
        store.store(NAME, str(label), png(image), "png", served_version=1, predicted="?")


def rotated(mnist: Dataset, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    return np.rot90(mnist.x_test[start:stop], k=1, axes=(1, 2)), mnist.y_test[start:stop]


def retrain(repository: Path | str, feedback: Path, data_dir: Path, *extra: str) -> int:
    args = ["--repository", str(repository), "--name", NAME, "--feedback", str(feedback)]
    return main(["retrain", *args, "--data-dir", str(data_dir), "--epochs", "2", *extra])


def test_no_feedback_is_nothing_new(repository: Path, feedback: Path, data_dir: Path, capsys) -> None:
    assert retrain(repository, feedback, data_dir) == 0
    assert "nothing new: no feedback for m since version 1 was trained" in capsys.readouterr().out
    assert versions(repository, NAME) == [1]


def test_too_little_feedback_waits(
    repository: Path, feedback: Path, data_dir: Path, mnist: Dataset, capsys
) -> None:
    send(feedback, *rotated(mnist, 0, 5))
    assert retrain(repository, feedback, data_dir, "--min-holdout", "10") == 0
    out = capsys.readouterr().out
    assert "waiting for more feedback: 5 usable items" in out and "at least 10 needed" in out
    assert versions(repository, NAME) == [1]


def test_feedback_that_helps_is_published_and_then_nothing_is_new(
    repository: Path, feedback: Path, data_dir: Path, mnist: Dataset, capsys
) -> None:
    send(feedback, *rotated(mnist, 0, 300))
    report = repository.parent / "report.json"
    assert retrain(repository, feedback, data_dir, "--report", str(report)) == 0  # the default guard
    out = capsys.readouterr().out
    assert "decision: published m version 2" in out
    assert "challenger: weights of version 1" in out
    assert versions(repository, NAME) == [1, 2]
    # Published as a candidate, its rollout started: the service keeps answering with version 1.
    assert "as a candidate; rollout of version 2 against version 1 started" in out
    assert (repository / NAME / "2" / CANDIDATE_FILE).is_file()
    rollout = read_record(repository, NAME)
    assert rollout is not None
    assert (rollout["state"], rollout["champion"], rollout["candidate"]) == ("shadow", 1, 2)
    assert rollout["history"][-1]["by"] == "retrain"

    v1, v2 = repository / NAME / "1", repository / NAME / "2"
    metadata = json.loads((v2 / "metadata.json").read_text())
    record = metadata["retrain"]
    assert record["base_version"] == 1 and record["decision"]["publish"] is True
    assert record["feedback"]["items"] == 300 and record["feedback"]["new"] == 300
    assert sum(record["feedback"][p] for p in ("train", "validation", "holdout")) == 300
    assert record["challenger"]["holdout_accuracy"] > record["champion"]["holdout_accuracy"] + 0.2
    assert record["challenger"]["test_accuracy"] >= record["champion"]["test_accuracy"] - 0.005
    assert metadata["metrics"]["accuracy"] == pytest.approx(record["challenger"]["test_accuracy"])
    assert metadata["sha256"] == sha256_hex((v2 / "model.onnx").read_bytes())
    assert (v2 / KERAS_FILE).is_file()
    assert json.loads(report.read_text())["status"] == "published"
    # The table shows both models' figures on both sets.
    assert f"{record['champion']['holdout_accuracy']:.2%}" in out
    assert f"{record['challenger']['test_accuracy']:.2%}" in out

    # Rotated digits it never saw in any form: the new version reads them far better.
    x_new, y_new = rotated(mnist, 5000, 6000)
    before = float((predict(v1, x_new) == y_new).mean())
    after = float((predict(v2, x_new) == y_new).mean())
    assert after > before + 0.25, (before, after)

    assert retrain(repository, feedback, data_dir) == 0
    assert "nothing new: no feedback for m since version 2 was trained" in capsys.readouterr().out
    assert versions(repository, NAME) == [1, 2]

    # The rollout promotes version 2 (as the service decides, through the record); more feedback
    # arrives: the next run starts from version 2, the serving champion.
    write_record(repository, NAME, {**rollout, "state": "promoted", "promoted": [2]})
    send(feedback, *rotated(mnist, 300, 340))
    retrain(repository, feedback, data_dir)
    out = capsys.readouterr().out
    assert "champion is version 2" in out and "(40 new)" in out


def test_feedback_the_champion_already_gets_right_is_refused(
    repository: Path, feedback: Path, data_dir: Path, mnist: Dataset, capsys
) -> None:
    images, labels = mnist.x_test[:400], mnist.y_test[:400]
    # Right as the service reads them: each PNG through the version's preprocessing, as /classify does.
    pre = Preprocessing.model_validate(
        json.loads((repository / NAME / "1" / "metadata.json").read_text())["preprocessing"]
    )
    served = np.stack([model_input(png(image), pre) for image in images])
    right = predict(repository / NAME / "1", served) == labels
    send(feedback, images[right][:200], labels[right][:200])
    report = repository.parent / "report.json"
    assert retrain(repository, feedback, data_dir, "--report", str(report)) == 3
    out = capsys.readouterr().out
    assert "REFUSED, nothing published (exit 3)" in out
    assert "does not beat the champion's 100.00%" in out
    assert versions(repository, NAME) == [1]
    assert not [p for p in (repository / NAME).iterdir() if p.name != "1"]  # no staging left either
    record = json.loads(report.read_text())
    assert record["status"] == "refused" and record["decision"]["holdout_ok"] is False


def test_feedback_that_breaks_the_test_set_is_refused_by_the_guard(
    repository: Path, feedback: Path, data_dir: Path, mnist: Dataset, capsys
) -> None:
    # Upright digits labelled one off: learning them raises holdout accuracy but wrecks the test set.
    images, labels = mnist.x_test[:300], (mnist.y_test[:300] + 1) % 10
    send(feedback, images, labels)
    assert retrain(repository, feedback, data_dir, "--feedback-share", "0.5") == 3
    out = capsys.readouterr().out
    assert "REFUSED" in out and "more than 0.5 points below the champion's" in out
    assert versions(repository, NAME) == [1]


def test_a_version_without_keras_weights_is_retrained_from_scratch(
    repository: Path, feedback: Path, data_dir: Path, mnist: Dataset, capsys
) -> None:
    (repository / NAME / "1" / KERAS_FILE).unlink()
    send(feedback, *rotated(mnist, 0, 200))
    retrain(repository, feedback, data_dir, "--max-regression", "100")
    assert "challenger: from scratch (version 1 kept no train/model.keras)" in capsys.readouterr().out


def test_a_version_published_meanwhile_makes_the_comparison_stale(
    repository: Path, feedback: Path, data_dir: Path, mnist: Dataset, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    send(feedback, *rotated(mnist, 0, 200))
    real_fit = retrain_module.fit_model

    def fit_while_another_publishes(*args: Any, **kwargs: Any) -> Any:
        trained = real_fit(*args, **kwargs)
        write_model_version(repository, NAME, 2)  # another trainer wins the race
        return trained

    monkeypatch.setattr(retrain_module, "fit_model", fit_while_another_publishes)
    assert retrain(repository, feedback, data_dir) == 3
    assert "version 2 was published while this run compared against version 1" in capsys.readouterr().out
    assert versions(repository, NAME) == [1, 2]


def test_a_folder_trained_version_is_retrained_from_its_folder(
    tmp_path: Path, feedback: Path, mnist: Dataset, capsys
) -> None:
    folder, repository = tmp_path / "digits", tmp_path / "folder-models"
    for digit in ("0", "1", "2"):
        (folder / digit).mkdir(parents=True)
        for i, image in enumerate(mnist.x_test[mnist.y_test == int(digit)][:60]):
            (folder / digit / f"{i}.png").write_bytes(png(image))
    train = ["train", "--images", str(folder), "--preset", "mlp", "--epochs", "2", "--name", NAME]
    assert main([*train, "--publish", str(repository)]) == 0
    upright = mnist.x_test[np.isin(mnist.y_test, [0, 1, 2])][100:220]
    labels = mnist.y_test[np.isin(mnist.y_test, [0, 1, 2])][100:220]
    send(feedback, np.rot90(upright, k=1, axes=(1, 2)), labels)
    args = ["--repository", str(repository), "--name", NAME, "--feedback", str(feedback)]
    assert main(["retrain", *args, "--epochs", "2", "--max-regression", "100"]) == 0
    out = capsys.readouterr().out
    assert "decision: published m version 2" in out
    v1, v2 = (json.loads((repository / NAME / v / "metadata.json").read_text()) for v in ("1", "2"))
    assert v2["data"]["images"] == v1["data"]["images"] == str(folder)
    assert v2["labels"] == ["0", "1", "2"]
    # The same carved test split: the files version 1 recorded are the ones both models were compared on.
    assert v2["data"]["test"]["files"] == v1["data"]["test"]["files"]
    assert v2["retrain"]["n_test"] == len(v1["data"]["test"]["files"])


def test_an_imported_version_has_no_recipe_to_retrain(
    tmp_path: Path, feedback: Path, data_dir: Path, mnist: Dataset, capsys
) -> None:
    repository = tmp_path / "imported"
    write_model_version(
        repository, NAME, 1, labels=[str(d) for d in range(10)], metadata_overrides={"training": DROP}
    )
    send(feedback, *rotated(mnist, 0, 20))
    assert retrain(repository, feedback, data_dir) == 2
    assert "no training recipe recorded" in capsys.readouterr().err
    assert versions(repository, NAME) == [1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "NOPE"], "invalid model name 'NOPE'"),
        (["--name", "absent"], "no published version of absent"),
        (["--feedback", "/nonexistent/feedback"], "--feedback /nonexistent/feedback: not a directory"),
    ],
)
def test_bad_usage_exits_2(
    repository: Path, feedback: Path, data_dir: Path, args: list[str], message: str, capsys
) -> None:
    base = {"--repository": str(repository), "--name": NAME, "--feedback": str(feedback)}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    argv = ["retrain", *[x for pair in base.items() for x in pair], "--data-dir", str(data_dir)]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_a_champion_whose_file_does_not_match_its_sha256_is_an_error(
    repository: Path, feedback: Path, data_dir: Path, mnist: Dataset, capsys
) -> None:
    send(feedback, *rotated(mnist, 0, 100))
    with (repository / NAME / "1" / "model.onnx").open("ab") as f:
        f.write(b"\0")
    assert retrain(repository, feedback, data_dir) == 2
    assert "does not match the sha256 in its metadata" in capsys.readouterr().err
    assert versions(repository, NAME) == [1]


def test_retraining_reads_and_publishes_a_bucket(
    published: Path, feedback: Path, data_dir: Path, mnist: Dataset, tmp_path: Path, monkeypatch, capsys
) -> None:
    """The champion downloaded from S3 (moto's server, its own process), each file checked against the
    sha256 its metadata records; the winner published back by claim, files and metadata last."""
    with moto_server(tmp_path) as s3:
        for key, value in s3.env().items():
            monkeypatch.setenv(key, value)
        client = s3.client()
        client.create_bucket(Bucket="models")
        for path in sorted(p for p in (published / NAME).rglob("*") if p.is_file()):
            key = f"repo/{path.relative_to(published).as_posix()}"
            client.put_object(Bucket="models", Key=key, Body=path.read_bytes())
        url = "s3://models/repo"
        assert versions(url, NAME) == [1]

        assert retrain(url, feedback, data_dir) == 0
        assert "nothing new: no feedback for m since version 1" in capsys.readouterr().out

        send(feedback, *rotated(mnist, 0, 300))
        assert retrain(url, feedback, data_dir) == 0  # as above
        assert "decision: published m version 2 at s3://models/repo/m/2" in capsys.readouterr().out
        assert versions(url, NAME) == [1, 2]
        stored = client.get_object(Bucket="models", Key="repo/m/2/metadata.json")
        metadata = json.loads(stored["Body"].read())
        keras_bytes = client.get_object(Bucket="models", Key=f"repo/m/2/{KERAS_FILE}")["Body"].read()
        assert metadata["files"][KERAS_FILE] == sha256_hex(keras_bytes)
        assert metadata["retrain"]["base_version"] == 1
        # Published as a candidate (its marker uploaded with it), its rollout recorded beside the model.
        client.head_object(Bucket="models", Key=f"repo/m/2/{CANDIDATE_FILE}")
        rollout = read_record(url, NAME)
        assert rollout is not None
        assert (rollout["state"], rollout["champion"], rollout["candidate"]) == ("shadow", 1, 2)

        # A champion (version 1 serves until the rollout decides) whose Keras file was replaced in the
        # bucket is refused, not fine-tuned.
        client.put_object(Bucket="models", Key=f"repo/m/1/{KERAS_FILE}", Body=b"not the model")
        send(feedback, *rotated(mnist, 300, 340))
        assert retrain(url, feedback, data_dir) == 2
        assert "train/model.keras: sha256 mismatch" in capsys.readouterr().err
