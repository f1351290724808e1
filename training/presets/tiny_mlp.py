"""``tiny-mlp``: the textbook first network, 784-16-16-10 with sigmoid activations (about 13,000 weights).

As in M. Nielsen's *Neural Networks and Deep Learning* and 3Blue1Brown's videos, trained here with
SGD with momentum and cross-entropy; it reaches about 94-95% on MNIST.
"""

from __future__ import annotations

import keras
from keras import layers

from training.config import HyperParameters

DEFAULTS = HyperParameters(
    optimizer="sgd",
    learning_rate=0.1,
    epochs=10,
    batch_size=32,
    activation="sigmoid",
    dropout=0.0,
    l2=0.0,
)


def build_model(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    activation: str = "sigmoid",
    dropout: float = 0.0,
    l2: float = 0.0,
) -> keras.Model:
    """Rescaling -> Flatten -> Dense(16) -> Dense(16) -> Dense(num_classes, softmax)."""
    regularizer = keras.regularizers.L2(l2) if l2 else None
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Rescaling(1.0 / 255)(inputs)
    x = layers.Flatten()(x)
    for _ in range(2):
        x = layers.Dense(16, activation=activation, kernel_regularizer=regularizer)(x)
        if dropout:
            x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="tiny_mlp")
