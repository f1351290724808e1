"""Fitting and evaluating: seeded splits, a ``tf.data`` input pipeline, callbacks, test-set metrics.

The test set is only ever passed to :func:`evaluate`; early stopping and every other choice made while
training look at the validation split carved out of the training set.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from training.config import SGD_MOMENTUM, HyperParameters
from training.data import Dataset, stratified_sample, train_validation_split
from training.diskimages import DiskImages, Images, select
from training.errors import UsageError
from training.evaluation import Evaluation, score
from training.presets import build_model


@dataclass(frozen=True)
class Splits:
    """The images a run fits on and validates on (uint8 ``(N, H, W, C)``, int64 labels)."""

    x_train: Images
    y_train: np.ndarray
    x_val: Images
    y_val: np.ndarray


@dataclass(frozen=True)
class Trained:
    """A fitted model and how the fit went."""

    model: keras.Model
    history: dict[str, list[float]]
    epochs_run: int
    #: The epoch whose weights the model holds (1-based): the best one when early stopping restored it.
    best_epoch: int
    wall_time_s: float
    n_train: int
    n_validation: int


def split(dataset: Dataset, hp: HyperParameters) -> Splits:
    """Seeded, stratified: optionally keep ``limit_train`` images, then hold out ``validation_split``."""
    x, y = dataset.x_train, dataset.y_train
    if hp.limit_train is not None and hp.limit_train < len(y):
        keep = stratified_sample(y, hp.limit_train, np.random.default_rng(hp.seed))
        x, y = select(x, keep), y[keep]
    train_idx, val_idx = train_validation_split(y, hp.validation_split, hp.seed)
    if len(train_idx) == 0 or (hp.validation_split > 0 and len(val_idx) == 0):
        raise UsageError(
            f"{len(y)} training images cannot be split {1 - hp.validation_split:g}/{hp.validation_split:g}"
        )
    return Splits(select(x, train_idx), y[train_idx], select(x, val_idx), y[val_idx])


def make_optimizer(hp: HyperParameters) -> keras.optimizers.Optimizer:
    """The optimizer named by ``hp.optimizer`` at ``hp.learning_rate``."""
    if hp.optimizer == "sgd":
        return keras.optimizers.SGD(hp.learning_rate, momentum=SGD_MOMENTUM)
    optimizers = {
        "rmsprop": keras.optimizers.RMSprop,
        "adam": keras.optimizers.Adam,
        "adagrad": keras.optimizers.Adagrad,
    }
    if hp.optimizer not in optimizers:
        raise UsageError(f"unknown optimizer {hp.optimizer!r}")
    return optimizers[hp.optimizer](hp.learning_rate)


def make_augmenter(dataset: Dataset, seed: int) -> keras.Sequential:
    """Random shifts and small rotations; horizontal flips only where mirroring keeps the class."""
    fill = "reflect" if dataset.input_shape[-1] == 3 else "constant"
    steps: list[keras.layers.Layer] = []
    if dataset.mirror_invariant:
        steps.append(keras.layers.RandomFlip("horizontal", seed=seed))
    else:
        steps.append(keras.layers.RandomRotation(0.03, fill_mode=fill, seed=seed))
    steps.append(keras.layers.RandomTranslation(0.1, 0.1, fill_mode=fill, seed=seed + 1))
    return keras.Sequential(steps, name="augmentation")


def make_strategy(name: str) -> tf.distribute.Strategy:
    """``mirrored``: synchronous data parallelism on every visible GPU (the CPU when there is none)."""
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _disk_batches(
    x: DiskImages, y: np.ndarray, num_classes: int, batch_size: int, shuffle_seed: int | None
) -> tf.data.Dataset:
    """Batches read from the cache on disk: only row numbers are shuffled, pixels are read per batch."""
    ds = tf.data.Dataset.range(len(x))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=True)
    labels = tf.constant(y)

    def load(rows: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        images = tf.numpy_function(x.take, [rows], tf.uint8, stateful=False)
        images.set_shape((None, *x.shape[1:]))
        return tf.cast(images, tf.float32), tf.one_hot(tf.gather(labels, rows), num_classes)

    return ds.batch(batch_size).map(load, num_parallel_calls=tf.data.AUTOTUNE)


def _batches(
    x: Images,
    y: np.ndarray,
    num_classes: int,
    batch_size: int,
    *,
    shuffle_seed: int | None = None,
    augmenter: keras.Sequential | None = None,
) -> tf.data.Dataset:
    if isinstance(x, DiskImages):
        ds = _disk_batches(x, y, num_classes, batch_size, shuffle_seed)
    else:
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        if shuffle_seed is not None:
            ds = ds.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size).map(
            lambda image, label: (tf.cast(image, tf.float32), tf.one_hot(label, num_classes)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    if augmenter is not None:
        ds = ds.map(lambda image, label: (augmenter(image, training=True), label))
    return ds.prefetch(tf.data.AUTOTUNE)


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """Weights ``n / (k * n_c)``, so that every class carries the same total weight."""
    counts = np.bincount(labels, minlength=num_classes)
    return {c: float(len(labels) / (num_classes * n)) for c, n in enumerate(counts) if n}


def fit(dataset: Dataset, preset: str, hp: HyperParameters, *, verbose: int | None = None) -> Trained:
    """Build preset ``preset`` and fit it to ``dataset``'s training split with ``hp``.

    ``verbose`` defaults to Keras' progress bar on a terminal and one line per epoch otherwise.
    """
    keras.utils.set_random_seed(hp.seed)
    splits = split(dataset, hp)
    num_classes = len(dataset.labels)
    has_validation = len(splits.y_val) > 0
    if hp.patience and not has_validation:
        raise UsageError("early stopping (--patience) needs a validation split (--validation-split > 0)")

    strategy = make_strategy(hp.strategy)
    with strategy.scope():
        model = build_model(preset, dataset.input_shape, num_classes, hp)
        model.compile(
            optimizer=make_optimizer(hp),
            loss=keras.losses.CategoricalCrossentropy(),
            metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        )

    augmenter = make_augmenter(dataset, hp.seed) if hp.augment else None
    train_ds = _batches(
        splits.x_train, splits.y_train, num_classes, hp.batch_size, shuffle_seed=hp.seed, augmenter=augmenter
    )
    val_ds = _batches(splits.x_val, splits.y_val, num_classes, hp.batch_size) if has_validation else None
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=hp.patience, restore_best_weights=True, verbose=1
    )
    callbacks = [stopper] if hp.patience else []
    class_weight = (
        balanced_class_weights(splits.y_train, num_classes) if hp.class_weights == "balanced" else None
    )

    started = time.perf_counter()
    history = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=hp.epochs,
        callbacks=callbacks,
        class_weight=class_weight,
        shuffle=False,  # the tf.data pipeline shuffles, seeded; Keras would only warn that it cannot
        verbose=verbose if verbose is not None else (1 if sys.stdout.isatty() else 2),
    )
    wall_time_s = time.perf_counter() - started
    record: dict[str, list[float]] = {k: [float(v) for v in vs] for k, vs in history.history.items()}
    epochs_run = len(record.get("loss", []))
    return Trained(
        model=model,
        history=record,
        epochs_run=epochs_run,
        best_epoch=stopper.best_epoch + 1 if hp.patience else epochs_run,
        wall_time_s=wall_time_s,
        n_train=len(splits.y_train),
        n_validation=len(splits.y_val),
    )


#: Rows read from a cache on disk at a time when predicting (a multiple of the predict batch size).
PREDICT_CHUNK = 1024


def predict(model: keras.Model, images: Images, batch_size: int = 256) -> np.ndarray:
    """Class probabilities for uint8 or float ``images`` (raw 0..255 intensities)."""
    if isinstance(images, DiskImages):
        chunks = [
            predict(model, images.take(np.arange(start, min(start + PREDICT_CHUNK, len(images)))), batch_size)
            for start in range(0, len(images), PREDICT_CHUNK)
        ]
        return np.concatenate(chunks) if chunks else np.zeros((0, model.outputs[0].shape[-1]), np.float32)
    probabilities: Any = model.predict(images.astype(np.float32), batch_size=batch_size, verbose=0)
    return np.asarray(probabilities, dtype=np.float32)


def evaluate(model: keras.Model, x_test: Images, y_test: np.ndarray, num_classes: int) -> Evaluation:
    """Accuracy, cross-entropy and the confusion matrix of ``model`` on the test set."""
    return score(predict(model, x_test), y_test, num_classes)
