"""Every figure otrain draws. Figures are written atomically and always closed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from otrain.atomic import atomic_path

__all__ = ["plot_training_curve", "save_figure"]


def save_figure(figure: Figure, path: Path) -> Path:
    """Save ``figure`` as PNG to ``path`` atomically, then close it."""
    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(figure)
    return path


def plot_training_curve(history: Sequence[dict[str, float]], metric: str, title: str, path: Path) -> Path:
    """Draw a training metric and its validation counterpart against the epoch.

    Parameters
    ----------
    history : sequence of dict
        One dict per epoch with ``metric`` and ``val_<metric>``.
    metric : str
        "loss" or "accuracy".
    title : str
        Figure title.
    path : Path
        PNG to write.

    Returns
    -------
    Path
        ``path``.
    """
    epochs = [int(row["epoch"]) for row in history]
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(epochs, [row[metric] for row in history], marker="o", label="train")
    axes.plot(epochs, [row[f"val_{metric}"] for row in history], marker="o", label="validation")
    axes.set_xlabel("epoch")
    axes.set_ylabel(metric)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    return save_figure(figure, path)
