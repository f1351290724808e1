"""Champion against challenger: both ONNX models through onnxruntime on the same two sets, and the bars.

The sets are the original test set (the challenger must stay within ``max_regression`` points of the
champion there) and the feedback holdout (it must beat the champion by more than ``min_improvement``
points). Evaluating the champion's served ``model.onnx`` itself, rather than trusting the accuracy
recorded in its metadata, means both numbers come from the same images, the same runtime and the same
preprocessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort


@dataclass(frozen=True)
class Scores:
    """One model on the two comparison sets."""

    test_accuracy: float
    holdout_accuracy: float

    def as_json(self) -> dict[str, float]:
        return {"test_accuracy": self.test_accuracy, "holdout_accuracy": self.holdout_accuracy}


def decide(
    champion: Scores, challenger: Scores, max_regression: float, min_improvement: float
) -> dict[str, Any]:
    """Both bars, with the reasons a person reads: within the guard on the test set, better on holdout."""
    floor = champion.test_accuracy - max_regression / 100
    bar = champion.holdout_accuracy + min_improvement / 100
    test_ok = challenger.test_accuracy >= floor - 1e-12
    holdout_ok = challenger.holdout_accuracy > bar + 1e-12
    reasons = []
    if not test_ok:
        reasons.append(
            f"test accuracy {challenger.test_accuracy:.2%} is more than {max_regression:g} points below the "
            f"champion's {champion.test_accuracy:.2%}"
        )
    if not holdout_ok:
        reasons.append(
            f"feedback holdout accuracy {challenger.holdout_accuracy:.2%} does not beat the champion's "
            f"{champion.holdout_accuracy:.2%}"
            + (f" by {min_improvement:g} points" if min_improvement else "")
        )
    return {
        "publish": test_ok and holdout_ok,
        "test_floor": floor,
        "holdout_bar": bar,
        "test_ok": test_ok,
        "holdout_ok": holdout_ok,
        "reasons": reasons,
    }


def session_of(onnx_bytes: bytes) -> ort.InferenceSession:
    """A CPU session, as the parity gate uses: the comparison must not depend on the trainer's GPU."""
    return ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])


def probabilities(session: ort.InferenceSession, images: np.ndarray, batch: int = 512) -> np.ndarray:
    """Class probabilities for ``images``, in batches of ``batch`` rows."""
    if len(images) == 0:
        return np.zeros((0, session.get_outputs()[0].shape[1]), np.float32)
    name = session.get_inputs()[0].name
    parts = [
        session.run(None, {name: images[i : i + batch].astype(np.float32)})[0]
        for i in range(0, len(images), batch)
    ]
    return np.concatenate(parts)


def scores(
    session: ort.InferenceSession,
    x_test: np.ndarray,
    y_test: np.ndarray,
    x_holdout: np.ndarray,
    y_holdout: np.ndarray,
) -> Scores:
    """Accuracy of ``session`` on the test set and on the holdout (0 for an empty set)."""

    def accuracy(x: np.ndarray, y: np.ndarray) -> float:
        return float((probabilities(session, x).argmax(axis=1) == y).mean()) if len(y) else 0.0

    return Scores(accuracy(x_test, y_test), accuracy(x_holdout, y_holdout))
