"""Test-set metrics from class probabilities: accuracy, cross-entropy, per-class accuracy, confusion matrix.

Free of TensorFlow, so that evaluating an imported ONNX model with onnxruntime does not load it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Evaluation:
    """Test-set metrics: accuracy, mean cross-entropy, per-class accuracy and the confusion matrix."""

    accuracy: float
    loss: float
    per_class_accuracy: list[float]
    confusion: np.ndarray  # confusion[true, predicted]
    n_images: int

    def as_json(self, labels: list[str] | tuple[str, ...]) -> dict[str, Any]:
        """The ``metrics`` entry of an evaluated import; ``confusion_matrix`` rows are the true classes."""
        return {
            "accuracy": self.accuracy,
            "loss": self.loss,
            "per_class_accuracy": dict(zip(labels, self.per_class_accuracy, strict=True)),
            "confusion_matrix": self.confusion.tolist(),
            "n_images": self.n_images,
        }


def score(probabilities: np.ndarray, y_test: np.ndarray, num_classes: int) -> Evaluation:
    """Accuracy, cross-entropy and the confusion matrix of class ``probabilities`` against ``y_test``."""
    predicted = probabilities.argmax(axis=1)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (y_test, predicted), 1)
    support = confusion.sum(axis=1)
    per_class = np.divide(np.diag(confusion), support, out=np.zeros(num_classes), where=support > 0)
    # Keras' cross-entropy clips probabilities to [1e-7, 1 - 1e-7]; do the same so the numbers compare.
    true_class = np.clip(probabilities[np.arange(len(y_test)), y_test], 1e-7, 1 - 1e-7)
    return Evaluation(
        accuracy=float((predicted == y_test).mean()),
        loss=float(-np.log(true_class).mean()),
        per_class_accuracy=[float(a) for a in per_class],
        confusion=confusion,
        n_images=len(y_test),
    )
