"""Retrain the shipped reference models into a scratch repository; compare test accuracy with the bars.

    python -m bench.reference_models [--data-dir DIR] [--scratch DIR] [--only NAME ...] [--install]

Each model is trained by the same ``python -m training train ...`` command that produced the shipped
version under ``models/`` (recorded in its ``metadata.json``), one at a time, in a fresh process; only the
data directory and the repository differ. Takes about 11 minutes on 2 CPU cores.

``--install`` (``make models``) makes the retrained versions the shipped ones, with their training
artifact ``train/model.keras`` (what ``training retrain`` fine-tunes): where the retrained ``model.onnx``
is the shipped one (the same operators and the same weights, bit for bit: training is seeded and
deterministic on a CPU; tf2onnx may number a constant's name differently from run to run), only
``train/`` is added, so the shipped files stay as they are; otherwise the whole version is replaced (its
recorded command names ``models/``) and the new sha256 is printed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
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


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def same_model(a: Path, b: Path) -> bool:
    """Whether two ONNX files compute the same function: the same operators in order and the same
    weights, bit for bit, whatever their names."""
    import onnx  # the [train] extra

    def shape(path: Path) -> tuple[list[str], list[tuple[tuple[int, ...], int, bytes]]]:
        graph = onnx.load(str(path)).graph
        weights = sorted((tuple(t.dims), t.data_type, t.SerializeToString()) for t in _unnamed(graph))
        return [node.op_type for node in graph.node], weights

    return shape(a) == shape(b)


def _unnamed(graph: Any) -> list[Any]:
    tensors = []
    for tensor in graph.initializer:
        copy = type(tensor)()
        copy.CopyFrom(tensor)
        copy.ClearField("name")
        tensors.append(copy)
    return tensors


def install(name: str, scratch: Path, models: Path) -> str:
    """Make ``scratch``'s newest version of ``name`` the shipped ``models/<name>/1``, with ``train/``;
    what was done, in words."""
    directory = scratch / name
    newest = max(int(p.name) for p in directory.iterdir() if p.name.isdigit())
    source, target = directory / str(newest), models / name / "1"
    if not (source / "train" / "model.keras").is_file():
        raise SystemExit(f"{source} has no train/model.keras")
    if (target / "model.onnx").is_file() and same_model(source / "model.onnx", target / "model.onnx"):
        staged = target / ".train.tmp"
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(source / "train", staged)
        shutil.rmtree(target / "train", ignore_errors=True)
        staged.rename(target / "train")
        return "model.onnx the same: train/ added"
    staged = models / name / ".1.tmp"
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(source, staged)
    metadata = json.loads((staged / "metadata.json").read_text())
    metadata["training"]["command"] = metadata["training"]["command"].replace(str(scratch), "models/")
    (staged / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    if target.exists():
        shutil.rmtree(target)
    staged.rename(target)
    return f"model.onnx differs: version replaced (sha256 {_sha256(target / 'model.onnx')})"


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
    parser.add_argument(
        "--install",
        action="store_true",
        help="make each retrained version that meets its bar the shipped models/<name>/1, with train/",
    )
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
        if args.install and retrained is not None and verdict != "FAIL":
            print(f"  {reference.name}: {install(reference.name, scratch, ROOT / 'models')}", flush=True)
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
