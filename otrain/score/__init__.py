"""Scoring: the backends (Keras, ONNX Runtime, int8), cubes, folders, Spark, serving, export.

Modules:

* :mod:`otrain.score.backends`: the scoring backends and the choice between them;
* :mod:`otrain.score.twin`: the ONNX twin of a model: exported, checked, stamped;
* :mod:`otrain.score.scoring`: scoring a cube with any backend;
* :mod:`otrain.score.inference`: otrain-infer: a folder of cutouts to a table;
* :mod:`otrain.score.spread`: how sure an ensemble is: its spread over a night, summarised and logged;
* :mod:`otrain.score.pack`: otrain-pack: cutout folders to Parquet for Spark;
* :mod:`otrain.score.spark`: otrain-infer-spark: the driver (the model, the inputs, the job, the outputs);
* :mod:`otrain.score.spark_executor`: what Spark's executors run: decoding cutouts and scoring them;
* :mod:`otrain.score.spark_session`: the Spark session, quiet, its failures in one line;
* :mod:`otrain.score.serving`: otrain-serve: an HTTP scoring service;
* :mod:`otrain.score.export`: otrain-export: the ONNX twin of a model;
* :mod:`otrain.score.quantize`: the int8 twin;
* :mod:`otrain.score.mlflow_model`: the MLflow model otrain-train logs, and its Python-function loader.
"""

__all__ = [
    "backends",
    "export",
    "inference",
    "mlflow_model",
    "pack",
    "quantize",
    "scoring",
    "serving",
    "spark",
    "spark_executor",
    "spark_session",
    "spread",
    "twin",
]
