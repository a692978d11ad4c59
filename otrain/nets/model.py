"""The networks: build, save and load them (the JSON model card beside every model file: :mod:`otrain.io.card`).

``otrain`` (the default) is the original O'TRAIN CNN (Makhlouf et al. 2022, A&A 664, A81;
layer by layer in docs/original-otrain.md#the-network): same order, shapes and parameter
counts, for any H x W x C input: two 3x3 convolutions, average pooling, dropout, a
convolution, max pooling, dropout, two convolutions, max pooling, then dense 512 / dropout /
dense 256 / softmax over two classes (index 1 = real).

``vgg`` is a small VGG-like network for small real sets, in the spirit of ZTF's braai
real/bogus classifier (Duev et al. 2019, MNRAS 489, 3582), with batch normalisation: two
blocks of two 3x3 convolutions (each followed by batch normalisation and ReLU), max pooling
and dropout, then average pooling onto a fixed 4x4 grid, a small dense layer, dropout and the
same softmax. The fixed grid keeps its size independent of the cutout size (about 130 000
weights) and, unlike global average pooling, keeps where a feature lies: a real candidate sits
at the centre of its cutout.

An optional normalisation layer can sit in front of either, inside the model, so that every
model always takes raw pixels.

Models are saved as ``.keras`` by default and as legacy HDF5 when the file name ends in
``.h5``; both are written atomically. :func:`load_model` reads both, including ``.h5`` files
of the original O'TRAIN.
"""

from __future__ import annotations

import functools
import importlib
import logging
from pathlib import Path
from typing import Any, Literal

import keras
from keras import layers, ops

from otrain.errors import DataError, first_line
from otrain.io.atomic import atomic_path
from otrain.nets.dihedral import DihedralMean, DihedralViews
from otrain.nets.ensemble_head import ENSEMBLE_COLUMNS, EnsembleHead, is_ensemble
from otrain.options import (
    ARCHITECTURES,
    DEFAULT_ARCHITECTURE,
    DEFAULT_DROPOUT,
    DEFAULT_LEARNING_RATE,
    Architecture,
)

__all__ = [
    "MAD_TO_SIGMA",
    "NORMALISATIONS",
    "Calibration",
    "LogOdds",
    "Normalisation",
    "RealClassAUC",
    "RobustScaling",
    "build_model",
    "input_shape_of",
    "last_conv_layer",
    "load_model",
    "log_visible_devices",
    "save_model",
    "with_calibration",
]

#: The vgg network: filters of the convolutions of each of its two blocks, the side of the grid
#: its last feature maps are average-pooled onto (whatever the cutout size), units of its dense layer.
VGG_FILTERS = (32, 64)
VGG_GRID = 4
VGG_DENSE_UNITS = 64
#: Momentum of its batch normalisation's moving averages: Keras' 0.99 needs hundreds of steps to
#: forget the initial statistics; a small set makes few steps (20 per epoch with --batch-size auto).
VGG_BN_MOMENTUM = 0.9

logger = logging.getLogger("otrain")

#: 1 / Phi^-1(3/4): the MAD of Gaussian noise times this is its standard deviation.
MAD_TO_SIGMA = 1.482602218505602

Normalisation = Literal["none", "robust", "asinh"]
NORMALISATIONS: tuple[str, ...] = ("none", "robust", "asinh")


@keras.saving.register_keras_serializable(package="otrain")
class RobustScaling(layers.Layer):
    """Scale each cutout by its own median and median absolute deviation.

    ``(x - median) / (k * MAD)``, per cutout and channel, then clipped to [-``clip``,
    ``clip``], with k = 1 / Phi^-1(3/4) = 1.4826..., which makes ``k * MAD`` the standard
    deviation of Gaussian noise (SciPy's ``median_abs_deviation(scale="normal")``). This makes
    a model independent of each telescope's flux scale and zero point. A flat cutout (MAD = 0)
    is only shifted.

    With ``asinh``, the scaled values then go through arcsinh: linear within the noise
    (``|x| < 1``), logarithmic beyond, so that a saturated star or a galaxy core in a science or
    reference plane no longer spans a thousand times the range of a faint transient.
    """

    def __init__(self, clip: float = 1000.0, asinh: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clip = float(clip)
        self.asinh = bool(asinh)

    @staticmethod
    def _median(values: Any) -> Any:
        """Median along the last (static) axis: the mean of the two middle order statistics.

        Two partial selections instead of a sort: the ``count - lower`` largest values (their
        smallest is the lower middle one), then the two smallest of those. Exactly a sort's
        median, and about four times faster in ONNX Runtime (TopK) and in TensorFlow.
        """
        count = values.shape[-1]
        lower, upper = (count - 1) // 2, count // 2
        largest = ops.top_k(values, count - lower, sorted=False)[0]
        middle = -ops.top_k(-largest, min(2, count - lower))[0]
        return (middle[..., 0] + middle[..., upper - lower]) / 2.0

    def call(self, inputs: Any) -> Any:
        """Scale a batch of (H, W, C) cutouts."""
        height, width, channels = inputs.shape[1:]
        flat = ops.transpose(ops.reshape(inputs, (-1, height * width, channels)), (0, 2, 1))
        median = self._median(flat)
        mad = self._median(ops.abs(flat - median[:, :, None]))
        scale = ops.where(mad > 0, MAD_TO_SIGMA * mad, ops.ones_like(mad))
        scaled = ops.clip((inputs - median[:, None, None, :]) / scale[:, None, None, :], -self.clip, self.clip)
        return ops.arcsinh(scaled) if self.asinh else scaled

    def get_config(self) -> dict[str, Any]:
        """Return the layer's configuration, for saving."""
        return {**super().get_config(), "clip": self.clip, "asinh": self.asinh}


#: How a :class:`Calibration` layer takes the log-odds of the softmax before it (see its ``log_odds``).
LogOdds = Literal["columns", "complement"]


@keras.saving.register_keras_serializable(package="otrain")
class Calibration(layers.Layer):
    """Calibrate the (bogus, real) probabilities of the layer before: P = sigmoid(z / T + b).

    z is the log-odds of P(real), within log(1 / ``epsilon``) of 0 (see
    :mod:`otrain.nets.calibration`, which fits T and b on the validation set). T and b are part of
    the layer's configuration, so they are saved with the model, ``.keras`` and ``.h5`` alike.

    ``log_odds`` says how z is taken from the softmax's two columns:

    - ``columns`` (every layer made now): z = log P(real) - log P(bogus), each column at least
      ``epsilon``. The softmax gives each column to a few float32 ulps *of itself*, so z is
      exact to a few 1e-7, however close P(real) is to 1.
    - ``complement`` (models saved before ``log_odds`` existed, loaded unchanged): z = log p -
      log(1 - p), p = P(real) clipped to [``epsilon``, 1 - ``epsilon``]. Near 1, p carries an
      absolute rounding error of up to 3e-8 (half a float32 ulp), which is most of 1 - p when
      P(real) is within 1e-6 of 1: z moves by up to 0.5 for one ulp of p, and a temperature
      of 8 turns that into 0.004 of calibrated P(real). Two runtimes that round p one ulp
      apart (Keras and the ONNX twin) then disagree by that much.
    """

    def __init__(
        self,
        temperature: float = 1.0,
        bias: float = 0.0,
        epsilon: float = 1e-7,
        log_odds: LogOdds = "columns",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if log_odds not in ("columns", "complement"):
            raise ValueError(f"log_odds must be 'columns' or 'complement', got {log_odds!r}")
        self.temperature = float(temperature)
        self.bias = float(bias)
        self.epsilon = float(epsilon)
        self.log_odds = log_odds

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Calibration:
        """Rebuild a saved layer; one saved without ``log_odds`` keeps the formula it was saved with."""
        return cls(**{"log_odds": "complement", **config})

    def call(self, inputs: Any) -> Any:
        """Calibrate a batch of (P(bogus), P(real)) rows."""
        inputs = ops.cast(inputs, "float32")
        if self.log_odds == "columns":
            real, bogus = (ops.maximum(inputs[:, column], self.epsilon) for column in (1, 0))
            z = ops.log(real) - ops.log(bogus)
        else:
            p = ops.clip(inputs[:, 1], self.epsilon, 1.0 - self.epsilon)
            z = ops.log(p) - ops.log(1.0 - p)  # ONNX has no Log1p
        z = z / self.temperature + self.bias
        # The logistic written out, not ops.sigmoid: ONNX Runtime's Sigmoid gives exactly 0 below
        # about 1e-8, where its Exp (and TensorFlow) keep the value, so the twin ranks as Keras does.
        real = 1.0 / (1.0 + ops.exp(-z))
        return ops.stack([1.0 - real, real], axis=1)

    def get_config(self) -> dict[str, Any]:
        """Return the layer's configuration, for saving."""
        return {
            **super().get_config(),
            "temperature": self.temperature,
            "bias": self.bias,
            "epsilon": self.epsilon,
            "log_odds": self.log_odds,
        }


def with_calibration(model: keras.Model, temperature: float, bias: float) -> keras.Sequential:
    """Return ``model`` followed by a :class:`Calibration` layer (sharing its layers and weights).

    A model that ends in a calibration layer already has it replaced, not stacked.
    """
    body = [layer for layer in model.layers if not isinstance(layer, (Calibration, layers.InputLayer))]
    stack = [keras.Input(shape=input_shape_of(model), name="cutout"), *body]
    stack.append(Calibration(temperature=temperature, bias=bias, name="calibration", dtype="float32"))
    return keras.Sequential(stack, name=model.name)


def _otrain_layers(dropout: float, n_classes: int) -> list[layers.Layer]:
    """Return the layers of the original O'TRAIN CNN that follow its input (and normalisation) layers."""
    relu_conv = {"kernel_size": 3, "padding": "same", "activation": "relu"}
    return [
        layers.Conv2D(16, **relu_conv),
        layers.Conv2D(32, **relu_conv),
        layers.AveragePooling2D(pool_size=2),
        layers.Dropout(dropout),
        layers.Conv2D(64, **relu_conv),
        layers.MaxPooling2D(pool_size=2),
        layers.Dropout(dropout),
        layers.Conv2D(128, **relu_conv),
        layers.Conv2D(256, **relu_conv),
        layers.MaxPooling2D(pool_size=2),
        layers.Flatten(),
        layers.Dense(512, activation="relu"),
        layers.Dropout(dropout),
        layers.Dense(256, activation="relu"),
        layers.Dense(n_classes, activation="softmax", dtype="float32"),
    ]


def _vgg_layers(dropout: float, n_classes: int) -> list[layers.Layer]:
    """Return the layers of the small VGG-like network that follow its input (and normalisation) layers."""
    stack: list[layers.Layer] = []
    for filters in VGG_FILTERS:
        for _ in range(2):
            # No bias: the batch normalisation that follows has its own offset.
            stack += [
                layers.Conv2D(filters, kernel_size=3, padding="same", use_bias=False),
                layers.BatchNormalization(momentum=VGG_BN_MOMENTUM),
                layers.ReLU(),
            ]
        stack += [layers.MaxPooling2D(pool_size=2), layers.Dropout(dropout)]
    return [
        *stack,
        layers.AdaptiveAveragePooling2D(VGG_GRID),
        layers.Flatten(),
        layers.Dense(VGG_DENSE_UNITS, activation="relu"),
        layers.Dropout(dropout),
        layers.Dense(n_classes, activation="softmax", dtype="float32"),
    ]


#: Each network's layers (after the input) and the smallest cutout side its poolings allow.
_NETWORKS = {"otrain": (_otrain_layers, 8), "vgg": (_vgg_layers, 4)}


def build_model(
    input_shape: tuple[int, int, int],
    *,
    architecture: Architecture = DEFAULT_ARCHITECTURE,
    dropout: float = DEFAULT_DROPOUT,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = DEFAULT_LEARNING_RATE,
    normalisation: Normalisation = "none",
    n_classes: int = 2,
) -> keras.Sequential:
    """Build and compile a network: the O'TRAIN CNN, or the small VGG-like one.

    Parameters
    ----------
    input_shape : tuple of int
        (H, W, C) of the cutouts; H and W must be at least 8 for "otrain" (three 2x2 poolings),
        4 for "vgg" (two).
    architecture : {"otrain", "vgg"}
        The network (see the module's description).
    dropout : float
        Rate of the three dropout layers.
    learning_rate : float or keras.optimizers.schedules.LearningRateSchedule
        Adam learning rate, or its schedule.
    normalisation : {"none", "robust", "asinh"}
        "none" feeds raw pixels, as the original; "robust" puts :class:`RobustScaling` first;
        "asinh" the same followed by arcsinh.
    n_classes : int
        Softmax outputs (2: bogus, real).

    Returns
    -------
    keras.Sequential
        The compiled model (categorical cross-entropy on one-hot labels; accuracy, and the ROC
        and precision-recall AUCs of the last class, ``roc_auc`` and ``pr_auc``), named
        ``otrain_cnn`` or ``vgg_cnn``.
    """
    if architecture not in _NETWORKS:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    network, smallest = _NETWORKS[architecture]
    height, width, _ = input_shape
    if height < smallest or width < smallest:
        raise ValueError(
            f"cutouts must be at least {smallest}x{smallest} pixels for the {architecture} network, "
            f"got {height}x{width}"
        )
    stack: list[layers.Layer] = [keras.Input(shape=input_shape, name="cutout")]
    if normalisation in ("robust", "asinh"):
        # Scaling runs in float32 even under mixed precision: raw pixels can exceed float16.
        stack.append(RobustScaling(asinh=normalisation == "asinh", name="robust_scaling", dtype="float32"))
    elif normalisation != "none":
        raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
    model = keras.Sequential(stack + network(dropout, n_classes), name=f"{architecture}_cnn")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="categorical_crossentropy",
        metrics=["accuracy", *_auc_metrics()],
    )
    return model


@keras.saving.register_keras_serializable(package="otrain")
class RealClassAUC(keras.metrics.AUC):
    """Keras' AUC (ROC or precision-recall) of P(real) alone: the last column of labels and outputs.

    On one-hot labels Keras' AUC would pool both columns; the real class's PR AUC is the one
    that tells how well the rare bogus cutouts are ranked below the real ones.
    """

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        """Accumulate a batch of one-hot labels and softmax outputs."""
        return super().update_state(y_true[:, -1], y_pred[:, -1], sample_weight=sample_weight)


def _auc_metrics() -> list[keras.metrics.Metric]:
    return [RealClassAUC(curve="ROC", name="roc_auc"), RealClassAUC(curve="PR", name="pr_auc")]


def input_shape_of(model: keras.Model) -> tuple[int, int, int]:
    """Return the (H, W, C) cutout shape a model takes."""
    shape = tuple(model.inputs[0].shape[1:])
    if len(shape) != 3 or any(size is None for size in shape):
        raise DataError(f"model input shape {shape} is not a fixed (H, W, C) cutout shape")
    return int(shape[0]), int(shape[1]), int(shape[2])


def _flat_layers(model: keras.Model) -> list[layers.Layer]:
    """Return a model's layers in order, those of nested models (an ensemble's members) in their place."""
    found: list[layers.Layer] = []
    for layer in model.layers:
        found += _flat_layers(layer) if isinstance(layer, keras.Model) else [layer]
    return found


def last_conv_layer(model: keras.Model) -> layers.Conv2D:
    """Return the last Conv2D layer, found by type (never by a name such as "conv2d_4").

    Nested models count with their layers: in an ensemble (:mod:`otrain.nets.ensemble`), it is the
    last member's last convolution.
    """
    convolutions = [layer for layer in _flat_layers(model) if isinstance(layer, layers.Conv2D)]
    if not convolutions:
        raise DataError("model has no Conv2D layer")
    return convolutions[-1]


def save_model(model: keras.Model, path: Path) -> Path:
    """Save a model atomically: ``.h5`` as legacy HDF5, anything else as ``.keras``.

    Parameters
    ----------
    model : keras.Model
        The model.
    path : Path
        Destination; a name without a known suffix gets ``.keras``.

    Returns
    -------
    Path
        The file written.
    """
    if path.suffix not in (".keras", ".h5"):
        path = path.with_name(path.name + ".keras")
    with atomic_path(path) as temporary:
        model.save(temporary)
    return path


@functools.cache
def log_visible_devices() -> list[str]:
    """Log, once per process, which GPUs TensorFlow sees (in a GPU container: did it get any?).

    Returns
    -------
    list of str
        The names of the visible GPUs; empty on the CPU.
    """
    import tensorflow as tf

    gpus = [gpu.name.removeprefix("/physical_device:") for gpu in tf.config.list_physical_devices("GPU")]
    if gpus:
        logger.info("TensorFlow %s sees %d GPU(s): %s", tf.__version__, len(gpus), ", ".join(gpus))
    else:
        logger.info("TensorFlow %s sees no GPU; running on the CPU", tf.__version__)
    return gpus


def _container_is_intact(path: Path) -> bool:
    """Tell whether a model file's container (zip for .keras, HDF5 for .h5) reads end to end."""
    import zipfile

    import h5py

    if path.suffix == ".keras":
        try:
            with zipfile.ZipFile(path) as archive:
                return archive.testzip() is None
        except (OSError, zipfile.BadZipFile, EOFError):
            return False
    try:
        with h5py.File(path, "r") as stream:
            stream.visit(lambda name: None)
    except (OSError, ValueError):
        return False
    return True


def load_model(path: Path) -> keras.Model:
    """Load a ``.keras`` or ``.h5`` model, including original O'TRAIN ``.h5`` files.

    Raises
    ------
    DataError
        If the file is missing or is not a Keras model; the message names the file.
    """
    if not path.is_file():
        raise DataError(f"{path}: model file does not exist")
    log_visible_devices()
    if path.suffix not in (".keras", ".h5", ".hdf5"):
        raise DataError(f"{path}: not a Keras model file (expected a .keras or .h5 file)")

    try:
        custom = {
            "RobustScaling": RobustScaling,
            "Calibration": Calibration,
            "EnsembleHead": EnsembleHead,
            "DihedralViews": DihedralViews,
            "DihedralMean": DihedralMean,
        }
        model = keras.saving.load_model(path, custom_objects=custom, compile=False)
    except Exception as error:  # Keras raises many types, some misleading ("File not found"), for a damaged file
        if not _container_is_intact(path):
            raise DataError(f"{path}: not a readable Keras model (corrupt or truncated)") from None
        raise DataError(f"{path}: not a readable Keras model ({first_line(error)[:200]})") from None
    output_shape = tuple(model.outputs[0].shape[1:])
    columns = ENSEMBLE_COLUMNS if is_ensemble(model) else 2
    if output_shape != (columns,):
        expected = "P(bogus), P(real) and the spread" if columns == 3 else "2 class probabilities (bogus, real)"
        raise DataError(f"{path}: model must output {expected}, got shape {output_shape}")
    input_shape_of(model)
    return model


def __getattr__(name: str) -> Any:
    """Give MLflow the Python-function loader of the models that name this module as their ``loader_module``.

    Models logged while the loader lived here name ``otrain.nets.model``; it lives in
    :mod:`otrain.score.mlflow_model` now, above the networks, so it is looked up by name when MLflow
    asks for it (through :mod:`otrain.model`, the name models logged since give), never
    imported by the networks.
    """
    if name == "_load_pyfunc":
        return importlib.import_module("otrain.model")._load_pyfunc
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    """Print which devices TensorFlow sees (``python -m otrain.nets.model``: is a GPU container's GPU visible?)."""
    import tensorflow as tf

    gpus = log_visible_devices()
    listing = ", ".join(gpus) if gpus else "none, running on the CPU"
    print(f"TensorFlow {tf.__version__}: GPUs {listing}")


if __name__ == "__main__":
    main()
