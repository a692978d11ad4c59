"""Experiment tracking: MLflow runs, the model registry and promotion, the summary.

Modules:

* :mod:`otrain.track.tracking`: MLflow runs, stores and artifacts;
* :mod:`otrain.track.registry`: the model registry's side of otrain-promote (the gate: :mod:`otrain.judge.gate`);
* :mod:`otrain.track.uris`: what a model URI names in the registry (an alias resolved), and fetching the model it names;
* :mod:`otrain.track.summary`: otrain-summary.
"""

__all__ = ["registry", "summary", "tracking", "uris"]
