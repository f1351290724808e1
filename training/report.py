"""What a run shows a person: training-curve and confusion-matrix PNGs, and the final summary table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

CURVES_FILE = "training_curves.png"
CONFUSION_FILE = "confusion_matrix.png"


def _figure(width: float, height: float) -> Figure:
    # An Agg canvas of its own: PNGs without pyplot's global state or any display.
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_history(history: dict[str, list[float]], path: Path, title: str = "") -> Path:
    """Loss and accuracy per epoch, train beside validation (when there was a validation split)."""
    fig = _figure(10, 4)
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for key, label in ((metric, "train"), (f"val_{metric}", "validation")):
            values = history.get(key)
            if values:
                ax.plot(range(1, len(values) + 1), values, marker="o", label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)
    return path


def plot_confusion(confusion: np.ndarray, labels: Sequence[str], path: Path, title: str = "") -> Path:
    """Test-set confusion matrix (rows: true class, columns: predicted), counts written in each cell."""
    size = max(5.0, 0.6 * len(labels) + 2)
    fig = _figure(size, size)
    ax = fig.subplots()
    ax.imshow(confusion, cmap="Blues")
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, labels, rotation=45, ha="right")
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = confusion.max() / 2 if confusion.size else 0
    for (row, col), count in np.ndenumerate(confusion):
        colour = "white" if count > threshold else "black"
        ax.text(col, row, str(count), ha="center", va="center", fontsize=7, color=colour)
    if title:
        ax.set_title(title)
    fig.savefig(path, dpi=100)
    return path


def summary_table(rows: Sequence[tuple[str, object]]) -> str:
    """A two-column plain-text table, one ``key  value`` row per line, with a rule above and below."""
    width = max((len(key) for key, _ in rows), default=0)
    lines = [f"{key:<{width}}  {value}" for key, value in rows]
    rule = "-" * max((len(line) for line in lines), default=0)
    return "\n".join([rule, *lines, rule])
