"""The networks: architectures, otrain's Keras layers, the calibration fit.

Modules:

* :mod:`otrain.nets.model`: the two architectures, the custom layers, loading and saving;
* :mod:`otrain.nets.calibration`: temperature scaling fitted on held-out log-odds.
"""

__all__ = ["calibration", "model"]
