"""service.core.types: the core's requests and responses, as a transport builds and reads them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from service.core import ClassifyRequest, InferRequest, Prediction, RepositoryEntry, ServerInfo


def test_request_defaults_are_the_documented_ones() -> None:
    request = InferRequest({"image": np.zeros((1, 2))})
    assert (request.id, request.outputs, request.deadline, request.checked) == (None, None, None, False)
    classify = ClassifyRequest([b"\x89PNG"])
    assert (classify.top_k, classify.return_input, classify.deadline, classify.filenames) == (
        3,
        False,
        None,
        None,
    )
    assert RepositoryEntry("m", 1, "READY").reason == ""


def test_answers_are_immutable_values() -> None:
    prediction = Prediction(3, "cat", 0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        prediction.label = "dog"  # type: ignore[misc]
    assert prediction == Prediction(3, "cat", 0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ServerInfo("s", "1", ()).name = "other"  # type: ignore[misc]
