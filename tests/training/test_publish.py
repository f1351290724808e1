"""Model names, versions, the promotion guard and atomic, concurrent publishing."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from training.errors import PromotionRefused, PublishError, TrainingError, UsageError
from training.publish import check_promotion, newest_metadata, publish, sha256_hex, validate_name, versions

MODEL = b"model bytes"


def metadata_for(accuracy: float = 0.9, model: bytes = MODEL) -> Any:
    def metadata(version: int) -> dict[str, Any]:
        return {
            "name": "m",
            "version": version,
            "sha256": sha256_hex(model),
            "metrics": {"accuracy": accuracy},
        }

    return metadata


def entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize("name", ["mnist-cnn", "a", "0_model-2", "x" * 64])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "-a", "_a", "Mnist", "a/b", "..", "../x", "a b", "x" * 65, "é"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(UsageError, match="invalid model name"):
        validate_name(name)


def test_publish_writes_numbered_versions(tmp_path: Path) -> None:
    first = publish(tmp_path, "m", MODEL, metadata_for(), lambda d: (d / "report").mkdir())
    second = publish(tmp_path, "m", MODEL, metadata_for())
    assert (first.version, second.version) == (1, 2)
    assert entries(tmp_path / "m") == ["1", "2"]
    assert entries(first.path) == ["metadata.json", "model.onnx", "report"]
    assert (first.path / "model.onnx").read_bytes() == MODEL
    assert json.loads((second.path / "metadata.json").read_text())["version"] == 2


def test_next_version_follows_the_largest(tmp_path: Path) -> None:
    (tmp_path / "m" / "7").mkdir(parents=True)
    (tmp_path / "m" / "7" / "x").write_text("occupied")
    (tmp_path / "m" / ".tmp-abandoned").mkdir()
    (tmp_path / "m" / "notes").mkdir()
    (tmp_path / "m" / "09").mkdir()
    (tmp_path / "m" / "0").mkdir()
    (tmp_path / "m" / "²").mkdir()
    assert versions(tmp_path, "m") == [7]
    assert publish(tmp_path, "m", MODEL, metadata_for()).version == 8


def test_failure_while_writing_the_report_leaves_nothing(tmp_path: Path) -> None:
    def broken_report(directory: Path) -> None:
        (directory / "report").mkdir()
        (directory / "report" / "half.png").write_bytes(b"\x89PNG")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        publish(tmp_path, "m", MODEL, metadata_for(), broken_report)
    assert entries(tmp_path / "m") == []
    assert publish(tmp_path, "m", MODEL, metadata_for()).version == 1


def test_failure_while_writing_metadata_leaves_nothing(tmp_path: Path) -> None:
    def unserialisable(version: int) -> dict[str, Any]:
        return {"version": version, "sha256": sha256_hex(MODEL), "created_at": object()}

    with pytest.raises(TypeError, match="not JSON serializable"):
        publish(tmp_path, "m", MODEL, unserialisable)
    assert entries(tmp_path / "m") == []


def test_metadata_must_match_the_model(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="sha256"):
        publish(tmp_path, "m", MODEL, metadata_for(model=b"another model"))
    assert entries(tmp_path / "m") == []


def test_concurrent_publishes_get_distinct_complete_versions(tmp_path: Path) -> None:
    workers = 8
    start = threading.Barrier(workers)
    results: list[int] = []
    errors: list[BaseException] = []

    def work(i: int) -> None:
        model = f"model {i}".encode()
        try:
            start.wait()
            results.append(publish(tmp_path, "m", model, metadata_for(model=model)).version)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(results) == list(range(1, workers + 1))
    assert entries(tmp_path / "m") == sorted(str(v) for v in range(1, workers + 1))
    for version in range(1, workers + 1):
        directory = tmp_path / "m" / str(version)
        metadata = json.loads((directory / "metadata.json").read_text())
        assert metadata["version"] == version
        assert metadata["sha256"] == sha256_hex((directory / "model.onnx").read_bytes())


def test_promotion_guard(tmp_path: Path) -> None:
    check_promotion(tmp_path, "m", 0.10, 0.5)  # nothing published yet: any accuracy goes
    publish(tmp_path, "m", MODEL, metadata_for(accuracy=0.98))
    assert newest_metadata(tmp_path, "m")["metrics"]["accuracy"] == 0.98
    check_promotion(tmp_path, "m", 0.9751, 0.5)  # 0.49 points down: allowed
    check_promotion(tmp_path, "m", 0.99, 0.5)
    with pytest.raises(PromotionRefused, match=r"0\.60 points below version 1") as refused:
        check_promotion(tmp_path, "m", 0.974, 0.5)
    assert refused.value.exit_code == 3
    check_promotion(tmp_path, "m", 0.974, 0.5, force=True)
    check_promotion(tmp_path, "m", 0.974, 1.0)


def test_promotion_guard_compares_with_the_newest_version(tmp_path: Path) -> None:
    publish(tmp_path, "m", MODEL, metadata_for(accuracy=0.99))
    publish(tmp_path, "m", MODEL, metadata_for(accuracy=0.90))
    check_promotion(tmp_path, "m", 0.897, 0.5)
    with pytest.raises(PromotionRefused):
        check_promotion(tmp_path, "m", 0.89, 0.5)


def test_unwritable_repository_is_a_publish_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the repository should be")
    with pytest.raises(PublishError, match="cannot write to"):
        publish(blocker / "models", "m", MODEL, metadata_for())
