"""Export to ONNX with tf2onnx, and the parity gate that refuses an export disagreeing with Keras.

``tf2onnx.convert.from_keras`` fails on Keras 3 models, so the model is wrapped in a ``tf.function`` whose
input signature names the input ``image`` (batch dimension dynamic) and whose output dict names the
output ``probabilities``.

The converted graph's single-value constants are then given the rank of what they combine with
(:func:`training.broadcast.rank_matched_constants`): tf2onnx writes the ``Rescaling`` layer's factor and
offset as scalars, which onnxruntime broadcasts over a grayscale ``[N, H, W, 1]`` image one element at a
time. Every result stays the same, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import keras
import numpy as np
import onnx
import onnxruntime as ort
import tensorflow as tf
import tf2onnx

from training.broadcast import rank_matched_constants
from training.diskimages import Images, head
from training.errors import ExportError
from training.train import predict

#: A TensorFlow computation from a float32 image batch to class probabilities.
Forward = Callable[[tf.Tensor], tf.Tensor]

#: The newest opset tf2onnx 1.17 converts to.
OPSET = 18
#: Largest absolute difference in any probability tolerated between Keras and onnxruntime.
MAX_ABS_DIFF = 1e-4
#: The gate compares at least this many real images (and at most ``PARITY_MAX_IMAGES``).
PARITY_MIN_IMAGES = 512
PARITY_MAX_IMAGES = 1024


@dataclass(frozen=True)
class Parity:
    """How closely onnxruntime reproduces Keras on ``n_images`` real images."""

    max_abs_diff: float
    argmax_agreement: float
    n_images: int

    @property
    def passed(self) -> bool:
        return (
            self.max_abs_diff <= MAX_ABS_DIFF
            and self.argmax_agreement == 1.0
            and self.n_images >= PARITY_MIN_IMAGES
        )

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def to_onnx(model: keras.Model, input_shape: tuple[int, int, int], opset: int = OPSET) -> onnx.ModelProto:
    """Convert ``model`` to ONNX: input ``image`` ``[-1, H, W, C]`` float32, output ``probabilities``."""
    return convert(lambda image: model(image, training=False), input_shape, opset)


def convert(forward: Forward, input_shape: tuple[int, int, int], opset: int = OPSET) -> onnx.ModelProto:
    """Convert ``forward`` (a Keras model's call, a SavedModel signature, ...) as :func:`to_onnx` does."""
    signature = [tf.TensorSpec((None, *input_shape), tf.float32, name="image")]

    @tf.function(input_signature=signature)
    def serve(image: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"probabilities": forward(image)}

    try:
        proto, _ = tf2onnx.convert.from_function(serve, input_signature=signature, opset=opset)
    except Exception as exc:  # tf2onnx raises assorted errors; the run fails either way
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"tf2onnx could not convert the model: {reason}") from exc
    rank_matched_constants(proto)
    return proto


def _check_signature(session: ort.InferenceSession, input_shape: tuple[int, ...]) -> None:
    inputs, outputs = session.get_inputs(), session.get_outputs()
    found = [(t.name, t.type, list(t.shape)) for t in [*inputs, *outputs]]
    if (
        len(inputs) != 1
        or len(outputs) != 1
        or inputs[0].name != "image"
        or outputs[0].name != "probabilities"
        or inputs[0].type != "tensor(float)"
        or outputs[0].type != "tensor(float)"
        or isinstance(inputs[0].shape[0], int)
        or tuple(inputs[0].shape[1:]) != input_shape
    ):
        raise ExportError(f"exported model has the wrong signature: {found}")


def check_parity(
    onnx_bytes: bytes, model: keras.Model | Callable[[np.ndarray], np.ndarray], images: np.ndarray
) -> Parity:
    """Run ``images`` through onnxruntime (CPU) and Keras (or any reference function from a float32
    batch to probabilities) and compare the probabilities."""
    try:
        session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for invalid models
        raise ExportError(f"onnxruntime cannot load the exported model: {exc}") from exc
    _check_signature(session, tuple(int(d) for d in images.shape[1:]))
    batch = images.astype(np.float32)
    onnx_probabilities = np.asarray(session.run(["probabilities"], {"image": batch})[0])
    keras_probabilities = predict(model, batch) if isinstance(model, keras.Model) else model(batch)
    if onnx_probabilities.shape != keras_probabilities.shape:
        raise ExportError(
            f"exported model returns shape {onnx_probabilities.shape}, Keras {keras_probabilities.shape}"
        )
    return Parity(
        max_abs_diff=float(np.abs(onnx_probabilities - keras_probabilities).max()),
        argmax_agreement=float(
            (onnx_probabilities.argmax(axis=1) == keras_probabilities.argmax(axis=1)).mean()
        ),
        n_images=len(batch),
    )


def parity_gate(
    onnx_bytes: bytes, model: keras.Model | Callable[[np.ndarray], np.ndarray], images: np.ndarray
) -> Parity:
    """:func:`check_parity`, raising :class:`ExportError` unless the export passes.

    Passing means: at least ``PARITY_MIN_IMAGES`` images, max abs difference <= ``MAX_ABS_DIFF`` and the
    same predicted class for every image.
    """
    if len(images) < PARITY_MIN_IMAGES:
        raise ExportError(
            f"parity needs at least {PARITY_MIN_IMAGES} test images, the data set has {len(images)}"
        )
    parity = check_parity(onnx_bytes, model, images[:PARITY_MAX_IMAGES])
    if not parity.passed:
        raise ExportError(
            f"parity gate failed on {parity.n_images} test images: max abs diff {parity.max_abs_diff:.3g} "
            f"(limit {MAX_ABS_DIFF:g}), argmax agreement {parity.argmax_agreement:.2%} (need 100%)"
        )
    return parity


def parity_images(*sources: Images, minimum: int = PARITY_MIN_IMAGES, seed: int = 0) -> np.ndarray:
    """Up to ``PARITY_MAX_IMAGES`` real images for the gate, taken from ``sources`` in turn (test images
    first). A small data set is topped up to ``minimum`` with mirrored, flipped and inverted copies of its
    images, then with seeded noise: the gate checks the export, which any input exercises."""
    taken: list[np.ndarray] = []
    count = 0
    for source in sources:
        if count < PARITY_MAX_IMAGES and len(source):
            taken.append(head(source, PARITY_MAX_IMAGES - count))
            count += len(taken[-1])
    if not taken:
        raise ExportError("no images to check the export with")
    images = np.concatenate(taken)
    if len(images) >= minimum:
        return images
    variants = [images, images[:, :, ::-1], images[:, ::-1], 255 - images, 255 - images[:, ::-1, ::-1]]
    images = np.concatenate(variants)[:minimum]
    if len(images) < minimum:
        noise = np.random.default_rng(seed).integers(0, 256, (minimum - len(images), *images.shape[1:]))
        images = np.concatenate([images, noise.astype(np.uint8)])
    return images
