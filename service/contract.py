"""The model-repository contract, written once: imported by the service and by training.

Layout (documented in ``docs/repository.md``)::

    <repository>/<name>/<version>/model.onnx       the model (its sha256 is in metadata.json)
    <repository>/<name>/<version>/metadata.json    a :class:`Metadata` document
    <repository>/<name>/<version>/report/          optional: training curves, confusion matrix
    <repository>/<name>/<version>/train/model.keras optional: the Keras model, kept for retraining

``<name>`` matches :data:`MODEL_NAME_RE`; ``<version>`` is a positive integer written canonically
(:func:`parse_version`). Any other entry (``.tmp-*``, ``07``, ``notes``) is not a version, which is what
lets publishers write under a temporary name and rename into place. ``metadata.json`` is described by
:class:`Metadata`, whose JSON schema (``docs/metadata.schema.json``) is the documented contract.

One module of this size on purpose: the whole repository contract, shared with the trainer, in
one file that both sides import.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import json
import re
import textwrap
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

#: A model name, matched with ``fullmatch``. Anything else is refused everywhere (no path traversal).
MODEL_NAME_RE: re.Pattern[str] = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
#: Versions are int64 in the V2 protocol; longer digit strings are not versions (and int() would be slow).
MAX_VERSION_DIGITS = 18
MODEL_FILE = "model.onnx"
METADATA_FILE = "metadata.json"
REPORT_DIR = "report"
#: The Keras model a version was exported from, kept so that retraining can fine-tune it. The service
#: never reads it, and the metadata's sha256 covers ``model.onnx`` only.
KERAS_FILE = "train/model.keras"
#: The files a version directory needs before it counts as complete.
VERSION_FILES = (MODEL_FILE, METADATA_FILE)
#: Present in a version directory published as a candidate: loaded, never the answer to an unversioned
#: request until a rollout promotes it (docs/rollout.md).
CANDIDATE_FILE = "candidate"
#: The ``platform`` of every version: what serves it.
PLATFORM = "onnxruntime_onnx"

#: The KServe V2 tensor datatypes a model's inputs and outputs may declare.
Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"
]


def valid_model_name(name: str) -> bool:
    """True when ``name`` is an acceptable model name (``[a-z0-9][a-z0-9_-]{0,63}``)."""
    return isinstance(name, str) and MODEL_NAME_RE.fullmatch(name) is not None


def parse_version(text: str) -> int | None:
    """The version a directory name (or URL segment) stands for, or None.

    Only positive integers written canonically count: ``"3"``, never ``"03"``, ``"+3"``, ``"3.0"``, ``"²"``
    or ``".tmp-3"`` (publishers write to a temporary name first, so those must stay invisible).
    """
    if not (text.isascii() and text.isdigit()) or text.startswith("0") or len(text) > MAX_VERSION_DIGITS:
        return None
    return int(text)


def version_dir(root: Path, name: str, version: int) -> Path:
    """``root/name/version``, after checking both (ValueError): never build a path from an unchecked name."""
    if not valid_model_name(name):
        raise ValueError(f"invalid model name {name!r}: must match {MODEL_NAME_RE.pattern}")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"invalid model version {version!r}: must be a positive integer")
    return root / name / str(version)


class Preprocessing(BaseModel):
    """How an uploaded image becomes this model's input tensor (the ``preprocessing`` entry of metadata)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    height: int = Field(ge=1, le=4096)
    """Input height H of ``[-1, H, W, C]``."""
    width: int = Field(ge=1, le=4096)
    """Input width W of ``[-1, H, W, C]``."""
    color: Literal["grayscale", "rgb"]
    """``grayscale`` for C = 1, ``rgb`` for C = 3."""
    input_range: tuple[float, float] = (0.0, 255.0)
    """Input values for a black and for a white pixel; the map between them is linear."""
    resize: Literal["stretch", "center_crop", "digit"]
    """``stretch``: whole image to HxW; ``center_crop``: shorter side to fit, then centre crop;
    ``digit``: MNIST-style ink detection, bounding box, 20/28 fit, centre of mass centred."""

    @model_validator(mode="after")
    def _range_not_empty(self) -> Preprocessing:
        if self.input_range[0] == self.input_range[1]:
            raise ValueError("input_range must map black and white to different values")
        return self

    @property
    def channels(self) -> int:
        return 1 if self.color == "grayscale" else 3


class TensorMetadata(BaseModel):
    """One input or output tensor: its name, V2 datatype and shape (``-1`` for the batch dimension)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=256, description="Tensor name, as in the ONNX graph.")
    datatype: Datatype = Field(description="KServe V2 datatype.")
    shape: tuple[Annotated[int, Field(strict=True)], ...] = Field(
        description="Dimensions; -1 is the batch (or another free) dimension, every other one is >= 1."
    )

    @field_validator("shape", mode="before")
    @classmethod
    def _dimensions(cls, value: Any) -> Any:
        if not isinstance(value, list | tuple) or not all(
            type(d) is int and (d == -1 or d >= 1) for d in value
        ):
            raise ValueError(f"shape must be a list of positive integers or -1, got {value!r}")
        return value


class Evaluation(BaseModel):
    """Test-set results recorded by the publisher (the promotion guard compares ``accuracy``)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    accuracy: float = Field(ge=0, le=1, description="Test accuracy, 0..1.")
    loss: float | None = Field(None, description="Test loss.")
    per_class_accuracy: dict[str, float] | None = Field(None, description="Test accuracy per label.")


class Parity(BaseModel):
    """The export's agreement with the trained model on real test images (the parity gate)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    max_abs_diff: float = Field(ge=0, description="Largest |framework - onnxruntime| probability.")
    argmax_agreement: float = Field(ge=0, le=1, description="Share of images with the same top class.")
    n_images: int | None = Field(None, ge=0, description="Images compared.")


class Metadata(BaseModel):
    """``metadata.json``: what a model version is, and everything the service checks before serving it.

    The service acts on ``name``, ``version``, ``platform``, ``inputs``, ``outputs``, ``labels``,
    ``preprocessing`` and ``sha256``; the rest is a record for people and for the promotion guard.
    Unknown top-level keys are kept and ignored, so a newer publisher never stops an older server.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(description="Model name; equals the model directory's name.")
    version: int = Field(strict=True, description="Version; equals the version directory's name.")
    created_at: str | None = Field(None, description="ISO 8601 UTC time of publishing.")
    platform: Literal["onnxruntime_onnx"] = Field(description="Always 'onnxruntime_onnx'.")
    inputs: tuple[TensorMetadata, ...] = Field(min_length=1, description="Model inputs, in graph order.")
    outputs: tuple[TensorMetadata, ...] = Field(min_length=1, description="Model outputs, in graph order.")
    labels: tuple[str, ...] = Field(description="Class names, by index of the first output's classes.")
    preprocessing: Preprocessing = Field(description="How an image becomes the first input's tensor.")
    sha256: str = Field(description="sha256 of model.onnx, 64 lowercase hex digits.")
    files: dict[str, str] | None = Field(
        None,
        description="sha256 of every file of the version but metadata.json, by path inside the version "
        "(model.onnx, report/..., train/model.keras); a reader of object storage checks each file it "
        "downloads against it.",
    )
    opset: int | None = Field(None, strict=True, ge=1, description="ONNX default-domain opset.")
    dataset: str | None = Field(None, description="Data set the model was trained on.")
    metrics: Evaluation | None = Field(None, description="Test-set evaluation.")
    training: dict[str, Any] | None = Field(
        None, description="How the version was trained: preset, hyperparameters, history, command."
    )
    retrain: dict[str, Any] | None = Field(
        None,
        description="A version retrained on client feedback: the version it started from, the feedback "
        "it saw (last_id, log_bytes, items and parts), both models' test and holdout accuracy, and the "
        "decision.",
    )
    parity: Parity | None = Field(None, description="Parity gate results of the export.")
    versions: dict[str, str] | None = Field(None, description="Library versions used to produce it.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not valid_model_name(value):
            raise ValueError(f"'name' {value!r} is not a valid model name")
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"'version' must be positive, got {value}")
        return value

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, value: Any) -> Any:
        if not isinstance(value, list | tuple) or not all(isinstance(label, str) for label in value):
            raise ValueError("'labels' must be a list of strings")
        return value

    @field_validator("sha256", mode="before")
    @classmethod
    def _sha256(cls, value: Any) -> Any:
        if not isinstance(value, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", value):
            raise ValueError("'sha256' must be 64 hex digits")
        return value.lower()

    @field_validator("files", mode="before")
    @classmethod
    def _files(cls, value: Any) -> Any:
        if value is None:
            return value
        if not isinstance(value, dict) or not all(
            isinstance(k, str)
            and k
            and not k.startswith("/")
            and ".." not in k.split("/")
            and isinstance(v, str)
            and re.fullmatch(r"[0-9a-f]{64}", v)
            for k, v in value.items()
        ):
            raise ValueError("'files' must map relative paths to 64 lowercase hex digits")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Metadata:
        for kind, tensors in (("inputs", self.inputs), ("outputs", self.outputs)):
            if len({t.name for t in tensors}) != len(tensors):
                raise ValueError(f"'{kind}' has duplicate names")
        first = self.outputs[0]
        classes = first.shape[1] if len(first.shape) == 2 and first.shape[1] > 0 else None
        if self.labels and classes is not None and len(self.labels) != classes:
            raise ValueError(f"{len(self.labels)} labels for {classes} classes in output '{first.name}'")
        if self.files is not None and self.files.get(MODEL_FILE, self.sha256) != self.sha256:
            raise ValueError(f"'files' records another sha256 for {MODEL_FILE} than 'sha256'")
        image, pre = self.inputs[0], self.preprocessing
        if image.shape[1:] != (pre.height, pre.width, pre.channels) or len(image.shape) != 4:
            raise ValueError(
                f"preprocessing (height {pre.height}, width {pre.width}, {pre.color}) disagrees with input "
                f"'{image.name}' {_fmt(image.shape)}: it needs [-1,{pre.height},{pre.width},{pre.channels}]"
            )
        return self


class MetadataError(ValueError):
    """A ``metadata.json`` document breaks the contract; the message says where and how."""


def parse_metadata(document: Any) -> Metadata:
    """Validate a decoded ``metadata.json`` document; :class:`MetadataError` with every problem otherwise."""
    if not isinstance(document, dict):
        raise MetadataError("expected a JSON object")
    try:
        return Metadata.model_validate(document)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        # A tuple whose only element failed is also "too short": report the element, not the count.
        failed = {e["loc"][:1] for e in errors if len(e["loc"]) > 1}
        errors = [e for e in errors if not (e["type"] == "too_short" and e["loc"][:1] in failed)]
        raise MetadataError("; ".join(_describe(e) for e in errors)) from None


def read_metadata(path: Path) -> tuple[Metadata, dict[str, Any]]:
    """Read and validate ``path``; returns the model and the raw document.

    Raises OSError when the file cannot be read and :class:`MetadataError` (message prefixed with the
    path) when it is not JSON or breaks the contract.
    """
    data = path.read_bytes()
    try:
        document = json.loads(data)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise MetadataError(f"{path}: invalid JSON ({exc})") from None
    try:
        return parse_metadata(document), document
    except MetadataError as exc:
        raise MetadataError(f"{path}: {exc}") from None


def metadata_json(metadata: Metadata) -> bytes:
    """The bytes of ``metadata.json`` for ``metadata``: indented JSON, unset optional fields left out."""
    return (json.dumps(metadata.model_dump(mode="json", exclude_none=True), indent=2) + "\n").encode()


def metadata_schema() -> dict[str, Any]:
    """The JSON schema of ``metadata.json`` (checked in as ``docs/metadata.schema.json``)."""
    schema = Metadata.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "metadata.json"
    # Preprocessing documents its fields in attribute docstrings, which the schema does not pick up.
    fields = schema["$defs"]["Preprocessing"]["properties"]
    for name, text in _attribute_docstrings(Preprocessing).items():
        fields[name].setdefault("description", text)
    return schema


def _attribute_docstrings(cls: type) -> dict[str, str]:
    """``{field: docstring}`` for ``field: type = ...`` lines followed by a string literal."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    docs: dict[str, str] = {}
    if not isinstance(body, ast.ClassDef):
        return docs
    for node, after in itertools.pairwise(body.body):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[node.target.id] = " ".join(str(after.value.value).split())
    return docs


_KINDS = {"int_type": "int", "string_type": "str", "float_type": "float", "bool_type": "bool"}
_KINDS |= {"list_type": "list", "tuple_type": "list", "dict_type": "object", "model_type": "object"}


def _describe(error: Any) -> str:
    """One pydantic error in the words of the contract (``'version' must be of type int, got str``)."""
    loc = tuple(error.get("loc", ()))
    where, parent, key = _path(loc), _path(loc[:-1]), str(loc[-1]) if loc else ""
    kind, given = error.get("type", ""), error.get("input")
    if kind == "missing":
        return f"missing key {where!r}"
    if kind in _KINDS:
        return f"{where!r} must be of type {_KINDS[kind]}, got {type(given).__name__}"
    if kind == "literal_error" and len(loc) == 1:
        return f"{where!r} must be {error['ctx']['expected']}, got {given!r}"
    if kind == "literal_error":
        return f"{parent}: {key} {given!r} is not one of {error['ctx']['expected']}"
    if kind == "too_short" and loc in (("inputs",), ("outputs",)):
        return f"{where!r} must not be empty"
    if kind == "extra_forbidden":
        return f"unknown key {where!r}"
    message = str(error["ctx"]["error"]) if kind == "value_error" else f"{key}: {error.get('msg', 'invalid')}"
    return message if len(loc) <= 1 else f"{parent}: {message}"


def _path(loc: tuple[Any, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(loc))


def _fmt(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


if __name__ == "__main__":  # python -m service.contract > docs/metadata.schema.json
    print(json.dumps(metadata_schema(), indent=2))
