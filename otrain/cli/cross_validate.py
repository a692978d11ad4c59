"""otrain-cross-validate: grouped, stratified K-fold cross-validation on one cube."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from otrain.cli.app import run_command
from otrain.cli.tf_setup import prepare_tensorflow
from otrain.options import CrossValidateConfig

__all__ = ["main"]

#: Columns of the printed table: metric key, heading.
_SHOWN = {
    "roc_auc": "ROC AUC",
    "average_precision": "PR AUC",
    "accuracy": "accuracy",
    "mcc": "MCC",
    "expected_calibration_error": "ECE",
    "fpr_at_fnr_1pc": "FPR@FNR1%",
}


def _cross_validate(config: CrossValidateConfig) -> None:
    prepare_tensorflow()
    from otrain.train.crossval import cross_validate

    report = cross_validate(config)
    groups = f"{report.n_groups} groups" if report.grouped else "no groups: one per cutout"
    print(f"{config.folds}-fold cross-validation of {config.cube} ({groups})")
    print(f"{'fold':>6}  {'test':>6}  " + "  ".join(f"{heading:>10}" for heading in _SHOWN.values()))
    for row in report.per_fold:
        print(f"{row['fold']:>6}  {row['n_test']:>6}  " + "  ".join(f"{row[key]:>10.4f}" for key in _SHOWN))
    print(f"{'mean':>6}  {'':>6}  " + "  ".join(f"{report.mean[key]:>10.4f}" for key in _SHOWN))
    print(f"{'std':>6}  {'':>6}  " + "  ".join(f"{report.std[key]:>10.4f}" for key in _SHOWN))
    n_scored = sum(row["n_test"] for row in report.per_fold)
    print(f"{'pooled':>6}  {n_scored:>6}  " + "  ".join(f"{report.pooled[key]:>10.4f}" for key in _SHOWN))
    used = ", ".join(f"{row['threshold']:.6g} (fold {row['fold']})" for row in report.per_fold)
    print(
        f"(real if P(real) > the fold's threshold: {used}; std over folds with ddof=1; "
        "pooled: every out-of-fold score, by its fold's threshold)"
    )
    if report.parent_run_id:
        print(f"MLflow parent run {report.parent_run_id}")
    print(f"written: {', '.join(str(path) for path in report.outputs)}, {config.output / 'CNN_training'}/fold-*/")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run otrain-cross-validate."""
    run_command(CrossValidateConfig, _cross_validate, argv)
