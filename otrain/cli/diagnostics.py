"""otrain-diagnostics: metrics of a model on a labelled cube, and its misclassified cutouts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NoReturn

from otrain.cli.app import run_command
from otrain.cli.tf_setup import choose_scorer
from otrain.options import DiagnosticsConfig

__all__ = ["main"]

_ROWS = (
    ("accuracy", "accuracy"),
    ("precision", "precision"),
    ("recall", "recall (true positive rate)"),
    ("f1", "F1 score"),
    ("mcc", "Matthews correlation coefficient"),
    ("roc_auc", "ROC AUC"),
    ("average_precision", "average precision (area under precision-recall)"),
    ("fpr", "false positive rate"),
    ("fnr", "false negative rate"),
    ("expected_calibration_error", "expected calibration error"),
)


def _diagnostics(config: DiagnosticsConfig) -> None:
    choice = choose_scorer(config.model_path, config.backend)
    from otrain.judge.analysis import run_diagnostics

    report = run_diagnostics(config, choice)
    metrics = report.metrics
    print(f"{metrics['n']} candidates scored with {choice.backend}, real if P(real) > {config.threshold}")
    for key, label in _ROWS:
        value = metrics.get(key)
        print(f"  {label:50} {'n/a' if value is None or value != value else f'{value:.4f}'}")
    matrix = f"[[{metrics['tn']}, {metrics['fp']}], [{metrics['fn']}, {metrics['tp']}]]"
    print(f"  confusion matrix [[TN, FP], [FN, TP]]: {matrix}")
    # Exact operating points (NaN without both classes); the thresholds in full, as they decide.
    if math.isfinite(metrics["threshold_at_fpr_1pc"]):
        threshold, fnr = metrics["threshold_at_fpr_1pc"], metrics["fnr_at_fpr_1pc"]
        print(f"  FPR <= 1 % from threshold {threshold:.9g} (FNR there {fnr:.4f})")
    if math.isfinite(metrics["threshold_at_fnr_1pc"]):
        threshold, fpr = metrics["threshold_at_fnr_1pc"], metrics["fpr_at_fnr_1pc"]
        print(f"  FNR <= 1 % up to threshold {threshold:.9g} (FPR there {fpr:.4f})")
    print(f"  best threshold (max F1 + MCC): {metrics['best_threshold']:.2f}")
    exported = ", ".join(f"{count} {outcome}" for outcome, count in report.exported.items())
    print(f"exported cutouts: {exported}")
    print(f"written: {config.path_diagnostics}/diagnostics.json, threshold_table.csv, validation_set/")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run otrain-diagnostics."""
    run_command(DiagnosticsConfig, _diagnostics, argv)
