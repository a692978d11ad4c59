"""The options of every command: pydantic models validated before anything runs.

Modules:

* :mod:`otrain.options.config`: the option mini-language, the command models and params.yaml validation;
* :mod:`otrain.options.uris`: the grammar of MLflow model URIs (``models:/``, ``runs:/``): parse and build.
"""

__all__ = ["config", "uris"]
