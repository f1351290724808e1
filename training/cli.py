"""``python -m training train ...``: train, evaluate, export and publish one model.

Exit codes: 0 success; 1 export or parity failure; 2 bad usage, bad model name or missing data; 3 the
promotion guard refused to publish. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

from training.config import ACTIVATIONS, CLASS_WEIGHTS, OPTIMIZERS, STRATEGIES
from training.data import DATASETS, load_dataset, resolve_data_dir
from training.errors import TrainingError, UsageError
from training.presets import PRESETS
from training.publish import validate_name

PROG = "python -m training"
EXAMPLE = f"{PROG} train --dataset mnist --preset cnn --epochs 3 --publish models/"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (the usage text is in ``--help``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _bounded(
    kind: Callable[[str], float],
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strict: bool = False,
) -> Callable[[str], float]:
    """An argparse ``type`` converting with ``kind`` and checking the bounds."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {parse.__name__}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        low_ok = minimum is None or (value > minimum if strict else value >= minimum)
        if not low_ok:
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {minimum:g}, got {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum:g}, got {text}")
        return value

    parse.__name__ = getattr(kind, "__name__", "value")
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; ``--help`` lists every option."""
    parser = _Parser(
        prog=PROG,
        description="Train a Keras image classifier, evaluate it on the test set, export it to ONNX, check "
        "the export against Keras (parity gate) and publish it to a model repository.",
        epilog=f"example: {EXAMPLE}. Hyperparameters left out take the preset's defaults. Exit codes: 0 ok, "
        f"1 export failed, 2 bad usage or missing data, 3 promotion refused. Retraining on feedback: "
        f"{PROG} retrain --help.",
    )
    parser.add_argument(
        "command",
        choices=["train", "retrain"],
        help="train: the whole pipeline; retrain: fine-tune on feedback (see retrain --help)",
    )

    what = parser.add_argument_group("what to train")
    what.add_argument("--dataset", required=True, choices=list(DATASETS))
    what.add_argument(
        "--preset",
        required=True,
        choices=list(PRESETS),
        help="mlp: Dense(512) -> Dense(10), the classic; tiny-mlp: 784-16-16-10 sigmoid; cnn: small convnet "
        "for 28x28 grayscale; cifar-cnn: small convnet for 32x32 colour, trained with augmentation",
    )
    what.add_argument(
        "--data-dir",
        type=Path,
        help="directory holding mnist/, fashion-mnist/, cifar10/ (default: $DATA_DIR, else ../shared/data); "
        "Keras' downloaders are used only when the files are absent",
    )
    what.add_argument("--offline", action="store_true", help="never download; fail if the files are absent")
    what.add_argument(
        "--limit-train",
        type=_bounded(int, minimum=1),
        metavar="N",
        help="use only N training images (a stratified sample)",
    )

    hp = parser.add_argument_group("hyperparameters (default: the preset's)")
    hp.add_argument("--epochs", type=_bounded(int, minimum=1))
    hp.add_argument("--batch-size", type=_bounded(int, minimum=1), help="global: split across replicas")
    hp.add_argument("--optimizer", choices=OPTIMIZERS, help="sgd is SGD with momentum 0.9")
    hp.add_argument("--learning-rate", "--lr", type=_bounded(float, minimum=0, strict=True))
    hp.add_argument("--activation", choices=ACTIVATIONS, help="hidden-layer activation")
    hp.add_argument("--dropout", type=_bounded(float, minimum=0, maximum=0.9), help="dropout rate, 0 = off")
    hp.add_argument("--l2", type=_bounded(float, minimum=0), help="L2 weight penalty, 0 = off")
    hp.add_argument(
        "--patience",
        type=_bounded(int, minimum=0),
        help="early stopping: stop after this many epochs without validation-loss improvement and "
        "restore the best weights; 0 = off",
    )
    hp.add_argument(
        "--augment", action=argparse.BooleanOptionalAction, help="random flips/shifts while training"
    )
    hp.add_argument(
        "--validation-split",
        type=_bounded(float, minimum=0, maximum=0.5),
        help="fraction of training images held out (stratified) for validation; 0 = none",
    )
    hp.add_argument("--class-weights", choices=CLASS_WEIGHTS, help="balanced: weight classes by 1/frequency")
    hp.add_argument("--seed", type=_bounded(int, minimum=0))
    hp.add_argument(
        "--strategy",
        choices=STRATEGIES,
        help="mirrored: tf.distribute.MirroredStrategy over all visible GPUs (the CPU when none); "
        "default: one device",
    )

    out = parser.add_argument_group("publishing")
    out.add_argument("--publish", type=Path, metavar="REPOSITORY", help="publish to this model repository")
    out.add_argument("--name", help="model name in the repository (default: <dataset>-<preset>)")
    out.add_argument(
        "--max-regression",
        type=_bounded(float, minimum=0),
        default=0.5,
        metavar="POINTS",
        help="refuse to publish when test accuracy is more than this many percentage points below the "
        "newest published version (default: 0.5)",
    )
    out.add_argument("--force", action="store_true", help="publish even if the promotion guard refuses")
    return parser


_HYPERPARAMETERS = (
    "epochs",
    "batch_size",
    "optimizer",
    "learning_rate",
    "activation",
    "dropout",
    "l2",
    "patience",
    "augment",
    "validation_split",
    "class_weights",
    "seed",
    "limit_train",
    "strategy",
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["retrain"]:
        from training import retrain_cli

        return retrain_cli.main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return _train(args, command=shlex.join(["python", "-m", "training", *argv]))
    except TrainingError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def _train(args: argparse.Namespace, *, command: str) -> int:
    name = validate_name(args.name or f"{args.dataset}-{args.preset}")
    if args.publish is not None and args.publish.exists() and not args.publish.is_dir():
        raise UsageError(f"--publish {args.publish}: not a directory")
    dataset = load_dataset(args.dataset, resolve_data_dir(args.data_dir), download=not args.offline)

    # TensorFlow is imported only now, so that usage and data errors above answer at once.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from training import pipeline, report
    from training.presets import preset_defaults

    given = {key: getattr(args, key) for key in _HYPERPARAMETERS if getattr(args, key) is not None}
    hp = replace(preset_defaults(args.preset), **given)
    config = pipeline.RunConfig(
        dataset=args.dataset,
        preset=args.preset,
        hp=hp,
        name=name,
        repository=args.publish,
        max_regression=args.max_regression,
        force=args.force,
        command=command,
    )
    settings = " ".join(f"{key}={value}" for key, value in hp.as_json().items())
    print(f"training {name} ({args.preset} on {args.dataset}): {settings}", flush=True)
    outcome = pipeline.run(dataset, config)
    print(report.summary_table(pipeline.summary_rows(dataset, config, outcome)))
    return 0
