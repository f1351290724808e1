"""Champion against challenger: onnxruntime on both sets, and the two bars the decision needs."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.modelfactory import build_model
from training.compare import Scores, decide, probabilities, scores, session_of


def test_decide_needs_both_bars() -> None:
    champion = Scores(test_accuracy=0.99, holdout_accuracy=0.2)
    assert decide(champion, Scores(0.986, 0.5), 0.5, 0.0)["publish"] is True
    assert decide(champion, Scores(0.984, 0.9), 0.5, 0.0)["reasons"][0].startswith("test accuracy 98.40%")
    assert decide(champion, Scores(0.99, 0.2), 0.5, 0.0)["holdout_ok"] is False  # a tie is no improvement
    assert decide(champion, Scores(0.99, 0.24), 0.5, 5.0)["holdout_ok"] is False
    assert decide(champion, Scores(0.99, 0.26), 0.5, 5.0)["holdout_ok"] is True


def test_scores_are_accuracies_on_both_sets_in_batches() -> None:
    model_bytes, weight, bias = build_model(input_shape=(4, 4, 1), classes=3, seed=2)
    session = session_of(model_bytes)
    x = np.random.default_rng(0).uniform(0, 255, (1100, 4, 4, 1)).astype(np.float32)
    logits = (x.reshape(len(x), -1) / 255.0) @ weight + bias
    truth = logits.argmax(axis=1)
    np.testing.assert_allclose(probabilities(session, x, batch=256).argmax(axis=1), truth)
    wrong = (truth + 1) % 3
    got = scores(session, x, truth, x[:10], np.concatenate([truth[:4], wrong[4:10]]))
    assert got == Scores(test_accuracy=1.0, holdout_accuracy=pytest.approx(0.4))
    empty = scores(session, x[:0], truth[:0], x[:0], truth[:0])
    assert empty == Scores(0.0, 0.0)
