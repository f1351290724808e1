"""The command line: bad input is one line on stderr with a non-zero exit, never a traceback; a real run
publishes; the promotion guard exits 3 unless ``--force``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from training.cli import main
from training.data import Dataset

ROOT = Path(__file__).parents[2]


def run_cli(*args: str, data_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if data_dir is not None:
        env["DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "training", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("python -m training: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


BASE = ["train", "--dataset", "mnist", "--preset", "cnn"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["train", "--dataset", "imagenet", "--preset", "cnn"],
            "argument --dataset: invalid choice: 'imagenet'",
        ),
        (
            ["train", "--dataset", "mnist", "--preset", "resnet"],
            "argument --preset: invalid choice: 'resnet'",
        ),
        ([*BASE, "--epochs", "-1"], "--epochs: must be >= 1, got -1"),
        ([*BASE, "--epochs", "two"], "'two' is not a valid int"),
        ([*BASE, "--lr", "0"], "--learning-rate/--lr: must be > 0, got 0"),
        ([*BASE, "--lr", "nan"], "must be a finite number, got nan"),
        ([*BASE, "--validation-split", "0.9"], "must be <= 0.5"),
        ([*BASE, "--optimizer", "lbfgs"], "invalid choice: 'lbfgs'"),
        ([*BASE, "--limit-train", "0"], "--limit-train: must be >= 1, got 0"),
        (["train", "--preset", "cnn"], "one of the arguments --dataset --images is required"),
        (["fit", "--dataset", "mnist", "--preset", "cnn"], "invalid choice: 'fit'"),
        ([*BASE, "--name", "../evil"], "invalid model name '../evil'"),
        ([*BASE, "--name", "Big"], "invalid model name 'Big'"),
        ([], "the following arguments are required: command"),
        (["train", "--dataset", "mnist"], "the following arguments are required: --preset"),
    ],
)
def test_bad_input_is_one_line_exit_2(args: list[str], message: str, data_dir: Path) -> None:
    result = run_cli(*args, data_dir=data_dir)
    assert result.returncode == 2
    assert message in error_line(result)
    assert result.stderr.count("\n") == 1


def test_missing_data_dir_names_the_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    result = run_cli(
        "train", "--dataset", "mnist", "--preset", "cnn", "--data-dir", str(missing), "--offline"
    )
    assert result.returncode == 2
    assert f"no mnist data in {missing / 'mnist'}" in error_line(result)
    assert result.stderr.count("\n") == 1


def test_help_lists_every_option() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for option in (
        "--dataset",
        "--preset",
        "--data-dir",
        "--offline",
        "--limit-train",
        "--epochs",
        "--batch-size",
        "--optimizer",
        "--learning-rate",
        "--activation",
        "--dropout",
        "--l2",
        "--patience",
        "--augment",
        "--validation-split",
        "--class-weights",
        "--seed",
        "--strategy",
        "--publish",
        "--name",
        "--max-regression",
        "--force",
    ):
        assert option in result.stdout
    for choice in ("mnist", "fashion-mnist", "cifar10", "tiny-mlp", "cifar-cnn", "leaky_relu", "adagrad"):
        assert choice in result.stdout


def test_train_publish_then_guard_then_force(
    mnist: Dataset, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repository = tmp_path / "models"
    args = ["train", "--dataset", "mnist", "--preset", "tiny-mlp", "--epochs", "1", "--limit-train", "300"]
    args += ["--name", "e2e", "--publish", str(repository), "--data-dir", str(data_dir)]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert "test accuracy" in result.stdout
    version = repository / "e2e" / "1"
    metadata = json.loads((version / "metadata.json").read_text())
    assert metadata["training"]["command"] == "python -m training " + " ".join(args)
    assert metadata["training"]["limit_train"] == 300

    session = ort.InferenceSession((version / "model.onnx").read_bytes(), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(["probabilities"], {"image": mnist.x_test.astype(np.float32)})
    accuracy = float((probabilities.argmax(axis=1) == mnist.y_test).mean())
    assert accuracy == pytest.approx(metadata["metrics"]["accuracy"], abs=2e-3)

    # The newest version now claims a far better accuracy: the same run regresses and is refused.
    metadata["metrics"]["accuracy"] = 1.0
    (version / "metadata.json").write_text(json.dumps(metadata))
    assert main(args) == 3
    assert "not publishing e2e" in capsys.readouterr().err.splitlines()[-1]
    assert sorted(p.name for p in (repository / "e2e").iterdir()) == ["1"]

    assert main([*args, "--force"]) == 0
    assert sorted(p.name for p in (repository / "e2e").iterdir()) == ["1", "2"]
    forced = json.loads((repository / "e2e" / "2" / "metadata.json").read_text())
    assert forced["training"]["command"].endswith("--force")
