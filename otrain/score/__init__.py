"""Scoring: the backends (Keras, ONNX Runtime, int8), cubes, folders, Spark, serving, export.

Modules:

* :mod:`otrain.score.backends`: the scoring backends and the choice between them;
* :mod:`otrain.score.scoring`: scoring a cube with any backend;
* :mod:`otrain.score.inference`: otrain-infer: a folder of cutouts to a table;
* :mod:`otrain.score.pack`: otrain-pack: cutout folders to Parquet for Spark;
* :mod:`otrain.score.spark`: otrain-infer-spark;
* :mod:`otrain.score.serving`: otrain-serve: an HTTP scoring service;
* :mod:`otrain.score.export`: otrain-export: the ONNX twin of a model;
* :mod:`otrain.score.quantize`: the int8 twin.
"""

__all__ = ["backends", "export", "inference", "pack", "quantize", "scoring", "serving", "spark"]
