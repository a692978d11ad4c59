"""Every figure otrain draws, written atomically.

Figures are plain :class:`matplotlib.figure.Figure` objects, which need no pyplot and no GUI
backend: importing this module changes no global matplotlib state, and nothing is left open.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from otrain import __version__
from otrain.io.atomic import atomic_path
from otrain.io.outputs import PNG_SOFTWARE

__all__ = [
    "plot_calibration",
    "plot_curves_by_bin",
    "plot_cutout",
    "plot_f1_mcc",
    "plot_histograms",
    "plot_overlay",
    "plot_overlay_grid",
    "plot_probability_distribution",
    "plot_series",
    "plot_spread",
    "plot_training_curve",
    "save_figure",
]


def save_figure(figure: Figure, path: Path) -> Path:
    """Save ``figure`` as PNG to ``path`` atomically.

    The PNG's ``Software`` text chunk names otrain, so that a later run recognises the file as
    its own and may replace it (and never replaces a user's image of the same name).
    """
    software = f"{PNG_SOFTWARE} {__version__} (matplotlib {matplotlib.__version__})"
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100, bbox_inches="tight", metadata={"Software": software})
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
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    axes.plot(epochs, [row[metric] for row in history], marker="o", label="train")
    axes.plot(epochs, [row[f"val_{metric}"] for row in history], marker="o", label="validation")
    axes.set_xlabel("epoch")
    axes.set_ylabel(metric)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    return save_figure(figure, path)


def _zscale(image: np.ndarray) -> tuple[float, float]:
    from astropy.visualization import ZScaleInterval

    low, high = (float(limit) for limit in ZScaleInterval().get_limits(image))
    if not (np.isfinite(low) and np.isfinite(high) and low < high):  # a flat or degenerate plane
        finite = image[np.isfinite(image)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if low >= high:
            low, high = low - 0.5, high + 0.5
    return low, high


def plot_cutout(image: np.ndarray, title: str, path: Path) -> Path:
    """Draw one cutout plane (ZScale, linear grey, origin upper, as the original) with a title."""
    low, high = _zscale(image)
    figure = Figure(figsize=(3, 3.3))
    axes = figure.subplots()
    axes.imshow(image, cmap="gray", vmin=low, vmax=high, origin="upper", interpolation="nearest")
    axes.set_title(title, fontsize=8)
    axes.set_xticks([])
    axes.set_yticks([])
    return save_figure(figure, path)


def plot_curves_by_bin(
    curves: Sequence[dict[str, Any]], x: str, y: str, title: str, path: Path, diagonal: bool
) -> Path:
    """Draw one curve per value bin (ROC: x=fpr, y=tpr; precision-recall: x=recall, y=precision)."""
    figure = Figure(figsize=(6, 5))
    axes = figure.subplots()
    for curve in curves:
        axes.plot(curve[x], curve[y], label=f"{curve['low']:.3g} to {curve['high']:.3g} (n={curve['n']})")
    if diagonal:
        axes.plot([0, 1], [0, 1], "k--", lw=1, label="no skill")
        axes.plot([0, 0, 1], [0, 1, 1], "k:", lw=1, label="ideal")
    axes.set_xlabel(x)
    axes.set_ylabel(y)
    axes.set_title(title)
    axes.set_xlim(-0.02, 1.02)
    axes.set_ylim(-0.02, 1.02)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="lower right" if diagonal else "lower left")
    return save_figure(figure, path)


def plot_f1_mcc(table: Sequence[dict[str, float]], best: float, path: Path) -> Path:
    """MCC against F1 over the thresholds, the best threshold (max F1 + MCC) marked."""
    figure = Figure(figsize=(6, 5))
    axes = figure.subplots()
    f1 = [row["f1"] for row in table]
    mcc = [row["mcc"] for row in table]
    axes.plot(f1, mcc, marker=".", lw=1)
    best_row = next(row for row in table if row["threshold"] == best)
    axes.plot(best_row["f1"], best_row["mcc"], "r*", ms=14, label=f"Best threshold = {best:.2f}")
    axes.plot([0], [0], "kx", label="worst case")
    axes.plot([1], [1], "go", label="best case")
    axes.set_xlabel("F1 score")
    axes.set_ylabel("MCC")
    axes.set_title("F1 and MCC for thresholds 0 to 1")
    axes.grid(alpha=0.3)
    axes.legend()
    return save_figure(figure, path)


def plot_probability_distribution(labels: np.ndarray, probabilities: np.ndarray, threshold: float, path: Path) -> Path:
    """Histograms of P(real) for the truly real and the truly bogus candidates."""
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    edges = np.linspace(0, 1, 21)
    axes.hist(probabilities[labels == 1], bins=edges, alpha=0.6, label="real (true class)", color="tab:blue")
    axes.hist(probabilities[labels == 0], bins=edges, alpha=0.6, label="bogus (true class)", color="tab:red")
    axes.axvline(threshold, color="k", ls="--", label=f"threshold {threshold:g}")
    axes.set_yscale("log")
    axes.set_xlabel("P(real)")
    axes.set_ylabel("candidates")
    axes.legend()
    return save_figure(figure, path)


def plot_spread(spread: np.ndarray, path: Path) -> Path:
    """Histogram of an ensemble's spread (the standard deviation of its members' P(real)) over the scored candidates."""
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    # The members' P(real) lie in [0, 1]: their standard deviation is at most 0.5.
    axes.hist(spread, bins=np.linspace(0, 0.5, 26), color="tab:purple")
    axes.set_yscale("log")
    axes.set_xlabel("spread of the members' P(real) (standard deviation)")
    axes.set_ylabel("candidates")
    return save_figure(figure, path)


def plot_calibration(rows: Sequence[dict[str, float]], ece: float, path: Path) -> Path:
    """Reliability diagram: fraction of real candidates against mean P(real), per bin."""
    figure = Figure(figsize=(5, 5))
    axes = figure.subplots()
    used = [row for row in rows if row["count"]]
    axes.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    axes.plot([row["mean_probability"] for row in used], [row["fraction_real"] for row in used], "o-", label="model")
    axes.set_xlabel("mean P(real) in bin")
    axes.set_ylabel("fraction of real candidates")
    axes.set_title(f"Reliability (ECE = {ece:.3f})")
    axes.legend()
    return save_figure(figure, path)


def plot_histograms(
    groups: Sequence[tuple[str, np.ndarray]],
    edges: np.ndarray,
    title: str,
    xlabel: str,
    path: Path,
    log: bool = False,
    normalise: bool = False,
    lines: Sequence[float] = (),
) -> Path:
    """Overlaid step histograms of several groups on the same bins, optional vertical lines."""
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    for label, values in groups:
        weights = np.full(len(values), 1.0 / len(values)) if normalise and len(values) else None
        axes.hist(values, bins=edges, histtype="step", lw=1.5, label=f"{label} ({len(values)})", weights=weights)
    for value in lines:
        axes.axvline(value, color="r", ls="--", lw=1)
    if log:
        axes.set_yscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel("fraction" if normalise else "candidates")
    axes.set_title(title)
    axes.legend(fontsize=7)
    return save_figure(figure, path)


def _draw_overlay(axes: Any, image: np.ndarray, cam: np.ndarray) -> None:
    low, high = _zscale(image)
    axes.imshow(image, cmap="gray", vmin=low, vmax=high, origin="upper", interpolation="nearest")
    axes.imshow(cam, cmap="jet", alpha=0.5, vmin=0, vmax=1, origin="upper", interpolation="bilinear")
    axes.set_xticks([])
    axes.set_yticks([])


def plot_overlay(image: np.ndarray, cam: np.ndarray, title: str, path: Path) -> Path:
    """Draw a cutout (ZScale grey) with its class activation map in "jet" at half opacity."""
    figure = Figure(figsize=(3, 3.3))
    axes = figure.subplots()
    _draw_overlay(axes, image, cam)
    axes.set_title(title, fontsize=7)
    return save_figure(figure, path)


def plot_overlay_grid(
    images: Sequence[np.ndarray], cams: Sequence[np.ndarray], labels: Sequence[str], title: str, path: Path
) -> Path:
    """Up to 25 overlays on a 5-column grid, one summary figure per outcome."""
    columns = 5
    rows = max(1, -(-len(images) // columns))
    figure = Figure(figsize=(2 * columns, 2 * rows + 0.5))
    axes_grid = figure.subplots(rows, columns, squeeze=False)
    for axes in axes_grid.flat:
        axes.axis("off")
    for axes, image, cam, label in zip(axes_grid.flat, images, cams, labels, strict=False):
        _draw_overlay(axes, image, cam)
        axes.set_title(label, fontsize=7)
    figure.suptitle(title)
    return save_figure(figure, path)


def plot_series(
    x: Sequence[float], series: dict[str, Sequence[float]], xlabel: str, ylabel: str, title: str, path: Path
) -> Path:
    """One line per named series against a shared x axis."""
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    for label, values in series.items():
        axes.plot(x, values, marker="o", label=label)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    return save_figure(figure, path)
