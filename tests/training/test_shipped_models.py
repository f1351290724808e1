"""The shipped reference versions carry the Keras model they were exported from, so ``training retrain``
fine-tunes them instead of training from scratch (``make models`` keeps it: bench/reference_models.py)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from tests.helpers.data import MODELS, load_cifar, load_digits

SHIPPED = ("mnist-mlp", "mnist-cnn", "fashion-cnn", "cifar10-cnn")


def _images(name: str) -> np.ndarray:
    if name == "cifar10-cnn":
        return load_cifar()[0][:64]
    return load_digits("fashion-mnist" if name == "fashion-cnn" else "mnist")[0][:64]


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_version_carries_the_keras_model_it_was_exported_from(name: str) -> None:
    import keras  # the [train] extra (make test installs it); imported here to keep collection light

    version = MODELS / name / "1"
    model = keras.models.load_model(version / "train" / "model.keras")
    images = _images(name)
    session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    (served,) = session.run(None, {"image": images})
    trained = np.asarray(model.predict(images, verbose=0))
    # The parity gate the export passed (docs/repository.md): the same function, not a retrained look-alike.
    assert np.max(np.abs(trained - served)) <= 1e-4
    assert (trained.argmax(axis=1) == served.argmax(axis=1)).all()
    metadata = json.loads((version / "metadata.json").read_text())
    assert model.count_params() == metadata["training"]["parameters"]
