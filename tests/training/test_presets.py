"""Every preset builds a model with the contract's signature: ``image`` 0..255 in, ``probabilities`` out."""

from __future__ import annotations

from dataclasses import fields, replace

import keras
import numpy as np
import pytest

from training.config import ACTIVATIONS, OPTIMIZERS, HyperParameters
from training.errors import UsageError
from training.presets import PRESETS, build_model, get_preset, preset_defaults

SHAPES = {"mlp": (28, 28, 1), "tiny-mlp": (28, 28, 1), "cnn": (28, 28, 1), "cifar-cnn": (32, 32, 3)}


@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_has_the_contract_signature(preset: str) -> None:
    shape = SHAPES[preset]
    model = build_model(preset, shape, 10, preset_defaults(preset))
    assert [t.name for t in model.inputs] == ["image"]
    assert tuple(model.inputs[0].shape) == (None, *shape)
    assert model.inputs[0].dtype == "float32"
    assert tuple(model.outputs[0].shape) == (None, 10)
    first = model.layers[1]
    assert isinstance(first, keras.layers.Rescaling)
    assert first.scale == pytest.approx(1 / 255)
    images = np.random.default_rng(0).integers(0, 256, size=(4, *shape)).astype(np.float32)
    probabilities = np.asarray(model(images, training=False))
    assert probabilities.shape == (4, 10)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert (probabilities >= 0).all()


@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_defaults_are_valid_choices(preset: str) -> None:
    defaults = preset_defaults(preset)
    assert isinstance(defaults, HyperParameters)
    assert defaults.optimizer in OPTIMIZERS
    assert defaults.activation in ACTIVATIONS
    assert defaults.epochs >= 1
    assert defaults.batch_size >= 1


def test_classic_mlp_shape_and_defaults() -> None:
    model = build_model("mlp", (28, 28, 1), 10, preset_defaults("mlp"))
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [layer.units for layer in dense] == [512, 10]
    assert model.count_params() == 784 * 512 + 512 + 512 * 10 + 10
    defaults = preset_defaults("mlp")
    assert (defaults.optimizer, defaults.epochs, defaults.batch_size) == ("rmsprop", 5, 128)


def test_tiny_mlp_is_the_textbook_network() -> None:
    model = build_model("tiny-mlp", (28, 28, 1), 10, preset_defaults("tiny-mlp"))
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [layer.units for layer in dense] == [16, 16, 10]
    assert dense[0].get_config()["activation"] == "sigmoid"
    assert model.count_params() == 13002


def test_convolutional_presets_convolve_and_drop_out() -> None:
    for preset in ("cnn", "cifar-cnn"):
        model = build_model(preset, SHAPES[preset], 10, preset_defaults(preset))
        kinds = {type(layer) for layer in model.layers}
        assert {keras.layers.Conv2D, keras.layers.MaxPooling2D, keras.layers.Dropout} <= kinds


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_option_reaches_the_hidden_layers(activation: str) -> None:
    hp = replace(preset_defaults("mlp"), activation=activation)
    model = build_model("mlp", (28, 28, 1), 10, hp)
    hidden = next(layer for layer in model.layers if isinstance(layer, keras.layers.Dense))
    assert hidden.get_config()["activation"] == activation


def test_dropout_and_l2_options() -> None:
    plain = build_model("mlp", (28, 28, 1), 10, preset_defaults("mlp"))
    assert not any(isinstance(layer, keras.layers.Dropout) for layer in plain.layers)
    hp = replace(preset_defaults("mlp"), dropout=0.3, l2=1e-4)
    model = build_model("mlp", (28, 28, 1), 10, hp)
    dropout = next(layer for layer in model.layers if isinstance(layer, keras.layers.Dropout))
    assert dropout.rate == pytest.approx(0.3)
    hidden = next(layer for layer in model.layers if isinstance(layer, keras.layers.Dense))
    assert hidden.kernel_regularizer is not None
    assert hidden.kernel_regularizer.get_config()["l2"] == pytest.approx(1e-4)


def test_unknown_preset_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown preset 'resnet'"):
        get_preset("resnet")


def test_hyperparameters_record_every_field() -> None:
    hp = replace(preset_defaults("tiny-mlp"), optimizer="sgd")
    record = hp.as_json()
    assert {f.name for f in fields(HyperParameters)} <= set(record)
    assert record["momentum"] == 0.9


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize(("shape", "classes"), [((64, 64, 3), 5), ((20, 36, 1), 2), ((10, 10, 3), 37)])
def test_presets_build_for_any_shape_and_class_count(
    preset: str, shape: tuple[int, int, int], classes: int
) -> None:
    model = build_model(preset, shape, classes, preset_defaults(preset))
    assert tuple(model.inputs[0].shape) == (None, *shape)
    images = np.random.default_rng(1).integers(0, 256, size=(3, *shape)).astype(np.float32)
    probabilities = np.asarray(model(images, training=False))
    assert probabilities.shape == (3, classes)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(("preset", "size"), [("cnn", 9), ("cifar-cnn", 7)])
def test_images_too_small_for_a_convnet_are_a_usage_error(preset: str, size: int) -> None:
    with pytest.raises(UsageError, match=f"preset {preset} needs images of at least"):
        build_model(preset, (size, size, 3), 5, preset_defaults(preset))
    with pytest.raises(UsageError, match="at least two classes"):
        build_model(preset, (32, 32, 3), 1, preset_defaults(preset))
