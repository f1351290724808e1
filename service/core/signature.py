"""Model signatures: the tensors a model takes and returns (V2 tensor metadata), and the checks that a
request fits them (:class:`RequestCheck`), written once and applied by every transport's decoder as it
decodes, and by :meth:`ModelSignature.check_inputs` for arrays that come without a wire format."""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.contract import Metadata, TensorMetadata
from service.errors import InvalidInput, PayloadTooLarge, echo

_scan: Callable[[object], bool | None] | None
try:
    from service.core._finite import all_finite as _scan
except ImportError:  # installed without the C extensions (DIGITS_SERVING_BUILD_H2=0): numpy checks alone
    _scan = None

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
#: The largest dimension (after the batch one) a request may declare.
MAX_DIM = 2**31


def all_finite(array: np.ndarray) -> bool:
    """Whether every value of the floating-point ``array`` is finite (no NaN, no infinity).

    A C-contiguous native-order array is read in one pass over its bits (``service/core/_finite.c``),
    without the boolean temporary of ``np.isfinite(array).all()``; numpy answers for any other layout."""
    if _scan is not None:
        finite = _scan(array)
        if finite is not None:
            return finite
    return bool(np.isfinite(array).all())


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
    #: The dims after a variable batch one when all of them are fixed (the common case), else None: a
    #: shape whose tail equals it passes every shape check at once (:meth:`RequestCheck.input`).
    fixed_tail: list[int] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        shape = self.shape
        fixed = bool(shape) and shape[0] == -1 and all(d >= 0 for d in shape[1:])
        object.__setattr__(self, "fixed_tail", list(shape[1:]) if fixed else None)

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
    _inputs: dict[str, TensorSpec] = field(init=False, repr=False, compare=False)
    _outputs: dict[str, TensorSpec] = field(init=False, repr=False, compare=False)
    #: The names of all outputs.
    output_names: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Looked up on every request: a dict, not a scan (frozen, hence object.__setattr__).
        object.__setattr__(self, "_inputs", {t.name: t for t in self.inputs})
        object.__setattr__(self, "_outputs", {t.name: t for t in self.outputs})
        object.__setattr__(self, "output_names", frozenset(self._outputs))

    @classmethod
    def from_metadata(cls, metadata: Metadata) -> ModelSignature:
        return cls(
            tuple(TensorSpec.from_metadata(t) for t in metadata.inputs),
            tuple(TensorSpec.from_metadata(t) for t in metadata.outputs),
        )

    def input(self, name: str) -> TensorSpec | None:
        return self._inputs.get(name)

    def output(self, name: str) -> TensorSpec | None:
        return self._outputs.get(name)

    def check_inputs(self, inputs: Mapping[str, np.ndarray], *, max_rows: int) -> dict[str, np.ndarray]:
        """``inputs`` as the model takes them: every input once, its dtype, a shape that fits, finite floats.

        UINT8 arrays are accepted for FP32 inputs and cast. Returns the arrays by name, in signature order.
        Raises :class:`InvalidInput` for anything else and :class:`PayloadTooLarge` for more than
        ``max_rows`` rows. These are the checks of :class:`RequestCheck`, which the transports' decoders
        apply as they decode; this is for arrays that come without a wire format (the core's own callers).
        """
        check = RequestCheck(self, max_rows)
        for name, array in inputs.items():
            native = array.dtype.newbyteorder("=")
            check.input(name, _NAMES.get(native, str(array.dtype)), array.shape)
        check.done()
        checked = {}
        for spec in self.inputs:
            checked[spec.name] = check.values(spec, inputs[spec.name])
        return checked


class RequestCheck:
    """The checks of one infer request against a signature, written once for every transport.

    A decoder calls :meth:`input` for each input's name, datatype and shape as the wire gives them
    (before touching any data), then :meth:`done` (missing inputs, the row limit), then
    :meth:`outputs` for the outputs asked for, and :meth:`values` on each decoded array. Every check
    raises :class:`InvalidInput` (or :class:`PayloadTooLarge` past ``max_rows``) with the message the
    HTTP JSON, HTTP binary and gRPC transports all answer (docs/api.md lists them).
    """

    __slots__ = ("max_rows", "rows", "shapes", "signature", "specs")

    def __init__(self, signature: ModelSignature, max_rows: int) -> None:
        self.signature = signature
        self.max_rows = max_rows
        self.specs: list[TensorSpec] = []
        self.shapes: list[Sequence[int]] = []
        self.rows = 0

    def input(self, name: str, datatype: object, shape: Sequence[int]) -> tuple[TensorSpec, np.dtype[Any]]:
        """One input's header: its spec, and the dtype its data comes in (UINT8 for an FP32 input)."""
        signature = self.signature
        spec = signature.input(name)
        if spec is None:
            raise InvalidInput(
                f"unknown input {echo(name)}; the model's inputs are {_names(signature.inputs)}"
            )
        if spec in self.specs:
            raise InvalidInput(f"input {name!r} is given twice")
        if datatype == spec.datatype:
            wire = spec.dtype
        elif datatype == "UINT8" and spec.datatype == "FP32":
            wire = DATATYPES["UINT8"]
        else:
            accepted = "FP32 (or UINT8)" if spec.datatype == "FP32" else spec.datatype
            got = (datatype[:32] or "none") if isinstance(datatype, str) else _show(datatype)
            raise InvalidInput(f"input {name!r}: expected datatype {accepted}, got {got}")
        tail = spec.fixed_tail
        if tail is not None and len(shape) == len(spec.shape) and shape[0] >= 1 and list(shape[1:]) == tail:
            pass  # the shape fits: the checks below would all pass
        elif any(d < 0 for d in shape):
            raise InvalidInput(f"input {name!r}: shape must hold non-negative integers, got {_fmt(shape)}")
        elif len(shape) != len(spec.shape) or any(
            m not in (-1, d) for m, d in zip(spec.shape, shape, strict=True)
        ):
            raise InvalidInput(f"input {name!r}: expected shape {_fmt(spec.shape)}, got {_fmt(shape)}")
        elif shape and shape[0] < 1:
            raise InvalidInput(f"input {name!r}: the batch dimension must be at least 1, got {_fmt(shape)}")
        elif any(d > MAX_DIM for d in shape[1:]):
            raise InvalidInput(f"input {name!r}: shape {_fmt(shape)} has a dimension above 2**31")
        first = self.shapes[0] if self.shapes else None
        if first and shape and shape[0] != first[0]:
            raise InvalidInput(
                f"inputs disagree on the batch size: {self.specs[0].name!r} has {first[0]} rows, "
                f"{name!r} has {shape[0]}"
            )
        if not self.specs:
            self.rows = shape[0] if shape else 1
        self.specs.append(spec)
        self.shapes.append(shape)
        return spec, wire

    def done(self) -> int:
        """After the last input: every input given, within the row limit. Returns the rows."""
        if len(self.specs) != len(self.signature.inputs):
            inputs = self.signature.inputs
            missing = next(t.name for t in inputs if t not in self.specs)
            raise InvalidInput(f"missing input {missing!r}; the model's inputs are {_names(inputs)}")
        if self.rows > self.max_rows:
            raise PayloadTooLarge(f"request has {self.rows} rows; the limit is {self.max_rows}")
        return self.rows

    def outputs(self, names: Sequence[str]) -> list[str] | None:
        """The outputs asked for, each known and named once (None for "all", when ``names`` is empty)."""
        wanted: list[str] = []
        for name in names:
            if self.signature.output(name) is None:
                known = _names(self.signature.outputs)
                raise InvalidInput(f"unknown output {echo(name)}; the model's outputs are {known}")
            if name in wanted:
                raise InvalidInput(f"output {name!r} is requested twice")
            wanted.append(name)
        return wanted or None

    @staticmethod
    def values(spec: TensorSpec, array: np.ndarray) -> np.ndarray:
        """A decoded input's values: finite if floating point, cast to the model's dtype."""
        if array.dtype.kind == "f" and not all_finite(array):
            raise InvalidInput(f"input {spec.name!r}: data holds non-finite values (NaN or infinity)")
        return array if array.dtype == spec.dtype else array.astype(spec.dtype)


def reject_extensions(what: str, keys: Container[str], *, output: bool = False) -> None:
    """Parameters naming protocol extensions the service does not implement: shared memory (inputs
    and outputs) and classification (outputs; ``classification`` is in ``keys`` only when set)."""
    if output and ("shared_memory_region" in keys or "classification" in keys):
        raise InvalidInput(f"{what}: the classification and shared-memory extensions are not supported")
    if not output and "shared_memory_region" in keys:
        raise InvalidInput(f"{what}: shared memory is not supported; send the data in the request")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fmt(shape: Any) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


def _names(specs: tuple[TensorSpec, ...]) -> str:
    return "[" + ", ".join(repr(t.name) for t in specs) + "]"
