"""The networks: architectures, otrain's Keras layers, the calibration fit.

Modules:

* :mod:`otrain.nets.model`: the two architectures, the custom layers, loading and saving;
* :mod:`otrain.nets.calibration`: temperature scaling fitted on held-out log-odds;
* :mod:`otrain.nets.tta`: test-time augmentation, the mean over the 8 flips and rotations, inside the model.
"""

__all__ = ["calibration", "model", "tta"]
