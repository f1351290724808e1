"""Command-line value types: bounded numbers, image sizes, value ranges, label lists, repositories.

Each is an argparse ``type``: it converts the text or raises ``argparse.ArgumentTypeError`` with a
message that says what is expected, which the command line turns into one line on stderr (exit 2).
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from pathlib import Path


def bounded(
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


def image_size(text: str) -> tuple[int, int]:
    """``HxW`` (e.g. ``64x64``) as ``(height, width)``, each 1..4096."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected HxW such as 64x64, got {text!r}")
    height, width = int(match[1]), int(match[2])
    if not (1 <= height <= 4096 and 1 <= width <= 4096):
        raise argparse.ArgumentTypeError(f"height and width must be 1..4096, got {text}")
    return height, width


def value_range(text: str) -> tuple[float, float]:
    """``BLACK..WHITE`` (``0..1``, ``0..255``, ``-1..1``): the input values of a black and a white pixel."""
    number = r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*"
    match = re.fullmatch(f"{number}\\.\\.{number}", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected BLACK..WHITE such as 0..1 or 0..255, got {text!r}")
    black, white = float(match[1]), float(match[2])
    if black == white:
        raise argparse.ArgumentTypeError(f"black and white must differ, got {text}")
    return black, white


def labels(text: str) -> tuple[str, ...]:
    """A file with one label per line (blank lines skipped), or ``a,b,c``; at least two, all different."""
    path = Path(text)
    if path.is_file():
        try:
            found = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as exc:
            raise argparse.ArgumentTypeError(f"cannot read {text}: {exc}") from None
        found = [label for label in found if label]
    else:
        found = [label.strip() for label in text.split(",")]
        if any(not label for label in found):
            raise argparse.ArgumentTypeError(
                f"{text!r} is neither a file nor a list a,b,... of non-empty labels"
            )
    if len(found) < 2:
        raise argparse.ArgumentTypeError(f"need at least two labels, got {len(found)} from {text!r}")
    duplicates = sorted({label for label in found if found.count(label) > 1})
    if duplicates:
        raise argparse.ArgumentTypeError(f"duplicate label(s): {', '.join(duplicates)}")
    return tuple(found)


def repository(text: str) -> Path | str:
    """A model repository: a directory, or ``s3://bucket/prefix`` (kept as text: a path folds ``//``)."""
    from service.storage import parse_location

    try:
        return parse_location(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
