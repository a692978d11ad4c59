"""Test-time augmentation inside the saved model: wrap a network so it scores the mean over the 8 views of each cutout.

The views go after the normalisation layer (:mod:`otrain.nets.dihedral` says why), the mean
after the softmax and before the calibration layer, so that a calibration is fitted on the
mean of the views and :func:`otrain.nets.model.with_calibration` keeps them in place.
"""

from __future__ import annotations

import keras
from keras import layers

from otrain.nets.dihedral import Combine, DihedralMean, DihedralViews
from otrain.nets.model import Calibration, RobustScaling, input_shape_of

__all__ = ["has_tta", "with_tta", "without_tta"]


def has_tta(model: keras.Model) -> bool:
    """Tell whether a model scores the mean of its cutouts' 8 views (it holds a :class:`DihedralViews`)."""
    return any(isinstance(layer, DihedralViews) for layer in model.layers)


def with_tta(model: keras.Model, combine: Combine = "log_odds") -> keras.Sequential:
    """Return ``model`` scoring the mean over the 8 flips and rotations of each cutout (sharing its layers and weights).

    The views go after the model's normalisation layers, the mean after its softmax and before
    its calibration layer, if any (a calibration fitted afterwards replaces it there:
    :func:`otrain.nets.model.with_calibration` keeps the views and the mean).

    Parameters
    ----------
    model : keras.Model
        A Sequential two-class classifier of square cutouts, without test-time augmentation.
    combine : {"log_odds", "probability"}
        See :class:`DihedralMean`.

    Returns
    -------
    keras.Sequential
        The same input and output shapes.

    Raises
    ------
    ValueError
        When the cutouts are not square, or the model has test-time augmentation already.
    """
    shape = input_shape_of(model)
    if shape[0] != shape[1]:
        raise ValueError(f"test-time augmentation needs square cutouts, the model takes {shape[0]}x{shape[1]}")
    if has_tta(model):
        raise ValueError("the model has test-time augmentation already")
    body = [layer for layer in model.layers if not isinstance(layer, layers.InputLayer)]
    scaling = 0
    while scaling < len(body) and isinstance(body[scaling], RobustScaling):
        scaling += 1
    calibrated = len(body) - (1 if body and isinstance(body[-1], Calibration) else 0)
    stack = [
        keras.Input(shape=shape, name="cutout"),
        *body[:scaling],
        DihedralViews(name="dihedral_views", dtype="float32"),
        *body[scaling:calibrated],
        DihedralMean(combine=combine, name="dihedral_mean", dtype="float32"),
        *body[calibrated:],
    ]
    return keras.Sequential(stack, name=model.name)


def without_tta(model: keras.Model) -> keras.Sequential | keras.Model:
    """Return the model scoring each cutout as given (sharing its layers and weights): the views and the mean left out.

    Grad-CAM explains the network on the cutout as the scanner sees it; a model without
    test-time augmentation is returned as it is.
    """
    if not has_tta(model):
        return model
    kept = [layer for layer in model.layers if not isinstance(layer, (DihedralViews, DihedralMean, layers.InputLayer))]
    return keras.Sequential([keras.Input(shape=input_shape_of(model), name="cutout"), *kept], name=model.name)
