"""The pyfunc loader of models logged before otrain's modules moved into subpackages.

Their MLmodel files name ``otrain.model`` as ``loader_module``; MLflow imports it by that name.
The code lives in :mod:`otrain.nets.model`.
"""

from otrain.nets.model import _load_pyfunc

__all__ = ["_load_pyfunc"]
