"""After the fit: calibration, the decision threshold, the ONNX twin.

``--calibration`` is fitted on the validation set; the threshold is ``--threshold``, or chosen on
the validation set for ``--target-fnr`` or ``--target-fpr``; the ONNX twin is exported and checked
against the Keras model on the cutouts :func:`parity_rows` chooses. The model card that records
them is written by :mod:`otrain.train.training`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from otrain.data.datacube import Datacube, Split
from otrain.errors import DataError, first_line
from otrain.io.layout import twin_path
from otrain.io.progress import announce
from otrain.options import TrainConfig
from otrain.score.scoring import predict, predict_columns

__all__ = ["PARITY_CUTOUTS", "calibrate", "choose_threshold", "export_twin", "parity_rows"]

logger = logging.getLogger("otrain")


#: The ONNX twin is checked on every cutout of a cube up to this many; beyond, on the validation
#: and test sets and a seeded sample of the training set, this many in all (see :func:`parity_rows`).
PARITY_CUTOUTS = 10_000


def calibrate(
    model: Any, config: TrainConfig, cube: Datacube, split: Split, test_x: np.ndarray, test_labels: np.ndarray
) -> tuple[Any, dict[str, Any], np.ndarray, np.ndarray]:
    """Fit ``--calibration`` on the validation set.

    Returns
    -------
    tuple
        The calibrated model; the card's record (fitted parameters, expected calibration error
        of the validation and test sets before and after); the calibrated P(real) of the
        validation and of the test set, as that model computes them.
    """
    from otrain.metrics.evaluation import expected_calibration_error
    from otrain.nets.calibration import fit_calibration
    from otrain.nets.model import with_calibration

    validation_x, validation_labels = cube.cube[split.validation], cube.labels[split.validation]
    raw_columns, raw_test = predict_columns(model, validation_x), predict(model, test_x)
    raw_validation = raw_columns[:, 1]
    fit = fit_calibration(validation_labels, raw_columns, config.calibration)  # both columns, as the layer
    if fit.method != "none":
        model = with_calibration(model, fit.temperature, fit.bias)
        logger.info("calibration (%s): temperature %.4g, offset %.4g", fit.method, fit.temperature, fit.bias)
    validation, test = (
        (predict(model, validation_x), predict(model, test_x)) if fit.method != "none" else (raw_validation, raw_test)
    )
    record = {
        "method": fit.method,
        "temperature": fit.temperature,
        "bias": fit.bias,
        "fitted_on": fit.fitted_on,
        # The prior P(real) is calibrated to (see --prob-ratio of otrain-infer for another night's).
        "fraction_real": float(np.mean(validation_labels == 1)),
        "ece_validation_before": expected_calibration_error(validation_labels, raw_validation),
        "ece_validation_after": expected_calibration_error(validation_labels, validation),
        "ece_test_before": expected_calibration_error(test_labels, raw_test),
        "ece_test_after": expected_calibration_error(test_labels, test),
    }
    return model, record, validation, test


def choose_threshold(
    config: TrainConfig, labels: np.ndarray, probabilities: np.ndarray, chosen_on: str = "validation set"
) -> tuple[float, dict[str, Any]]:
    """Return the decision threshold (``--threshold``, or chosen by a target rate) and how it was chosen.

    ``chosen_on`` names the labelled scores (the validation set's, or an ensemble's out-of-fold ones).
    """
    from otrain.metrics.evaluation import threshold_for_fnr, threshold_for_fpr

    if config.target_fnr is None and config.target_fpr is None:
        threshold = 0.5 if config.threshold is None else config.threshold
        return threshold, {"method": "given" if config.threshold is not None else "default"}
    if config.target_fnr is not None:
        method, target = "target_fnr", config.target_fnr
        threshold = threshold_for_fnr(labels, probabilities, target)
    else:
        method, target = "target_fpr", float(config.target_fpr)  # type: ignore[arg-type]
        threshold = threshold_for_fpr(labels, probabilities, target)
    decided = probabilities > threshold
    rule = {
        "method": method,
        "target": target,
        "chosen_on": chosen_on,
        "n_real": int(np.count_nonzero(labels == 1)),
        "n_bogus": int(np.count_nonzero(labels == 0)),
        "validation_fnr": float(np.mean(~decided[labels == 1])) if np.any(labels == 1) else None,
        "validation_fpr": float(np.mean(decided[labels == 0])) if np.any(labels == 0) else None,
    }
    announce(f"threshold {threshold:.6g}, chosen on the {chosen_on} for {method.replace('_', ' ')} {target}")
    return threshold, rule


def parity_rows(split: Split, cutouts: int, seed: int, limit: int = PARITY_CUTOUTS) -> tuple[np.ndarray | None, str]:
    """Choose the cutouts of the cube the ONNX twin is checked on.

    Every one of a cube of at most ``limit`` cutouts. Beyond, the check would run Keras and ONNX
    Runtime over the whole cube in every training (K times in cross-validation, once per size
    in the dataset-size study): it takes every cutout of the validation and test sets, which
    the training scores anyway, and fills up to ``limit`` with training cutouts drawn with
    ``seed``.

    Parameters
    ----------
    split : Split
        The training's split of the cube.
    cutouts : int
        The cube's number of cutouts.
    seed : int
        The training's ``--seed``.
    limit : int
        :data:`PARITY_CUTOUTS` by default.

    Returns
    -------
    numpy.ndarray or None
        The rows, in increasing order; None for every row.
    str
        What they are, for the card.
    """
    if cutouts <= limit:
        return None, "every cutout"
    held_out = np.concatenate([split.validation, split.test])
    room = min(max(limit - len(held_out), 0), len(split.train))
    drawn = np.random.default_rng(seed).choice(split.train, size=room, replace=False)
    rows = np.sort(np.concatenate([held_out, drawn]))
    return rows, (
        f"{len(rows)} of {cutouts} cutouts: the validation and test sets, and {room} of the "
        f"{len(split.train)} training cutouts drawn with --seed"
    )


def export_twin(
    model: Any, model_file: Path, pixels: np.ndarray, checked_on: str, threshold: float, shown: Path | None = None
) -> dict[str, Any]:
    """Write the model's ONNX twin, checked on ``pixels``; without one, an absence record in its place.

    A model that cannot have a twin is still a model: the training goes on, says why in one
    line, and writes where the twin goes an absence record that says why (the pipeline
    declares that file as an output; the scoring commands name the reason and use Keras).
    Whatever fails, the conversion, the check or the writing (a full disk, a file over ONNX's
    2 GB), the twin never fails the training; nor does an absence record that cannot be
    written either, which is said in a second line (the file is then missing). An interrupt
    (Ctrl-C) still interrupts. ``shown``: the twin's final place, named in messages
    (``model_file`` is a staging file).

    Returns
    -------
    dict
        The card's ``onnx`` record; with ``absent`` and ``error`` when there is no twin, and
        ``record_error`` when not even the absence record could be written.
    """
    from otrain.score.twin import export_onnx, write_absent_twin

    twin = twin_path(model_file)
    try:
        return export_onnx(model, model_file, pixels, checked_on=checked_on, threshold=threshold, shown=shown)
    except Exception as error:  # a twin is an extra: nothing about it fails the training
        reason = (
            str(error)
            if isinstance(error, DataError)
            else f"{(shown or twin).name}: not exported ({first_line(error)[:300]})"
        )
    logger.warning("no ONNX twin: %s; otrain-infer will score with Keras", reason)
    try:
        return write_absent_twin(model_file, reason)
    except Exception as error:
        logger.warning("no absence record either: %s cannot be written (%s)", shown or twin, first_line(error)[:300])
        return {"file": twin.name, "absent": True, "error": reason, "record_error": first_line(error)[:300]}
