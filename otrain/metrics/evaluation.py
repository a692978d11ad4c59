"""Metrics of a real/bogus classifier from labels and P(real).

The decision rule is the original one: a candidate is real when P(real) > threshold.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn import metrics

from otrain.io.atomic import atomic_path, write_json_atomic
from otrain.options import CALIBRATION_BINS

__all__ = [
    "THRESHOLDS",
    "best_threshold",
    "binary_metrics",
    "calibration_curve",
    "evaluate",
    "expected_calibration_error",
    "threshold_table",
    "write_csv",
    "write_json",
]


#: The four outcomes of a decision as (truth, decision) pairs, in the order of their counts.
_TRUTH, _DECIDED = np.array([1, 0, 0, 1]), np.array([1, 1, 0, 0])


def _decision_metrics(labels: np.ndarray, predicted: np.ndarray) -> dict[str, float | int]:
    """Accuracy, precision, recall, F1, MCC, FPR, FNR and the counts of 0/1 decisions (scikit-learn).

    scikit-learn counts the outcomes once; the figures are then its own metrics of the four
    (truth, decision) pairs weighted by their counts, which are the figures of the whole set,
    computed in constant time: the threshold table needs them at 101 thresholds.
    """
    tn, fp, fn, tp = (int(count) for count in metrics.confusion_matrix(labels, predicted, labels=[0, 1]).ravel())
    weight = np.array([tp, fp, tn, fn])
    precision, recall, f1, _ = metrics.precision_recall_fscore_support(
        _TRUTH, _DECIDED, sample_weight=weight, average="binary", zero_division=0
    )
    return {
        "accuracy": float(metrics.accuracy_score(_TRUTH, _DECIDED, sample_weight=weight)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "mcc": float(metrics.matthews_corrcoef(_TRUTH, _DECIDED, sample_weight=weight)),
        "fpr": fp / max(fp + tn, 1),
        "fnr": fn / max(fn + tp, 1),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def binary_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict[str, float | int]:
    """Accuracy, precision, recall, F1, MCC and ROC AUC at ``threshold``, plus the counts.

    Parameters
    ----------
    labels : numpy.ndarray
        1 = real, 0 = bogus.
    probabilities : numpy.ndarray
        P(real) of each candidate.
    threshold : float
        Real if P(real) > threshold.

    Returns
    -------
    dict
        ``accuracy``, ``precision``, ``recall``, ``f1``, ``mcc`` and ``roc_auc`` (both NaN when
        only one class is present), ``fpr``, ``fnr``, ``threshold``, ``n`` and the confusion counts.
    """
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    both_classes = len(np.unique(labels)) == 2
    result = _decision_metrics(labels, (probabilities > threshold).astype(int))
    if not both_classes:
        result["mcc"] = math.nan
    result["roc_auc"] = float(metrics.roc_auc_score(labels, probabilities)) if both_classes else math.nan
    return {**result, "threshold": float(threshold), "n": len(labels)}


#: Thresholds of the threshold table, 0 to 1 in steps of 0.01.
THRESHOLDS = np.round(np.arange(0, 101) / 100, 2)


def threshold_table(labels: np.ndarray, probabilities: np.ndarray) -> list[dict[str, float | int]]:
    """Metrics at every threshold from 0 to 1 in steps of 0.01 (real if p > t).

    Parameters
    ----------
    labels : numpy.ndarray
        1 = real, 0 = bogus.
    probabilities : numpy.ndarray
        P(real).

    Returns
    -------
    list of dict
        One row per threshold: threshold, accuracy, precision, recall, f1, mcc (0 when a class
        is missing among the labels or the decisions), fpr, fnr and the confusion counts.
    """
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    return [
        {"threshold": float(threshold), **_decision_metrics(labels, (probabilities > threshold).astype(int))}
        for threshold in THRESHOLDS
    ]


def best_threshold(table: Sequence[dict[str, float | int]]) -> dict[str, float | int]:
    """Return the row of a :func:`threshold_table` that maximises F1 + MCC (the original's best threshold)."""
    return max(table, key=lambda row: row["f1"] + row["mcc"])


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, n_bins: int = CALIBRATION_BINS) -> float:
    """Compute the expected calibration error: bin-weighted ``|mean P(real) - fraction real|``, equal bins."""
    bins = np.minimum((probabilities * n_bins).astype(int), n_bins - 1)
    error = 0.0
    for index in range(n_bins):
        members = bins == index
        if members.any():
            error += members.mean() * abs(probabilities[members].mean() - labels[members].mean())
    return float(error)


def calibration_curve(
    labels: np.ndarray, probabilities: np.ndarray, n_bins: int = CALIBRATION_BINS
) -> list[dict[str, float | int]]:
    """Per-bin mean P(real), fraction of real candidates and count (the reliability diagram)."""
    bins = np.minimum((probabilities * n_bins).astype(int), n_bins - 1)
    rows = []
    for index in range(n_bins):
        members = bins == index
        rows.append(
            {
                "bin_low": index / n_bins,
                "bin_high": (index + 1) / n_bins,
                "mean_probability": float(probabilities[members].mean()) if members.any() else math.nan,
                "fraction_real": float(labels[members].mean()) if members.any() else math.nan,
                "count": int(members.sum()),
            }
        )
    return rows


def evaluate(
    labels: np.ndarray,
    probabilities: np.ndarray,
    threshold: float,
    table: Sequence[dict[str, float | int]] | None = None,
) -> dict[str, float | int]:
    """Every figure of merit of otrain-diagnostics, as one flat dictionary (JSON for DVC).

    At ``threshold``: :func:`binary_metrics`, average precision, FPR and FNR. Over the threshold
    table: the threshold giving FPR <= 1 % (and the FNR there), the one giving FNR <= 1 % (and
    the FPR there), and the one maximising F1 + MCC (the original's "best threshold"). Plus the
    expected calibration error. ``table``, when given, is the :func:`threshold_table` of the
    same labels and probabilities, not computed again.
    """
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    result = binary_metrics(labels, probabilities, threshold)
    both_classes = len(np.unique(labels)) == 2
    result["average_precision"] = (
        float(metrics.average_precision_score(labels, probabilities)) if both_classes else math.nan
    )
    table = table if table is not None else threshold_table(labels, probabilities)
    at_low_fpr = [row for row in table if row["fpr"] <= 0.01]
    at_low_fnr = [row for row in table if row["fnr"] <= 0.01]
    if at_low_fpr:
        row = min(at_low_fpr, key=lambda item: item["threshold"])
        result["threshold_at_fpr_1pc"], result["fnr_at_fpr_1pc"] = row["threshold"], row["fnr"]
    if at_low_fnr:
        row = max(at_low_fnr, key=lambda item: item["threshold"])
        result["threshold_at_fnr_1pc"], result["fpr_at_fnr_1pc"] = row["threshold"], row["fpr"]
    best = best_threshold(table)
    result["best_threshold"] = best["threshold"]
    result["best_f1"], result["best_mcc"] = best["f1"], best["mcc"]
    result["expected_calibration_error"] = expected_calibration_error(labels, probabilities)
    return result


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> Path:
    """Write rows as CSV with the given columns, atomically; the data behind a figure.

    The header is written even when there are no rows, so the file is always recognisable.
    """
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """Write a metrics dictionary as JSON (NaN as null) atomically, for ``dvc metrics``."""
    return write_json_atomic(path, data)
