"""The command line: bad input is one line on stderr with a non-zero exit, never a traceback; a real run
publishes; the promotion guard exits 3 unless ``--force``."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.helpers.imagefiles import classes
from tests.helpers.s3server import moto_server
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


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda r: None, "images: no such directory"),
        (lambda r: r.mkdir(), "images: empty; expected one folder of images per class"),
        (lambda r: classes(r, {"cat": 5}), "only one class (cat)"),
        (lambda r: classes(r, {"cat": 5, "dog": 2}), "too few images in class(es) dog (2)"),
        (
            lambda r: (classes(r / "train", {"a": 3, "b": 3}), classes(r / "test", {"a": 1})),
            "train/ and test/ have different classes",
        ),
        (
            lambda r: (
                (r / "a").mkdir(parents=True),
                (r / "b").mkdir(),
                (r / "a" / "notes.txt").write_text(""),
            ),
            "no image files (.png, .jpg, .jpeg) in any class folder",
        ),
    ],
)
def test_unusable_image_folder_exits_2_and_publishes_nothing(
    build, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, repository = tmp_path / "images", tmp_path / "models"
    build(images)
    code = main(["train", "--images", str(images), "--preset", "cnn", "--publish", str(repository)])
    assert code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("python -m training: error: ")
    assert message in line
    assert not repository.exists()


def test_unreadable_images_are_fatal_with_strict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = classes(tmp_path / "images", {"a": 4, "b": 4})
    (images / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(30))
    args = [
        "train",
        "--images",
        str(images),
        "--preset",
        "tiny-mlp",
        "--strict",
        "--publish",
        str(tmp_path / "m"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("python -m training: error: ")
    assert "broken.png: corrupt image header" in err[-1] and err[-1].endswith("(--strict)")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([*BASE, "--image-size", "32x32"], "--image-size apply to --images only"),
        (
            [*BASE, "--resize", "digit", "--test-split", "0.3"],
            "--resize, --test-split apply to --images only",
        ),
        (
            ["train", "--images", "x", "--preset", "cnn", "--offline"],
            "--data-dir and --offline apply to --dataset",
        ),
    ],
)
def test_folder_options_belong_to_folders(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["import", "m.onnx", "--labels", "a,b", "--resize", "stretch"], "required: --input-scale"),
        (["import", "m.onnx", "--input-scale", "0..1", "--resize", "stretch"], "required: --labels"),
        (["import", "m.onnx", "--labels", "a,b", "--input-scale", "0..1"], "required: --resize"),
        (
            ["import", "m.onnx", "--labels", "a", "--input-scale", "0..1", "--resize", "stretch"],
            "at least two",
        ),
        (
            ["import", "m.onnx", "--labels", "a,b", "--input-scale", "1..1", "--resize", "stretch"],
            "must differ",
        ),
        (
            [
                "import",
                "m.onnx",
                "--labels",
                "a,b",
                "--input-scale",
                "0..1",
                "--resize",
                "stretch",
                "--image-size",
                "0x5",
            ],
            "height and width must be 1..4096",
        ),
    ],
)
def test_import_statements_are_required(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("python -m training: error: ")
    assert message in line


def test_import_of_a_missing_file_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "import",
        str(tmp_path / "m.onnx"),
        "--labels",
        "a,b",
        "--input-scale",
        "0..1",
        "--resize",
        "stretch",
    ]
    assert main(args) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == f"python -m training: error: {tmp_path / 'm.onnx'}: no such file or directory"


def test_help_lists_the_import_options() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for option in (
        "--images",
        "--image-size",
        "--color",
        "--resize",
        "--test-split",
        "--strict",
        "--cache-dir",
    ):
        assert option in result.stdout
    for option in ("--labels", "--input-scale", "--softmax", "--eval-images", "center_crop"):
        assert option in result.stdout


@pytest.mark.slow
def test_train_publishes_to_a_bucket_and_guards_against_it(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--publish s3://...`` against moto's S3 server (its own process): the version lands committed,
    and the promotion guard reads the newest version's metadata from the bucket."""
    with moto_server(tmp_path) as s3:
        for key, value in s3.env().items():
            monkeypatch.setenv(key, value)
        client = s3.client()
        client.create_bucket(Bucket="models")
        args = ["train", "--dataset", "mnist", "--preset", "tiny-mlp", "--epochs", "1"]
        args += ["--limit-train", "300", "--name", "e2e", "--publish", "s3://models/repo"]
        args += ["--data-dir", str(data_dir)]
        result = run_cli(*args)
        assert result.returncode == 0, result.stderr
        stored = client.get_object(Bucket="models", Key="repo/e2e/1/metadata.json")
        metadata = json.loads(stored["Body"].read())
        model = client.get_object(Bucket="models", Key="repo/e2e/1/model.onnx")["Body"].read()
        assert metadata["version"] == 1 and metadata["files"]["model.onnx"] == metadata["sha256"]
        assert hashlib.sha256(model).hexdigest() == metadata["sha256"]
        assert {"train/model.keras", "report/confusion_matrix.png"} <= set(metadata["files"])

        metadata["metrics"]["accuracy"] = 1.0
        client.put_object(Bucket="models", Key="repo/e2e/1/metadata.json", Body=json.dumps(metadata).encode())
        assert main(args) == 3
        assert "not publishing e2e" in capsys.readouterr().err
        keys = [o["Key"] for o in client.list_objects_v2(Bucket="models", Prefix="repo/e2e/")["Contents"]]
        assert {k.split("/")[2] for k in keys} == {"1"}

    with pytest.raises(SystemExit) as usage:  # argparse's own exit, as for every bad option
        main([*args[:-3], "gs://models/repo", *args[-2:]])
    assert usage.value.code == 2
    assert "argument --publish: unsupported repository 'gs://models/repo'" in capsys.readouterr().err
