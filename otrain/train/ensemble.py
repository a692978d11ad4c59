"""otrain-train --folds K: a cross-fitted ensemble, trained on every labelled cutout outside the test set.

The test set is held out as for a single model (the same rows). The other cutouts are split into
K folds with scikit-learn's ``StratifiedGroupKFold`` on the cube's groups
(:func:`otrain.train.folds.groups_of`), so that the cutouts of one object are never in two folds.
Member k trains on every fold but fold k, for ``--epochs`` (there is no validation set, hence no
early stopping), from ``--init-from`` when given; it then scores fold k, which it never saw. These
out-of-fold scores, one per cutout and each from one member, fit ``--calibration`` and choose the
threshold (``--target-fnr``, ``--target-fpr``). The saved model is one Keras model
(:func:`otrain.nets.ensemble.build_ensemble`) that averages the members' log-odds and applies the
calibration, with a third output column, the spread of the members' P(real); it has an ONNX twin,
and the test metrics come from it.

The calibration is fitted on single members' scores, while the saved model calibrates the mean
of K members' log-odds: averaging draws the log-odds towards 0 where the members disagree, so
the ensemble's calibrated P(real) is a little less extreme than a member's; the card records the
expected calibration error of both on the test set (``calibration.ece_test_after``: the
ensemble's; ``ece_oof_after``: the members' out-of-fold scores).

An ensemble's training is not resumable (``--folds`` excludes ``--resume``): an interrupted one
has written nothing but its lock.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

import numpy as np

from otrain import __version__
from otrain.data.datacube import Datacube, Split, cube_split, record_split
from otrain.errors import DataError, OptionError
from otrain.io.ids import candidate_key
from otrain.io.layout import (
    ACCURACY_CURVE,
    CHECKPOINT_FOLDER,
    HISTORY_FILE,
    LOSS_CURVE,
    METRICS_FILE,
    TEST_CUBE,
    TRAINING_LOCK,
    twin_path,
)
from otrain.io.locking import exclusive_lock
from otrain.io.progress import announce
from otrain.metrics.evaluation import binary_metrics, expected_calibration_error, operating_rates, write_json
from otrain.options import TrainConfig
from otrain.score.scoring import predict, predict_columns
from otrain.track.tracking import RunInfo, check_tracking_uri, dvc_tags, git_commit, resolve_tracking_uri
from otrain.train.checkpoint import STAGING, interrupt_between_steps
from otrain.train.fit import (
    TrainingDivergedError,
    check_init_from,
    class_weights,
    initialise_from,
    make_dataset,
    new_model,
)
from otrain.train.folds import ensemble_folds, groups_of
from otrain.train.postfit import PARITY_CUTOUTS, choose_threshold, export_twin
from otrain.train.publish import TrainingResult, finish, tracked, write_history
from otrain.train.training import check_cube, training_batch_size

__all__ = ["train_ensemble"]


def _fit_member(config: TrainConfig, cube: Datacube, train_rows: np.ndarray, member: int) -> tuple[Any, list[dict]]:
    """Train one member on ``train_rows`` for ``--epochs``; return it and its history."""
    import keras

    keras.utils.set_random_seed(config.seed + member)
    batch_size = training_batch_size(config, len(train_rows))
    split = Split(train=train_rows, validation=np.empty(0, np.int64), test=np.empty(0, np.int64))
    model = new_model(config, cube, split, batch_size, 1)
    if config.init_from is not None:
        initialise_from(model, config.init_from, cube.planes)
    labels = cube.labels[train_rows]
    dataset = make_dataset(cube.cube[train_rows], labels, batch_size, config.seed + member, config.augment, True)
    history: list[dict] = []

    class EpochEnd(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            interrupted()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs or {}
            row = {"epoch": epoch + 1, "loss": float(logs.get("loss", np.nan))}
            row["accuracy"] = float(logs.get("accuracy", np.nan))
            if not np.isfinite(row["loss"]):
                raise TrainingDivergedError(
                    f"member {member + 1}: training diverged at epoch {epoch + 1}: loss is {row['loss']}; "
                    "try a lower --learning-rate (or --normalisation robust)"
                )
            history.append(row)
            announce(f"member {member + 1}/{config.folds} epoch {epoch + 1}/{config.epochs}: loss {row['loss']:.4f}")

    with interrupt_between_steps() as interrupted:
        model.fit(
            dataset,
            epochs=config.epochs,
            shuffle=False,
            class_weight=class_weights(labels, config.class_weight),
            callbacks=[EpochEnd()],
            verbose=0,
        )
    return model, history


def _mean_history(histories: list[list[dict]]) -> list[dict[str, float]]:
    """Return the members' mean training loss and accuracy per epoch (no validation columns)."""
    return [
        {
            "epoch": float(epoch + 1),
            "loss": float(np.mean([history[epoch]["loss"] for history in histories])),
            "accuracy": float(np.mean([history[epoch]["accuracy"] for history in histories])),
            "val_loss": float("nan"),
            "val_accuracy": float("nan"),
        }
        for epoch in range(min(len(history) for history in histories))
    ]


def train_ensemble(
    config: TrainConfig,
    on_ready: Callable[[RunInfo | None], None] | None = None,
    *,
    cube: Datacube | None = None,
    test_rows: np.ndarray | None = None,
) -> TrainingResult:
    """Train ``--folds`` members, calibrate on their out-of-fold scores, and write the ensemble.

    Writes what otrain-train writes for one model (model, card, ONNX twin, test cube, history of
    the members' mean training loss, curves, metrics, MLflow run), but no validation cube.

    Parameters
    ----------
    config : TrainConfig
        Validated options (``folds`` set).
    on_ready : callable, optional
        Called with the MLflow run (or None) once tracking is set up, before training.
    cube : Datacube, optional
        The cube, when the caller has it in memory already (else read from ``config.cube``).
    test_rows : numpy.ndarray, optional
        The test set chosen by the caller (an outer cross-validation); default: the rows
        ``--split-by`` holds out, as for one model. The card records the split as 'given'.

    Raises
    ------
    DataError
        On a cube that cannot be trained on, or a member whose training folds hold one class.
    OptionError
        On more folds than groups of a class, or an unreachable tracking store.
    """
    if config.folds is None:
        raise ValueError("train_ensemble needs --folds")
    cube = Datacube.load(config.cube) if cube is None else cube
    check_cube(cube, config)
    if test_rows is None:
        held, method = cube_split(cube, config.split_by, config.frac, config.test_frac, config.seed, config.cube)
        test = held.test
        rest = np.sort(np.concatenate([held.train, held.validation]))
    else:
        method, test = "given", np.sort(np.asarray(test_rows, dtype=np.int64))
        rest = np.setdiff1d(np.arange(len(cube)), test)
    groups, grouped = groups_of(cube)
    folds = ensemble_folds(cube.labels, groups, rest, config.folds, config.seed)
    for index, fold in enumerate(folds):
        training = np.setdiff1d(rest, fold)
        if len(np.unique(cube.labels[training])) < 2:
            raise DataError(
                f"{config.cube}: member {index + 1}'s training folds hold one class only; use fewer --folds"
            )
    tracking_uri = resolve_tracking_uri(config.tracking_uri)
    if config.tracking:
        check_tracking_uri(tracking_uri)
    check_init_from(config, cube)
    with exclusive_lock(config.output_dir / TRAINING_LOCK, f"the training folder {config.output_dir}"):
        if not config.overwrite and (config.holds_training() or (config.output_dir / CHECKPOINT_FOLDER).is_dir()):
            raise OptionError(
                f"--model-name: {config.output_dir} already holds a training; pass --overwrite to replace it"
            )
        tags = {
            "otrain.version": __version__,
            "otrain.data_hash": cube.content_hash(),
            "otrain.cube": str(config.cube),
            "git.commit": git_commit(),
            "mlflow.note.content": f"otrain-train {config.name} --folds {config.folds} on {config.cube}",
            **dvc_tags(config.cube),
        }
        with tracked(config, tracking_uri, None, tags) as run:
            return _train_and_write(config, cube, test, folds, grouped, method, run, on_ready)


def _fold_record(
    cube: Datacube, fold: np.ndarray, labels: np.ndarray, scores: np.ndarray, threshold: float, member: int
) -> dict[str, Any]:
    """Return the card's record of one fold: its candidates, and the metrics of the member that held it out."""
    return {
        "member": member,
        "candids": [candidate_key(candid) for candid in cube.candids[fold]],
        "n": len(fold),
        "n_real": int(np.count_nonzero(labels == 1)),
        "oof_metrics": binary_metrics(labels, scores, threshold) if len(np.unique(labels)) == 2 else None,
    }


def _train_and_write(
    config: TrainConfig,
    cube: Datacube,
    test: np.ndarray,
    folds: list[np.ndarray],
    grouped: bool,
    method: str,
    run: RunInfo | None,
    on_ready: Callable[[RunInfo | None], None] | None,
) -> TrainingResult:
    import keras
    import tensorflow as tf

    from otrain.metrics.plots import plot_training_curve
    from otrain.nets.calibration import apply_calibration, fit_calibration
    from otrain.nets.dihedral import VIEWS
    from otrain.nets.ensemble import DEFAULT_AVERAGE, build_ensemble
    from otrain.nets.model import save_model
    from otrain.nets.tta import with_tta
    from otrain.train.distribute import configure_tensorflow

    configure_tensorflow(config)
    if run is not None:
        import mlflow

        params = {key: value for key, value in config.model_dump(mode="json").items() if value is not None}
        params.update(n_test=len(test), n_folds_rows=int(sum(len(fold) for fold in folds)))
        mlflow.log_params(params)
    if on_ready is not None:
        on_ready(run)
    rest = np.sort(np.concatenate(folds))
    members, histories = [], []
    oof_columns = np.zeros((len(cube), 2))
    for index, fold in enumerate(folds):
        member, history = _fit_member(config, cube, np.setdiff1d(rest, fold), index)
        if config.tta:
            member = with_tta(member)  # each member averages its views; the spread is across members
        oof_columns[fold] = predict_columns(member, cube.cube[fold])
        members.append(member)
        histories.append(history)
    oof_labels = cube.labels[rest]
    fit = fit_calibration(oof_labels, oof_columns[rest], config.calibration)
    oof_raw = oof_columns[rest, 1]
    oof = apply_calibration(oof_columns[rest], fit) if fit.method != "none" else oof_raw
    threshold, threshold_rule = choose_threshold(config, oof_labels, oof, chosen_on="out-of-fold scores")
    model = build_ensemble(members, temperature=fit.temperature, bias=fit.bias, average=DEFAULT_AVERAGE)
    test_x, test_labels = cube.cube[test], cube.labels[test]
    probabilities = predict(model, test_x)
    raw_test = predict(build_ensemble(members, average=DEFAULT_AVERAGE), test_x)
    metrics = binary_metrics(test_labels, probabilities, threshold)
    metrics.update(operating_rates(test_labels, probabilities))  # exact FPR at 1 % FNR and the reverse
    metrics["expected_calibration_error"] = expected_calibration_error(test_labels, probabilities)
    metrics["epochs_run"] = config.epochs
    calibration = {
        "method": fit.method,
        "temperature": fit.temperature,
        "bias": fit.bias,
        "fitted_on": fit.fitted_on,
        "fitted_on_scores": "out-of-fold, each cutout scored by the one member that did not train on it",
        "fraction_real": float(np.mean(oof_labels == 1)),
        "ece_oof_before": expected_calibration_error(oof_labels, oof_raw),
        "ece_oof_after": expected_calibration_error(oof_labels, oof),
        "ece_test_before": expected_calibration_error(test_labels, raw_test),
        "ece_test_after": metrics["expected_calibration_error"],
    }
    all_oof = np.zeros(len(cube))
    all_oof[rest] = oof
    folds_record = {
        "k": len(folds),
        "method": "StratifiedGroupKFold" if grouped else "StratifiedKFold (the cube records no groups)",
        "grouped": grouped,
        "seed": config.seed,
        "average": DEFAULT_AVERAGE,
        "folds": [
            _fold_record(cube, fold, cube.labels[fold], all_oof[fold], threshold, index)
            for index, fold in enumerate(folds)
        ],
        "oof_metrics": {
            **binary_metrics(oof_labels, oof, threshold),
            "expected_calibration_error": calibration["ece_oof_after"],
        },
    }
    history = _mean_history(histories)

    staged = config.output_dir / CHECKPOINT_FOLDER / STAGING
    shutil.rmtree(config.output_dir / CHECKPOINT_FOLDER, ignore_errors=True)
    staged.mkdir(parents=True)
    model_file = staged / config.model_file.name
    outputs = [save_model(model, model_file)]
    # Beyond PARITY_CUTOUTS, the test set and a seeded sample of the folds (as postfit.parity_rows does).
    room = max(PARITY_CUTOUTS - len(test), 0)
    sample = np.random.default_rng(config.seed).choice(rest, size=min(room, len(rest)), replace=False)
    rows = None if len(cube) <= PARITY_CUTOUTS else np.sort(np.concatenate([test, sample]))
    pixels = cube.cube if rows is None else cube.cube[rows]
    checked = "every cutout" if rows is None else f"{len(rows)} of {len(cube)} cutouts"
    onnx_record = export_twin(
        model, model_file, pixels, f"{config.cube.name} ({checked})", threshold, twin_path(config.model_file)
    )
    if (staged / onnx_record["file"]).is_file():
        outputs.append(staged / onnx_record["file"])
    outputs.append(cube.subset(test).save(staged / TEST_CUBE))
    outputs.append(write_history(staged / HISTORY_FILE, history))
    for curve, metric in ((LOSS_CURVE, "loss"), (ACCURACY_CURVE, "accuracy")):
        path = staged / curve.format(name=config.name)
        title = f"{config.name}: {metric} (mean of {len(folds)} members)"
        outputs.append(plot_training_curve(history, metric, title, path))
    outputs.append(write_json(staged / METRICS_FILE, metrics))
    card = {
        "model_file": config.model_file.name,
        "input_shape": [int(size) for size in cube.cube.shape[1:]],
        "architecture": config.architecture,
        "planes": list(cube.planes) if cube.planes is not None else None,
        "init_from": str(config.init_from) if config.init_from is not None else None,
        "normalisation": config.normalisation,
        "classes": {"0": "bogus", "1": "real"},
        "columns": {"0": "P(bogus)", "1": "P(real)", "2": "spread of the members' P(real)"},
        "threshold": threshold,
        "threshold_rule": threshold_rule,
        "decision_rule": "real if P(real) > threshold",
        "calibration": calibration,
        "ensemble": folds_record,
        "recipe": config.recipe_record(),
        "test_time_augmentation": {"views": VIEWS, "combine": "log_odds"} if config.tta else None,
        "params": config.model_dump(mode="json"),
        "batch_size_used": training_batch_size(config, len(rest) - max(len(fold) for fold in folds)),
        "workers": 1,
        "data_hash": cube.content_hash(),
        "cube": str(config.cube),
        "split": {
            **record_split(
                cube,
                Split(train=rest, validation=np.empty(0, np.int64), test=test),
                method=method,
                source=config.cube,
                seed=config.seed,
                frac=config.frac,
                test_frac=config.test_frac,
            ),
            "validation": "none: the folds' out-of-fold scores",
        },
        "split_sizes": {"train": len(rest), "validation": 0, "test": len(test)},
        "test_metrics": metrics,
        "onnx": onnx_record,
        "otrain_version": __version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "mlflow_run_id": run.run_id if run else None,
    }
    return finish(config, staged, card, outputs, (model, metrics, test_x), run)
