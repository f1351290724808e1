"""``cifar-cnn``: a small VGG-style convolutional network for 32x32 colour images (CIFAR-10).

Three blocks of two 3x3 convolutions with batch normalisation, max pooling and dropout, then global
average pooling; trained with data augmentation (flips and shifts) by default.
"""

from __future__ import annotations

import keras
from keras import layers

from training.config import HyperParameters

#: Smallest input height and width: three 2x2 poolings leave at least 1x1.
MIN_SIZE = 8

DEFAULTS = HyperParameters(
    optimizer="adam",
    learning_rate=1e-3,
    epochs=40,
    batch_size=64,
    activation="relu",
    dropout=0.25,
    l2=1e-4,
    patience=10,
    augment=True,
)


def build_model(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    activation: str = "relu",
    dropout: float = 0.25,
    l2: float = 1e-4,
) -> keras.Model:
    """Rescaling -> 3 x (2 x (Conv 3x3 -> BatchNorm -> act) -> MaxPool -> Dropout) -> GAP -> Dense."""
    regularizer = keras.regularizers.L2(l2) if l2 else None
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Rescaling(1.0 / 255)(inputs)
    for filters in (32, 64, 128):
        for _ in range(2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_regularizer=regularizer)(x)
            x = layers.BatchNormalization()(x)
            x = layers.Activation(activation)(x)
        x = layers.MaxPooling2D(2)(x)
        if dropout:
            x = layers.Dropout(dropout)(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="cifar_cnn")
