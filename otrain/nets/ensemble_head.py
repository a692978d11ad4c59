"""The head of an ensemble: the layer that averages its members and calibrates the average.

See :mod:`otrain.nets.ensemble`, which builds ensembles. The layer lives apart from the builder so
that :func:`otrain.nets.model.load_model` can read an ensemble without importing the builder
(which itself builds on :mod:`otrain.nets.model`).
"""

from __future__ import annotations

from typing import Any, Literal

import keras
from keras import layers, ops

__all__ = [
    "AVERAGES",
    "DEFAULT_AVERAGE",
    "ENSEMBLE_COLUMNS",
    "MEMBER_PREFIX",
    "Average",
    "EnsembleHead",
    "ensemble_head",
    "ensemble_members",
    "is_ensemble",
]

Average = Literal["logits", "probabilities"]
AVERAGES: tuple[str, ...] = ("logits", "probabilities")
#: The average an ensemble makes unless told (see the module's description).
DEFAULT_AVERAGE: Average = "logits"
#: Columns of an ensemble's output: P(bogus), calibrated P(real), the members' spread.
ENSEMBLE_COLUMNS = 3
#: The prefix of each member's name inside an ensemble.
MEMBER_PREFIX = "member_"


@keras.saving.register_keras_serializable(package="otrain")
class EnsembleHead(layers.Layer):
    """Average the members' (P(bogus), P(real)) rows, calibrate, and add their spread.

    Called on a list of K (N, 2) softmax outputs; returns (N, 3) rows (P(bogus), P(real),
    spread), see :mod:`otrain.nets.ensemble`. ``temperature`` and ``bias`` are part of the
    layer's configuration, saved with the model (``.keras`` and ``.h5``).
    """

    def __init__(
        self,
        temperature: float = 1.0,
        bias: float = 0.0,
        average: Average = DEFAULT_AVERAGE,
        epsilon: float = 1e-7,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if average not in AVERAGES:
            raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        self.bias = float(bias)
        self.average = average
        self.epsilon = float(epsilon)

    def _log_odds(self, bogus: Any, real: Any) -> Any:
        return ops.log(ops.maximum(real, self.epsilon)) - ops.log(ops.maximum(bogus, self.epsilon))

    def call(self, inputs: Any) -> Any:
        """Combine a list of (N, 2) member outputs into (N, 3) rows."""
        members = [ops.cast(member, "float32") for member in inputs]
        bogus = ops.stack([member[:, 0] for member in members], axis=1)
        real = ops.stack([member[:, 1] for member in members], axis=1)
        if self.average == "logits":
            z = ops.mean(self._log_odds(bogus, real), axis=1)
        else:
            z = self._log_odds(ops.mean(bogus, axis=1), ops.mean(real, axis=1))
        z = z / self.temperature + self.bias
        # The logistic written out, as Calibration does (ONNX Runtime's Sigmoid flushes tiny values to 0).
        calibrated = 1.0 / (1.0 + ops.exp(-z))
        centred = real - ops.mean(real, axis=1, keepdims=True)
        spread = ops.sqrt(ops.mean(ops.square(centred), axis=1))
        return ops.stack([1.0 - calibrated, calibrated, spread], axis=1)

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, int]:
        """(N, 3) for a list of (N, 2) inputs."""
        return (input_shape[0][0], ENSEMBLE_COLUMNS)

    def get_config(self) -> dict[str, Any]:
        """Return the layer's configuration, for saving."""
        return {
            **super().get_config(),
            "temperature": self.temperature,
            "bias": self.bias,
            "average": self.average,
            "epsilon": self.epsilon,
        }


def is_ensemble(model: Any) -> bool:
    """Tell whether a Keras model is an ensemble (ends in an :class:`EnsembleHead`)."""
    model_layers = getattr(model, "layers", None)
    return bool(model_layers) and isinstance(model_layers[-1], EnsembleHead)


def ensemble_head(model: keras.Model) -> EnsembleHead:
    """Return an ensemble's head (its averaging and calibration layer)."""
    if not is_ensemble(model):
        raise ValueError(f"{model.name} is not an ensemble")
    return model.layers[-1]


def ensemble_members(model: keras.Model) -> list[keras.Model]:
    """Return an ensemble's members (uncalibrated, in order), or ``[model]`` for a single model."""
    if not is_ensemble(model):
        return [model]
    return [layer for layer in model.layers if isinstance(layer, keras.Model)]
