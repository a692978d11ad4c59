"""Training: the fit loop, checkpoints and interrupts, post-fit, cross-validation, the dataset-size study.

Modules:

* :mod:`otrain.train.training`: otrain-train;
* :mod:`otrain.train.crossval`: otrain-cross-validate;
* :mod:`otrain.train.crossval_resume`: the record, plans, checks and lock of a resumable cross-validation;
* :mod:`otrain.train.optimise`: otrain-optimise-dataset-size.
"""

__all__ = ["crossval", "crossval_resume", "optimise", "training"]
