"""The file layout of a training folder, and the files beside every model: one place for their names.

otrain-train writes ``<model-path>/CNN_training/<name>/`` (the original O'TRAIN's layout)::

    <name>.keras (or <name>.h5)         the model
    <name>.keras.card.json              its model card (:mod:`otrain.io.card`)
    <name>.onnx                         its ONNX twin (otrain-export --quantize int8 adds <name>.int8.onnx)
    validation_set/datacube/cube_validation.npz
    test_set/datacube/cube_test.npz
    history.csv, metrics.json, <name>_loss_vs_epochs.png, <name>_accuracy_vs_epochs.png
    mlflow_run.json                     the MLflow run of a tracked training
    .checkpoint/                        while a training is unfinished (latest.json, final/.complete)
    .otrain-train.lock                  while a training runs there

The commands that read a training (export, promote, report, cross-validation's resume, the
scoring commands) find these files through the names below, never by spelling them again.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "ACCURACY_CURVE",
    "CARD_SUFFIX",
    "CHECKPOINT_COMPLETE",
    "CHECKPOINT_FOLDER",
    "CHECKPOINT_POINTER",
    "CHECKPOINT_STAGING",
    "HISTORY_FILE",
    "INT8_FILE",
    "LOSS_CURVE",
    "METRICS_FILE",
    "RUN_FILE",
    "TEST_CUBE",
    "TRAININGS_FOLDER",
    "TRAINING_FILES",
    "TRAINING_LOCK",
    "TWIN_FILE",
    "VALIDATION_CUBE",
    "card_file",
    "int8_path",
    "model_of_card",
    "training_folder",
    "twin_path",
]

#: The folder of trainings under --model-path (and under otrain-cross-validate's --output).
TRAININGS_FOLDER = "CNN_training"
#: What a model card's name adds to its model's: ``<name>.keras.card.json``.
CARD_SUFFIX = ".card.json"
#: Inside a training folder: the held-out sets, relative to the folder.
VALIDATION_CUBE = "validation_set/datacube/cube_validation.npz"
TEST_CUBE = "test_set/datacube/cube_test.npz"
#: Inside a training folder: the epochs' figures, the test metrics and the MLflow run.
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
RUN_FILE = "mlflow_run.json"
#: The ONNX twin, the int8 model and the training curves; ``{name}`` is the model name without its suffix.
TWIN_FILE = "{name}.onnx"
INT8_FILE = "{name}.int8.onnx"
LOSS_CURVE = "{name}_loss_vs_epochs.png"
ACCURACY_CURVE = "{name}_accuracy_vs_epochs.png"
#: Inside a training folder: the checkpoint of an unfinished training (and its staged outputs),
#: and the lock file of the training that runs there.
CHECKPOINT_FOLDER = ".checkpoint"
TRAINING_LOCK = ".otrain-train.lock"
#: Inside the checkpoint: the pointer to the last finished epoch, the staged final outputs, and
#: the marker that says they are whole.
CHECKPOINT_POINTER, CHECKPOINT_STAGING, CHECKPOINT_COMPLETE = "latest.json", "final", ".complete"
#: The files every training writes into its folder, besides the model and its card.
TRAINING_FILES = (
    TWIN_FILE,
    VALIDATION_CUBE,
    TEST_CUBE,
    HISTORY_FILE,
    LOSS_CURVE,
    ACCURACY_CURVE,
    METRICS_FILE,
    RUN_FILE,
)


def training_folder(model_path: Path, name: str) -> Path:
    """Return the folder of the training ``name``: ``<model-path>/CNN_training/<name>/``."""
    return model_path / TRAININGS_FOLDER / name


def card_file(model_file: Path) -> Path:
    """Return the model card of ``model_file``: ``<model>.card.json`` beside it."""
    return model_file.with_name(model_file.name + CARD_SUFFIX)


def model_of_card(card: Path) -> Path:
    """Return the model file a card belongs to (:func:`card_file` the other way round)."""
    return card.with_name(card.name.removesuffix(CARD_SUFFIX))


def twin_path(model_file: Path) -> Path:
    """Return the ONNX twin of a model file: ``<stem>.onnx`` beside it."""
    return model_file.with_suffix(".onnx")


def int8_path(model_file: Path) -> Path:
    """Return the int8 model of a model file: ``<stem>.int8.onnx`` beside it."""
    return model_file.with_suffix(".int8.onnx")
