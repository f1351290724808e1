"""service.http.jsontensors: JSON tensor data to typed arrays, a message for every way it can be wrong."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.errors import InvalidInput
from service.http import _leaves, jsontensors
from service.http.jsontensors import fmt, from_json, show


@pytest.fixture(params=["c", "python"], autouse=True)
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with the C extension packing well-formed float data and without it (an install
    built with DIGITS_SERVING_BUILD_H2=0): the results and the messages must be the same."""
    if request.param == "python":
        monkeypatch.setattr(jsontensors, "_packed", None)
    else:
        assert jsontensors._packed is _leaves.floats
    return str(request.param)


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
        ([[1, 2], [3, 4]], np.float32, [3], "shape [3] needs 3 values, got 4"),
        ([[1, 2], [[3], [4]]], np.float32, [4], "ragged nested list"),
        ([[[1], [2]], [3, 4]], np.float32, [4], "ragged nested list"),
        ([1, "2"], np.float64, [2], "must hold only numbers"),
        ([[1, {}]], np.float16, [2], "must hold only numbers"),
        ([1, 10**400], np.float32, [2], "data holds non-finite values"),
        ([], np.float32, [1], "shape [1] needs 1 values, got 0"),
        ([[]], np.float32, [1, 1], "shape [1,1] needs 1 values, got 0"),
    ],
)
def test_data_that_does_not_fit(data: Any, dtype: type, shape: list[int], fragment: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        from_json("image", data, np.dtype(dtype), shape)
    assert caught.value.message.startswith("input 'image': ")
    assert fragment in caught.value.message


FLOATS = [np.float16, np.float32, np.float64]
#: Values where a conversion that rounds twice (double to float32 to float16, or int to float32 directly)
#: would differ from numpy's, and values out of each type's range (infinity, refused after by the caller).
EDGES: list[Any] = [1 + 2**-11 + 2**-30, 1 + 2**-24 + 2**-40, 2049.0000001, 65520.0, 5e-324, 1e39, -1e39]
EDGES += [0, -3, 2**24 + 1, 2**53 + 1, 2**60 + 2**36 + 1, -(2**70), 10**300]


@pytest.mark.parametrize("dtype", FLOATS)
def test_floats_convert_as_numpy_does(dtype: type) -> None:
    rng = np.random.default_rng(7)
    values: list[Any] = rng.standard_normal(4096).tolist() + (rng.standard_normal(512) * 7e4).tolist() + EDGES
    wire = np.dtype(dtype)
    with np.errstate(over="ignore"):
        expected = np.asarray(values, dtype=wire)
    flat = from_json("x", values, wire, [len(values)])
    np.testing.assert_array_equal(flat, expected)
    assert flat.dtype == wire and flat.shape == (len(values),)
    nested = [[values[i : i + 8] for i in range(j, j + 32, 8)] for j in range(0, 4096, 32)]
    deep = from_json("x", nested, wire, [128, 32])
    np.testing.assert_array_equal(deep.ravel(), expected[:4096])


def test_the_extension_refuses_all_but_well_formed_numbers() -> None:
    """floats() packs only what the Python checks accept; everything else is None (the Python checks then
    say why), and an int beyond a double is OverflowError."""
    good = _leaves.floats([[1, 2.5], [3, -4]], 4, True)
    assert good is not None and np.frombuffer(good, np.float32).tolist() == [1, 2.5, 3, -4]
    double = _leaves.floats([0.1], 1, False)
    assert double is not None and np.frombuffer(double, np.float64).tolist() == [0.1]

    class Sub(float):
        pass

    for data, count in [
        ([True, 1.0], 2),
        ([1, None], 2),
        ([1, "1"], 2),
        ([1, Sub(2)], 2),
        ([1, (2,)], 2),
        ([[1, 2], [3]], 3),
        ([[1, 2], 3], 3),
        ([1, [2]], 2),
        ([[1, 2], [[3], [4]]], 4),
        ([[[1], [2]], [3, 4]], 4),
        ([[]], 0),
        ([], 0),
        ([1, 2], 3),
        ([1, 2], 1),
        ([1.0], 10**9),  # a shape's claim: nothing is allocated for it before the values are counted
        ([1.0], 2**70),
        ((1, 2), 2),
        ("12", 2),
    ]:
        assert _leaves.floats(data, count, True) is None, data
    deep: Any = [1.0]
    for _ in range(40):
        deep = [deep]
    assert _leaves.floats(deep, 1, True) is None  # deeper than the C walk goes: Python's turn
    with pytest.raises(OverflowError):
        _leaves.floats([1, 10**400], 2, False)


_leaf = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.booleans(),
    st.none(),
    st.text(max_size=2),
)
_data = st.recursive(st.lists(_leaf, max_size=4), lambda inner: st.lists(inner, max_size=4), max_leaves=24)


@settings(max_examples=400, deadline=None)
@given(data=_data, count=st.integers(min_value=0, max_value=12), dtype=st.sampled_from(FLOATS))
def test_the_extension_agrees_with_the_python_checks(data: Any, count: int, dtype: type) -> None:
    """On any nesting of any leaves, both readers accept the same data, into the same values, and refuse
    the rest with the same message."""

    def read(packed: Any) -> Any:
        jsontensors._packed = packed
        try:
            return from_json("x", data, np.dtype(dtype), [count])
        except InvalidInput as exc:
            return exc.message
        finally:
            jsontensors._packed = _leaves.floats

    with np.errstate(over="ignore"):
        c, python = read(_leaves.floats), read(None)
    if isinstance(python, str) or isinstance(c, str):
        assert c == python
    else:
        np.testing.assert_array_equal(c, python)
        assert c.dtype == python.dtype


def test_message_helpers() -> None:
    assert fmt((-1, 28, 28, 1)) == "[-1,28,28,1]"
    assert show({"a": 1}) == '{"a":1}'
    assert show("x" * 100) == '"' + "x" * 56 + "..."
    deep: Any = []
    for _ in range(300):
        deep = [deep]
    assert show(deep) == "a list nested too deeply to show"
