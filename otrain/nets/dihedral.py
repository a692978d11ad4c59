"""The layers of test-time augmentation: the 8 flips and rotations of each cutout, and the mean of their scores.

A sky cutout has no preferred orientation, so the 8 symmetries of the square (the dihedral group:
the identity, three rotations by 90 degrees, and four reflections) each give the network a
view of the same candidate. :func:`otrain.nets.tta.with_tta` builds these layers into the
model's graph, so that every scorer (Keras, the ONNX twin, Spark, serving) scores the mean
without knowing of it:

- :class:`DihedralViews` turns a batch of N cutouts into the 8 N views, concatenated along the
  batch axis (view k of every cutout, then view k + 1), so the network runs once on one batch;
- :class:`DihedralMean` takes the network's 8 N softmax rows back to N: the mean of the 8
  log-odds z = log P(real) - log P(bogus) (each column at least ``epsilon``, as the calibration
  takes them), returned as the rows (sigmoid(-z), sigmoid(z)).

The mean is of log-odds, not of probabilities: a temperature (or Platt) calibration is linear
in the log-odds, so calibrating after the mean is calibrating each view alike, and the
calibration fitted after it stays one temperature; ``combine="probability"`` (the mean of
P(real)) is kept for comparison (docs/benchmarks.md has both measured).

The views are made after the normalisation layer: the per-cutout median and MAD do not depend
on where the pixels lie, so each view is scaled exactly as it would have been, and the scaling
runs once instead of 8 times. Only square cutouts have 8 views of one shape.
"""

from __future__ import annotations

from typing import Any, Literal

import keras
from keras import layers, ops

__all__ = ["VIEWS", "Combine", "DihedralMean", "DihedralViews", "dihedral_views"]

#: The number of symmetries of the square: the views each cutout is scored on.
VIEWS = 8

Combine = Literal["log_odds", "probability"]


def dihedral_views(pixels: Any) -> list[Any]:
    """Return the 8 views of a batch of (H, W, C) square cutouts, in :class:`DihedralViews`' order.

    The identity, the flips of the columns, of the rows, and of both (the rotation by 180
    degrees), then the same four of the transpose (which give the rotations by 90 and 270
    degrees and the two diagonal reflections). Works on NumPy arrays and on Keras tensors.
    """
    transposed = ops.transpose(pixels, (0, 2, 1, 3))
    views = []
    for image in (pixels, transposed):
        views += [image, ops.flip(image, axis=2), ops.flip(image, axis=1), ops.flip(ops.flip(image, axis=1), axis=2)]
    return views


@keras.saving.register_keras_serializable(package="otrain")
class DihedralViews(layers.Layer):
    """Stack the 8 flips and rotations of each square cutout along the batch axis: N cutouts in, 8 N out."""

    def call(self, inputs: Any) -> Any:
        """Return the views of a batch of (H, W, C) cutouts, view by view."""
        return ops.concatenate(dihedral_views(inputs), axis=0)

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        """Return the shape of the views: the cutouts' (they are square), 8 times as many."""
        batch = input_shape[0]
        return (None if batch is None else VIEWS * batch, *input_shape[1:])


@keras.saving.register_keras_serializable(package="otrain")
class DihedralMean(layers.Layer):
    """Average the (P(bogus), P(real)) rows of the 8 views of each cutout: 8 N rows in, N out.

    Parameters
    ----------
    combine : {"log_odds", "probability"}
        The mean of the log-odds (the default; see the module's description) or of P(real).
    epsilon : float
        Each softmax column is taken at least this before its logarithm, as
        :class:`otrain.nets.model.Calibration` takes it.
    """

    def __init__(self, combine: Combine = "log_odds", epsilon: float = 1e-7, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if combine not in ("log_odds", "probability"):
            raise ValueError(f"combine must be 'log_odds' or 'probability', got {combine!r}")
        self.combine = combine
        self.epsilon = float(epsilon)

    def call(self, inputs: Any) -> Any:
        """Average the views' rows of each cutout."""
        rows = ops.reshape(ops.cast(inputs, "float32"), (VIEWS, -1, 2))
        if self.combine == "probability":
            return ops.mean(rows, axis=0)
        real, bogus = (ops.maximum(rows[:, :, column], self.epsilon) for column in (1, 0))
        z = ops.mean(ops.log(real) - ops.log(bogus), axis=0)
        # Both columns from z (not 1 - P(real)): a calibration after this takes the log of each.
        return ops.stack([1.0 / (1.0 + ops.exp(z)), 1.0 / (1.0 + ops.exp(-z))], axis=1)

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        """Return the shape of the mean: one row per cutout, 8 times fewer than the views."""
        batch = input_shape[0]
        return (None if batch is None else batch // VIEWS, *input_shape[1:])

    def get_config(self) -> dict[str, Any]:
        """Return the layer's configuration, for saving."""
        return {**super().get_config(), "combine": self.combine, "epsilon": self.epsilon}
