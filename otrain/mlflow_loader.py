"""MLflow's loader of otrain's logged models as generic Python functions (``python_function``).

The models otrain logs hold otrain's own Keras layers (normalisation, calibration), which Keras
finds only once :mod:`otrain.model` is imported. ``mlflow.keras`` alone does not import it, so
``mlflow models serve`` and ``mlflow.pyfunc.load_model`` would fail on them; the logged model
names this module as its loader instead, which registers the layers and then loads the model
as ``mlflow.keras`` does. The ``keras`` flavor (``mlflow.keras.load_model``) is unchanged.
"""

from __future__ import annotations

from typing import Any

__all__ = ["use_otrain_loader"]


def _load_pyfunc(path: str) -> Any:
    """Load a logged otrain model for ``mlflow.pyfunc`` (MLflow calls this by name)."""
    from mlflow.keras.load import _load_pyfunc as load_keras_pyfunc

    import otrain.model  # noqa: F401 - registers otrain's Keras layers

    return load_keras_pyfunc(path)


def use_otrain_loader(model_dir: str) -> None:
    """Make this module the ``python_function`` loader of the MLflow model saved in ``model_dir``.

    Parameters
    ----------
    model_dir : str
        Folder written by ``mlflow.keras.save_model`` (holding its ``MLmodel`` file).
    """
    from mlflow.models import Model
    from mlflow.pyfunc import FLAVOR_NAME

    model = Model.load(model_dir)
    model.flavors[FLAVOR_NAME]["loader_module"] = __name__
    model.save(f"{model_dir}/MLmodel")
