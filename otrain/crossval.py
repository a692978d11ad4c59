"""otrain-cross-validate: grouped, stratified K-fold cross-validation of the training options.

The folds come from scikit-learn's ``StratifiedGroupKFold`` on the cube's groups (the header
keyword ``otrain-convert --group-keyword`` stored, such as a ZTF objectId), so the alerts of one
object are never in two folds; a cube without groups counts each cutout as its own group.
Fold k is the test set of training k. Its validation set (early stopping) is one fold of a
second ``StratifiedGroupKFold`` of the other folds into about 1 / ``frac`` parts, so it too
holds whole groups; the rest trains. Each training is a complete otrain-train run (every
option honoured), a child of one MLflow parent run, as in the dataset-size study. The model of
fold k then scores fold k: every cutout gets exactly one out-of-fold P(real).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from otrain.atomic import write_json_atomic
from otrain.config import CROSSVAL_FILES, CROSSVAL_FOLD_NAME, CrossValidateConfig, TrainConfig
from otrain.datacube import Datacube, Split
from otrain.errors import DataError, OptionError
from otrain.outputs import OOF_COLUMNS
from otrain.progress import announce

__all__ = ["METRICS", "CrossValidationReport", "cross_validate", "fold_metrics", "fold_splits", "groups_of"]

logger = logging.getLogger("otrain")

#: The figures of each fold, of their mean and spread, and of the pooled out-of-fold scores
#: (keys of :func:`otrain.evaluation.evaluate`; ``average_precision`` is the PR AUC).
METRICS = (
    "roc_auc",
    "average_precision",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "mcc",
    "expected_calibration_error",
    "fpr_at_fnr_1pc",
)


@dataclass
class CrossValidationReport:
    """Per-fold and summary metrics, and the files written."""

    per_fold: list[dict[str, Any]] = field(default_factory=list)
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)
    pooled: dict[str, float] = field(default_factory=dict)
    n_groups: int = 0
    grouped: bool = False
    outputs: list[Path] = field(default_factory=list)
    parent_run_id: str | None = None


def groups_of(cube: Datacube) -> tuple[np.ndarray, bool]:
    """Return the group of every cutout, and whether the cube recorded them.

    Parameters
    ----------
    cube : Datacube
        The cube.

    Returns
    -------
    numpy.ndarray
        Text, one value per cutout: the cube's groups, else each row's own index.
    bool
        True when the groups are the cube's.
    """
    if cube.groups is not None:
        return cube.groups, True
    return np.arange(len(cube)).astype(str), False


def _check_group_keyword(config: CrossValidateConfig, cube: Datacube) -> None:
    """With --group-keyword, the cube must hold the groups of that keyword."""
    wanted = config.group_keyword
    if wanted is None:
        return
    if cube.groups is None:
        raise DataError(
            f"{config.cube}: the cube records no groups; convert the cutouts with "
            f"otrain-convert --group-keyword {wanted}"
        )
    if cube.group_keyword is not None and cube.group_keyword.upper() != wanted.upper():
        raise DataError(
            f"{config.cube}: the cube's groups are values of {cube.group_keyword}, not {wanted}; convert the cutouts "
            f"with otrain-convert --group-keyword {wanted}"
        )


def _groups_per_class(labels: np.ndarray, groups: np.ndarray) -> dict[int, int]:
    """Count the distinct groups holding at least one cutout of each class."""
    return {label: len(np.unique(groups[labels == label])) for label in (1, 0)}


def _has_both_classes(labels: np.ndarray) -> bool:
    return bool(np.any(labels == 1) and np.any(labels == 0))


def fold_splits(labels: np.ndarray, groups: np.ndarray, folds: int, frac: float, seed: int) -> list[Split]:
    """Split rows into ``folds`` grouped, stratified (training, validation, test) splits.

    Parameters
    ----------
    labels : numpy.ndarray
        1 = real, 0 = bogus.
    groups : numpy.ndarray
        The group of each row; a group is never in two of a split's sets, nor in two test sets.
    folds : int
        Number of folds; the test sets partition the rows.
    frac : float
        About this fraction of the other folds' rows validates (early stopping).
    seed : int
        Seed of the shuffles.

    Returns
    -------
    list of Split
        One per fold, sorted row indices.

    Raises
    ------
    DataError
        When the other folds of a fold cannot give training and validation sets that both hold
        real and bogus cutouts (too few groups of a class).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    outer = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    splits = []
    for fold, (rest, test) in enumerate(outer.split(np.zeros(len(labels)), labels, groups), start=1):
        per_class = _groups_per_class(labels[rest], groups[rest])
        if min(per_class.values()) < 2:
            raise DataError(
                f"fold {fold}: the other folds hold {per_class[1]} group(s) with real cutouts and {per_class[0]} with "
                "bogus ones; training and validation need two of each (use fewer --folds)"
            )
        n_parts = max(2, min(round(1 / frac), *per_class.values()))
        inner = StratifiedGroupKFold(n_splits=n_parts, shuffle=True, random_state=seed)
        for train_rows, validation_rows in inner.split(np.zeros(len(rest)), labels[rest], groups[rest]):
            train, validation = rest[train_rows], rest[validation_rows]
            if _has_both_classes(labels[train]) and _has_both_classes(labels[validation]):
                splits.append(Split(train=np.sort(train), validation=np.sort(validation), test=np.sort(test)))
                break
        else:
            raise DataError(
                f"fold {fold}: no grouped validation set of the other folds holds both classes (use fewer --folds)"
            )
    return splits


#: The figures of a decision at a threshold (the others do not depend on it).
_DECISION_METRICS = ("accuracy", "precision", "recall", "f1", "mcc")


def fold_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict[str, float]:
    """Return the :data:`METRICS` of P(real) against the labels, real if P(real) > ``threshold``."""
    from otrain.evaluation import evaluate

    figures = evaluate(labels, probabilities, threshold)
    return {name: float(figures[name]) for name in METRICS}


def _check_folds(config: CrossValidateConfig, labels: np.ndarray, groups: np.ndarray, grouped: bool) -> None:
    per_class = _groups_per_class(labels, groups)
    fewest = min(per_class.values())
    if config.folds > fewest:
        what = "groups" if grouped else "cutouts (the cube has no groups)"
        raise OptionError(
            f"--folds: {config.folds} folds need at least {config.folds} {what} of each class; {config.cube} has "
            f"{per_class[1]} holding real cutouts and {per_class[0]} holding bogus ones; give at most {fewest}"
        )


def _train_config(config: CrossValidateConfig, fold: int) -> TrainConfig:
    shared = config.model_dump(exclude={"folds", "output", "test_frac", "group_keyword"})
    name = CROSSVAL_FOLD_NAME.format(fold=fold)
    try:
        return TrainConfig.model_validate({**shared, "model_path": config.output, "model_name": name})
    except ValidationError as error:
        raise OptionError(str(error.errors(include_url=False)[0]["msg"]).removeprefix("Value error, ")) from None


def cross_validate(config: CrossValidateConfig) -> CrossValidationReport:
    """Train one model per fold, score every cutout out of fold, and write the scores and metrics.

    Parameters
    ----------
    config : CrossValidateConfig
        Validated options.

    Returns
    -------
    CrossValidationReport
        The metrics of every fold, their mean and standard deviation, the pooled metrics.

    Raises
    ------
    OptionError
        When --folds exceeds the groups of a class, or a fold's training options are refused.
    DataError
        On a cube with one class, or folds that cannot be split into training and validation.
    """
    from otrain.tracking import check_tracking_uri, git_commit, open_run, resolve_tracking_uri

    cube = Datacube.load(config.cube)
    if cube.n_real == 0 or cube.n_bogus == 0:
        raise DataError(f"{config.cube}: the cube holds only one class; cross-validation needs both")
    _check_group_keyword(config, cube)
    groups, grouped = groups_of(cube)
    if not grouped:
        logger.info("%s records no groups (otrain-convert --group-keyword): each cutout is its own group", config.cube)
    _check_folds(config, cube.labels, groups, grouped)
    splits = fold_splits(cube.labels, groups, config.folds, config.frac, config.seed)
    configs = [_train_config(config, fold) for fold in range(1, config.folds + 1)]
    report = CrossValidationReport(n_groups=len(np.unique(groups)), grouped=grouped)
    scores, thresholds = np.full(len(cube), np.nan), np.full(len(cube), np.nan)
    fold_of = np.zeros(len(cube), dtype=np.int64)

    def run_folds() -> None:
        for fold, (split, train_config) in enumerate(zip(splits, configs, strict=True), start=1):
            announce(
                f"--- fold {fold} of {config.folds}: testing on {len(split.test)} cutouts "
                f"({len(np.unique(groups[split.test]))} groups), validating on {len(split.validation)}, "
                f"training on {len(split.train)}"
            )
            row = _run_fold(train_config, cube, split)
            scores[split.test] = row.pop("_scores")
            thresholds[split.test] = row["threshold"]
            fold_of[split.test] = fold
            report.per_fold.append({"fold": fold, **row})
            _log_fold(config, fold, row)

    def summarise() -> None:
        from otrain.evaluation import binary_metrics

        for name in METRICS:
            values = np.array([row[name] for row in report.per_fold], dtype=np.float64)
            finite = values[np.isfinite(values)]
            report.mean[name] = float(finite.mean()) if len(finite) else math.nan
            report.std[name] = float(finite.std(ddof=1)) if len(finite) > 1 else math.nan
        report.pooled.update(fold_metrics(cube.labels, scores, 0.5))
        # Each cutout is decided by its own fold's threshold (they differ with --target-fnr):
        # P(real) > t exactly when P(real) - t > 0.
        decided = binary_metrics(cube.labels, scores - thresholds, 0.0)
        report.pooled.update({name: float(decided[name]) for name in _DECISION_METRICS})

    if config.tracking:
        import mlflow

        uri = resolve_tracking_uri(config.tracking_uri)
        check_tracking_uri(uri)
        tags = {
            "otrain.data_hash": cube.content_hash(),
            "otrain.cube": str(config.cube),
            "git.commit": git_commit(),
            "mlflow.note.content": f"otrain-cross-validate, {config.folds} folds, on {config.cube}",
        }
        with open_run(uri, config.experiment, run_name=f"{config.cube.stem}_cross_validation", tags=tags) as parent:
            report.parent_run_id = parent.run_id
            params = {key: value for key, value in config.model_dump(mode="json").items() if value is not None}
            mlflow.log_params({**params, "grouped": grouped, "n_groups": report.n_groups})
            run_folds()
            summarise()
            summary = {f"mean_{key}": value for key, value in report.mean.items()}
            summary.update({f"std_{key}": value for key, value in report.std.items()})
            summary.update({f"pooled_{key}": value for key, value in report.pooled.items()})
            mlflow.log_metrics({key: value for key, value in summary.items() if math.isfinite(value)})
            report.outputs = _write_outputs(config, cube, groups, fold_of, scores, thresholds, report)
            for path in report.outputs:
                mlflow.log_artifact(str(path), artifact_path="cross_validation")
    else:
        run_folds()
        summarise()
        report.outputs = _write_outputs(config, cube, groups, fold_of, scores, thresholds, report)
    return report


def _run_fold(config: TrainConfig, cube: Datacube, split: Split) -> dict[str, Any]:
    """Train on one fold's split, then score its test rows with the saved model."""
    from otrain.model import load_model
    from otrain.scoring import predict
    from otrain.training import train

    result = train(config, cube=cube, split=split)
    probabilities = predict(load_model(result.model_file), cube.cube[split.test])
    threshold = float(result.metrics["threshold"])  # the training's own: given, 0.5, or chosen for a target rate
    return {
        "n_train": len(split.train),
        "n_validation": len(split.validation),
        "n_test": len(split.test),
        "epochs_run": int(result.metrics["epochs_run"]),
        "threshold": threshold,
        **fold_metrics(cube.labels[split.test], probabilities, threshold),
        "_scores": probabilities,
    }


def _log_fold(config: CrossValidateConfig, fold: int, row: dict[str, Any]) -> None:
    """Log a fold's metrics into the parent run, the fold number as the step (a curve per metric)."""
    if not config.tracking:
        return
    import mlflow

    values = {f"fold_{name}": float(row[name]) for name in METRICS if math.isfinite(row[name])}
    mlflow.log_metrics(values, step=fold)


def _write_outputs(
    config: CrossValidateConfig,
    cube: Datacube,
    groups: np.ndarray,
    fold_of: np.ndarray,
    scores: np.ndarray,
    thresholds: np.ndarray,
    report: CrossValidationReport,
) -> list[Path]:
    from otrain.evaluation import write_csv

    rows = [
        {
            "index": index,
            "candid": cube.candids[index].item(),
            "group": str(groups[index]),
            "label": int(cube.labels[index]),
            "fold": int(fold_of[index]),
            "p_real": float(scores[index]),
            "threshold": float(thresholds[index]),
        }
        for index in range(len(cube))
    ]
    table = write_csv(config.output / CROSSVAL_FILES[0], rows, OOF_COLUMNS)
    summary = {
        "cube": str(config.cube),
        "data_hash": cube.content_hash(),
        "folds": config.folds,
        "grouped": report.grouped,
        "n_cutouts": len(cube),
        "n_groups": report.n_groups,
        "seed": config.seed,
        "per_fold": report.per_fold,
        "mean": report.mean,
        "std": report.std,
        "pooled": report.pooled,
    }
    metrics = write_json_atomic(config.output / CROSSVAL_FILES[1], summary)
    return [table, metrics]
