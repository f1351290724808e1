"""service.http.jsontensors: JSON tensor data to typed arrays, a message for every way it can be wrong."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from service.errors import InvalidInput
from service.http.jsontensors import fmt, from_json, show


def test_flat_and_nested_data_give_the_same_array() -> None:
    flat = from_json("x", [1, 2.5, 3, 4, 5, 6], np.dtype(np.float32), [2, 3])
    nested = from_json("x", [[1, 2.5, 3], [4, 5, 6]], np.dtype(np.float32), [2, 3])
    np.testing.assert_array_equal(flat, nested)
    assert flat.dtype == np.float32 and flat.shape == (2, 3)
    assert from_json("b", [True, False], np.dtype(np.bool_), [2]).tolist() == [True, False]
    assert from_json("i", [[-128, 127]], np.dtype(np.int8), [1, 2]).tolist() == [[-128, 127]]
    # Out of float32 range becomes infinity here; the parser refuses non-finite values after.
    assert np.isinf(from_json("f", [1e39], np.dtype(np.float32), [1])).all()


@pytest.mark.parametrize(
    ("data", "dtype", "shape", "fragment"),
    [
        ("1,2", np.float32, [2], "'data' must be a list of numbers, got \"1,2\""),
        ([[1, 2], [3]], np.float32, [2, 2], "ragged nested list"),
        ([[1, 2], 3], np.float32, [3], "ragged nested list"),
        ([1, True], np.float32, [2], "must hold only numbers"),
        ([1, None], np.float32, [2], "must hold only numbers"),
        ([1.5], np.int32, [1], "INT32 data must be integers in -2147483648..2147483647"),
        ([256], np.uint8, [1], "UINT8 data must be integers in 0..255"),
        ([1], np.bool_, [1], "must hold only true or false"),
        ([1, 2, 3], np.float32, [2, 2], "shape [2,2] needs 4 values, got 3"),
    ],
)
def test_data_that_does_not_fit(data: Any, dtype: type, shape: list[int], fragment: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        from_json("image", data, np.dtype(dtype), shape)
    assert caught.value.message.startswith("input 'image': ")
    assert fragment in caught.value.message


def test_message_helpers() -> None:
    assert fmt((-1, 28, 28, 1)) == "[-1,28,28,1]"
    assert show({"a": 1}) == '{"a":1}'
    assert show("x" * 100) == '"' + "x" * 56 + "..."
    deep: Any = []
    for _ in range(300):
        deep = [deep]
    assert show(deep) == "a list nested too deeply to show"
