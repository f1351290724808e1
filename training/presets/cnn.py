"""``cnn``: a small convolutional network for 28x28 grayscale images (MNIST, Fashion-MNIST).

Two convolution + max-pooling blocks, dropout and a dense head, after keras-io's "Simple MNIST convnet".
"""

from __future__ import annotations

import keras
from keras import layers

from training.config import HyperParameters

#: Smallest input height and width: two valid 3x3 convolutions and two 2x2 poolings leave at least 2x2.
MIN_SIZE = 10

DEFAULTS = HyperParameters(
    optimizer="adam",
    learning_rate=1e-3,
    epochs=15,
    batch_size=128,
    activation="relu",
    dropout=0.5,
    l2=0.0,
    patience=3,
)


def build_model(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    activation: str = "relu",
    dropout: float = 0.5,
    l2: float = 0.0,
) -> keras.Model:
    """Rescaling -> (Conv 3x3 -> MaxPool) x 2 -> Flatten -> Dropout -> Dense(128) -> Dense(num_classes)."""
    regularizer = keras.regularizers.L2(l2) if l2 else None
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Rescaling(1.0 / 255)(inputs)
    for filters in (32, 64):
        x = layers.Conv2D(filters, 3, activation=activation, kernel_regularizer=regularizer)(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    if dropout:
        x = layers.Dropout(dropout)(x)
    x = layers.Dense(128, activation=activation, kernel_regularizer=regularizer)(x)
    if dropout:
        x = layers.Dropout(dropout / 2)(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="cnn")
