"""Model presets: each module holds a ``build_model(...)`` and the ``DEFAULTS`` it trains best with.

Every model takes one input ``image`` shaped ``(H, W, C)``, float32 pixel intensities in 0..255 (a
``Rescaling`` layer inside the model maps them to 0..1), and returns ``probabilities`` shaped ``(K,)``.
Any size from the preset's ``MIN_SIZE`` up, any channel count and any number of classes (two or more).
The registry names modules rather than importing them, so the command line can list and check preset
names without paying for importing TensorFlow.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

from training.config import HyperParameters
from training.errors import UsageError

if TYPE_CHECKING:
    import keras

#: Preset name -> module holding its ``build_model`` and ``DEFAULTS``.
PRESETS: dict[str, str] = {
    "mlp": "training.presets.mlp",
    "tiny-mlp": "training.presets.tiny_mlp",
    "cnn": "training.presets.cnn",
    "cifar-cnn": "training.presets.cifar_cnn",
}


def get_preset(name: str) -> ModuleType:
    """The module of preset ``name``; :class:`UsageError` for an unknown one."""
    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r} (choose from {', '.join(PRESETS)})")
    return importlib.import_module(PRESETS[name])


def preset_defaults(name: str) -> HyperParameters:
    """The hyperparameters preset ``name`` trains with unless told otherwise."""
    defaults: HyperParameters = get_preset(name).DEFAULTS
    return defaults


def build_model(
    preset: str, input_shape: tuple[int, int, int], num_classes: int, hp: HyperParameters
) -> keras.Model:
    """Build preset ``preset`` for images ``input_shape`` and ``num_classes`` classes with ``hp``'s knobs.

    :class:`UsageError` for images smaller than the preset's ``MIN_SIZE`` (its convolutions and pooling
    would shrink them to nothing) or fewer than two classes.
    """
    module = get_preset(preset)
    minimum = getattr(module, "MIN_SIZE", 1)
    if min(input_shape[:2]) < minimum:
        raise UsageError(
            f"preset {preset} needs images of at least {minimum}x{minimum}, got "
            f"{input_shape[0]}x{input_shape[1]} (--image-size HxW)"
        )
    if num_classes < 2:
        raise UsageError(f"a classifier needs at least two classes, got {num_classes}")
    model: keras.Model = module.build_model(
        input_shape, num_classes, activation=hp.activation, dropout=hp.dropout, l2=hp.l2
    )
    return model
