"""Write MNIST digits out as a folder of PNGs, the layout ``python -m training train --images`` reads.

    .venv/bin/python -m tools.digit_folder digits --per-class 100              # digits/<label>/*.png
    .venv/bin/python -m tools.digit_folder rotated --per-class 10 --rotate 90 --split test

The getting-started walk-through (docs/getting-started.md) uses it to have "your own images" without
any: a folder to train on, and rotated digits the model gets wrong, to send back as feedback. The digits
come from ``DATA_DIR`` (or ``--data-dir``), or are downloaded by Keras when absent. Exit 2 on bad usage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from training.data import load_dataset, resolve_data_dir
from training.errors import TrainingError


def write_folder(
    out: Path, images: np.ndarray, labels: np.ndarray, names: list[str], per_class: int, rotate: int
) -> int:
    """Write the first ``per_class`` images of each class to ``out/<name>/<index>.png``; the count."""
    written = 0
    for class_id, name in enumerate(names):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in np.flatnonzero(labels == class_id)[:per_class]:
            image = Image.fromarray(images[index].reshape(images.shape[1], images.shape[2]))
            image.rotate(rotate).save(folder / f"{int(index):05d}.png")
            written += 1
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.digit_folder", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write (created; existing files are kept)")
    parser.add_argument("--per-class", type=int, default=100, help="images per digit (default 100)")
    parser.add_argument("--rotate", type=int, default=0, choices=(0, 90, 180, 270), help="degrees")
    parser.add_argument("--split", choices=("train", "test"), default="train", help="MNIST split to read")
    parser.add_argument("--data-dir", help="where mnist/ lives (default: DATA_DIR or ../shared/data)")
    args = parser.parse_args(argv)
    if not 1 <= args.per_class <= 5000:
        parser.error("--per-class must be between 1 and 5000")
    try:
        mnist = load_dataset("mnist", resolve_data_dir(args.data_dir), download=True)
    except TrainingError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    images, labels = (mnist.x_train, mnist.y_train) if args.split == "train" else (mnist.x_test, mnist.y_test)
    count = write_folder(
        args.out, np.asarray(images), np.asarray(labels), mnist.labels, args.per_class, args.rotate
    )
    print(f"wrote {count} images to {args.out}/<digit>/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
