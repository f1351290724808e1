"""Shared fixtures for the training tests: the real shared data and one tiny model trained once."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

# Quiet TensorFlow's C++ logging before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import onnx
from onnx import numpy_helper

from training.data import Dataset, load_dataset
from training.export import to_onnx
from training.pipeline import RunConfig
from training.presets import preset_defaults
from training.train import Evaluation, Trained, evaluate, fit

#: The tests run from a clone whose sibling is ``shared/``, unless ``DATA_DIR`` says otherwise.
DATA_DIR = Path(os.environ.get("DATA_DIR") or Path(__file__).parents[2].parent / "shared" / "data").resolve()


@dataclass(frozen=True)
class TinyRun:
    """A tiny-mlp trained on 300 MNIST images for two epochs, evaluated and exported (not published)."""

    dataset: Dataset
    config: RunConfig
    trained: Trained
    evaluation: Evaluation
    onnx_model: onnx.ModelProto


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA_DIR


@pytest.fixture(scope="session")
def mnist(data_dir: Path) -> Dataset:
    return load_dataset("mnist", data_dir, download=False)


@pytest.fixture(scope="session")
def tiny_run(mnist: Dataset) -> TinyRun:
    fast = {"optimizer": "adam", "learning_rate": 0.01, "batch_size": 16}
    hp = replace(preset_defaults("tiny-mlp"), epochs=2, limit_train=300, **fast)
    config = RunConfig(dataset="mnist", preset="tiny-mlp", hp=hp, name="tiny", command="pytest")
    trained = fit(mnist, "tiny-mlp", hp, verbose=0)
    evaluation = evaluate(trained.model, mnist.x_test, mnist.y_test, len(mnist.labels))
    return TinyRun(mnist, config, trained, evaluation, to_onnx(trained.model, mnist.input_shape))


@pytest.fixture(scope="session")
def tampered_onnx(tiny_run: TinyRun) -> onnx.ModelProto:
    """The tiny run's export with its output-layer bias shifted: same signature, different probabilities."""
    model = onnx.ModelProto()
    model.CopyFrom(tiny_run.onnx_model)
    bias = next(t for t in model.graph.initializer if list(t.dims) == [10])
    shifted = numpy_helper.to_array(bias) + np.linspace(0.0, 1.0, 10, dtype=np.float32)
    bias.CopyFrom(numpy_helper.from_array(shifted.astype(np.float32), bias.name))
    return model
