"""Retrain the shipped reference models into a scratch repository; compare test accuracy with the bars.

    python -m bench.reference_models [--data-dir DIR] [--scratch DIR] [--only NAME ...]

Each model is trained by the same ``python -m training train ...`` command that produced the shipped
version under ``models/`` (recorded in its ``metadata.json``), one at a time, in a fresh process; only the
data directory and the repository differ. Takes about 11 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Reference:
    """A shipped model: its training arguments and the test accuracy it must reach (``None``: report)."""

    name: str
    args: str
    bar: float | None

    def command(self, data_dir: str, repository: str) -> list[str]:
        """The ``python -m training train ...`` command line: data from ``data_dir``, into ``repository``."""
        prefix = ["python", "-m", "training", "train", "--data-dir", data_dir]
        return [*prefix, *shlex.split(self.args), "--publish", repository]


REFERENCES = (
    Reference(
        "mnist-mlp",
        "--dataset mnist --preset mlp --epochs 5 --batch-size 128 --optimizer rmsprop --name mnist-mlp",
        0.977,
    ),
    Reference("mnist-cnn", "--dataset mnist --preset cnn --name mnist-cnn", 0.990),
    Reference("fashion-cnn", "--dataset fashion-mnist --preset cnn --name fashion-cnn", 0.905),
    Reference("cifar10-cnn", "--dataset cifar10 --preset cifar-cnn --name cifar10-cnn", None),
)

#: How the shipped versions were made: the same arguments, data from the sibling checkout, into models/.
SHIPPED_DATA_DIR = "../shared/data"
SHIPPED_REPOSITORY = "models/"


def newest_metadata(repository: Path, name: str) -> dict[str, Any] | None:
    directory = repository / name
    numbers = (
        sorted(int(p.name) for p in directory.glob("*") if p.name.isdigit()) if directory.is_dir() else []
    )
    if not numbers:
        return None
    metadata: dict[str, Any] = json.loads((directory / str(numbers[-1]) / "metadata.json").read_text())
    return metadata


def retrain(reference: Reference, data_dir: str, scratch: Path, log_dir: Path) -> dict[str, Any] | None:
    """Run the reference's command into ``scratch``; its metadata, or ``None`` if the run failed."""
    command = reference.command(data_dir, str(scratch))
    log = log_dir / f"{reference.name}.log"
    print(f"$ {shlex.join(command)}  (log: {log})", flush=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with log.open("w") as out:
        result = subprocess.run([sys.executable, *command[1:]], cwd=ROOT, env=env, stdout=out, stderr=out)
    if result.returncode != 0:
        print(f"  failed with exit code {result.returncode}; see {log}", flush=True)
        return None
    return newest_metadata(scratch, reference.name)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.reference_models",
        description="Retrain the shipped reference models into a scratch repository and compare test "
        "accuracy with the bars.",
    )
    parser.add_argument("--data-dir", default=os.environ.get("DATA_DIR") or SHIPPED_DATA_DIR)
    parser.add_argument(
        "--scratch",
        type=Path,
        help="repository to retrain into (default: a new temporary one); a reused one applies the promotion "
        "guard against its earlier results",
    )
    parser.add_argument("--only", nargs="+", choices=[r.name for r in REFERENCES], help="retrain only these")
    args = parser.parse_args(argv)
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="reference-models-"))
    logs = scratch / ".logs"  # a dot directory: not a model name, so repository scanners skip it
    logs.mkdir(parents=True, exist_ok=True)

    rows = []
    for reference in REFERENCES:
        if args.only and reference.name not in args.only:
            continue
        shipped = newest_metadata(ROOT / "models", reference.name)
        expected = shlex.join(reference.command(SHIPPED_DATA_DIR, SHIPPED_REPOSITORY))
        if shipped is not None and shipped["training"]["command"] != expected:
            print(f"note: shipped {reference.name} was made by: {shipped['training']['command']}", flush=True)
        started = time.perf_counter()
        retrained = retrain(reference, args.data_dir, scratch, logs)
        elapsed = time.perf_counter() - started
        accuracy = retrained["metrics"]["accuracy"] if retrained else None
        verdict = "report" if reference.bar is None else "FAIL"
        if accuracy is not None and reference.bar is not None and accuracy >= reference.bar:
            verdict = "ok"
        rows.append(
            (
                reference.name,
                "report" if reference.bar is None else f">= {reference.bar:.1%}",
                _percent(shipped["metrics"]["accuracy"] if shipped else None),
                _percent(accuracy),
                f"{retrained['training']['epochs_run']}" if retrained else "-",
                f"{elapsed:.0f} s",
                verdict,
            )
        )

    header = ("model", "bar", "shipped", "retrained", "epochs", "run time", "verdict")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    print()
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    print(f"\nscratch repository: {scratch}")
    return 0 if all(row[-1] != "FAIL" for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
