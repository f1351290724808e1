"""Hyperparameters: one frozen record per run, defaults from the preset, overrides from the command line."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid")
OPTIMIZERS = ("sgd", "rmsprop", "adam", "adagrad")
CLASS_WEIGHTS = ("none", "balanced")
STRATEGIES = ("default", "mirrored")

#: Momentum of the ``sgd`` optimizer (the classic toolbox's "SGD with momentum").
SGD_MOMENTUM = 0.9


@dataclass(frozen=True)
class HyperParameters:
    """Everything that decides how a model is trained; all of it is recorded in ``metadata.json``."""

    optimizer: str
    learning_rate: float
    epochs: int
    batch_size: int
    activation: str
    dropout: float
    l2: float
    #: Early stopping on validation loss after this many epochs without improvement (best weights
    #: restored); 0 turns it off.
    patience: int = 0
    augment: bool = False
    #: Fraction of the training images held out, stratified, for validation; 0 trains on all of them.
    validation_split: float = 0.1
    class_weights: str = "none"
    seed: int = 1337
    #: Use only this many training images (stratified sample), for tests and quick demos.
    limit_train: int | None = None
    strategy: str = "default"

    def as_json(self) -> dict[str, Any]:
        record = asdict(self)
        if self.optimizer == "sgd":
            record["momentum"] = SGD_MOMENTUM
        return record
