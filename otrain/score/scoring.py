"""Scoring a labelled cube with a model: the one place that loads, crops, predicts and splits.

Every command that judges a model on a cube (otrain-diagnostics, otrain-plot-results,
otrain-grad-cam, otrain-cross-validate's folds, the promotion gate of otrain-promote, and the test
metrics of otrain-train) goes through here, so they all crop the same way
(:func:`otrain.data.cutouts.crop_center`, as otrain-convert does), predict in the same batches, and
call the same candidates true or false positives. The model is the Keras one, its ONNX twin or
its int8 model (:mod:`otrain.score.backends`): all have ``predict_on_batch``.

The decision rule is the original one: a candidate is real when P(real) > threshold.

An ensemble (:mod:`otrain.nets.ensemble`) gives a third column beside (P(bogus), P(real)): the
spread, the standard deviation of its members' P(real), which says how sure it is
(:data:`SPREAD_COLUMN`). :func:`predict_scores` and :class:`ScoredCube` carry it; a single
model has none (None).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from otrain.data.cutouts import crop_center
from otrain.data.datacube import Datacube
from otrain.errors import DataError
from otrain.options import OUTCOMES, PREDICT_BATCH
from otrain.score.backends import BackendChoice, cutout_shape, load_classifier, output_columns

__all__ = [
    "SPREAD_COLUMN",
    "ScoredCube",
    "fit_to_model",
    "outcomes",
    "predict",
    "predict_columns",
    "predict_scores",
    "sample_outcomes",
    "score_cube",
    "score_loaded",
    "spread_of",
]

#: The column of an ensemble's output that holds the spread (standard deviation) of its members' P(real).
SPREAD_COLUMN = 2


@dataclass(frozen=True)
class ScoredCube:
    """A labelled cube (cropped to the model's input), the model, and P(real) of every cutout."""

    cube: Datacube
    model: Any  #: a Keras model, or an :class:`otrain.score.backends.OnnxClassifier`
    probabilities: np.ndarray
    backend: str = "keras"  #: what scored: keras, onnx or int8
    #: An ensemble's spread of its members' P(real), one per cutout; None for a single model.
    spread: np.ndarray | None = None

    def outcomes(self, threshold: float) -> dict[str, np.ndarray]:
        """Return the rows of each outcome at ``threshold``; see :func:`outcomes`."""
        return outcomes(self.cube.labels, self.probabilities, threshold)


def fit_to_model(pixels: np.ndarray, model: Any, what: str) -> np.ndarray:
    """Centre-crop (N, H, W, C) cutouts to the model's input, as otrain-convert would.

    Parameters
    ----------
    pixels : numpy.ndarray
        Channels-last cutouts.
    model : keras.Model or OnnxClassifier
        The classifier.
    what : str
        What the cutouts are, for the error message (a file name).

    Returns
    -------
    numpy.ndarray
        The cutouts themselves when they fit already, else a contiguous cropped copy.

    Raises
    ------
    DataError
        When the cutouts are smaller than the model's input or have another channel count.
    """
    height, width, channels = cutout_shape(model)
    _, cube_height, cube_width, cube_channels = pixels.shape
    if (cube_height, cube_width, cube_channels) == (height, width, channels):
        return pixels
    if cube_channels != channels or cube_height < height or cube_width < width:
        raise DataError(
            f"{what}: cutouts are {cube_height}x{cube_width}x{cube_channels}, "
            f"the model takes {height}x{width}x{channels}"
        )
    return np.ascontiguousarray(crop_center(pixels, (height, width)))


def predict(model: Any, pixels: np.ndarray, batch_size: int = PREDICT_BATCH) -> np.ndarray:
    """Return P(real) of every cutout, predicted in batches of ``batch_size`` (see :func:`predict_columns`).

    Returns
    -------
    numpy.ndarray
        float64 P(real), one per cutout.
    """
    return predict_columns(model, pixels, batch_size)[:, 1]


def spread_of(columns: np.ndarray) -> np.ndarray | None:
    """Return the spread column of a model's output rows (see :data:`SPREAD_COLUMN`); None for a single model's two.

    Parameters
    ----------
    columns : numpy.ndarray
        (N, 2) or (N, 3) rows, as :func:`predict_columns` gives them.

    Returns
    -------
    numpy.ndarray or None
        float64 spread, one per row, when the rows have a third column.
    """
    return columns[:, SPREAD_COLUMN] if columns.shape[1] > SPREAD_COLUMN else None


def predict_scores(
    model: Any, pixels: np.ndarray, batch_size: int = PREDICT_BATCH
) -> tuple[np.ndarray, np.ndarray | None]:
    """Return P(real) of every cutout and, for an ensemble, its spread (see :func:`predict_columns`).

    Returns
    -------
    numpy.ndarray
        float64 P(real), one per cutout.
    numpy.ndarray or None
        float64 spread of an ensemble's members' P(real), one per cutout; None for a single model.
    """
    columns = predict_columns(model, pixels, batch_size)
    return columns[:, 1], spread_of(columns)


def predict_columns(model: Any, pixels: np.ndarray, batch_size: int = PREDICT_BATCH) -> np.ndarray:
    """Return (P(bogus), P(real)) of every cutout, and an ensemble's spread, predicted in batches of ``batch_size``.

    Both columns, as the model computes them: P(bogus) is exact to a few ulps of itself where
    1 - P(real) would keep only the last bits of a P(real) near 1 (the calibration's log-odds
    take both, :func:`otrain.nets.calibration.log_odds`).

    Batch by batch with ``predict_on_batch``, as otrain-infer scores: ``model.predict`` on an
    array builds a tf.data pipeline whose parallel map, under the op determinism of a training,
    makes TensorFlow log a harmless error line ("NodeDef mentions attribute
    use_unbounded_threadpool"), and it holds a second copy of the cube. A model built under a
    distribution strategy with several replicas (a training on several devices) is called
    directly instead: Keras' ``predict_on_batch`` then gives every replica the whole batch and
    returns each replica's outputs, one after the other.

    Parameters
    ----------
    model : keras.Model or OnnxClassifier
        A two-class softmax classifier (index 1 = real), or an ensemble (a third column: the spread).
    pixels : numpy.ndarray
        (N, H, W, C) cutouts of the model's input shape.
    batch_size : int
        Cutouts per batch.

    Returns
    -------
    numpy.ndarray
        float64 (N, 2) rows (the model's float32 values); (N, 3) for an ensemble.
    """
    strategy = getattr(model, "distribute_strategy", None)
    if strategy is not None and strategy.num_replicas_in_sync > 1:

        def step(batch: np.ndarray) -> Any:
            return model(batch, training=False)
    else:
        step = model.predict_on_batch
    batches = [np.asarray(step(pixels[start : start + batch_size])) for start in range(0, len(pixels), batch_size)]
    if not batches:
        return np.empty((0, output_columns(model)))
    return np.concatenate(batches).astype(np.float64)


def score_cube(cube_path: Path, choice: BackendChoice, *, cube: Datacube | None = None) -> ScoredCube:
    """Load a cube and the model a command chose, check they fit, and predict P(real) once.

    A cube larger than the model's input is centre-cropped (as otrain-convert would); a smaller
    one, or one with another channel count, is an error.

    Parameters
    ----------
    cube_path : Path
        A labelled cube (.npz).
    choice : BackendChoice
        What scores (:func:`otrain.score.backends.choose_backend`): a caller that needs the Keras
        model itself (its gradients, for Grad-CAM) chooses ``keras``.
    cube : Datacube, optional
        The cube of ``cube_path`` already in memory, or some of its rows (a cross-validation
        fold's, :meth:`otrain.data.datacube.Datacube.subset`): scored instead of reading the file,
        which messages still name. Default: read from ``cube_path``.

    Raises
    ------
    DataError
        On an unreadable cube or model, or shapes that do not fit.
    """
    if cube is None:
        cube = Datacube.load(cube_path)
    model = load_classifier(choice)
    return score_loaded(model, cube, f"{cube_path} (model {choice.model_file.name})", choice.backend)


def score_loaded(model: Any, cube: Datacube, shown: str, backend: str = "keras") -> ScoredCube:
    """Score a cube in memory with a model already loaded (the promotion gate's MLflow models).

    The cube is fitted to the model as :func:`score_cube` does (centre-cropped when larger).

    Parameters
    ----------
    model : keras.Model or OnnxClassifier
        A two-class classifier.
    cube : Datacube
        The rows to score.
    shown : str
        The cube and model, as messages name them.
    backend : str
        What ``model`` is, for the record.

    Raises
    ------
    DataError
        When the cutouts do not fit the model's input.
    """
    pixels = fit_to_model(cube.cube, model, shown)
    if pixels is not cube.cube:
        cube = replace(cube, cube=pixels)
    p_real, spread = predict_scores(model, pixels)
    return ScoredCube(cube=cube, model=model, probabilities=p_real, backend=backend, spread=spread)


def outcomes(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """Split the rows into true/false positives/negatives at ``threshold`` (real if p > threshold).

    Parameters
    ----------
    labels : numpy.ndarray
        1 = real, 0 = bogus.
    probabilities : numpy.ndarray
        P(real).
    threshold : float
        The decision threshold.

    Returns
    -------
    dict
        ``TP``, ``TN``, ``FP``, ``FN`` (the order of ``otrain.options.judging.OUTCOMES``) -> sorted row indices.
    """
    predicted = np.asarray(probabilities) > threshold
    real = np.asarray(labels) == 1
    members = {"TP": predicted & real, "TN": ~predicted & ~real, "FP": predicted & ~real, "FN": ~predicted & real}
    return {outcome: np.flatnonzero(members[outcome]) for outcome in OUTCOMES}


def sample_outcomes(rows: dict[str, np.ndarray], n_examples: int, seed: int) -> dict[str, np.ndarray]:
    """Keep every misclassified row and a seeded sample of ``n_examples`` per well-classified outcome.

    Parameters
    ----------
    rows : dict
        The result of :func:`outcomes`.
    n_examples : int
        How many true positives and how many true negatives to keep (all when there are fewer).
    seed : int
        Seed of the choice: the same seed and rows give the same sample.

    Returns
    -------
    dict
        The same outcomes; TP and TN sampled, sorted; FP and FN whole.
    """
    rng = np.random.default_rng(seed)
    sampled = {}
    for outcome, members in rows.items():
        if outcome in ("TP", "TN") and len(members) > n_examples:
            members = np.sort(rng.choice(members, size=n_examples, replace=False))
        sampled[outcome] = members
    return sampled
