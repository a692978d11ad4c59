"""otrain-diagnostics and otrain-plot-results: how good is a model on a labelled cube.

Both load the model once and predict once (:mod:`otrain.score.scoring`), with the Keras model or its
ONNX twin (``--backend``). They accept cubes with 1-D or one-hot labels (the original tools took
only one-hot ones), and write only into their own output folders: old exported cutouts are
replaced file by file, and nothing else in a user's folder is touched.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from otrain.data.datacube import Datacube
from otrain.io import outputs as formats
from otrain.io.outputs import png_software
from otrain.io.progress import track
from otrain.metrics.evaluation import (
    best_threshold,
    calibration_curve,
    evaluate,
    expected_calibration_error,
    threshold_table,
    write_csv,
    write_json,
)
from otrain.options import BIN_LIMITS, DIAGNOSTIC_FOLDERS, PLOT_FILES, DiagnosticsConfig, PlotResultsConfig
from otrain.score.backends import BackendChoice
from otrain.score.scoring import sample_outcomes, score_cube

__all__ = [
    "candidate_title",
    "log_stage",
    "remove_own_images",
    "run_diagnostics",
    "run_plot_results",
    "shown_plane",
]

logger = logging.getLogger("otrain")


def remove_own_images(folder: Path, pattern: str) -> None:
    """Remove the numbered images of an earlier run in ``folder``: only PNGs otrain wrote.

    Parameters
    ----------
    folder : Path
        An export folder.
    pattern : str
        The glob of the images (``cutout_*.png``); a matching file otrain did not write stays.
    """
    for old in folder.glob(pattern):
        if png_software(old).startswith(formats.PNG_SOFTWARE):
            old.unlink()


def shown_plane(cube: Datacube) -> int:
    """Return the channel exported pictures show: the difference (``DIFF``) when the cube names it, else the first."""
    return cube.planes.index("DIFF") if cube.planes is not None and "DIFF" in cube.planes else 0


def candidate_title(cube: Datacube, row: int, probability: float) -> str:
    """Return the title of one exported cutout: its id, P(real) and magnitude (or 'unknown')."""
    magnitude = cube.mags[row]
    error = cube.errmags[row]
    mag_text = "unknown" if math.isnan(magnitude) else f"{magnitude:.2f} +/- {error:.2f}"
    return f"Cand: {cube.candids[row]}  P(real) = {probability:.3f}\nMag: {mag_text}"


@dataclass
class DiagnosticsReport:
    """What otrain-diagnostics produced."""

    metrics: dict[str, Any]
    exported: dict[str, int] = field(default_factory=dict)
    outputs: list[Path] = field(default_factory=list)


def run_diagnostics(config: DiagnosticsConfig, choice: BackendChoice) -> DiagnosticsReport:
    """Score the cube, write the metrics and export the cutouts of each outcome.

    Writes ``<path-diagnostics>/diagnostics.json`` (every metric of
    :func:`otrain.metrics.evaluation.evaluate`), ``threshold_table.csv``, and PNG cutouts: every false
    positive and false negative, and a seeded sample of ``--n-examples`` true positives and
    true negatives, in the original folder tree. ``choice``: what scores, chosen by the command
    from ``config.model_path`` and ``config.backend`` (:func:`otrain.score.backends.choose_backend`).
    """
    from otrain.metrics.plots import plot_cutout

    scored = score_cube(config.path_cube_validation, choice)
    cube, probabilities = scored.cube, scored.probabilities
    table = threshold_table(cube.labels, probabilities)
    metrics = evaluate(cube.labels, probabilities, config.threshold, table)
    out = config.path_diagnostics
    out.mkdir(parents=True, exist_ok=True)
    report = DiagnosticsReport(metrics=metrics)
    report.outputs.append(write_json(out / "diagnostics.json", metrics))
    report.outputs.append(write_csv(out / "threshold_table.csv", table, formats.THRESHOLD_TABLE_COLUMNS))

    jobs = []
    for outcome, rows in sample_outcomes(scored.outcomes(config.threshold), config.n_examples, config.seed).items():
        folder = out / DIAGNOSTIC_FOLDERS[outcome]
        folder.mkdir(parents=True, exist_ok=True)
        remove_own_images(folder, "cutout_*.png")
        report.exported[outcome] = len(rows)
        jobs += [(folder / f"cutout_{index}.png", int(row)) for index, row in enumerate(rows)]
    plane = shown_plane(cube)
    for path, row in track(jobs, len(jobs), "exporting cutouts"):
        plot_cutout(cube.cube[row, :, :, plane], candidate_title(cube, row, probabilities[row]), path)
    report.outputs += [out / folder for folder in DIAGNOSTIC_FOLDERS.values()]
    log_stage(config.model_path, metrics, report.outputs[:2], "diagnostics", config.tracking)
    return report


def _bins(values: np.ndarray, vmax: float) -> np.ndarray:
    """Bin edges of the original: [0, vmin], then 5 equal bins from vmin to vmax.

    vmin is the smallest value other than 0 and 99 (the pipelines' placeholders). Unlike the
    original, every bin but the last is half-open, so no candidate is counted twice.
    """
    usable = values[np.isfinite(values) & (values != 0) & (values != 99) & (values >= 0) & (values <= vmax)]
    vmin = float(usable.min()) if usable.size else 0.0
    return np.concatenate([[0.0], np.linspace(vmin, vmax, 6)])


def _curves_by_bin(
    values: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, vmax: float, kind: str
) -> list[dict[str, Any]]:
    from sklearn.metrics import precision_recall_curve, roc_curve

    edges = _bins(values, vmax)
    curves = []
    for index, (low, high) in enumerate(itertools.pairwise(edges)):
        last = index == len(edges) - 2
        members = (values >= low) & ((values <= high) if last else (values < high))
        if len(np.unique(labels[members])) < 2:
            continue  # a curve needs both classes
        if kind == "roc":
            fpr, tpr, thresholds = roc_curve(labels[members], probabilities[members])
            best = int(np.argmax(np.sqrt(tpr * (1 - fpr))))
            curve = {"fpr": fpr, "tpr": tpr, "thresholds": thresholds, "best_threshold": float(thresholds[best])}
        else:
            precision, recall, thresholds = precision_recall_curve(labels[members], probabilities[members])
            f_score = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
            best = int(np.argmax(f_score))
            curve = {
                "precision": precision[:-1],
                "recall": recall[:-1],
                "thresholds": thresholds,
                "best_threshold": float(thresholds[best]),
            }
        curves.append({"bin": index, "low": float(low), "high": float(high), "n": int(members.sum()), **curve})
    return curves


def _curve_rows(curves: list[dict[str, Any]], x: str, y: str) -> list[dict[str, Any]]:
    rows = []
    for curve in curves:
        for x_value, y_value, threshold in zip(curve[x], curve[y], curve["thresholds"], strict=True):
            rows.append(
                {
                    "bin": curve["bin"],
                    "low": curve["low"],
                    "high": curve["high"],
                    "n": curve["n"],
                    x: float(x_value),
                    y: float(y_value),
                    "threshold": float(min(threshold, 1.0)),
                    "best_threshold": curve["best_threshold"],
                }
            )
    return rows


def run_plot_results(config: PlotResultsConfig, choice: BackendChoice) -> list[Path]:
    """Draw the six original figures and the reliability diagram, each with its CSV data.

    ``choice``: what scores, chosen by the command from ``config.model_path`` and ``config.backend``
    (:func:`otrain.score.backends.choose_backend`).

    Returns
    -------
    list of Path
        Every file written (PNG and CSV), all inside ``--path-plots``.
    """
    from otrain.metrics import plots

    scored = score_cube(config.path_cube_validation, choice)
    cube, probabilities, labels = scored.cube, scored.probabilities, scored.cube.labels
    out = config.path_plots
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def data(stem: str, rows: list[dict[str, Any]]) -> Path:
        """Write ``<stem>.csv`` and return ``<stem>.png``, the figure drawn from it."""
        written.append(write_csv(out / f"{stem}.csv", rows, PLOT_FILES[stem]))
        return out / f"{stem}.png"

    for name, values in (("errmag", cube.errmags), ("mag", cube.mags)):
        vmax = BIN_LIMITS[name]
        roc = _curves_by_bin(values, labels, probabilities, vmax, "roc")
        recall = _curves_by_bin(values, labels, probabilities, vmax, "pr")
        figure = data(f"{name}_ROC", _curve_rows(roc, "fpr", "tpr"))
        written.append(plots.plot_curves_by_bin(roc, "fpr", "tpr", f"ROC per {name} bin", figure, True))
        figure = data(f"{name}_recall", _curve_rows(recall, "recall", "precision"))
        title = f"Precision-recall per {name} bin"
        written.append(plots.plot_curves_by_bin(recall, "recall", "precision", title, figure, False))
        for curve in roc:
            logger.info(
                "%s bin %.3g-%.3g: best threshold (G-mean) %.3f",
                name,
                curve["low"],
                curve["high"],
                curve["best_threshold"],
            )
    table = threshold_table(labels, probabilities)
    best = best_threshold(table)["threshold"]
    written.append(plots.plot_f1_mcc(table, best, data("model_F1_MCC", table)))
    distribution = [
        {"candid": candid, "label": int(label), "p_real": float(p)}
        for candid, label, p in zip(cube.candids.tolist(), labels, probabilities, strict=True)
    ]
    figure = data("prob_distribution", distribution)
    written.append(plots.plot_probability_distribution(labels, probabilities, config.threshold, figure))
    calibration = calibration_curve(labels, probabilities)
    ece = expected_calibration_error(labels, probabilities)
    written.append(plots.plot_calibration(calibration, ece, data("calibration", calibration)))
    log_stage(
        config.model_path,
        {"best_threshold": best, "expected_calibration_error": ece},
        written,
        "plot_results",
        config.tracking,
    )
    return written


def log_stage(
    model_path: Path, metrics: dict[str, Any], artifacts: list[Path], stage: str, enabled: bool = True
) -> None:
    """Log a stage's metrics (prefixed with its name) and files into the model's training run."""
    if not enabled:
        return
    from otrain.track.tracking import log_into_training_run

    run_id = log_into_training_run(
        model_path.parent, metrics=metrics, artifacts=artifacts, artifact_path=stage, prefix=f"{stage}_"
    )
    if run_id:
        logger.info("logged to MLflow run %s", run_id)
