"""The networks: architectures, otrain's Keras layers, the calibration fit.

Modules:

* :mod:`otrain.nets.model`: the two architectures, the custom layers, loading and saving;
* :mod:`otrain.nets.calibration`: temperature scaling fitted on held-out log-odds;
* :mod:`otrain.nets.ensemble`: several networks saved as one model that averages them and gives their spread;
* :mod:`otrain.nets.ensemble_head`: an ensemble's averaging layer (apart, so that loading needs no builder).
"""

__all__ = ["calibration", "ensemble", "ensemble_head", "model"]
