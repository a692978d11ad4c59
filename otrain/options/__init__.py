"""The options of every command: pydantic models validated before anything runs.

Modules:

* :mod:`otrain.options.config`: the option mini-language, the command models and params.yaml validation.
"""

__all__ = ["config"]
