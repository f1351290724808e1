"""Model signatures: the tensors a model takes and returns (V2 tensor metadata), and the check that a
request's arrays fit them, which every transport relies on (:meth:`ModelSignature.check_inputs`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.contract import Metadata, TensorMetadata
from service.errors import InvalidInput, PayloadTooLarge, echo

#: V2 datatype name -> numpy dtype, for the datatypes the service reads or writes.
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_NAMES = {dtype: name for name, dtype in DATATYPES.items()}


def datatype_of(dtype: np.dtype[Any]) -> str:
    """The V2 datatype name of a numpy dtype (byte order aside); InvalidInput for one V2 does not have."""
    name = _NAMES.get(dtype.newbyteorder("="))
    if name is None:
        raise InvalidInput(f"arrays of dtype {dtype} have no V2 datatype")
    return name


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor: V2 datatype and shape, ``-1`` for the batch dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype[Any]:
        return DATATYPES[self.datatype]

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(str(data["name"]), str(data["datatype"]), tuple(int(d) for d in data["shape"]))

    @classmethod
    def from_metadata(cls, tensor: TensorMetadata) -> TensorSpec:
        return cls(tensor.name, tensor.datatype, tuple(tensor.shape))


@dataclass(frozen=True)
class ModelSignature:
    """Inputs and outputs of one model version, in the model's order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @classmethod
    def from_metadata(cls, metadata: Metadata) -> ModelSignature:
        return cls(
            tuple(TensorSpec.from_metadata(t) for t in metadata.inputs),
            tuple(TensorSpec.from_metadata(t) for t in metadata.outputs),
        )

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((t for t in self.outputs if t.name == name), None)

    def check_inputs(self, inputs: Mapping[str, np.ndarray], *, max_rows: int) -> dict[str, np.ndarray]:
        """``inputs`` as the model takes them: every input once, its dtype, a shape that fits, finite floats.

        UINT8 arrays are accepted for FP32 inputs and cast. Returns the arrays by name, in signature order.
        Raises :class:`InvalidInput` for anything else and :class:`PayloadTooLarge` for more than
        ``max_rows`` rows. Transports that decode without the signature rely on this; the HTTP parser
        checks the same before it touches the data.
        """
        for name in inputs:
            if self.input(name) is None:
                known = _names(self.inputs)
                raise InvalidInput(f"unknown input {echo(name)}; the model's inputs are {known}")
        checked: dict[str, np.ndarray] = {}
        rows = -1
        for spec in self.inputs:
            array = inputs.get(spec.name)
            if array is None:
                raise InvalidInput(
                    f"missing input {spec.name!r}; the model's inputs are {_names(self.inputs)}"
                )
            cast = None
            if array.dtype != spec.dtype:
                native = array.dtype.newbyteorder("=")
                if not (native == spec.dtype or (spec.datatype == "FP32" and native == np.uint8)):
                    accepted = "FP32 (or UINT8)" if spec.datatype == "FP32" else spec.datatype
                    got = _NAMES.get(native, str(array.dtype))
                    raise InvalidInput(f"input {spec.name!r}: expected datatype {accepted}, got {got}")
                cast = spec.dtype
            shape = array.shape
            if len(shape) != len(spec.shape) or any(
                m not in (-1, d) for m, d in zip(spec.shape, shape, strict=True)
            ):
                raise InvalidInput(
                    f"input {spec.name!r}: expected shape {_fmt(spec.shape)}, got {_fmt(shape)}"
                )
            if shape and shape[0] < 1:
                raise InvalidInput(f"input {spec.name!r}: the batch dimension must be at least 1")
            if shape and rows not in (-1, shape[0]):
                raise InvalidInput(f"inputs disagree on the batch size: {rows} rows and {shape[0]}")
            rows = shape[0] if shape else 1
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise InvalidInput(f"input {spec.name!r}: data holds non-finite values (NaN or infinity)")
            checked[spec.name] = array if cast is None else array.astype(cast)
        if rows > max_rows:
            raise PayloadTooLarge(f"request has {rows} rows; the limit is {max_rows}")
        return checked


def _fmt(shape: Any) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


def _names(specs: tuple[TensorSpec, ...]) -> str:
    return "[" + ", ".join(repr(t.name) for t in specs) + "]"
