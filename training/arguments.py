"""The command line's grammar: ``python -m training train|import|retrain ...``.

Every option is declared here, with its type, bounds and help; :mod:`training.cli` runs the commands.
A usage error is one line on stderr and exit code 2; ``--help`` shows every command's options.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from training import retrain_cli
from training.config import ACTIVATIONS, CLASS_WEIGHTS, OPTIMIZERS, STRATEGIES
from training.data import DATASETS
from training.imagecache import MAX_PIXELS
from training.options import bounded, image_size, labels, repository, value_range
from training.presets import PRESETS

PROG = "python -m training"
EXAMPLE = f"{PROG} train --dataset mnist --preset cnn --epochs 3 --publish models/"
IMPORT_EXAMPLE = (
    f"{PROG} import model.onnx --name my-model --labels cat,dog --input-scale 0..1 --resize stretch "
    "--eval-images photos/test --publish models/"
)
RESIZE = ("stretch", "center_crop", "digit")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (the usage text is in ``--help``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message} (see --help)\n")


class _FullHelp(argparse.Action):
    """``--help`` on the whole command line: the overview, then every command's options."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        commands: dict[str, argparse.ArgumentParser] = getattr(parser, "commands", {})
        print("\n".join([parser.format_help(), *(c.format_help() for c in commands.values())]))
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; ``--help`` lists every option of every command."""
    parser = _Parser(
        prog=PROG,
        add_help=False,
        description="Train a Keras image classifier (on a bundled data set or your own image folder), or "
        "import a model trained elsewhere (ONNX, Keras, SavedModel); evaluate it, export it to ONNX, check "
        "the export (parity gate) and publish it to a model repository.",
        epilog=f"examples: {EXAMPLE};  {IMPORT_EXAMPLE};  {retrain_cli.EXAMPLE}. Exit codes: 0 ok, 1 export "
        "failed, 2 bad usage, missing data or a model the service cannot serve, 3 promotion refused.",
    )
    parser.add_argument("-h", "--help", action=_FullHelp, help="show every command's options and exit")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="command", parser_class=_Parser)
    train = subparsers.add_parser(
        "train",
        help="train, evaluate, export and publish",
        description="Train a preset on a bundled data set (--dataset) or an image folder (--images).",
        epilog=f"example: {EXAMPLE}. Hyperparameters left out take the preset's defaults.",
    )
    _train_arguments(train)
    imported = subparsers.add_parser(
        "import",
        help="check, evaluate and publish a model trained elsewhere",
        description="Import an ONNX file, a Keras .keras file or a TensorFlow SavedModel directory. What the "
        "model expects is stated, never guessed: --input-scale, --resize and --labels always; --image-size "
        "and --color when the model's graph leaves them open.",
        epilog=f"example: {IMPORT_EXAMPLE}",
    )
    _import_arguments(imported)
    retrain = subparsers.add_parser(
        "retrain",
        help="fine-tune the newest version on client feedback; publish only a winner",
        description=retrain_cli.DESCRIPTION,
        epilog=retrain_cli.EPILOG,
    )
    retrain_cli.add_arguments(retrain)
    parser.commands = {"train": train, "import": imported, "retrain": retrain}  # type: ignore[attr-defined]
    return parser


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_argument_group("what to train")
    source = what.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", choices=list(DATASETS), help="a bundled data set")
    source.add_argument(
        "--images",
        type=Path,
        metavar="DIR",
        help="an image folder: DIR/train/<class>/*.png|jpg (and optionally DIR/test/<class>/...), or "
        "DIR/<class>/...",
    )
    what.add_argument(
        "--preset",
        required=True,
        choices=list(PRESETS),
        help="mlp: Dense(512) -> Dense(K), the classic; tiny-mlp: 16-16 sigmoid; cnn: small convnet (images "
        "10x10 and up); cifar-cnn: small VGG-style convnet (8x8 and up), trained with augmentation; every "
        "preset builds for any image size and class count",
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
        type=bounded(int, minimum=1),
        metavar="N",
        help="use only N training images (a stratified sample)",
    )

    folder = parser.add_argument_group("image folders (--images)")
    _image_arguments(folder, required=False)
    folder.add_argument(
        "--test-split",
        type=bounded(float, minimum=0, maximum=0.5, strict=True),
        metavar="FRACTION",
        help="without DIR/test/: share of each class held out, seeded, as the test set; the files are "
        "recorded in the metadata (default: 0.2)",
    )

    hp = parser.add_argument_group("hyperparameters (default: the preset's)")
    hp.add_argument("--epochs", type=bounded(int, minimum=1))
    hp.add_argument("--batch-size", type=bounded(int, minimum=1), help="global: split across replicas")
    hp.add_argument("--optimizer", choices=OPTIMIZERS, help="sgd is SGD with momentum 0.9")
    hp.add_argument("--learning-rate", "--lr", type=bounded(float, minimum=0, strict=True))
    hp.add_argument("--activation", choices=ACTIVATIONS, help="hidden-layer activation")
    hp.add_argument("--dropout", type=bounded(float, minimum=0, maximum=0.9), help="dropout rate, 0 = off")
    hp.add_argument("--l2", type=bounded(float, minimum=0), help="L2 weight penalty, 0 = off")
    hp.add_argument(
        "--patience",
        type=bounded(int, minimum=0),
        help="early stopping: stop after this many epochs without validation-loss improvement and "
        "restore the best weights; 0 = off",
    )
    hp.add_argument(
        "--augment", action=argparse.BooleanOptionalAction, help="random flips/shifts while training"
    )
    hp.add_argument(
        "--validation-split",
        type=bounded(float, minimum=0, maximum=0.5),
        help="fraction of training images held out (stratified) for validation; 0 = none",
    )
    hp.add_argument("--class-weights", choices=CLASS_WEIGHTS, help="balanced: weight classes by 1/frequency")
    hp.add_argument("--seed", type=bounded(int, minimum=0))
    hp.add_argument(
        "--strategy",
        choices=STRATEGIES,
        help="mirrored: tf.distribute.MirroredStrategy over all visible GPUs (the CPU when none); "
        "default: one device",
    )
    _publish_arguments(parser, "<dataset or folder name>-<preset>")


def _image_arguments(group: argparse._ArgumentGroup, *, required: bool) -> None:
    group.add_argument(
        "--image-size",
        type=image_size,
        metavar="HxW",
        help="the model's input size (default: the most common size in the folder)"
        if not required
        else "the model's input size, when its graph leaves it open",
    )
    group.add_argument(
        "--color",
        choices=("grayscale", "rgb"),
        help="the model's input colour (default: grayscale only if every image is)"
        if not required
        else "the model's input colour, when its graph leaves the channel count open",
    )
    group.add_argument(
        "--resize",
        choices=RESIZE,
        required=required,
        help="how an image of another size becomes the input: stretch (bilinear, the whole image), "
        "center_crop (cover, then crop the centre), digit (MNIST-style ink on a black field, fitted when "
        "serving; training images must already have the size)" + ("" if required else " (default: stretch)"),
    )
    group.add_argument("--strict", action="store_true", help="stop at the first unreadable image")
    group.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help="keep the decoded images here and reuse them when nothing changed (default: a temporary "
        "directory, removed after the run)",
    )
    group.add_argument(
        "--max-image-pixels",
        type=bounded(int, minimum=1),
        default=MAX_PIXELS,
        metavar="N",
        help=f"skip (or with --strict refuse) images with more pixels (default: {MAX_PIXELS:,})",
    )


def _import_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path, help="a .onnx file, a .keras file or a SavedModel directory")
    contract = parser.add_argument_group("what the model expects (stated, never guessed)")
    contract.add_argument(
        "--labels",
        type=labels,
        required=True,
        metavar="FILE|a,b,...",
        help="class names in the order of the model's scores: a file with one per line, or a,b,c",
    )
    contract.add_argument(
        "--input-scale",
        type=value_range,
        required=True,
        metavar="BLACK..WHITE",
        help="input values for a black and a white pixel, e.g. 0..1, 0..255 or -1..1",
    )
    contract.add_argument(
        "--softmax", action="store_true", help="the model returns logits: append a softmax to its output"
    )
    _image_arguments(contract, required=True)
    contract.add_argument(
        "--eval-images",
        type=Path,
        metavar="DIR",
        help="evaluate on a labelled folder DIR/<class>/... (or DIR/test/<class>/...): accuracy and "
        "confusion matrix go into the metadata, and the promotion guard compares with the newest version",
    )
    _publish_arguments(parser, "the file name")


def _publish_arguments(parser: argparse.ArgumentParser, default_name: str) -> None:
    out = parser.add_argument_group("publishing")
    out.add_argument(
        "--publish",
        type=repository,
        metavar="REPOSITORY",
        help="publish to this model repository: a directory or s3://bucket/prefix",
    )
    out.add_argument("--name", help=f"model name in the repository (default: {default_name})")
    out.add_argument(
        "--max-regression",
        type=bounded(float, minimum=0),
        default=0.5,
        metavar="POINTS",
        help="refuse to publish when test accuracy is more than this many percentage points below the "
        "newest published version (default: 0.5)",
    )
    out.add_argument("--force", action="store_true", help="publish even if the promotion guard refuses")
    out.add_argument(
        "--candidate",
        action="store_true",
        help="publish as a candidate: loaded by the service, answering unversioned requests only once a "
        "rollout promotes it (docs/rollout.md)",
    )
