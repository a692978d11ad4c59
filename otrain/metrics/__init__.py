"""Numbers and figures from labels and scores (no model, no files of cutouts).

Modules:

* :mod:`otrain.metrics.evaluation`: binary metrics, operating points, calibration error;
* :mod:`otrain.metrics.plots`: the figures (loss and accuracy curves, ROC, calibration).
"""

__all__ = ["evaluation", "plots"]
