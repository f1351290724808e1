"""Whole runs in-process: every preset trains briefly, exports, passes the gate and publishes; a bad export
or a regressing model publishes nothing."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path

import keras
import numpy as np
import onnxruntime as ort
import pytest

from service.contract import KERAS_FILE
from training import pipeline
from training.config import HyperParameters
from training.data import load_dataset
from training.errors import ExportError, PromotionRefused
from training.export import MAX_ABS_DIFF, OPSET, PARITY_MIN_IMAGES
from training.presets import preset_defaults
from training.publish import publish, sha256_hex

METADATA_KEYS = {
    "name",
    "version",
    "created_at",
    "platform",
    "inputs",
    "outputs",
    "labels",
    "preprocessing",
    "sha256",
    "files",
    "opset",
    "dataset",
    "metrics",
    "training",
    "parity",
    "versions",
}


@pytest.mark.parametrize(
    ("dataset_name", "preset", "shape"),
    [
        ("mnist", "mlp", [28, 28, 1]),
        ("mnist", "tiny-mlp", [28, 28, 1]),
        ("fashion-mnist", "cnn", [28, 28, 1]),
        ("cifar10", "cifar-cnn", [32, 32, 3]),
    ],
)
def test_tiny_run_publishes_a_loadable_version(
    dataset_name: str, preset: str, shape: list[int], data_dir: Path, tmp_path: Path
) -> None:
    dataset = load_dataset(dataset_name, data_dir, download=False)
    hp = replace(preset_defaults(preset), epochs=1, limit_train=300, batch_size=32)
    config = pipeline.RunConfig(
        dataset_name, preset, hp, name=f"t-{preset}", repository=tmp_path, command="python -m training train"
    )
    outcome = pipeline.run(dataset, config, verbose=0)
    assert outcome.published is not None
    directory = tmp_path / f"t-{preset}" / "1"
    assert outcome.published.path == directory
    assert sorted(p.name for p in (tmp_path / f"t-{preset}").iterdir()) == ["1"]
    assert sorted(p.name for p in (directory / "report").iterdir()) == [
        "confusion_matrix.png",
        "training_curves.png",
    ]

    metadata = json.loads((directory / "metadata.json").read_text())
    model_bytes = (directory / "model.onnx").read_bytes()
    assert set(metadata) == METADATA_KEYS
    on_disk = {p.relative_to(directory).as_posix(): p for p in directory.rglob("*") if p.is_file()}
    del on_disk["metadata.json"]
    assert metadata["files"] == {f: sha256_hex(p.read_bytes()) for f, p in on_disk.items()}
    assert {"model.onnx", "train/model.keras", "report/training_curves.png"} <= set(metadata["files"])
    assert metadata["name"] == f"t-{preset}"
    assert metadata["version"] == 1
    assert metadata["created_at"].endswith("Z")
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, *shape]}]
    assert metadata["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert metadata["labels"] == list(dataset.labels)
    resize = "digit" if dataset_name == "mnist" else "stretch"
    color = "rgb" if shape[2] == 3 else "grayscale"
    assert metadata["preprocessing"] == {
        "height": shape[0],
        "width": shape[1],
        "color": color,
        "input_range": [0.0, 255.0],
        "resize": resize,
    }
    assert metadata["sha256"] == sha256_hex(model_bytes)
    assert metadata["opset"] == OPSET
    assert metadata["dataset"] == dataset_name
    assert set(metadata["metrics"]) == {"accuracy", "loss", "per_class_accuracy"}
    assert list(metadata["metrics"]["per_class_accuracy"]) == list(dataset.labels)
    training = metadata["training"]
    assert {f.name for f in fields(HyperParameters)} | {
        "preset",
        "epochs_run",
        "wall_time_s",
        "command",
    } <= set(training)
    assert training["preset"] == preset
    assert training["limit_train"] == 300
    assert training["epochs_run"] == 1
    assert training["n_train"] + training["n_validation"] == 300
    assert training["command"] == "python -m training train"
    assert metadata["parity"]["n_images"] >= PARITY_MIN_IMAGES
    assert metadata["parity"]["max_abs_diff"] <= MAX_ABS_DIFF
    assert metadata["parity"]["argmax_agreement"] == 1.0
    assert set(metadata["versions"]) == {"tensorflow", "keras", "tf2onnx", "onnx"}

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(["probabilities"], {"image": dataset.x_test.astype(np.float32)})
    accuracy = float((probabilities.argmax(axis=1) == dataset.y_test).mean())
    assert accuracy == pytest.approx(metadata["metrics"]["accuracy"], abs=2e-3)


def test_published_version_keeps_the_keras_model_for_retraining(tiny_run, tmp_path: Path) -> None:
    config = replace(tiny_run.config, repository=tmp_path)
    outcome = pipeline.finish(
        tiny_run.dataset, config, tiny_run.trained, tiny_run.evaluation, tiny_run.onnx_model
    )
    assert outcome.published is not None
    directory = outcome.published.path
    assert sorted(p.name for p in directory.iterdir()) == ["metadata.json", "model.onnx", "report", "train"]
    kept = keras.saving.load_model(directory / KERAS_FILE)
    images = tiny_run.dataset.x_test[:64].astype(np.float32)
    session = ort.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
    (served,) = session.run(["probabilities"], {"image": images})
    np.testing.assert_allclose(kept.predict(images, verbose=0), served, atol=MAX_ABS_DIFF)
    assert kept.optimizer is not None and kept.optimizer.iterations.numpy() > 0  # state kept for fine-tuning
    metadata = json.loads((directory / "metadata.json").read_text())
    assert metadata["sha256"] == sha256_hex((directory / "model.onnx").read_bytes())


def test_tampered_export_publishes_nothing(tiny_run, tampered_onnx, tmp_path: Path) -> None:
    config = replace(tiny_run.config, repository=tmp_path)
    with pytest.raises(ExportError, match="parity gate failed"):
        pipeline.finish(tiny_run.dataset, config, tiny_run.trained, tiny_run.evaluation, tampered_onnx)
    assert list(tmp_path.iterdir()) == []


def test_regressing_model_is_refused_unless_forced(tiny_run, tmp_path: Path) -> None:
    better = tiny_run.evaluation.accuracy + 0.01

    def metadata(version: int) -> dict[str, object]:
        return {"version": version, "sha256": sha256_hex(b"x"), "metrics": {"accuracy": better}}

    publish(tmp_path, "tiny", b"x", metadata)
    guarded = replace(tiny_run.config, repository=tmp_path)
    with pytest.raises(PromotionRefused, match=r"1\.00 points below version 1"):
        pipeline.finish(tiny_run.dataset, guarded, tiny_run.trained, tiny_run.evaluation, tiny_run.onnx_model)
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == ["1"]

    forced = replace(tiny_run.config, repository=tmp_path, force=True)
    outcome = pipeline.finish(
        tiny_run.dataset, forced, tiny_run.trained, tiny_run.evaluation, tiny_run.onnx_model
    )
    assert outcome.published is not None
    assert outcome.published.version == 2
    assert json.loads((tmp_path / "tiny" / "2" / "metadata.json").read_text())["version"] == 2
