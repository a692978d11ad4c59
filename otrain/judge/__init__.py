"""Judging a model: diagnostics and plot-results, Grad-CAM, checkinfer, the promotion gate.

Modules:

* :mod:`otrain.judge.analysis`: otrain-diagnostics and otrain-plot-results;
* :mod:`otrain.judge.gradcam`: otrain-grad-cam;
* :mod:`otrain.judge.checkinfer`: otrain-checkinfer: a scored night against injected sources;
* :mod:`otrain.judge.gate`: otrain-promote's gate: the new model against the champion, on rows neither trained on.
"""

__all__ = ["analysis", "checkinfer", "gate", "gradcam"]
