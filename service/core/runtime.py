"""The onnxruntime wrapper: load and check one model version, run it. Which execution providers to
create sessions with is :mod:`service.core.providers`' business.

:func:`load_model` serves nothing it has not checked, in this order: both files exist, ``metadata.json``
keeps the repository contract (:mod:`service.contract`: types, labels, a ``preprocessing`` that agrees
with the input's H, W and C), its name and version agree with the directory, ``model.onnx`` hashes to
the recorded sha256, onnxruntime accepts the bytes, and the session's inputs and outputs are exactly
the metadata's signature. Each failure is a :class:`ModelLoadError` whose message names the version
directory and the reason.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.contract import (
    METADATA_FILE,
    MODEL_FILE,
    Metadata,
    MetadataError,
    Preprocessing,
    parse_version,
    read_metadata,
    valid_model_name,
)
from service.core.signature import DATATYPES, ModelSignature

# onnxruntime names element types "tensor(<numpy name>)", except float32 and float64, named as in C.
_ORT_NAMES = {"float32": "float", "float64": "double"}
_ORT_DATATYPES = {f"tensor({_ORT_NAMES.get(dt.name, dt.name)})": v2 for v2, dt in DATATYPES.items()}

_CHUNK_BYTES = 1 << 20

log = logging.getLogger(__name__)


class ModelLoadError(Exception):
    """A model version cannot be served. The message names the version directory and the reason."""


@dataclass(frozen=True)
class ModelMetadata:
    """What the service reads from ``metadata.json``: the contract's :class:`~service.contract.Metadata`
    (``document``), the signature built from it, and the raw JSON object (``raw``)."""

    document: Metadata
    signature: ModelSignature
    raw: dict[str, Any]

    @property
    def name(self) -> str:
        return self.document.name

    @property
    def version(self) -> int:
        return self.document.version

    @property
    def labels(self) -> tuple[str, ...]:
        return self.document.labels

    @property
    def sha256(self) -> str:
        return self.document.sha256

    @property
    def preprocessing(self) -> Preprocessing:
        return self.document.preprocessing

    @classmethod
    def from_file(cls, path: Path) -> ModelMetadata:
        """Read and check ``path``; ModelLoadError (naming the file) when missing, not JSON, or invalid."""
        try:
            document, raw = read_metadata(path)
        except OSError as exc:
            raise ModelLoadError(f"{path}: cannot read ({exc.strerror or exc})") from exc
        except MetadataError as exc:
            raise ModelLoadError(str(exc)) from exc
        return cls(document, ModelSignature.from_metadata(document), raw)


class LoadedVersion:
    """What every loaded model version tells about itself, wherever it computes: its directory, its
    metadata, and the parts of it the service reads on every request."""

    def __init__(self, path: Path, metadata: ModelMetadata) -> None:
        self.path = path
        self.metadata = metadata
        self.name = metadata.name
        self.version = metadata.version
        self.signature = metadata.signature
        self.labels = metadata.labels


class ModelRuntime(LoadedVersion):
    """One loaded model version: an onnxruntime session already checked against its metadata.

    ``provider`` is the execution provider the session actually uses. :meth:`run` blocks; call it from a
    worker thread, never on the event loop. Concurrent calls are safe (onnxruntime sessions allow them
    and release the GIL). Build one with :func:`load_model`.
    """

    def __init__(self, path: Path, metadata: ModelMetadata, session: ort.InferenceSession) -> None:
        super().__init__(path, metadata)
        self.provider: str = session.get_providers()[0]
        self._output_names = [t.name for t in metadata.signature.outputs]
        self._session: ort.InferenceSession | None = session

    @property
    def intra_op_threads(self) -> int:
        """The session's intra-op threads (0: closed)."""
        session = self._session
        return 0 if session is None else session.get_session_options().intra_op_num_threads

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name, in signature order, for ``inputs`` by name; onnxruntime's errors propagate."""
        session = self._session  # one read: a concurrent close() must not strike between check and use
        if session is None:
            raise RuntimeError(f"model {self.name} version {self.version} is closed")
        results = session.run(self._output_names, inputs)
        return dict(zip(self._output_names, results, strict=True))

    def warm_up(self, batch_sizes: Iterable[int]) -> None:
        """Run once per batch size on zeros, so first requests do not pay for allocation and kernel setup.
        A run that fails refuses the version: ModelLoadError naming the directory and onnxruntime's reason."""
        for batch in batch_sizes:
            if batch < 1:
                raise ValueError(f"warm-up batch size must be >= 1, got {batch}")
            inputs = self.signature.inputs
            zeros = {t.name: np.zeros(_concrete_shape(t.shape, batch), t.dtype) for t in inputs}
            try:
                self.run(zeros)
            except Exception as exc:  # onnxruntime raises several unrelated types
                raise ModelLoadError(f"{self.path}: warm-up failed: {exc}") from exc

    def close(self) -> None:
        """Drop the session; runs already in progress finish, later ones raise RuntimeError."""
        self._session = None


def _concrete_shape(shape: tuple[int, ...], batch: int) -> tuple[int, ...]:
    # -1 first is the batch dimension; any other -1 is a free dimension that 1 always satisfies.
    return tuple((batch if i == 0 else 1) if d == -1 else d for i, d in enumerate(shape))


def load_model(
    path: Path, *, providers: Sequence[str], intra_op_threads: int = 0, inter_op_threads: int = 0
) -> ModelRuntime:
    """Load the version directory ``path`` (``<root>/<name>/<version>``) onto ``providers``.

    Raises ModelLoadError, naming ``path`` and the reason, unless every check in the module docstring
    passes. Thread counts of 0 leave onnxruntime's defaults.
    """
    if not providers:
        raise ValueError("providers must not be empty (see select_providers)")
    version = parse_version(path.name)
    if version is None or not valid_model_name(path.parent.name):
        raise ModelLoadError(f"{path}: not a <model name>/<version> directory")
    model_file, metadata_file = path / MODEL_FILE, path / METADATA_FILE
    for file in (model_file, metadata_file):
        if not file.is_file():
            raise ModelLoadError(f"{path}: {file.name} is missing")
    metadata = ModelMetadata.from_file(metadata_file)
    if (metadata.name, metadata.version) != (path.parent.name, version):
        raise ModelLoadError(
            f"{path}: metadata.json describes {metadata.name}/{metadata.version}, "
            f"not the directory's {path.parent.name}/{version}"
        )
    model_bytes, sha256 = _read_and_hash(model_file)
    if sha256 != metadata.sha256:
        raise ModelLoadError(
            f"{path}: sha256 mismatch (metadata {metadata.sha256[:12]}.., file {sha256[:12]}..)"
        )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.intra_op_num_threads = max(intra_op_threads, 0)  # 0 is onnxruntime's "choose for me"
    options.inter_op_num_threads = max(inter_op_threads, 0)
    try:
        session = ort.InferenceSession(model_bytes, options, providers=list(providers))
    except Exception as exc:  # onnxruntime raises several unrelated types for a model it rejects
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{path}: onnxruntime cannot load model.onnx: {reason}") from exc
    _check_signature(path, session, metadata.signature)
    return ModelRuntime(path, metadata, session)


def _read_and_hash(file: Path) -> tuple[bytes, str]:
    # Hash the very bytes the session is built from: reading twice would let a file replaced in between
    # be served under the old checksum.
    digest = hashlib.sha256()
    chunks = []
    try:
        with file.open("rb") as stream:
            while chunk := stream.read(_CHUNK_BYTES):
                digest.update(chunk)
                chunks.append(chunk)
    except OSError as exc:
        raise ModelLoadError(f"{file.parent}: cannot read {file.name} ({exc.strerror or exc})") from exc
    return b"".join(chunks), digest.hexdigest()


def _check_signature(path: Path, session: ort.InferenceSession, signature: ModelSignature) -> None:
    for kind, actual, declared in (
        ("input", session.get_inputs(), signature.inputs),
        ("output", session.get_outputs(), signature.outputs),
    ):
        names = [a.name for a in actual]
        if names != [t.name for t in declared]:
            raise ModelLoadError(
                f"{path}: model {kind} names {names} differ from metadata {[t.name for t in declared]}"
            )
        for arg, spec in zip(actual, declared, strict=True):
            datatype = _ORT_DATATYPES.get(arg.type, arg.type)
            # Symbolic ("N") and unknown (None) dimensions are the batch-style -1 of the metadata.
            shape = tuple(d if isinstance(d, int) else -1 for d in arg.shape)
            where = f"{path}: {kind} '{spec.name}'"
            if datatype != spec.datatype:
                raise ModelLoadError(f"{where} is {datatype} in the model, {spec.datatype} in metadata")
            if shape != spec.shape:
                ranks = f" (rank {len(shape)} vs {len(spec.shape)})" if len(shape) != len(spec.shape) else ""
                raise ModelLoadError(
                    f"{where} has shape {list(shape)} in the model, {list(spec.shape)} in metadata{ranks}"
                )
