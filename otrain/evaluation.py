"""Metrics of a real/bogus classifier from labels and P(real).

The decision rule is the original one: a candidate is real when P(real) > threshold.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn import metrics

__all__ = ["binary_metrics", "confusion"]


def confusion(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict[str, int]:
    """Count true/false positives and negatives at ``threshold`` (real if p > threshold)."""
    predicted = probabilities > threshold
    real = labels == 1
    return {
        "tp": int(np.count_nonzero(predicted & real)),
        "fp": int(np.count_nonzero(predicted & ~real)),
        "tn": int(np.count_nonzero(~predicted & ~real)),
        "fn": int(np.count_nonzero(~predicted & real)),
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
        ``accuracy``, ``precision``, ``recall``, ``f1``, ``mcc``, ``roc_auc`` (NaN when only
        one class is present), ``threshold``, ``n`` and the confusion counts.
    """
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predicted = (probabilities > threshold).astype(int)
    both_classes = len(np.unique(labels)) == 2
    return {
        "accuracy": float(metrics.accuracy_score(labels, predicted)),
        "precision": float(metrics.precision_score(labels, predicted, zero_division=0)),
        "recall": float(metrics.recall_score(labels, predicted, zero_division=0)),
        "f1": float(metrics.f1_score(labels, predicted, zero_division=0)),
        "mcc": float(metrics.matthews_corrcoef(labels, predicted)) if both_classes else math.nan,
        "roc_auc": float(metrics.roc_auc_score(labels, probabilities)) if both_classes else math.nan,
        "threshold": float(threshold),
        "n": len(labels),
        **confusion(labels, probabilities, threshold),
    }
