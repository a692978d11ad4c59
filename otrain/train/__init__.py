"""Training: the fit loop, checkpoints, post-fit, cross-fitted ensembles, cross-validation, the dataset-size study.

Modules:

* :mod:`otrain.train.training`: otrain-train, a training run through the modules below;
* :mod:`otrain.train.ensemble`: otrain-train --folds, a cross-fitted ensemble;
* :mod:`otrain.train.fit`: the fit loop (the network, its starting weights, datasets, learning rate, epochs);
* :mod:`otrain.train.checkpoint`: the checkpoint and interrupts during the fit;
* :mod:`otrain.train.distribute`: TensorFlow's set-up and the distribution strategy (``TF_CONFIG``);
* :mod:`otrain.train.postfit`: calibration, the decision threshold, the ONNX twin;
* :mod:`otrain.train.publish`: the staged outputs published, the MLflow run;
* :mod:`otrain.train.crossval`: otrain-cross-validate;
* :mod:`otrain.train.folds`: the folds of a cross-validation (the cube's groups, grouped stratified splits);
* :mod:`otrain.train.crossval_resume`: the record, plans, checks and lock of a resumable cross-validation;
* :mod:`otrain.train.optimise`: otrain-optimise-dataset-size.
"""

__all__ = [
    "checkpoint",
    "crossval",
    "crossval_resume",
    "distribute",
    "ensemble",
    "fit",
    "folds",
    "optimise",
    "postfit",
    "publish",
    "training",
]
