"""Splitting, fitting and evaluating, on small slices of the real data."""

from __future__ import annotations

from dataclasses import replace

import keras
import numpy as np
import pytest

from training.config import OPTIMIZERS, SGD_MOMENTUM
from training.data import Dataset
from training.errors import UsageError
from training.presets import preset_defaults
from training.train import balanced_class_weights, evaluate, fit, make_augmenter, make_optimizer, split


def test_split_limits_and_stratifies(mnist: Dataset) -> None:
    hp = replace(preset_defaults("mlp"), limit_train=1000, validation_split=0.2)
    splits = split(mnist, hp)
    assert len(splits.y_train) == 800
    assert len(splits.y_val) == 200
    shares = np.bincount(mnist.y_train) / len(mnist.y_train)
    assert np.abs(np.bincount(splits.y_val) - 200 * shares).max() <= 1
    again = split(mnist, hp)
    assert np.array_equal(splits.x_val, again.x_val)


def test_test_set_never_reaches_the_split(mnist: Dataset) -> None:
    splits = split(mnist, replace(preset_defaults("mlp"), limit_train=500))
    test_rows = {row.tobytes() for row in mnist.x_test[:2000]}
    overlap = sum(row.tobytes() in test_rows for row in splits.x_train)
    assert overlap == 0


def test_fit_and_evaluate_tiny_run(tiny_run) -> None:
    trained, evaluation = tiny_run.trained, tiny_run.evaluation
    assert trained.n_train == 270
    assert trained.n_validation == 30
    assert trained.epochs_run == trained.best_epoch == 2
    assert set(trained.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert evaluation.n_images == 10000
    assert evaluation.confusion.sum() == 10000
    assert evaluation.confusion.sum(axis=1).tolist() == np.bincount(tiny_run.dataset.y_test).tolist()
    assert evaluation.accuracy == pytest.approx(np.trace(evaluation.confusion) / 10000)
    assert 0.3 < evaluation.accuracy < 0.99  # two epochs on 270 images: well above chance, far from done
    assert evaluation.loss > 0


def test_evaluate_matches_keras(tiny_run) -> None:
    model, dataset = tiny_run.trained.model, tiny_run.dataset
    probabilities = model.predict(dataset.x_test.astype(np.float32), verbose=0)
    loss = keras.losses.SparseCategoricalCrossentropy()(dataset.y_test, probabilities)
    accuracy = keras.metrics.SparseCategoricalAccuracy()
    accuracy.update_state(dataset.y_test, probabilities)
    assert tiny_run.evaluation.accuracy == pytest.approx(float(accuracy.result()), abs=1e-6)
    assert tiny_run.evaluation.loss == pytest.approx(float(loss), rel=1e-4)


def test_evaluate_per_class_accuracy(tiny_run) -> None:
    dataset = tiny_run.dataset
    x, y = dataset.x_test[:100], np.zeros(100, dtype=np.int64)
    evaluation = evaluate(tiny_run.trained.model, x, y, 10)
    assert evaluation.per_class_accuracy[0] == pytest.approx(evaluation.accuracy)
    assert evaluation.per_class_accuracy[1:] == [0.0] * 9


def test_early_stopping_restores_best_weights_and_stops(mnist: Dataset) -> None:
    # 50 images for a 400,000-weight network: it overfits within a few epochs and validation loss climbs.
    hp = replace(preset_defaults("mlp"), epochs=40, patience=2, limit_train=100, validation_split=0.5)
    hp = replace(hp, optimizer="adam", learning_rate=0.003, batch_size=10)
    trained = fit(mnist, "mlp", hp, verbose=0)
    val_loss = trained.history["val_loss"]
    assert trained.epochs_run < 40
    assert trained.best_epoch == int(np.argmin(val_loss)) + 1
    assert trained.epochs_run == trained.best_epoch + 2
    splits = split(mnist, hp)
    evaluation = evaluate(trained.model, splits.x_val, splits.y_val, 10)
    assert evaluation.loss == pytest.approx(val_loss[trained.best_epoch - 1], rel=1e-3)


def test_early_stopping_needs_validation(mnist: Dataset) -> None:
    hp = replace(preset_defaults("tiny-mlp"), patience=2, validation_split=0.0, limit_train=100)
    with pytest.raises(UsageError, match="needs a validation split"):
        fit(mnist, "tiny-mlp", hp, verbose=0)


def test_mirrored_strategy_with_augmentation_and_class_weights(mnist: Dataset) -> None:
    hp = replace(
        preset_defaults("tiny-mlp"),
        epochs=1,
        limit_train=200,
        strategy="mirrored",
        augment=True,
        class_weights="balanced",
        optimizer="adagrad",
        activation="leaky_relu",
    )
    trained = fit(mnist, "tiny-mlp", hp, verbose=0)
    assert trained.epochs_run == 1
    assert np.isfinite(trained.history["loss"][0])


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer(name: str) -> None:
    optimizer = make_optimizer(replace(preset_defaults("mlp"), optimizer=name, learning_rate=0.05))
    assert type(optimizer).__name__.lower() == name
    assert float(optimizer.learning_rate) == pytest.approx(0.05)
    if name == "sgd":
        assert optimizer.momentum == SGD_MOMENTUM


def test_balanced_class_weights() -> None:
    weights = balanced_class_weights(np.array([0, 0, 0, 1]), 2)
    assert weights == {0: pytest.approx(4 / 6), 1: pytest.approx(2.0)}


def test_augmenter_keeps_shape_and_changes_pixels(mnist: Dataset) -> None:
    images = mnist.x_train[:16].astype(np.float32)
    augmented = np.asarray(make_augmenter(mnist, seed=1)(images, training=True))
    assert augmented.shape == images.shape
    assert not np.allclose(augmented, images)
    assert augmented.min() >= 0 and augmented.max() <= 255.001


@pytest.mark.slow
def test_training_from_the_disk_cache_equals_training_in_memory(mnist: Dataset, tmp_path) -> None:
    from training.diskimages import DiskImages

    # The same 500 images, once as arrays and once as rows of a cache file: the same batches in the same
    # (seeded) order reach the model, so the weights and the test predictions come out the same.
    x, y = mnist.x_train[:500], mnist.y_train[:500]
    np.save(tmp_path / "train.npy", x)
    images = DiskImages(tmp_path / "train.npy")
    x_test = mnist.x_test[:100]
    np.save(tmp_path / "test.npy", x_test)
    in_memory = replace(mnist, x_train=x, y_train=y, x_test=x_test, y_test=mnist.y_test[:100])
    on_disk = replace(in_memory, x_train=images, x_test=DiskImages(tmp_path / "test.npy"))
    hp = replace(preset_defaults("tiny-mlp"), epochs=2, batch_size=32, augment=True)
    memory_run, disk_run = fit(in_memory, "tiny-mlp", hp, verbose=0), fit(on_disk, "tiny-mlp", hp, verbose=0)
    assert disk_run.n_train == memory_run.n_train == 450
    assert disk_run.history["loss"] == pytest.approx(memory_run.history["loss"], rel=1e-5)
    memory_eval = evaluate(memory_run.model, in_memory.x_test, in_memory.y_test, 10)
    disk_eval = evaluate(disk_run.model, on_disk.x_test, on_disk.y_test, 10)
    assert disk_eval.accuracy == memory_eval.accuracy
    assert disk_eval.loss == pytest.approx(memory_eval.loss, rel=1e-5)
