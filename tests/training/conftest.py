"""Shared fixtures for the training tests: the real shared data and one tiny model trained once."""

from __future__ import annotations

import os
import warnings
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


#: The five CIFAR-10 classes the image-folder and import tests use.
CIFAR5 = ("airplane", "automobile", "bird", "cat", "deer")


@dataclass(frozen=True)
class Folders:
    """Real test images written out as image folders.

    ``mnist``: ``train/<digit>/*.png`` (300 images) and ``test/<digit>/*.png`` (100), 28x28 grayscale,
    the pixels of MNIST test images ``mnist_index[path]`` exactly (PNG is lossless). ``cifar``: flat
    ``<class>/*.jpg``, 60 CIFAR-10 images of each of the five :data:`CIFAR5` classes, 32x32 RGB.
    """

    mnist: Path
    mnist_index: dict[Path, int]
    cifar: Path


@pytest.fixture(scope="session")
def folders(tmp_path_factory: pytest.TempPathFactory, mnist: Dataset, data_dir: Path) -> Folders:
    from PIL import Image

    root = tmp_path_factory.mktemp("folders")
    index: dict[Path, int] = {}
    for split, rows in (("train", range(300)), ("test", range(300, 400))):
        for i in rows:
            directory = root / "mnist" / split / mnist.labels[mnist.y_test[i]]
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / f"{i:05d}.png"
            Image.fromarray(mnist.x_test[i, ..., 0]).save(path)
            index[path] = i
    cifar = load_dataset("cifar10", data_dir, download=False)
    for class_id, name in enumerate(CIFAR5):
        (root / "cifar" / name).mkdir(parents=True)
        for k, i in enumerate(np.flatnonzero(cifar.y_test == class_id)[:60]):
            Image.fromarray(cifar.x_test[i]).save(root / "cifar" / name / f"{k:03d}.jpg", quality=95)
    return Folders(root / "mnist", index, root / "cifar")


@dataclass(frozen=True)
class Foreign:
    """A Keras classifier that is none of the presets: input ``pixels`` in 0..1 (no scaling inside),
    output ``scores``, five classes; trained briefly on the CIFAR folder's images and written three ways."""

    onnx: Path  # exported with tf2onnx directly, as a user would
    keras: Path
    saved_model: Path
    model: object  # the keras.Model


@pytest.fixture(scope="session")
def foreign(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Foreign:
    import keras
    import tensorflow as tf
    import tf2onnx

    root = tmp_path_factory.mktemp("foreign")
    cifar = load_dataset("cifar10", data_dir, download=False)
    keep = cifar.y_train < len(CIFAR5)
    x, y = cifar.x_train[keep][:1000].astype(np.float32) / 255.0, cifar.y_train[keep][:1000]
    keras.utils.set_random_seed(7)
    inputs = keras.Input((32, 32, 3), name="pixels")
    h = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(inputs)
    h = keras.layers.Conv2D(32, 3, strides=2, activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(len(CIFAR5), activation="softmax", name="scores")(h)
    model = keras.Model(inputs, outputs, name="foreign")
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=4, batch_size=32, verbose=0)

    spec = [tf.TensorSpec((None, 32, 32, 3), tf.float32, name="pixels")]

    @tf.function(input_signature=spec)
    def serve(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"scores": model(pixels, training=False)}

    proto, _ = tf2onnx.convert.from_function(serve, input_signature=spec, opset=17)
    (root / "foreign.onnx").write_bytes(proto.SerializeToString())
    with warnings.catch_warnings():  # Keras 3.15's own saver trips numpy 2's __array__(copy=) deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        model.save(root / "foreign.keras")
    model.export(root / "saved_model", verbose=False)
    return Foreign(root / "foreign.onnx", root / "foreign.keras", root / "saved_model", model)
