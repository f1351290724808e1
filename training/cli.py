"""``python -m training train|import|retrain ...``: train (on a bundled data set or an image folder), import a
model trained elsewhere, or retrain one on client feedback (:mod:`training.retrain_cli`); evaluate, export
and publish one model.

Exit codes: 0 success; 1 export or parity failure; 2 bad usage, bad model name, missing or unusable data, or
a model the service cannot serve; 3 the promotion guard refused to publish. Errors are one line on stderr,
never a traceback. The options are declared in :mod:`training.arguments`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import re
import shlex
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from training import folderlayout, imagefolder, retrain_cli, tfsetup
from training.arguments import PROG, build_parser
from training.config import HyperParameters
from training.data import load_dataset, resolve_data_dir
from training.errors import TrainingError, UsageError
from training.imagefolder import FolderOptions
from training.publish import validate_name

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
    args = build_parser().parse_args(argv)
    command = shlex.join(["python", "-m", "training", *argv])
    try:
        if args.command == "import":
            return _import(args, command=command)
        if args.command == "retrain":
            return retrain_cli.run(args, command=command)
        return _train(args, command=command)
    except TrainingError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def _slug(text: str) -> str:
    """A model name made from a file or folder name: lower case, other characters as ``-``."""
    return re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-_")[:40] or "model"


def _check_repository(path: Path | str | None) -> None:
    if isinstance(path, Path) and path.exists() and not path.is_dir():
        raise UsageError(f"--publish {path}: not a directory")


_FOLDER_OPTIONS = ("image_size", "color", "resize", "test_split", "cache_dir")


def _folder_options(args: argparse.Namespace, *, validation_split: float, seed: int) -> FolderOptions:
    return FolderOptions(
        image_size=args.image_size,
        color=args.color,
        resize=args.resize or "stretch",
        test_split=args.test_split if args.test_split is not None else FolderOptions.test_split,
        validation_split=validation_split,
        seed=seed,
        strict=args.strict,
        max_pixels=args.max_image_pixels,
    )


def _given_or_default(args: argparse.Namespace, key: str) -> Any:
    """The option's value, else the field default of :class:`HyperParameters` (no preset imported)."""
    if getattr(args, key) is not None:
        return getattr(args, key)
    return next(f.default for f in dataclasses.fields(HyperParameters) if f.name == key)


def _train(args: argparse.Namespace, *, command: str) -> int:
    source = args.dataset or _slug(args.images.resolve().name)
    name = validate_name(args.name or f"{source}-{args.preset}")
    _check_repository(args.publish)
    with contextlib.ExitStack() as stack:
        if args.images is None:
            if misplaced := [
                f"--{o.replace('_', '-')}" for o in _FOLDER_OPTIONS if getattr(args, o) is not None
            ]:
                raise UsageError(f"{', '.join(misplaced)} apply to --images only")
            dataset = load_dataset(args.dataset, resolve_data_dir(args.data_dir), download=not args.offline)
        else:
            if args.data_dir is not None or args.offline:
                raise UsageError("--data-dir and --offline apply to --dataset only")
            # The layout and class counts are checked before TensorFlow is imported, so they answer at once.
            layout = folderlayout.scan(args.images)
            early = _folder_options(
                args,
                validation_split=_given_or_default(args, "validation_split"),
                seed=_given_or_default(args, "seed"),
            )
            carve = layout.test is None
            imagefolder.check_counts(layout.classes, layout.train.labels, carve, early, str(args.images))

        # TensorFlow is imported only now, so that usage and data errors above answer at once.
        tfsetup.import_tensorflow()
        from training import pipeline, report
        from training.presets import preset_defaults

        given = {key: getattr(args, key) for key in _HYPERPARAMETERS if getattr(args, key) is not None}
        hp = replace(preset_defaults(args.preset), **given)
        if args.images is not None:
            cache_dir = args.cache_dir or Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="images-"))
            )
            options = _folder_options(args, validation_split=hp.validation_split, seed=hp.seed)
            dataset = imagefolder.load_folder(args.images, options, cache_dir)
        config = pipeline.RunConfig(
            dataset=dataset.name,
            preset=args.preset,
            hp=hp,
            name=name,
            repository=args.publish,
            max_regression=args.max_regression,
            force=args.force,
            command=command,
            candidate=args.candidate,
        )
        settings = " ".join(f"{key}={value}" for key, value in hp.as_json().items())
        print(f"training {name} ({args.preset} on {dataset.name}): {settings}", flush=True)
        outcome = pipeline.run(dataset, config)
        print(report.summary_table(pipeline.summary_rows(dataset, config, outcome)))
    return 0


def _import(args: argparse.Namespace, *, command: str) -> int:
    name = validate_name(args.name or _slug(args.path.stem))
    _check_repository(args.publish)
    if args.path.suffix.lower() == ".onnx":
        tfsetup.require_train_extra("onnx")
    else:  # a Keras file or a SavedModel goes through TensorFlow and tf2onnx
        tfsetup.import_tensorflow()
    from training import importer, report

    config = importer.ImportConfig(
        path=args.path,
        name=name,
        labels=args.labels,
        input_range=args.input_scale,
        resize=args.resize,
        color=args.color,
        image_size=args.image_size,
        softmax=args.softmax,
        eval_images=args.eval_images,
        repository=args.publish,
        max_regression=args.max_regression,
        force=args.force,
        strict=args.strict,
        max_pixels=args.max_image_pixels,
        cache_dir=args.cache_dir,
        command=command,
        candidate=args.candidate,
    )
    outcome = importer.import_model(config)
    print(report.summary_table(importer.summary_rows(config, outcome)))
    return 0
