"""The name otrain's MLflow models give as their Python-function ``loader_module``: ``otrain.model``.

MLflow imports the module an MLmodel file names and calls its ``_load_pyfunc``. Models logged
before otrain's modules moved into subpackages, and those logged since
:mod:`otrain.score.mlflow_model` writes them, name this module, which stays where it is; those
logged in between name ``otrain.nets.model``, which hands MLflow the same loader. The code lives in
:mod:`otrain.score.mlflow_model`.
"""

from otrain.score.mlflow_model import _load_pyfunc

__all__ = ["_load_pyfunc"]
