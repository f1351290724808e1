"""Report PNGs and the summary table."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.report import plot_confusion, plot_history, summary_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_training_curves_png(tmp_path: Path) -> None:
    history = {"loss": [1.0, 0.5], "accuracy": [0.6, 0.8], "val_loss": [1.1, 0.6], "val_accuracy": [0.5, 0.7]}
    path = plot_history(history, tmp_path / "curves.png", "title")
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert path.stat().st_size > 5000


def test_training_curves_without_validation(tmp_path: Path) -> None:
    path = plot_history({"loss": [1.0], "accuracy": [0.6]}, tmp_path / "curves.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_confusion_matrix_png(tmp_path: Path) -> None:
    confusion = np.array([[5, 1, 0], [0, 7, 2], [1, 0, 9]])
    path = plot_confusion(confusion, ["a", "b", "c"], tmp_path / "confusion.png", "title")
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert path.stat().st_size > 5000


def test_summary_table_aligns_values() -> None:
    table = summary_table([("model", "mnist-cnn"), ("test accuracy", 0.99)])
    lines = table.splitlines()
    assert lines[0] == lines[-1] == "-" * len("model          mnist-cnn")
    assert lines[1] == "model          mnist-cnn"
    assert lines[2] == "test accuracy  0.99"
