"""``python -m training import PATH``: publish a classifier trained elsewhere (an ONNX file, a Keras
``.keras`` file or a TensorFlow SavedModel directory) into the model repository.

- ONNX: the signature is read from the graph and checked against what the service serves
  (:mod:`training.onnxmodel`); the graph is published as it is, bar the edits it records in the metadata.
- Keras and SavedModel: exported through the same tf2onnx path and parity gate as trained models (input
  ``image``, output ``probabilities``), then checked as an ONNX file is.

What the model expects is the user's to state, never guessed: the value range (``--input-scale``), the
resize method and the labels always; size and colour when the graph leaves them open. ``--eval-images``
evaluates on a labelled folder (accuracy and confusion matrix in the metadata); the promotion guard then
compares with the newest version, as for trained models. An unevaluated import does not replace a version
with a recorded accuracy unless forced. Publishing is the trainer's: atomic, with sha256 and metadata.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
import tempfile
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TextIO

import numpy as np
import onnx
import onnxruntime as ort

from service import contract
from service.contract import Preprocessing
from training import onnxmodel, report
from training.diskimages import DiskImages
from training.errors import PromotionRefused, UsageError
from training.evaluation import Evaluation, score
from training.imagecache import MAX_PIXELS, to_input_range
from training.imagefolder import load_labelled
from training.publish import (
    Published,
    check_promotion,
    check_signature,
    newest_metadata,
    publish,
    sha256_hex,
)

Format = Literal["onnx", "keras", "savedmodel"]
#: Rows evaluated at a time (decoded from the cache, scaled, run).
EVAL_CHUNK = 1024


@dataclass(frozen=True)
class ImportConfig:
    """What to import, what the model expects, and where to publish it (``repository=None``: check only)."""

    path: Path
    name: str
    labels: tuple[str, ...]
    input_range: tuple[float, float]
    resize: str
    color: str | None = None
    image_size: tuple[int, int] | None = None
    softmax: bool = False
    eval_images: Path | None = None
    repository: Path | str | None = None
    max_regression: float = 0.5
    force: bool = False
    #: Publish as a candidate (docs/rollout.md): loaded, never served unversioned until promoted.
    candidate: bool = False
    strict: bool = False
    max_pixels: int = MAX_PIXELS
    #: Where evaluation images are decoded; a temporary directory when ``None``.
    cache_dir: Path | None = None
    command: str = ""


@dataclass(frozen=True)
class ImportOutcome:
    """Everything an import produced."""

    format: Format
    prepared: onnxmodel.Prepared
    preprocessing: Preprocessing
    evaluation: Evaluation | None
    evaluation_source: dict[str, Any] | None
    parity: dict[str, Any] | None
    source_sha256: str
    published: Published | None


def detect_format(path: Path) -> Format:
    """``onnx`` for a ``.onnx`` file, ``keras`` for ``.keras`` (or legacy ``.h5``), ``savedmodel`` for a
    directory holding ``saved_model.pb``; :class:`UsageError` for anything else."""
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "savedmodel"
        raise UsageError(f"{path}: a directory without saved_model.pb is not a SavedModel")
    if not path.is_file():
        raise UsageError(f"{path}: no such file or directory")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in (".keras", ".h5"):
        return "keras"
    raise UsageError(
        f"{path}: unknown model format; import an ONNX file (.onnx), a Keras file (.keras) or a "
        "TensorFlow SavedModel directory"
    )


def _source_sha256(path: Path) -> str:
    file = path / "saved_model.pb" if path.is_dir() else path
    digest = hashlib.sha256()
    with file.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def import_model(config: ImportConfig, *, log: TextIO | None = None) -> ImportOutcome:
    """Check, convert (Keras, SavedModel), evaluate and (when ``config.repository`` is set) publish."""
    log = log or sys.stderr
    fmt = detect_format(config.path)
    if len(config.labels) < 2 or len(set(config.labels)) != len(config.labels):
        raise UsageError("--labels needs at least two labels, all different")
    with contextlib.ExitStack() as stack:
        cache_dir = config.cache_dir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="import-"))
        )
        parity: dict[str, Any] | None = None
        if fmt == "onnx":
            try:
                data = config.path.read_bytes()
            except OSError as exc:
                raise UsageError(f"{config.path}: cannot read ({exc.strerror or exc})") from None
            model = onnxmodel.load(data, str(config.path))
            _, hwc = onnxmodel.input_hwc(model)
            pre = _preprocessing(hwc, config)
            evaluation_set = _evaluation_set(config, pre, cache_dir, log)
            prepared = onnxmodel.prepare(model, pre, len(config.labels), softmax=config.softmax)
        else:
            from training import tfmodel  # TensorFlow only for the formats that need it

            loaded = tfmodel.load(config.path, fmt)
            pre = _preprocessing(loaded.hwc, config)
            evaluation_set = _evaluation_set(config, pre, cache_dir, log)
            prepared, parity = _export(loaded, pre, config, evaluation_set)
        evaluation = None
        if evaluation_set is not None:
            images, y, _ = evaluation_set
            evaluation = evaluate(prepared, pre, images, y, len(config.labels))
            print(f"accuracy on {evaluation.n_images:,} images: {evaluation.accuracy:.4f}", file=log)
        outcome = ImportOutcome(
            format=fmt,
            prepared=prepared,
            preprocessing=pre,
            evaluation=evaluation,
            evaluation_source=evaluation_set[2] if evaluation_set else None,
            parity=parity,
            source_sha256=_source_sha256(config.path),
            published=None,
        )
        if config.repository is None:
            return outcome
        _guard(config.repository, config, prepared.signature, evaluation)
        return replace(outcome, published=_publish(config.repository, config, outcome))


def _preprocessing(hwc: tuple[onnxmodel.Dim, ...], config: ImportConfig) -> Preprocessing:
    h, w, c = hwc
    return onnxmodel.preprocessing_for(
        (h, w, c),
        image_size=config.image_size,
        color=config.color,
        input_range=config.input_range,
        resize=config.resize,
    )


def _evaluation_set(
    config: ImportConfig, pre: Preprocessing, cache_dir: Path, log: TextIO
) -> tuple[DiskImages, np.ndarray, dict[str, Any]] | None:
    if config.eval_images is None:
        return None
    return load_labelled(
        config.eval_images,
        config.labels,
        pre,
        cache_dir,
        strict=config.strict,
        max_pixels=config.max_pixels,
        log=log,
    )


def _export(
    loaded: Any, pre: Preprocessing, config: ImportConfig, evaluation_set: tuple[DiskImages, Any, Any] | None
) -> tuple[onnxmodel.Prepared, dict[str, Any]]:
    """Keras / SavedModel: tf2onnx export and parity gate, then the ONNX checks on the result."""
    from training import tfmodel
    from training.export import PARITY_MIN_IMAGES, convert, parity_gate, parity_images

    forward = tfmodel.with_softmax(loaded.forward) if config.softmax else loaded.forward
    shape = (pre.height, pre.width, pre.channels)
    proto = convert(forward, shape)
    if evaluation_set is not None:
        pixels = parity_images(evaluation_set[0])
    else:  # no images given: the gate checks the export on seeded noise, which exercises it as well
        pixels = np.random.default_rng(0).integers(0, 256, (PARITY_MIN_IMAGES, *shape), dtype=np.uint8)
    inputs = to_input_range(pixels, pre.input_range)
    parity = parity_gate(proto.SerializeToString(), lambda batch: tfmodel.predict(forward, batch), inputs)
    prepared = onnxmodel.prepare(proto, pre, len(config.labels))
    prepared.changes.insert(
        0, f"exported from {loaded.description} with tf2onnx (input image, output probabilities)"
    )
    if config.softmax:
        prepared.changes.insert(1, "softmax applied to the model's output before export (--softmax)")
    return prepared, parity.as_json()


def evaluate(
    prepared: onnxmodel.Prepared, pre: Preprocessing, images: DiskImages, y: np.ndarray, num_classes: int
) -> Evaluation:
    """Accuracy and confusion matrix of the prepared model on uint8 ``images`` (scaled to its input range)."""
    session = onnxmodel.open_session(prepared.model)
    chunks = [
        onnxmodel.run(
            session,
            prepared.signature,
            to_input_range(
                images.take(np.arange(start, min(start + EVAL_CHUNK, len(images)))), pre.input_range
            ),
        )
        for start in range(0, len(images), EVAL_CHUNK)
    ]
    return score(np.concatenate(chunks), y, num_classes)


def _guard(
    repository: Path | str,
    config: ImportConfig,
    signature: onnxmodel.Signature,
    evaluation: Evaluation | None,
) -> None:
    """The signature and promotion guards; without an evaluation, the newest version's recorded accuracy
    cannot be compared with, so it is not replaced unless forced."""
    entries = signature.as_metadata()
    check_signature(repository, config.name, entries["inputs"], entries["outputs"], force=config.force)
    if evaluation is not None:
        check_promotion(
            repository, config.name, evaluation.accuracy, config.max_regression, force=config.force
        )
        return
    previous = newest_metadata(repository, config.name) or {}
    metrics = previous.get("metrics")
    accuracy = metrics.get("accuracy") if isinstance(metrics, dict) else None
    if accuracy is not None and not config.force:
        raise PromotionRefused(
            f"not publishing {config.name}: version {previous.get('version')} has a recorded test accuracy "
            f"({float(accuracy):.2%}) and this import is not evaluated; pass --eval-images DIR to compare "
            "them, or --force"
        )


def _publish(repository: Path | str, config: ImportConfig, outcome: ImportOutcome) -> Published:
    onnx_bytes = outcome.prepared.serialize()
    sha256 = sha256_hex(onnx_bytes)

    def metadata(version: int) -> contract.Metadata:
        return build_metadata(config, outcome, version, sha256)

    def write_report(directory: Path) -> None:
        if outcome.evaluation is None:
            return
        (directory / "report").mkdir()
        title = f"{config.name}: imported, on {config.eval_images}"
        report.plot_confusion(
            outcome.evaluation.confusion, config.labels, directory / "report" / report.CONFUSION_FILE, title
        )

    return publish(repository, config.name, onnx_bytes, metadata, write_report, candidate=config.candidate)


def build_metadata(
    config: ImportConfig, outcome: ImportOutcome, version: int, sha256: str
) -> contract.Metadata:
    """The ``metadata.json`` of an imported version: the trainer's keys, with ``import`` in place of
    ``training``; ``metrics`` only when the model was evaluated."""
    versions = {"onnx": onnx.__version__, "onnxruntime": ort.__version__}
    if outcome.format != "onnx":
        import keras
        import tensorflow as tf
        import tf2onnx

        versions |= {"tensorflow": tf.__version__, "keras": keras.__version__, "tf2onnx": tf2onnx.__version__}
    evaluation = outcome.evaluation
    metadata: dict[str, Any] = {
        "name": config.name,
        "version": version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "platform": contract.PLATFORM,
        **outcome.prepared.signature.as_metadata(),
        "labels": list(config.labels),
        "sha256": sha256,
        "opset": onnxmodel.opset_of(outcome.prepared.model),
        "dataset": str(config.eval_images) if config.eval_images else "none",
        "preprocessing": outcome.preprocessing.model_dump(mode="json"),
        "import": {
            "source": str(config.path),
            "format": outcome.format,
            "source_sha256": outcome.source_sha256,
            "changes": list(outcome.prepared.changes),
            "command": config.command,
        },
        "versions": versions,
    }
    if evaluation is not None:
        metadata["metrics"] = evaluation.as_json(config.labels)
    if outcome.evaluation_source is not None:
        metadata["data"] = outcome.evaluation_source
    if outcome.parity is not None:
        metadata["parity"] = outcome.parity
    return contract.Metadata.model_validate(metadata)


def summary_rows(config: ImportConfig, outcome: ImportOutcome) -> list[tuple[str, object]]:
    """The rows of the table printed at the end of an import."""
    signature, pre = outcome.prepared.signature, outcome.preprocessing
    evaluation, published = outcome.evaluation, outcome.published
    rows: list[tuple[str, object]] = [
        ("model", config.name),
        ("source", f"{config.path} ({outcome.format})"),
        ("input", f"{signature.input_name} [-1, {', '.join(map(str, signature.input_shape))}] FP32"),
        ("output", f"{signature.output_name} [-1, {signature.num_classes}] FP32"),
        ("labels", ", ".join(config.labels)),
        (
            "image contract",
            f"{pre.height}x{pre.width} (HxW) {pre.color}, {pre.resize}, range {list(pre.input_range)}",
        ),
        ("graph changes", "; ".join(outcome.prepared.changes) or "none"),
    ]
    if outcome.parity is not None:
        rows.append(
            (
                "parity",
                f"max abs diff {outcome.parity['max_abs_diff']:.2e}, argmax "
                f"{outcome.parity['argmax_agreement']:.2%} ({outcome.parity['n_images']} images)",
            )
        )
    if evaluation is not None:
        rows.append(("accuracy", f"{evaluation.accuracy:.4f} ({evaluation.n_images:,} images)"))
    else:
        rows.append(("accuracy", "not evaluated (--eval-images)"))
    rows.append(
        ("published", f"{published.path} (version {published.version})" if published else "no (--publish)")
    )
    return rows
