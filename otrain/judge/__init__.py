"""Judging a model: diagnostics and plot-results, Grad-CAM, checkinfer.

Modules:

* :mod:`otrain.judge.analysis`: otrain-diagnostics and otrain-plot-results;
* :mod:`otrain.judge.gradcam`: otrain-grad-cam;
* :mod:`otrain.judge.checkinfer`: otrain-checkinfer: a scored night against injected sources.
"""

__all__ = ["analysis", "checkinfer", "gradcam"]
