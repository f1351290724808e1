"""Retraining on client feedback: fine-tune the newest version, publish it only if it beats the one serving.

1. The newest version of the model is the champion. Its metadata gives the data set, preset and
   hyperparameters; its ``train/model.keras`` the weights to start from (a version published before
   weights were kept is retrained from scratch with the same recipe, and the run says so).
2. The feedback log is read; when nothing arrived after the last item the champion was trained on, the
   run stops: "nothing new". Feedback is split by a seeded hash of each id into train, validation and
   holdout parts (:mod:`training.feedback`).
3. The challenger trains on the original training split plus the feedback train part, oversampled to
   ``feedback_share`` of every epoch, and validates on the original validation split plus the feedback
   validation part, mixed the same way.
4. Its export passes the parity gate. Then the champion (its served ``model.onnx``) and the challenger (its
   new ONNX) are evaluated by onnxruntime on the same two sets: the original test set and the feedback
   holdout. The challenger is published only if its test accuracy is within ``max_regression`` points of
   the champion's and its holdout accuracy beats the champion's by more than ``min_improvement`` points.
   Otherwise the run is refused (the command line exits 3) and nothing is published. The figures and the
   decision go into the new version's metadata under ``retrain``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np

from service.contract import (
    KERAS_FILE,
    METADATA_FILE,
    MODEL_FILE,
    MetadataError,
    Preprocessing,
    read_metadata,
)
from service.storage import StoreError, open_store
from training import feedback as fb
from training.compare import decide, probabilities, scores, session_of
from training.config import HyperParameters
from training.data import Dataset, load_dataset
from training.diskimages import DiskImages, Images
from training.errors import DataError, UsageError
from training.evaluation import score
from training.export import parity_gate, parity_images, to_onnx
from training.imagefolder import FolderOptions, load_folder
from training.pipeline import RunConfig, publish_version
from training.presets import build_model, preset_defaults
from training.publish import Published, sha256_hex, versions
from training.rollout import serving_champion, start_rollout
from training.train import Splits, compile_model, fit_model, make_strategy, split


@dataclass(frozen=True)
class RetrainConfig:
    """What to retrain, on which feedback, and the bars the challenger must clear."""

    repository: Path | str
    name: str
    feedback: Path
    data_dir: Path
    offline: bool = False
    #: Overrides of the champion's recorded hyperparameters (None keeps them).
    epochs: int | None = None
    learning_rate: float | None = None
    limit_train: int | None = None
    #: Share of each epoch's examples that are feedback (by repetition; measured: docs/benchmarks.md).
    feedback_share: float = 0.2
    #: Fraction of feedback items held out to compare champion and challenger.
    holdout: float = 0.3
    #: Fewer held-out items than this: wait for more feedback (exit 0, nothing trained).
    min_holdout: int = 10
    max_regression: float = 0.5
    min_improvement: float = 0.0
    command: str = ""
    #: Publish the winner as a candidate and start its rollout (False: it serves at once, as before).
    rollout: bool = True


@dataclass(frozen=True)
class Result:
    """How a run ended: ``status`` is ``nothing_new``, ``waiting`` (too little feedback), ``published``
    or ``refused``; ``record`` is what the metadata (and ``--report``) holds."""

    status: str
    message: str
    record: dict[str, Any]
    published: Published | None = None


@dataclass(frozen=True)
class Champion:
    """The newest published version: where it is, its metadata and its recipe."""

    version: int
    path: Path
    metadata: dict[str, Any]
    preset: str
    hp: HyperParameters


def newest_champion(repository: Path | str, name: str, download: Path) -> Champion:
    """The serving champion of ``name`` (the newest version when no rollout record or candidate says
    otherwise) with readable metadata and a training recipe; UsageError if none.

    A version in object storage is downloaded under ``download`` first, each file checked against the
    sha256 its metadata records."""
    store = open_store(repository)
    found = versions(store, name)
    try:
        serving = serving_champion(store, name)
    except (StoreError, ValueError) as exc:
        raise DataError(f"cannot read the rollout record of {name} in {store.url}: {exc}") from exc
    if not found or serving is None:
        raise UsageError(f"no published version of {name} in {repository} to retrain")
    try:
        path = store.fetch_version(name, serving, download)
    except (StoreError, OSError) as exc:
        raise DataError(f"cannot fetch version {serving} of {name} from {store.url}: {exc}") from exc
    try:
        _, metadata = read_metadata(path / METADATA_FILE)
    except OSError as exc:
        raise DataError(f"{path / METADATA_FILE}: cannot read ({exc.strerror or exc})") from exc
    except MetadataError as exc:
        raise DataError(str(exc)) from exc
    training = metadata.get("training") or {}
    preset, dataset = training.get("preset"), metadata.get("dataset")
    if not isinstance(preset, str) or not isinstance(dataset, str):
        raise UsageError(
            f"{path}: no training recipe recorded (dataset and training.preset); retrain needs a version "
            "this pipeline trained"
        )
    recorded = {f.name: training[f.name] for f in fields(HyperParameters) if f.name in training}
    hp = replace(preset_defaults(preset), **recorded)
    return Champion(serving, path, metadata, preset, hp)


def retrain(config: RetrainConfig, *, verbose: int | None = None) -> Result:
    """Run the whole retraining decision. Nothing is published unless the result is ``published``."""
    with tempfile.TemporaryDirectory(prefix="champion-") as download:
        return _retrain(config, Path(download), verbose)


def _retrain(config: RetrainConfig, download: Path, verbose: int | None) -> Result:
    champion = newest_champion(config.repository, config.name, download)
    hp = _hyperparameters(champion.hp, config)
    seen = (champion.metadata.get("retrain") or {}).get("feedback") or {}
    labels = tuple(champion.metadata["labels"])
    input_shape = tuple(champion.metadata["inputs"][0]["shape"][1:])
    feedback = fb.load_feedback(
        config.feedback,
        config.name,
        labels,
        Preprocessing.model_validate(champion.metadata["preprocessing"]),
        since_id=seen.get("last_id"),
        seed=hp.seed,
        holdout=config.holdout,
        validation=hp.validation_split,
    )
    record: dict[str, Any] = {
        "base_version": champion.version,
        "feedback": _feedback_record(feedback, config),
    }
    if feedback.new == 0:
        message = f"nothing new: no feedback for {config.name} since version {champion.version} was trained"
        return Result("nothing_new", message, record)
    if feedback.count("holdout") < config.min_holdout:
        message = (
            f"waiting for more feedback: {len(feedback.items)} usable items, {feedback.count('holdout')} "
            f"held out, at least {config.min_holdout} needed to compare the models; nothing trained"
        )
        return Result("waiting", message, record)

    with tempfile.TemporaryDirectory(prefix="retrain-") as workdir:
        dataset = load_original(champion, config, hp, Path(workdir))
    if dataset.labels != labels or dataset.input_shape != input_shape:
        raise DataError(f"data set {dataset.name} no longer matches version {champion.version}")
    x_holdout, y_holdout = feedback.part("holdout")
    x_test = _in_memory(dataset.x_test)
    test_set = (x_test, dataset.y_test)
    champion_scores = scores(session_of(_champion_bytes(champion)), *test_set, x_holdout, y_holdout)

    model, start = _starting_model(champion, dataset, hp)
    splits, mixing = _mixed_splits(dataset, hp, feedback, config.feedback_share)
    trained = fit_model(model, dataset, splits, hp, verbose=verbose)
    onnx_model = to_onnx(trained.model, dataset.input_shape)
    onnx_bytes = onnx_model.SerializeToString()
    parity = parity_gate(onnx_bytes, trained.model, parity_images(dataset.x_test, dataset.x_train))
    challenger_session = session_of(onnx_bytes)
    challenger_scores = scores(challenger_session, *test_set, x_holdout, y_holdout)
    decision = decide(champion_scores, challenger_scores, config.max_regression, config.min_improvement)
    record.update(
        start=start,
        mixing=mixing,
        champion=champion_scores.as_json(),
        challenger=challenger_scores.as_json(),
        n_test=len(dataset.y_test),
        n_holdout=len(y_holdout),
        max_regression=config.max_regression,
        min_improvement=config.min_improvement,
        decision=decision,
    )
    if not decision["publish"]:
        return Result("refused", f"not publishing {config.name}: " + "; ".join(decision["reasons"]), record)

    newest = versions(config.repository, config.name)[-1]
    if newest != champion.version and serving_champion(config.repository, config.name) != champion.version:
        message = (
            f"not publishing {config.name}: version {newest} was published while this run compared against "
            f"version {champion.version}; run again to compare with it"
        )
        return Result("refused", message, {**record, "decision": {**decision, "publish": False}})
    evaluation = score(probabilities(challenger_session, x_test), dataset.y_test, len(labels))
    run = RunConfig(
        dataset=dataset.name,
        preset=champion.preset,
        hp=hp,
        name=config.name,
        repository=config.repository,
        max_regression=config.max_regression,
        command=config.command,
        candidate=config.rollout,
    )
    published = publish_version(dataset, run, trained, evaluation, parity, onnx_model, retrain=record)
    message = f"published {config.name} version {published.version} at {published.path}"
    if config.rollout:
        try:
            started = start_rollout(config.repository, config.name, published.version, champion.version)
        except (StoreError, ValueError, OSError) as exc:  # the version is published: say what is left
            started = (
                f"its rollout could not be started ({exc}); start it with POST "
                f"/v2/repository/models/{config.name}/rollout (docs/rollout.md)"
            )
        message = f"{message} as a candidate; {started}"
    return Result("published", message, record, published)


#: Feedback is mixed into the original training images in memory; a folder data set larger than this
#: (decoded) is refused rather than swapped.
MAX_IN_MEMORY_BYTES = 4 * 1024**3


def load_original(champion: Champion, config: RetrainConfig, hp: HyperParameters, workdir: Path) -> Dataset:
    """The champion's own training data, as its metadata records it: the bundled data set by name, or
    the image folder of its ``data`` entry read again with the same size, colour, resize and test split
    (decoded under ``workdir``), in memory either way."""
    source = champion.metadata.get("data")
    if not isinstance(source, dict) or "images" not in source:
        return load_dataset(champion.metadata["dataset"], config.data_dir, download=not config.offline)
    pre = Preprocessing.model_validate(champion.metadata["preprocessing"])
    test = source.get("test") or {}
    options = FolderOptions(
        image_size=(pre.height, pre.width),
        color=pre.color,
        resize=pre.resize,
        test_split=float(test.get("fraction", FolderOptions.test_split)),
        validation_split=hp.validation_split,
        seed=int(test.get("seed", hp.seed)),
    )
    dataset = load_folder(Path(source["images"]), options, workdir)
    decoded = (len(dataset.x_train) + len(dataset.x_test)) * int(np.prod(dataset.input_shape))
    if decoded > MAX_IN_MEMORY_BYTES:
        raise UsageError(
            f"{source['images']}: {decoded / 1024**3:.1f} GiB of images; retraining holds them in memory "
            f"(at most {MAX_IN_MEMORY_BYTES / 1024**3:.0f} GiB)"
        )
    return replace(dataset, x_train=_in_memory(dataset.x_train), x_test=_in_memory(dataset.x_test))


def _in_memory(images: Images) -> np.ndarray:
    return images.take(np.arange(len(images))) if isinstance(images, DiskImages) else images


def _hyperparameters(recorded: HyperParameters, config: RetrainConfig) -> HyperParameters:
    return replace(
        recorded,
        epochs=config.epochs or recorded.epochs,
        learning_rate=config.learning_rate or recorded.learning_rate,
        limit_train=config.limit_train or recorded.limit_train,
    )


def _feedback_record(feedback: fb.FeedbackSet, config: RetrainConfig) -> dict[str, Any]:
    return {
        "log": fb.log_path(config.feedback, config.name).name,
        "last_id": feedback.last_id,
        "log_bytes": feedback.log_bytes,
        "items": len(feedback.items),
        "new": feedback.new,
        "train": feedback.count("train"),
        "validation": feedback.count("validation"),
        "holdout": feedback.count("holdout"),
        "skipped": feedback.skipped,
        "holdout_fraction": config.holdout,
        "share": config.feedback_share,
    }


def _champion_bytes(champion: Champion) -> bytes:
    """The champion's ``model.onnx``, the very file the service serves (checked against its sha256)."""
    path = champion.path / MODEL_FILE
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if sha256_hex(data) != champion.metadata.get("sha256"):
        raise DataError(f"{path} does not match the sha256 in its metadata")
    return data


def _starting_model(champion: Champion, dataset: Dataset, hp: HyperParameters) -> tuple[keras.Model, str]:
    """The champion's Keras model with its optimizer state, or a fresh preset model when none was kept."""
    keras.utils.set_random_seed(hp.seed)
    kept = champion.path / KERAS_FILE
    with make_strategy(hp.strategy).scope():
        if kept.is_file():
            model = keras.saving.load_model(kept)
            if model.optimizer is None:
                compile_model(model, hp)
            else:
                model.optimizer.learning_rate.assign(hp.learning_rate)
            return model, f"weights of version {champion.version}"
        model = build_model(champion.preset, dataset.input_shape, len(dataset.labels), hp)
        compile_model(model, hp)
    return model, f"from scratch (version {champion.version} kept no {KERAS_FILE})"


def _mixed_splits(
    dataset: Dataset, hp: HyperParameters, feedback: fb.FeedbackSet, share: float
) -> tuple[Splits, dict[str, Any]]:
    original = split(dataset, hp)
    x_train, y_train, repeats = fb.oversample(
        _in_memory(original.x_train), original.y_train, *feedback.part("train"), share
    )
    x_val, y_val, _ = fb.oversample(
        _in_memory(original.x_val), original.y_val, *feedback.part("validation"), share
    )
    mixing = {
        "original_train": len(original.y_train),
        "feedback_repeats": repeats,
        "epoch_size": len(y_train),
    }
    return Splits(x_train, y_train, x_val, y_val), mixing
