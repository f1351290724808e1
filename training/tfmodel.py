"""Keras ``.keras`` files and TensorFlow SavedModels offered for import: loaded, their one image input and
one output checked as an ONNX model's are, and wrapped as a TensorFlow computation that
:func:`training.export.convert` exports like a trained model (input ``image``, output ``probabilities``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from training.errors import UnsupportedModel, UsageError
from training.onnxmodel import SUPPORTED, Dim, check_scores, image_hwc


@dataclass(frozen=True)
class Loaded:
    """A TensorFlow model ready to export: its forward computation and the input's ``(H, W, C)``."""

    forward: Callable[[tf.Tensor], tf.Tensor]
    hwc: tuple[Dim, Dim, Dim]
    #: How the model was found, for the metadata: e.g. ``keras model 'my_net'``.
    description: str


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _dims(shape: Any) -> list[Dim] | None:
    if shape is None or getattr(shape, "rank", 0) is None:
        return None
    return [None if d is None else int(d) for d in tuple(shape)]


def load(path: Path, fmt: str) -> Loaded:
    """Load the ``keras`` file or ``savedmodel`` directory ``path``; :class:`UsageError` if it cannot be
    loaded, :class:`UnsupportedModel` if the service could not serve it."""
    return load_keras(path) if fmt == "keras" else load_saved_model(path)


def load_keras(path: Path) -> Loaded:
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises ValueError, TypeError, OSError, ... for files it cannot read
        raise UsageError(f"{path}: cannot load the Keras model ({_first_line(exc)})") from None
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise UnsupportedModel(
            f"the Keras model has {len(model.inputs)} inputs and {len(model.outputs)} outputs; {SUPPORTED}"
        )
    (image,), (scores,) = model.inputs, model.outputs
    if image.dtype != "float32":
        raise UnsupportedModel(f"input '{image.name}' is {image.dtype}; {SUPPORTED}")
    hwc = image_hwc(image.name, _dims(image.shape))
    check_scores(scores.name, _dims(scores.shape))
    return Loaded(lambda x: model(x, training=False), hwc, f"keras model '{model.name}'")


def load_saved_model(path: Path) -> Loaded:
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # TensorFlow raises OSError, ValueError, its own errors, ...
        raise UsageError(f"{path}: cannot load the SavedModel ({_first_line(exc)})") from None
    signatures = dict(loaded.signatures)
    key = "serving_default" if "serving_default" in signatures else None
    if key is None and len(signatures) == 1:
        key = next(iter(signatures))
    if key is None:
        names = ", ".join(signatures) or "none"
        raise UnsupportedModel(f"{path}: no serving_default signature (signatures: {names}); {SUPPORTED}")
    function = signatures[key]
    _, specs = function.structured_input_signature
    outputs = function.structured_outputs
    if len(specs) != 1 or not isinstance(outputs, dict) or len(outputs) != 1:
        raise UnsupportedModel(
            f"signature {key} has {len(specs)} inputs and {len(outputs)} outputs; {SUPPORTED}"
        )
    ((in_name, spec),) = specs.items()
    ((out_name, out_spec),) = outputs.items()
    if spec.dtype != tf.float32:
        raise UnsupportedModel(f"input '{in_name}' is {spec.dtype.name}; {SUPPORTED}")
    hwc = image_hwc(in_name, _dims(spec.shape))
    check_scores(out_name, _dims(out_spec.shape))

    def forward(x: tf.Tensor) -> tf.Tensor:
        # ``loaded`` is referenced here so that it, and the variables the signature uses, stay alive.
        return loaded.signatures[key](**{in_name: x})[out_name]

    return Loaded(forward, hwc, f"SavedModel signature '{key}' ({in_name} -> {out_name})")


def with_softmax(forward: Callable[[tf.Tensor], tf.Tensor]) -> Callable[[tf.Tensor], tf.Tensor]:
    """``forward`` followed by a softmax over the classes (for a model that returns logits)."""
    return lambda x: tf.nn.softmax(forward(x), axis=-1)


def predict(forward: Callable[[tf.Tensor], tf.Tensor], images: np.ndarray, batch: int = 256) -> np.ndarray:
    """``forward`` on float32 ``images``, ``batch`` rows at a time, as a float32 array."""
    chunks = [
        np.asarray(forward(tf.constant(images[start : start + batch], tf.float32)), dtype=np.float32)
        for start in range(0, len(images), batch)
    ]
    return np.concatenate(chunks)
