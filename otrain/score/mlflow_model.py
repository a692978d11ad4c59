"""The MLflow model of a trained model: saved with its ONNX twin, loaded by MLflow's Python-function interface.

otrain-train logs every model as an MLflow model folder (:func:`save_mlflow_model`): MLflow's
Keras flavour, the ONNX twin as MLflow's ``onnx`` flavour, and a Python-function flavour whose
loader (:func:`_load_pyfunc`) serves the twin with ONNX Runtime when it is fresh, else the
Keras model. Its MLmodel file names the loader by :data:`LOADER_MODULE`, the module
``otrain.model``, which stays where it is whatever room this code lives in; models logged while
the loader lived in ``otrain.nets.model`` name that module, which gives MLflow this loader too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras

from otrain.nets.model import input_shape_of
from otrain.options import PREDICT_BATCH

__all__ = ["LOADER_MODULE", "MLFLOW_METADATA_KEYS", "save_mlflow_model"]

#: The ``loader_module`` an MLflow model of otrain names: a module that stays put, re-exporting :func:`_load_pyfunc`.
LOADER_MODULE = "otrain.model"

#: Entries of a model card copied into an MLflow model's metadata (``metadata.otrain`` in its MLmodel file).
MLFLOW_METADATA_KEYS = (
    "input_shape",
    "planes",
    "normalisation",
    "classes",
    "threshold",
    "decision_rule",
    "calibration",
)


def save_mlflow_model(
    model: keras.Model,
    path: Path,
    example: Any,
    *,
    card: dict[str, Any] | None = None,
    pip_requirements: list[str] | None = None,
    onnx_file: Path | None = None,
) -> Path:
    """Save a model as an MLflow model folder that ``mlflow models serve`` can load.

    The folder has MLflow's Keras flavor (``mlflow.keras.load_model`` gives the Keras model),
    a tensor signature (float32 ``(-1, H, W, C)`` raw pixels in, float32 ``(-1, 2)``
    (P(bogus), P(real)) out), ``example`` as its input example, and the card's input shape,
    planes and threshold as metadata. Its Python-function flavor is loaded by this module
    (:func:`_load_pyfunc`, under the name :data:`LOADER_MODULE`), so that otrain's layers
    (:class:`otrain.nets.model.RobustScaling`, :class:`otrain.nets.model.Calibration`) are
    registered before Keras reads the model: a server needs otrain installed, and no other code.

    Parameters
    ----------
    model : keras.Model
        A two-class classifier taking raw pixels (normalisation inside).
    path : Path
        A folder that does not exist yet, or an empty one.
    example : numpy.ndarray
        A few (N, H, W, C) float32 cutouts: the input example, and the signature's source.
    card : dict, optional
        The model card; :data:`MLFLOW_METADATA_KEYS` of it go into the metadata.
    pip_requirements : list of str, optional
        Exact requirements written beside the model; default: this TensorFlow, Keras and NumPy.
    onnx_file : Path, optional
        The model's ONNX twin (:func:`otrain.score.twin.export_onnx`): written beside the Keras
        file as ``data/model.onnx``, re-stamped for it, and declared as MLflow's ``onnx``
        flavour, so ``mlflow.onnx.load_model`` reads it and otrain's scoring commands use it.

    Returns
    -------
    Path
        The folder.
    """
    import mlflow
    import numpy as np
    from mlflow.models import Model, infer_signature

    if pip_requirements is None:
        import tensorflow as tf

        pip_requirements = [f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}", f"numpy=={np.__version__}"]
    example = np.asarray(example, dtype=np.float32)
    signature = infer_signature(example, np.asarray(model.predict_on_batch(example), dtype=np.float32))
    metadata = {key: value for key, value in (card or {}).items() if key in MLFLOW_METADATA_KEYS}
    metadata.setdefault("input_shape", list(input_shape_of(model)))
    # An ensemble (otrain.nets.ensemble) gives a third column: the spread of its members' P(real).
    ensemble = int(model.output_shape[-1]) == 3
    metadata["output"] = "(P(bogus), P(real), spread) per cutout" if ensemble else "(P(bogus), P(real)) per cutout"
    path.mkdir(parents=True, exist_ok=True)
    # mlflow.keras.log_model with an input example fails (mlflow issue #16183: it writes the
    # example before creating its folder); save_model into a folder that exists works.
    mlflow.keras.save_model(
        model,
        path=str(path),
        signature=signature,
        input_example=example,
        pip_requirements=pip_requirements,
        metadata={"otrain": metadata},
    )
    description = Model.load(str(path / "MLmodel"))
    description.flavors["python_function"]["loader_module"] = LOADER_MODULE
    if onnx_file is not None:
        import onnx

        from otrain.score.twin import restamp_twin

        keras_file = path / "data" / "model.keras"  # where MLflow's Keras flavour saves a Keras 3 model
        restamp_twin(onnx_file, keras_file)
        flavor = {"onnx_version": onnx.__version__, "data": "data/model.onnx"}
        description.add_flavor("onnx", providers=["CPUExecutionProvider"], **flavor)
    description.save(str(path / "MLmodel"))
    return path


class _ServedModel:
    """What MLflow's Python-function interface calls: pixels to (N, 2) probabilities, (N, 3) for an ensemble."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def get_raw_model(self) -> Any:
        """Return the Keras model, or the :class:`otrain.score.backends.OnnxClassifier` of its twin."""
        return self.model

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        """Return (P(bogus), P(real)) of each cutout (and an ensemble's spread), in batches as otrain-infer does."""
        import numpy as np

        pixels = np.asarray(data.to_numpy() if hasattr(data, "to_numpy") else data, dtype=np.float32)
        batches = [
            np.asarray(self.model.predict_on_batch(pixels[start : start + PREDICT_BATCH]), dtype=np.float32)
            for start in range(0, len(pixels), PREDICT_BATCH)
        ]
        if batches:
            return np.concatenate(batches)
        from otrain.score.backends import output_columns

        return np.empty((0, output_columns(self.model)), np.float32)


def _load_pyfunc(path: str) -> _ServedModel:
    """Load a model saved by :func:`save_mlflow_model` for MLflow's Python-function interface.

    MLflow calls this (the model's ``loader_module``, :data:`LOADER_MODULE` or an earlier name,
    all of which lead here) in ``mlflow models serve`` and ``mlflow.pyfunc.load_model``;
    importing this module has registered otrain's layers. A model folder that holds the Keras
    file's ONNX twin (``data/model.onnx``) is served by ONNX Runtime, when it is installed.
    """
    import mlflow

    from otrain.score.backends import OnnxClassifier, choose_backend

    keras_file = Path(path) / "data" / "model.keras"
    if keras_file.is_file():
        choice = choose_backend(keras_file, "auto")
        if choice.backend != "keras":
            return _ServedModel(OnnxClassifier(choice.path))
    return _ServedModel(mlflow.keras.load_model(path, load_model_kwargs={"compile": False}))
