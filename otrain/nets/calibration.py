"""Calibrated probabilities and operating points, chosen on the validation set.

A network trained with class weights, or on a few hundred cutouts, gives a P(real) that is a
ranking more than a probability. Training therefore fits, on the validation set, one of:

- ``temperature``: P = sigmoid(z / T), with z the network's log-odds and one parameter T > 0
  (Guo et al. 2017, "On calibration of modern neural networks");
- ``platt``: P = sigmoid(z / T + b), two parameters (Platt 1999): the temperature and an offset,
  which also corrects the prior that class weights impose (balanced classes while training);
- ``none``: the network's output as it is.

The fitted parameters live in the model (its last layer, :class:`otrain.nets.model.Calibration`),
so every command reads calibrated probabilities without knowing about them. The fit and the
layer take z alike (:func:`log_odds`): z = log P(real) - log P(bogus), from both columns of the
network's softmax, each at least :data:`EPSILON`. Taken as log p - log(1 - p) from P(real)
alone, z would lose up to half its bits when P(real) is within 1e-6 of 1 (float32 keeps only a
few ulps of 1 - p), and the fit would see other log-odds than the layer it makes.

The operating point is the threshold of the decision "real if P(real) > threshold". Surveys
choose theirs from a miss rate they accept (ATLAS quotes its false-positive rate at 1 % missed
detections): :func:`otrain.metrics.evaluation.threshold_for_fnr` and
:func:`otrain.metrics.evaluation.threshold_for_fpr` pick it on the validation set, exactly (one
place for operating points, :func:`otrain.metrics.evaluation.operating_point`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.optimize import minimize

from otrain.errors import DataError

__all__ = [
    "CALIBRATIONS",
    "CalibrationFit",
    "apply_calibration",
    "fit_calibration",
    "log_odds",
]

CalibrationMethod = Literal["temperature", "platt", "none"]
CALIBRATIONS: tuple[str, ...] = ("temperature", "platt", "none")

#: Each softmax column is taken at least EPSILON before its logarithm (log-odds within about +-16.1),
#: as the calibration layer does.
EPSILON = 1e-7
#: Search range of log(T): T from 1/50 to 50; and of the offset b.
_LOG_T_RANGE = (-math.log(50.0), math.log(50.0))
_MAX_BIAS = 20.0
#: Widths of the priors of the fit (see :func:`fit_calibration`): T within about a factor 2.7 of 1,
#: the offset within a few units of log-odds, unless the data say otherwise.
PRIOR_SIGMA_LOG_T = 0.5
PRIOR_SIGMA_BIAS = 3.0


@dataclass(frozen=True)
class CalibrationFit:
    """A fitted calibration: P = sigmoid(z / temperature + bias).

    Attributes
    ----------
    method : str
        ``temperature``, ``platt`` or ``none``.
    temperature : float
        Divides the log-odds (1: unchanged).
    bias : float
        Added to the scaled log-odds (0 for ``temperature`` and ``none``).
    fitted_on : int
        Cutouts of the validation set it was fitted on (0 when not fitted).
    """

    method: str
    temperature: float = 1.0
    bias: float = 0.0
    fitted_on: int = 0

    @property
    def is_identity(self) -> bool:
        """True when the calibration changes nothing."""
        return self.temperature == 1.0 and self.bias == 0.0


def log_odds(columns: np.ndarray) -> np.ndarray:
    """Return the log-odds z = log P(real) - log P(bogus) of softmax rows, as the calibration layer takes them.

    Parameters
    ----------
    columns : numpy.ndarray
        (N, 2) rows (P(bogus), P(real)), as the network gives them
        (:func:`otrain.score.scoring.predict_columns`); each column is taken at least :data:`EPSILON`.

    Returns
    -------
    numpy.ndarray
        z per row (float64): exact to a few ulps of each column, however close P(real) is to 1.

    Raises
    ------
    ValueError
        When ``columns`` is not (N, 2): P(real) alone cannot give z near 1.
    """
    rows = np.asarray(columns, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != 2:
        raise ValueError(f"log-odds need (N, 2) rows (P(bogus), P(real)), got shape {rows.shape}")
    return np.log(np.maximum(rows[:, 1], EPSILON)) - np.log(np.maximum(rows[:, 0], EPSILON))


def apply_calibration(columns: np.ndarray, fit: CalibrationFit) -> np.ndarray:
    """Return calibrated P(real) (float64) of (N, 2) softmax rows, as the model's calibration layer computes it.

    The layer computes the same in float32 (``log_odds="columns"``, every layer made now).
    """
    z = log_odds(columns) / fit.temperature + fit.bias
    return 1.0 / (1.0 + np.exp(-z))


def _negative_log_likelihood(z: np.ndarray, labels: np.ndarray) -> float:
    # log(1 + exp(-z)) for real, log(1 + exp(z)) for bogus, without overflow.
    signed = np.where(labels == 1, z, -z)
    return float(np.mean(np.logaddexp(0.0, -signed)))


def _objective(params: np.ndarray, z: np.ndarray, labels: np.ndarray, with_bias: bool) -> float:
    """Mean negative log-likelihood plus the priors' penalty, both per cutout (a MAP fit)."""
    log_t, bias = params[0], (params[1] if with_bias else 0.0)
    penalty = log_t**2 / (2 * PRIOR_SIGMA_LOG_T**2) + bias**2 / (2 * PRIOR_SIGMA_BIAS**2)
    return _negative_log_likelihood(z / math.exp(log_t) + bias, labels) + penalty / len(labels)


def fit_calibration(labels: np.ndarray, columns: np.ndarray, method: CalibrationMethod) -> CalibrationFit:
    """Fit a calibration of P(real) on labelled cutouts (the validation set).

    The parameters maximise the likelihood of the labels times weak priors, log T ~ N(0,
    :data:`PRIOR_SIGMA_LOG_T`) and b ~ N(0, :data:`PRIOR_SIGMA_BIAS`). With hundreds of
    cutouts the priors change nothing; with a few dozen that the network separates perfectly,
    the likelihood alone would drive T towards 0 (every P(real) pushed to exactly 0 or 1,
    which merges distinct scores into ties and loses the ranking), and the priors keep T near 1.

    Parameters
    ----------
    labels : numpy.ndarray
        1 = real, 0 = bogus.
    columns : numpy.ndarray
        The network's (N, 2) softmax rows (P(bogus), P(real)) of the same cutouts: the fit
        takes their log-odds as the calibration layer will (:func:`log_odds`).
    method : {"temperature", "platt", "none"}
        See the module's description.

    Returns
    -------
    CalibrationFit
        The identity for ``none``.

    Raises
    ------
    DataError
        When the cutouts hold only one class: nothing to calibrate against.
    """
    labels = np.asarray(labels).astype(int)
    if method == "none":
        return CalibrationFit("none")
    if method not in CALIBRATIONS:
        raise ValueError(f"method must be one of {CALIBRATIONS}, got {method!r}")
    if len(np.unique(labels)) < 2:
        raise DataError(
            f"calibration ({method}) needs real and bogus cutouts in the validation set, it holds only "
            f"{'real' if labels.any() else 'bogus'} ones; use a larger --frac or --calibration none"
        )
    z = log_odds(columns)
    with_bias = method == "platt"
    best = minimize(
        _objective,
        x0=np.zeros(2 if with_bias else 1),
        args=(z, labels, with_bias),
        method="L-BFGS-B",
        bounds=[_LOG_T_RANGE] + ([(-_MAX_BIAS, _MAX_BIAS)] if with_bias else []),
    )
    temperature = math.exp(float(best.x[0]))
    bias = float(best.x[1]) if with_bias else 0.0
    return CalibrationFit(method, temperature=temperature, bias=bias, fitted_on=len(labels))
