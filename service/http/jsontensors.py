"""Tensor data as JSON carries it: flat or nested lists of numbers, turned into typed numpy arrays.

:func:`from_json` checks the nesting, the leaf types (no booleans for numbers, no floats for integers),
the value count and the datatype's range, and raises :class:`~service.errors.InvalidInput` saying which
input and what was wrong. It flattens with C-level iteration, never a per-element Python loop.

Floating-point data that is well formed (numbers only, evenly nested, as many as the shape needs) is
packed by the C extension ``service.http._leaves`` in one pass, which checks every leaf's type as it
converts it; anything else, and every install without the extension, takes the checks below, which
say what is wrong. Both give the values ``np.asarray`` gives.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import chain
from typing import Any

import numpy as np
import orjson

from service.core.signature import DATATYPES
from service.errors import InvalidInput

_packed: Callable[[object, int, bool], bytes | None] | None
try:
    from service.http._leaves import floats as _packed
except ImportError:  # installed without the C extensions (DIGITS_SERVING_BUILD_H2=0): the checks below
    _packed = None

#: Python types a JSON ``data`` leaf may have, by numpy kind of the tensor's datatype.
LEAF_TYPES: dict[str, set[type]] = {"f": {int, float}, "i": {int}, "u": {int}, "b": {bool}}


def from_json(name: str, data: Any, wire: np.dtype[Any], shape: list[int]) -> np.ndarray:
    """Turn JSON ``data`` (flat or nested lists) into an array of ``wire`` dtype and ``shape``."""
    if wire.kind == "f" and _packed is not None:
        single = wire == _FP32
        try:
            packed = _packed(data, math.prod(shape), single)
        except OverflowError:  # an int beyond any double, as np.asarray says below
            raise InvalidInput(f"input {name!r}: data holds non-finite values (NaN or infinity)") from None
        if packed is not None:
            values = np.frombuffer(packed, _FP32 if single else _FP64)
            if not single and wire != _FP64:
                with np.errstate(over="ignore"):  # past FP16's range: infinity, as below
                    values = values.astype(wire)
            return values.reshape(shape)
    if not isinstance(data, list):
        raise InvalidInput(f"input {name!r}: 'data' must be a list of numbers, got {show(data)}")
    leaves = data
    # Flatten nested lists one level at a time with C-level iteration; every list on a level must have
    # the same length, else the nesting is ragged.
    while leaves and type(leaves[0]) is list:
        try:
            if len(set(map(len, leaves))) != 1:
                raise TypeError
            leaves = list(chain.from_iterable(leaves))
        except TypeError:
            raise InvalidInput(f"input {name!r}: 'data' is a ragged nested list") from None
    kinds = set(map(type, leaves))
    if not kinds <= LEAF_TYPES[wire.kind]:
        if list in kinds:
            raise InvalidInput(f"input {name!r}: 'data' is a ragged nested list")
        raise InvalidInput(f"input {name!r}: {_leaf_rule(wire)}")
    if len(leaves) != math.prod(shape):
        raise InvalidInput(
            f"input {name!r}: shape {fmt(shape)} needs {math.prod(shape)} values, got {len(leaves)}"
        )
    try:
        if wire.kind in "iu":
            wide = np.asarray(leaves, dtype=np.int64)
            info = np.iinfo(wire)
            if wide.size and (wide.min() < info.min or wide.max() > info.max):
                raise OverflowError
            return wide.astype(wire).reshape(shape)
        with np.errstate(over="ignore"):
            return np.asarray(leaves, dtype=wire).reshape(shape)
    except OverflowError:
        if wire.kind == "f":
            raise InvalidInput(f"input {name!r}: data holds non-finite values (NaN or infinity)") from None
        raise InvalidInput(f"input {name!r}: {_leaf_rule(wire)}") from None


_FP32, _FP64 = DATATYPES["FP32"], DATATYPES["FP64"]


def _leaf_rule(wire: np.dtype[Any]) -> str:
    if wire.kind == "f":
        return "'data' must hold only numbers (no booleans, strings, nulls or objects)"
    if wire.kind == "b":
        return "'data' must hold only true or false"
    info = np.iinfo(wire)
    return f"{wire.name.upper()} data must be integers in {info.min}..{info.max}"


def fmt(shape: Any) -> str:
    """A shape as messages write it: ``[-1,28,28,1]``."""
    return "[" + ",".join(map(str, shape)) + "]"


def show(value: Any) -> str:
    """A client value in JSON notation, cut short: for messages only."""
    try:
        text = orjson.dumps(value).decode()
    except TypeError:  # orjson writes at most 254 levels; the parser accepted up to 1024
        return f"a {type(value).__name__} nested too deeply to show"
    return text if len(text) <= 60 else text[:57] + "..."
