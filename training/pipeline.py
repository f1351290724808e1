"""One run, start to finish: fit, evaluate on the test set, export, parity gate, promotion guard, publish.

Nothing reaches the repository unless the export passed the parity gate and the promotion guard.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import onnx
import tensorflow as tf
import tf2onnx

from service import contract
from training import report
from training.config import HyperParameters
from training.data import Dataset
from training.export import Parity, parity_gate, parity_images, to_onnx
from training.onnxmodel import opset_of
from training.publish import Published, check_promotion, check_signature, publish, sha256_hex
from training.train import Evaluation, Trained, evaluate, fit


@dataclass(frozen=True)
class RunConfig:
    """What to train and where to publish it; ``repository=None`` trains, exports and gates only."""

    dataset: str
    preset: str
    hp: HyperParameters
    name: str
    repository: Path | str | None = None
    #: Refuse to publish when test accuracy drops more than this many percentage points.
    max_regression: float = 0.5
    force: bool = False
    #: The command line that started the run, recorded in the metadata.
    command: str = ""
    #: Publish as a candidate (docs/rollout.md): loaded, never served unversioned until promoted.
    candidate: bool = False


@dataclass(frozen=True)
class Outcome:
    """Everything a run produced."""

    trained: Trained
    evaluation: Evaluation
    parity: Parity
    onnx_size: int
    published: Published | None


def run(dataset: Dataset, config: RunConfig, *, verbose: int | None = None) -> Outcome:
    """Fit, evaluate, export and (when ``config.repository`` is set) publish."""
    trained = fit(dataset, config.preset, config.hp, verbose=verbose)
    evaluation = evaluate(trained.model, dataset.x_test, dataset.y_test, len(dataset.labels))
    onnx_model = to_onnx(trained.model, dataset.input_shape)
    return finish(dataset, config, trained, evaluation, onnx_model)


def finish(
    dataset: Dataset,
    config: RunConfig,
    trained: Trained,
    evaluation: Evaluation,
    onnx_model: onnx.ModelProto,
) -> Outcome:
    """Gate ``onnx_model`` on parity with ``trained.model``, check the promotion guard, then publish."""
    onnx_bytes = onnx_model.SerializeToString()
    parity = parity_gate(onnx_bytes, trained.model, parity_images(dataset.x_test, dataset.x_train))
    published = None
    if config.repository is not None:
        inputs, outputs = signature_entries(dataset)
        check_signature(config.repository, config.name, inputs, outputs, force=config.force)
        check_promotion(
            config.repository, config.name, evaluation.accuracy, config.max_regression, force=config.force
        )
        published = publish_version(dataset, config, trained, evaluation, parity, onnx_model)
    return Outcome(trained, evaluation, parity, len(onnx_bytes), published)


def publish_version(
    dataset: Dataset,
    config: RunConfig,
    trained: Trained,
    evaluation: Evaluation,
    parity: Parity,
    onnx_model: onnx.ModelProto,
    retrain: dict[str, Any] | None = None,
) -> Published:
    """Publish a gated export as the next version in ``config.repository``: ``model.onnx``, metadata
    (with the ``retrain`` record of a retrained version), the Keras model and the report."""
    if config.repository is None:
        raise ValueError("publish_version needs config.repository")
    onnx_bytes = onnx_model.SerializeToString()
    sha256 = sha256_hex(onnx_bytes)
    opset = opset_of(onnx_model)

    def metadata(version: int) -> contract.Metadata:
        record = build_metadata(config, dataset, trained, evaluation, parity, version, sha256, opset)
        return record if retrain is None else record.model_copy(update={"retrain": retrain})

    def write_extra(directory: Path) -> None:
        keep_keras_model(trained.model, directory / contract.KERAS_FILE)
        (directory / contract.REPORT_DIR).mkdir()
        title = f"{config.name}: {config.preset} on {dataset.name}"
        report.plot_history(trained.history, directory / "report" / report.CURVES_FILE, title)
        report.plot_confusion(
            evaluation.confusion, dataset.labels, directory / "report" / report.CONFUSION_FILE, title
        )

    return publish(
        config.repository, config.name, onnx_bytes, metadata, write_extra, candidate=config.candidate
    )


def keep_keras_model(model: keras.Model, path: Path) -> None:
    """Save ``model`` (weights and optimizer state) at ``path``, fsynced, for a later fine-tune."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def signature_entries(dataset: Dataset) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``inputs`` and ``outputs`` of the metadata of a model trained on ``dataset``."""
    height, width, channels = dataset.input_shape
    inputs = [{"name": "image", "datatype": "FP32", "shape": [-1, height, width, channels]}]
    outputs = [{"name": "probabilities", "datatype": "FP32", "shape": [-1, len(dataset.labels)]}]
    return inputs, outputs


def build_metadata(
    config: RunConfig,
    dataset: Dataset,
    trained: Trained,
    evaluation: Evaluation,
    parity: Parity,
    version: int,
    sha256: str,
    opset: int,
) -> contract.Metadata:
    """The ``metadata.json`` of one version, as the repository contract (``docs/repository.md``) has it."""
    inputs, outputs = signature_entries(dataset)
    extra: dict[str, Any] = {} if dataset.source is None else {"data": dataset.source}
    return contract.Metadata(
        name=config.name,
        version=version,
        created_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        platform=contract.PLATFORM,
        inputs=tuple(contract.TensorMetadata.model_validate(entry) for entry in inputs),
        outputs=tuple(contract.TensorMetadata.model_validate(entry) for entry in outputs),
        labels=tuple(dataset.labels),
        preprocessing=dataset.preprocessing,
        sha256=sha256,
        opset=opset,
        dataset=dataset.name,
        metrics=contract.Evaluation(
            accuracy=evaluation.accuracy,
            loss=evaluation.loss,
            per_class_accuracy=dict(zip(dataset.labels, evaluation.per_class_accuracy, strict=True)),
        ),
        training={
            "preset": config.preset,
            **config.hp.as_json(),
            "epochs_run": trained.epochs_run,
            "best_epoch": trained.best_epoch,
            "wall_time_s": round(trained.wall_time_s, 2),
            "n_train": trained.n_train,
            "n_validation": trained.n_validation,
            "parameters": int(trained.model.count_params()),
            "history": trained.history,
            "command": config.command,
        },
        parity=contract.Parity(**parity.as_json()),
        versions={
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "tf2onnx": tf2onnx.__version__,
            "onnx": onnx.__version__,
        },
        **extra,
    )


def summary_rows(dataset: Dataset, config: RunConfig, outcome: Outcome) -> list[tuple[str, object]]:
    """The rows of the table printed at the end of a run."""
    trained, evaluation, parity = outcome.trained, outcome.evaluation, outcome.parity
    history = trained.history
    train_accuracy = f"{history['accuracy'][-1]:.4f}" if history.get("accuracy") else "-"
    val_accuracy = f"{max(history['val_accuracy']):.4f}" if history.get("val_accuracy") else "-"
    published = outcome.published
    rows: list[tuple[str, object]] = [
        ("model", config.name),
        ("dataset / preset", f"{dataset.name} / {config.preset}"),
        ("parameters", f"{trained.model.count_params():,}"),
        ("images train / validation", f"{trained.n_train:,} / {trained.n_validation:,}"),
        ("epochs run", f"{trained.epochs_run} of {config.hp.epochs}, weights of epoch {trained.best_epoch}"),
        ("wall time", f"{trained.wall_time_s:.1f} s"),
        ("train accuracy (last epoch)", train_accuracy),
        ("validation accuracy (best)", val_accuracy),
        ("test accuracy", f"{evaluation.accuracy:.4f} ({evaluation.n_images:,} images)"),
        ("test loss", f"{evaluation.loss:.4f}"),
        ("parity", f"max abs diff {parity.max_abs_diff:.2e}, argmax {parity.argmax_agreement:.2%}"),
        ("model.onnx", f"{outcome.onnx_size / 1024:,.0f} KiB"),
        ("published", f"{published.path} (version {published.version})" if published else "no (--publish)"),
    ]
    return rows
