"""The finite-value check of decoded inputs: ``service/core/_finite.c`` answers as numpy does.

:func:`service.core.signature.all_finite` reads a C-contiguous native-order float buffer's exponent bits
in C and asks numpy about every other array; both must agree with ``np.isfinite(array).all()`` on every
value, layout and byte order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from service.core import _finite
from service.core.signature import RequestCheck, TensorSpec, all_finite
from service.errors import InvalidInput

FLOATS: list[type[np.floating[Any]]] = [np.float16, np.float32, np.float64]
BITS: dict[type[np.floating[Any]], type[np.unsignedinteger[Any]]] = {
    np.float16: np.uint16,
    np.float32: np.uint32,
    np.float64: np.uint64,
}


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, 1, 255, 256, 257, 999])
def test_one_non_finite_value_anywhere_is_found(
    dtype: type[np.floating[Any]], bad: float, where: int
) -> None:
    # 1000 values: past the C scan's first 256-value block, and a last block that is not whole.
    array: np.ndarray = np.linspace(-1, 1, 1000).astype(dtype)
    assert _finite.all_finite(array) is True
    array[where] = bad
    assert _finite.all_finite(array) is False
    assert all_finite(array) is False


@pytest.mark.parametrize("dtype", FLOATS)
def test_extreme_finite_values_are_finite(dtype: type[np.floating[Any]]) -> None:
    info = np.finfo(dtype)
    edge: np.ndarray = np.array([info.max, -info.max, info.tiny, info.smallest_subnormal, -0.0, 0.0], dtype)
    assert _finite.all_finite(edge) is True


@pytest.mark.parametrize("dtype", FLOATS)
def test_every_nan_payload_is_non_finite(dtype: type[np.floating[Any]]) -> None:
    # A NaN is any value with all exponent bits set and a non-zero mantissa, of either sign.
    bits = BITS[dtype]
    width = np.dtype(dtype).itemsize * 8
    mantissa = {16: 10, 32: 23, 64: 52}[width]
    exponent = ((1 << (width - 1)) - 1) ^ ((1 << mantissa) - 1)
    payloads = [1, 2, (1 << mantissa) - 1, 1 << (mantissa - 1)]
    for sign in (0, 1 << (width - 1)):
        for payload in payloads:
            value: np.ndarray = np.array([sign | exponent | payload], bits).view(dtype)
            assert np.isnan(value[0])
            assert _finite.all_finite(value) is False


def test_buffers_the_c_scan_does_not_read_are_left_to_numpy() -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert _finite.all_finite(array[:, ::2]) is None  # strided
    assert _finite.all_finite(array.T) is None  # Fortran order
    assert _finite.all_finite(array.astype(">f4")) is None  # the other byte order
    assert _finite.all_finite(array.astype(np.int32)) is None
    assert _finite.all_finite(b"\x00\x00\x80\x7f") is None  # bytes: format "B"
    assert _finite.all_finite(3.0) is None  # no buffer
    strided = array.copy()
    strided[1, 2] = np.nan
    assert all_finite(strided[:, ::2]) is False
    assert all_finite(strided[:, 1::2]) is True
    assert all_finite(strided.astype(">f4")) is False


def test_empty_and_scalar_arrays() -> None:
    assert _finite.all_finite(np.zeros((0, 28), np.float32)) is True
    assert all_finite(np.zeros((0, 28), np.float32)) is True
    assert _finite.all_finite(np.float32(np.inf)) is False
    assert _finite.all_finite(np.array(1.5)) is True


@settings(max_examples=300, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from([np.dtype(d).newbyteorder(o) for d in FLOATS for o in ("<", ">")]),
        shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=40),
        elements={"allow_nan": True, "allow_infinity": True, "allow_subnormal": True},
    ),
    st.sampled_from(["as is", "strided", "transposed"]),
)
def test_all_finite_answers_as_numpy_does(array: np.ndarray, layout: str) -> None:
    view = {"as is": array, "strided": array[..., ::2], "transposed": array.T}[layout]
    assert all_finite(view) is bool(np.isfinite(view).all())


def test_the_request_check_refuses_non_finite_values_and_casts_the_rest() -> None:
    spec = TensorSpec("image", "FP32", (-1, 4))
    with pytest.raises(InvalidInput, match="input 'image': data holds non-finite values"):
        RequestCheck.values(spec, np.array([[0, 1, np.inf, 2]], np.float64))
    with pytest.raises(InvalidInput, match="non-finite"):
        RequestCheck.values(spec, np.array([[0, 1, 2, np.nan]], np.float16))
    cast = RequestCheck.values(spec, np.array([[0, 1, 2, 3]], np.float64))
    assert cast.dtype == np.float32
    assert cast.tolist() == [[0, 1, 2, 3]]


def test_without_the_c_extension_numpy_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    # An install without the C extensions (DIGITS_SERVING_BUILD_H2=0) checks with numpy alone.
    from service.core import signature

    monkeypatch.setattr(signature, "_scan", None)
    assert all_finite(np.ones(5, np.float32)) is True
    assert all_finite(np.array([1, np.nan], np.float32)) is False
