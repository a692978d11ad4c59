"""otrain-cross-validate: grouped, stratified K-fold cross-validation of the training options.

The folds come from scikit-learn's ``StratifiedGroupKFold`` on the cube's groups (the header
keyword ``otrain-convert --group-keyword`` stored, such as a ZTF objectId), so the alerts of one
object are never in two folds; a cube without groups counts each cutout as its own group.
Fold k is the test set of training k. Its validation set (early stopping) is one fold of a
second ``StratifiedGroupKFold`` of the other folds into about 1 / ``frac`` parts, so it too
holds whole groups; the rest trains. Each training is a complete otrain-train run (every
option honoured), a child of one MLflow parent run, as in the dataset-size study. The model of
fold k then scores fold k: every cutout gets exactly one out-of-fold P(real).

While it runs, ``<output>/.otrain-cross-validate.json`` (:mod:`otrain.train.crossval_resume`) records
its options and, per fold, that its training is starting (written before anything goes into the fold's folder) or has
finished (written before its model scores the fold); it is removed once the scores and
metrics are written. ``--resume`` reads it: a fold that finished is kept, the interrupted one
resumes its training (``otrain-train --resume``), the others are trained. A fold folder
holding a training the record does not know (an earlier cross-validation's, a copy) is never
replaced by ``--resume``, which refuses and names it; ``--overwrite`` replaces it. The whole
run holds the lock ``<output>/.otrain-cross-validate.lock``, so a second cross-validation there
is refused while one runs.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from otrain.data.datacube import Datacube, Split
from otrain.errors import DataError, OptionError
from otrain.io.atomic import write_json_atomic
from otrain.io.jsonfile import read_json
from otrain.io.layout import METRICS_FILE, TRAINING_LOCK
from otrain.io.locking import LockHeldError, describe_holder, is_locked, read_holder
from otrain.io.outputs import OOF_COLUMNS
from otrain.io.progress import announce
from otrain.options import (
    CROSSVAL_FILES,
    CROSSVAL_FOLD_NAME,
    CROSSVAL_RECORD,
    CrossValidateConfig,
    TrainConfig,
)
from otrain.train.crossval_resume import (
    FINISHED,
    KEEP,
    REPLACE,
    REPLACING,
    RESUME,
    STARTED,
    STARTING,
    TRAIN,
    FoldPlan,
    check_output,
    check_record,
    check_resumable,
    describe_folds,
    fold_config,
    fold_is_empty,
    forget_unstarted,
    locked,
    new_record,
    parent_run_id,
    plan_folds,
    read_record,
    write_record,
)
from otrain.train.folds import check_folds, check_group_keyword, fold_splits, groups_of

__all__ = [
    "METRICS",
    "CrossValidationReport",
    "cross_validate",
    "fold_metrics",
]

logger = logging.getLogger("otrain")

#: The figures of each fold, of their mean and spread, and of the pooled out-of-fold scores
#: (keys of :func:`otrain.metrics.evaluation.evaluate`; ``average_precision`` is the PR AUC).
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


#: The figures of a decision at a threshold (the others do not depend on it).
_DECISION_METRICS = ("accuracy", "precision", "recall", "f1", "mcc")


def fold_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict[str, float]:
    """Return the :data:`METRICS` of P(real) against the labels, real if P(real) > ``threshold``."""
    from otrain.metrics.evaluation import evaluate

    figures = evaluate(labels, probabilities, threshold)
    return {name: float(figures[name]) for name in METRICS}


def _train_config(config: CrossValidateConfig, fold: int, action: str = TRAIN) -> TrainConfig:
    """Return the options of fold ``fold``'s training; ``action`` as planned (see :func:`plan_folds`)."""
    shared = config.model_dump(exclude={"folds", "output", "test_frac", "group_keyword", "resume", "overwrite"})
    if config.init_from is not None:  # its checkpoint then names the same file wherever it is resumed from
        shared["init_from"] = config.init_from.resolve()
    name = CROSSVAL_FOLD_NAME.format(fold=fold)
    how = {"resume": action == RESUME, "overwrite": config.overwrite or action == REPLACE}
    try:
        options = TrainConfig.model_validate({**shared, **how, "model_path": config.output, "model_name": name})
    except ValidationError as error:
        raise OptionError(str(error.errors(include_url=False)[0]["msg"]).removeprefix("Value error, ")) from None
    options.preflight()
    return options


def cross_validate(config: CrossValidateConfig) -> CrossValidationReport:
    """Train one model per fold, score every cutout out of fold, and write the scores and metrics.

    With ``config.resume``, the folds that had finished are kept (their models score their
    folds again), the interrupted fold's training resumes, and the others are trained.

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
        When --folds exceeds the groups of a class, a fold's training options are refused, or
        --resume is given other options than the interrupted cross-validation's.
    otrain.io.locking.LockHeldError
        When another otrain-cross-validate runs in ``--output``; the whole run holds its lock
        (``<output>/.otrain-cross-validate.lock``).
    DataError
        On a cube with one class, folds that cannot be split into training and validation, or
        an --init-from model the folds cannot start from (refused before anything is written).
    """
    try:  # before taking the lock: a running cross-validation is named, not waited for
        check_resumable(config)
    except ValueError as error:
        raise OptionError(str(error)) from None
    with locked(config.output):
        try:  # again, now that no other cross-validation can write there
            check_output(config)
        except ValueError as error:
            raise OptionError(str(error)) from None
        return _cross_validate(config)


def _cross_validate(config: CrossValidateConfig) -> CrossValidationReport:
    from otrain.track.tracking import RunInfo, check_tracking_uri, git_commit, open_run, resolve_tracking_uri
    from otrain.train.fit import check_init_from

    cube = Datacube.load(config.cube)
    if cube.n_real == 0 or cube.n_bogus == 0:
        raise DataError(f"{config.cube}: the cube holds only one class; cross-validation needs both")
    check_group_keyword(config, cube)
    groups, grouped = groups_of(cube)
    if not grouped:
        logger.info("%s records no groups (otrain-convert --group-keyword): each cutout is its own group", config.cube)
    check_folds(config, cube.labels, groups, grouped)
    splits = fold_splits(cube.labels, groups, config.folds, config.frac, config.seed)
    data_hash = cube.content_hash()
    previous = read_record(config.output) if config.resume else None
    if previous is not None:
        check_record(config, previous, data_hash)
    plans = plan_folds(config.output, config.folds, previous)
    if not config.resume:
        plans = [FoldPlan(plan.fold, TRAIN, plan.state) for plan in plans]
    configs = {plan.fold: _train_config(config, plan.fold, plan.action) for plan in plans if plan.action != KEEP}
    if configs:
        check_init_from(next(iter(configs.values())), cube)  # the folds differ only in their rows
    for training in configs.values():
        lock = training.output_dir / TRAINING_LOCK
        if is_locked(lock):  # another training there now: refused before anything is written
            raise LockHeldError(
                f"the training folder {training.output_dir} is in use by {describe_holder(read_holder(lock))}; wait "
                f"for it to finish (lock file {lock})"
            )
    uri = resolve_tracking_uri(config.tracking_uri) if config.tracking else None
    if uri is not None:
        check_tracking_uri(uri)
    parent_id = parent_run_id(config, previous, uri) if uri is not None else None
    if previous is not None:
        announce(f"resuming the cross-validation in {config.output}: {describe_folds(plans)}")

    # A new record is first written as its first fold starts: until then, a run that fails leaves
    # the record of the cross-validation it was to replace (--overwrite) as it was.
    record = previous if previous is not None else new_record(config, data_hash)
    written = previous is not None
    if config.overwrite:  # every training there is replaced, each when its fold's turn comes
        record["folds"] = {str(plan.fold): REPLACING for plan in plans if not fold_is_empty(config.output, plan.fold)}
    report = CrossValidationReport(n_groups=len(np.unique(groups)), grouped=grouped)
    scores, thresholds = np.full(len(cube), np.nan), np.full(len(cube), np.nan)
    fold_of = np.zeros(len(cube), dtype=np.int64)

    def mark(fold: int, progress: str | None) -> None:
        nonlocal written
        if progress is None:
            record["folds"].pop(str(fold), None)
        else:
            record["folds"][str(fold)] = progress
        write_record(config.output, record)
        written = True

    def on_ready(fold: int) -> None:
        if record["folds"].get(str(fold)) == REPLACING:
            mark(fold, STARTED)  # its checkpoint is now its own

    def train_fold(plan: FoldPlan, split: Split) -> None:
        from otrain.train.training import train

        fold = plan.fold
        if plan.action != RESUME:  # before anything is written into its folder
            mark(fold, STARTING if fold_is_empty(config.output, fold) else REPLACING)
        try:
            train(configs[fold], lambda run: on_ready(fold), cube=cube, split=split, init_checked=True)
        except BaseException:
            if fold_is_empty(config.output, fold):
                mark(fold, None)  # nothing to resume (a diverged training removes its checkpoint)
            raise
        mark(fold, FINISHED)

    def run_folds() -> None:
        for plan, split in zip(plans, splits, strict=True):
            fold = plan.fold
            announce(
                f"--- fold {fold} of {config.folds}: testing on {len(split.test)} cutouts "
                f"({len(np.unique(groups[split.test]))} groups), validating on {len(split.validation)}, "
                f"training on {len(split.train)}" + (" (finished before: kept)" if plan.action == KEEP else "")
            )
            if plan.action != KEEP:
                train_fold(plan, split)
            row = _score_fold(fold_config(config.output, fold), config.cube, cube, split)
            scores[split.test] = row.pop("_scores")
            thresholds[split.test] = row["threshold"]
            fold_of[split.test] = fold
            report.per_fold.append({"fold": fold, **row})
            if plan.action != KEEP or parent_id is None:  # a reopened parent run holds the kept folds' metrics
                _log_fold(config, fold, row)

    def summarise() -> None:
        from otrain.metrics.evaluation import binary_metrics

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

    try:
        if uri is not None:
            import mlflow

            tags = {
                "otrain.data_hash": data_hash,
                "otrain.cube": str(config.cube),
                "git.commit": git_commit(),
                "mlflow.note.content": f"otrain-cross-validate, {config.folds} folds, on {config.cube}",
            }
            run_name = f"{config.cube.stem}_cross_validation"
            with open_run(uri, config.experiment, run_name=run_name, run_id=parent_id, tags=tags) as parent:
                report.parent_run_id = parent.run_id
                record["mlflow_run"] = RunInfo(parent.run_id, parent.experiment_id, uri).__dict__
                params = {key: value for key, value in config.model_dump(mode="json").items() if value is not None}
                params.update(grouped=grouped, n_groups=report.n_groups)
                existing = mlflow.get_run(parent.run_id).data.params
                mlflow.log_params({key: value for key, value in params.items() if key not in existing})
                run_folds()
                summarise()
                summary = {f"mean_{key}": value for key, value in report.mean.items()}
                summary.update({f"std_{key}": value for key, value in report.std.items()})
                summary.update({f"pooled_{key}": value for key, value in report.pooled.items()})
                mlflow.log_metrics({key: value for key, value in summary.items() if math.isfinite(value)})
                report.outputs = _write_outputs(config, cube, groups, fold_of, scores, thresholds, report)
                for path in report.outputs:
                    mlflow.log_artifact(str(path), artifact_path="cross_validation")
                (config.output / CROSSVAL_RECORD).unlink(missing_ok=True)
        else:
            run_folds()
            summarise()
            report.outputs = _write_outputs(config, cube, groups, fold_of, scores, thresholds, report)
            (config.output / CROSSVAL_RECORD).unlink(missing_ok=True)
    except BaseException:
        if written:
            forget_unstarted(config, record)
        raise
    return report


def _score_fold(config: TrainConfig, cube_path: Path, cube: Datacube, split: Split) -> dict[str, Any]:
    """Score one fold's test rows (of ``cube``, read from ``cube_path``) with its finished training's model.

    The Keras model scores, as it always has here: the fold's figures are the model's own, not
    its twin's (which may differ by float32 roundings). Returns the fold's row of the report.
    """
    from otrain.score.backends import choose_backend
    from otrain.score.scoring import score_cube

    keras = choose_backend(config.model_file, "keras")
    probabilities = score_cube(cube_path, keras, cube=cube.subset(split.test)).probabilities
    metrics_file = config.output_dir / METRICS_FILE
    # The threshold is the training's own: given, 0.5, or chosen for a target rate.
    threshold, epochs_run = read_json(
        metrics_file,
        "not the metrics of a finished training",
        parse=lambda metrics: (float(metrics["threshold"]), int(metrics["epochs_run"])),
    )
    return {
        "n_train": len(split.train),
        "n_validation": len(split.validation),
        "n_test": len(split.test),
        "epochs_run": epochs_run,
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
    from otrain.metrics.evaluation import write_csv

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
