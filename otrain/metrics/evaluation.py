"""Metrics of a real/bogus classifier from labels and P(real).

The decision rule is the original one: a candidate is real when P(real) > threshold.

Operating points are exact: :func:`operating_point` (the FPR at a given FNR and the reverse,
and the threshold that gives them), :func:`threshold_for_fnr` and :func:`threshold_for_fpr`
enumerate every distinct decision the scores allow (``sklearn.metrics.roc_curve`` without
dropping any point), not a grid of thresholds. Their thresholds are float32 numbers, so a
float32 P(real) (every scorer's: Keras, ONNX Runtime, Spark) is decided alike in float32 and in
float64; a threshold that keeps a real cutout scored exactly 0 is the largest float32 below 0.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn import metrics
from sklearn.exceptions import UndefinedMetricWarning

from otrain.errors import DataError
from otrain.io.atomic import atomic_path, write_json_atomic
from otrain.options import CALIBRATION_BINS

__all__ = [
    "OPERATING_RATE",
    "THRESHOLDS",
    "best_threshold",
    "binary_metrics",
    "calibration_curve",
    "evaluate",
    "expected_calibration_error",
    "operating_point",
    "operating_rates",
    "threshold_for_fnr",
    "threshold_for_fpr",
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
    """Metrics at every threshold from 0 to 1 in steps of 0.01 (real if p > t), for the figures and the best threshold.

    The operating points :func:`evaluate` reports are exact (:func:`operating_point`), not read from this grid.

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


#: The rate of the operating points :func:`evaluate` reports: FPR at 1 % FNR and FNR at 1 % FPR.
OPERATING_RATE = 0.01


def _float32_below(score: float, floor: float) -> float:
    """Return the highest threshold below ``score`` that decides as any in ``[floor, score)``.

    The largest float32 below ``score`` when it is not below ``floor`` (always, for the float32
    scores of a model), else the largest float64 below ``score``.
    """
    below = np.float32(score)
    if float(below) >= score:
        below = np.nextafter(below, np.float32(-np.inf))
    return float(below) if float(below) >= floor else float(np.nextafter(score, -np.inf))


def _operating_point(
    labels: np.ndarray, probabilities: np.ndarray, target_fnr: float | None, target_fpr: float | None
) -> dict[str, float]:
    """Choose among every distinct decision of the scores; a class may be missing (its rate is NaN)."""
    real = labels == 1
    n_real, n_bogus = int(np.count_nonzero(real)), int(np.count_nonzero(~real))
    with warnings.catch_warnings():
        # With one class, roc_curve warns that the other's rate is undefined: its counts are 0 here.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        fpr, tpr, thresholds = metrics.roc_curve(real.astype(int), probabilities, pos_label=1, drop_intermediate=False)
    # Point i decides "real if P(real) >= thresholds[i]": none for i = 0, all for the last. The
    # rates are recounted from whole numbers, as a decision's are (1 - 99/100 > 0.01 in floats).
    real_kept = np.rint(np.nan_to_num(tpr) * n_real).astype(int)
    bogus_kept = np.rint(np.nan_to_num(fpr) * n_bogus).astype(int)
    fnrs = (n_real - real_kept) / n_real if n_real else np.full(len(thresholds), math.nan)
    fprs = bogus_kept / n_bogus if n_bogus else np.full(len(thresholds), math.nan)
    scores, last = thresholds[1:], len(thresholds) - 1  # the distinct scores, decreasing
    # "P(real) > t" makes point i's decision for every t in [scores[i], scores[i - 1]).
    if target_fnr is not None:
        point = int(np.flatnonzero(fnrs <= target_fnr)[0])  # the fewest bogus kept: the highest t
        if point == 0:
            threshold = max(1.0, float(scores[0]))
        else:
            threshold = _float32_below(float(scores[point - 1]), float(scores[point]) if point < last else -np.inf)
    else:
        point = int(np.flatnonzero(fprs <= target_fpr)[-1])  # the most real kept: the lowest t
        threshold = float(scores[point]) if point < last else min(0.0, _float32_below(float(scores[-1]), -np.inf))
    return {"threshold": threshold, "fpr": float(fprs[point]), "fnr": float(fnrs[point])}


def _targets(target_fnr: float | None, target_fpr: float | None) -> None:
    if (target_fnr is None) == (target_fpr is None):
        raise ValueError("give exactly one of target_fnr and target_fpr")
    target = target_fnr if target_fnr is not None else target_fpr
    if not 0 <= float(target) <= 1:  # type: ignore[arg-type]
        raise ValueError(f"a target rate is between 0 and 1, got {target!r}")


def operating_point(
    labels: np.ndarray,
    probabilities: np.ndarray,
    *,
    target_fnr: float | None = None,
    target_fpr: float | None = None,
) -> dict[str, float]:
    """Return the exact operating point at a target false-negative or false-positive rate.

    Every distinct decision "real if P(real) > threshold" the scores allow is counted
    (``sklearn.metrics.roc_curve``, no point dropped). With ``target_fnr``: the decision that
    keeps the fewest bogus cutouts while missing at most that fraction of the real ones, at its
    highest threshold (:func:`threshold_for_fnr`). With ``target_fpr``: the one that keeps the
    most real cutouts while accepting at most that fraction of the bogus ones, at its lowest
    threshold (:func:`threshold_for_fpr`). Ties are never split: tied scores are decided alike.

    Parameters
    ----------
    labels : numpy.ndarray
        1 = real, 0 = bogus.
    probabilities : numpy.ndarray
        P(real) of each cutout.
    target_fnr, target_fpr : float, optional
        Exactly one, between 0 and 1.

    Returns
    -------
    dict
        ``threshold`` (a float32 number for float32 scores; the largest float32 below 0 when a
        real cutout scored 0 must be kept; at least 1 when none need be), and the ``fpr`` and
        ``fnr`` of the decision at it, exact.

    Raises
    ------
    DataError
        When the cutouts are not of both classes.
    ValueError
        When not exactly one target is given, or it is not between 0 and 1.
    """
    _targets(target_fnr, target_fpr)
    labels = np.asarray(labels).astype(int)
    if len(np.unique(labels)) < 2:
        held = "no cutout" if len(labels) == 0 else f"only {'real' if labels.any() else 'bogus'} cutouts"
        raise DataError(f"an operating point needs real and bogus cutouts, these hold {held}")
    return _operating_point(labels, np.asarray(probabilities, dtype=np.float64), target_fnr, target_fpr)


def threshold_for_fnr(labels: np.ndarray, probabilities: np.ndarray, target: float) -> float:
    """Return the highest threshold that misses at most a fraction ``target`` of the real cutouts.

    With the decision "real if P(real) > threshold", the threshold sits just below the score of
    the lowest real cutout that must be kept (the largest float32 below it; below 0 when that
    score is 0), so the false-negative rate of these cutouts is at most ``target``, ties
    included, and the fewest bogus ones are kept (see :func:`operating_point`).

    Raises
    ------
    DataError
        When the cutouts hold no real one.
    """
    _targets(target, None)
    labels = np.asarray(labels).astype(int)
    if not np.any(labels == 1):
        raise DataError("--target-fnr: the validation set holds no real cutout to choose a threshold on")
    return _operating_point(labels, np.asarray(probabilities, dtype=np.float64), target, None)["threshold"]


def threshold_for_fpr(labels: np.ndarray, probabilities: np.ndarray, target: float) -> float:
    """Return the lowest threshold that accepts at most a fraction ``target`` of the bogus cutouts.

    With the decision "real if P(real) > threshold", the threshold is the highest score below
    the accepted ones (that of a rejected bogus cutout, or just below every score when all may
    pass), so the false-positive rate of these cutouts is at most ``target``, ties included, and
    the most real ones are kept (see :func:`operating_point`).

    Raises
    ------
    DataError
        When the cutouts hold no bogus one.
    """
    _targets(None, target)
    labels = np.asarray(labels).astype(int)
    if not np.any(labels == 0):
        raise DataError("--target-fpr: the validation set holds no bogus cutout to choose a threshold on")
    return _operating_point(labels, np.asarray(probabilities, dtype=np.float64), None, target)["threshold"]


def operating_rates(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Return the exact operating points at 1 % (:data:`OPERATING_RATE`), as :func:`evaluate` reports them.

    Returns
    -------
    dict
        ``threshold_at_fpr_1pc`` and ``fnr_at_fpr_1pc`` (FPR <= 1 %, the most real kept),
        ``threshold_at_fnr_1pc`` and ``fpr_at_fnr_1pc`` (FNR <= 1 %, the fewest bogus kept);
        all NaN when the cutouts are not of both classes.
    """
    labels = np.asarray(labels).astype(int)
    if len(np.unique(labels)) < 2:
        names = ("threshold_at_fpr_1pc", "fnr_at_fpr_1pc", "threshold_at_fnr_1pc", "fpr_at_fnr_1pc")
        return dict.fromkeys(names, math.nan)
    at_fpr = operating_point(labels, probabilities, target_fpr=OPERATING_RATE)
    at_fnr = operating_point(labels, probabilities, target_fnr=OPERATING_RATE)
    return {
        "threshold_at_fpr_1pc": at_fpr["threshold"],
        "fnr_at_fpr_1pc": at_fpr["fnr"],
        "threshold_at_fnr_1pc": at_fnr["threshold"],
        "fpr_at_fnr_1pc": at_fnr["fpr"],
    }


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

    At ``threshold``: :func:`binary_metrics`, average precision, FPR and FNR. The exact operating
    points at 1 % (:func:`operating_rates`): the threshold giving FPR <= 1 % (and the FNR there)
    and the one giving FNR <= 1 % (and the FPR there), NaN without both classes. Over the
    threshold table: the threshold maximising F1 + MCC (the original's "best threshold"). Plus
    the expected calibration error. ``table``, when given, is the :func:`threshold_table` of the
    same labels and probabilities, not computed again.
    """
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    result = binary_metrics(labels, probabilities, threshold)
    both_classes = len(np.unique(labels)) == 2
    result["average_precision"] = (
        float(metrics.average_precision_score(labels, probabilities)) if both_classes else math.nan
    )
    result.update(operating_rates(labels, probabilities))
    table = table if table is not None else threshold_table(labels, probabilities)
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
