"""A training's outputs made visible, and its MLflow run.

The outputs are written into the checkpoint's staging folder; :func:`mark_complete` writes the
marker that lists them, :func:`publish` moves them into the training folder (again, after an
interruption, with ``--resume``). :func:`tracked` opens or resumes the training's MLflow run;
:func:`log_to_mlflow` logs the test metrics, the outputs and the MLflow model.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from otrain.errors import OptionError, OtrainError
from otrain.io.atomic import atomic_path, write_text_atomic
from otrain.io.card import read_card, write_card
from otrain.io.layout import (
    CARD_SUFFIX,
    CHECKPOINT_FOLDER,
    HISTORY_FILE,
    METRICS_FILE,
    RUN_FILE,
    model_of_card,
)
from otrain.io.outputs import HISTORY_COLUMNS
from otrain.options import TrainConfig
from otrain.track.tracking import RunInfo, open_run
from otrain.train.checkpoint import COMPLETE

__all__ = ["TrainingResult", "log_to_mlflow", "mark_complete", "publish", "tracked", "write_history"]


@dataclass
class TrainingResult:
    """What one training produced."""

    output_dir: Path
    model_file: Path
    metrics: dict[str, float | int]
    history: list[dict[str, float]]
    batch_size: int
    split_sizes: dict[str, int]
    run: RunInfo | None = None
    outputs: list[Path] = field(default_factory=list)
    chief: bool = True


def write_history(path: Path, history: list[dict[str, float]]) -> Path:
    """Write the history, one row per epoch, as CSV at ``path`` (``history.csv``); return ``path``."""
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as stream:
        # restval: rows of a checkpoint written before a column existed (resumed across versions).
        writer = csv.DictWriter(stream, fieldnames=HISTORY_COLUMNS, restval="nan")
        writer.writeheader()
        writer.writerows(history)
    return path


def _pip_requirements() -> list[str]:
    import keras
    import tensorflow as tf

    return [f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}", f"numpy=={np.__version__}"]


@contextmanager
def tracked(
    config: TrainConfig,
    tracking_uri: str,
    previous: RunInfo | None,
    tags: dict[str, Any],
    only_resume: bool = False,
) -> Iterator[RunInfo | None]:
    """Open (or resume) the training's MLflow run; nothing with --no-tracking (or nothing to resume)."""
    if not config.tracking or (only_resume and previous is None):
        yield None
        return
    if previous is not None:
        from mlflow.tracking import MlflowClient

        try:
            MlflowClient(tracking_uri).get_run(previous.run_id)
        except Exception:  # not found, or another store
            raise OptionError(
                f"--resume: the interrupted training's MLflow run {previous.run_id} is not in {tracking_uri} (it was "
                f"started in {previous.tracking_uri}); set MLFLOW_TRACKING_URI to that store, or pass --no-tracking"
            ) from None
    with open_run(
        tracking_uri,
        config.experiment,
        run_name=config.name,
        run_id=previous.run_id if previous else None,
        tags=tags,
    ) as run:
        yield run


def mark_complete(config: TrainConfig, staged: Path) -> None:
    """Write the commit marker: the staged outputs are whole, and these are their names."""
    names = [name for name in config.output_names() if (staged / name).is_file()]
    write_text_atomic(staged / COMPLETE, json.dumps(names) + "\n")


def publish(config: TrainConfig, staged: Path) -> TrainingResult:
    """Move the staged outputs into the training folder and remove the checkpoint.

    Then files of an earlier training of the same name that this one does not write (the other
    model format, a run file from a tracked training) are removed; nothing else in the folder is
    touched. Safe to run again after an interruption: the marker lists the names.
    """
    names = json.loads((staged / COMPLETE).read_text())
    folder = config.output_dir
    # Ctrl-C and SIGTERM wait until every file is in place (a few renames); after a SIGKILL in
    # between, --resume finishes the move, as the marker is still there.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        for name in names:
            source, target = staged / name, folder / name
            if source.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, target)
        for name in config.any_training_names():
            if name not in names:
                (folder / name).unlink(missing_ok=True)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    metrics = json.loads((folder / METRICS_FILE).read_text())
    card = read_card(config.model_file)
    with open(folder / HISTORY_FILE, newline="") as stream:
        history = [{key: float(value) for key, value in row.items()} for row in csv.DictReader(stream)]
    shutil.rmtree(folder / CHECKPOINT_FOLDER, ignore_errors=True)
    return TrainingResult(
        output_dir=folder,
        model_file=config.model_file,
        metrics=metrics,
        history=history,
        batch_size=int(card["batch_size_used"]),
        split_sizes=card["split_sizes"],
        outputs=[folder / name for name in names],
    )


def finish(
    config: TrainConfig,
    staged: Path,
    card: dict[str, Any],
    outputs: list[Path],
    logged: tuple[Any, dict[str, Any], np.ndarray],
    run: RunInfo | None,
) -> TrainingResult:
    """End a training whose outputs are staged: the card, MLflow, the commit marker, then publishing.

    Parameters
    ----------
    config : TrainConfig
        The training's options.
    staged : Path
        The staging folder holding the outputs.
    card : dict
        The model card, written beside ``config.model_file``'s staged copy.
    outputs : list of Path
        The staged files to log as artifacts; the card is added.
    logged : tuple
        The model, the test metrics and the test pixels (the MLflow model's signature).
    run : RunInfo or None
        The MLflow run, None for an untracked training.

    Returns
    -------
    TrainingResult
        What :func:`publish` gives, with the run.

    Raises
    ------
    OtrainError
        When logging to MLflow failed: the training folder is written all the same.
    """
    model, metrics, test_x = logged
    outputs.append(write_card(staged / config.model_file.name, card))
    logging_failed = None
    if run is not None:
        try:
            log_to_mlflow(model, metrics, outputs, test_x)
        except Exception as error:  # the store or the artifact server went away
            logging_failed = error
        else:
            run.write(staged)
    mark_complete(config, staged)
    result = publish(config, staged)
    if logging_failed is not None:
        raise OtrainError(
            f"training finished and {config.output_dir} is written, but logging to MLflow failed ({logging_failed})"
        )
    result.run = run
    return result


def log_to_mlflow(model: Any, metrics: dict[str, Any], outputs: list[Path], test_x: np.ndarray) -> None:
    """Log the test metrics, the figures, tables and card, and the MLflow model (with its twin) to the active run."""
    import mlflow

    from otrain.score.mlflow_model import save_mlflow_model

    mlflow.log_metrics({f"test_{key}": float(value) for key, value in metrics.items() if np.isfinite(value)})
    for path in outputs:
        if path.suffix in (".png", ".csv", ".json") and path.name != RUN_FILE:
            mlflow.log_artifact(str(path), artifact_path="training")
    cards = [path for path in outputs if path.name.endswith(CARD_SUFFIX)]
    card = read_card(model_of_card(cards[0])) if cards else None
    with tempfile.TemporaryDirectory() as scratch:
        twins = [path for path in outputs if path.suffix == ".onnx" and not (card or {}).get("onnx", {}).get("absent")]
        folder = save_mlflow_model(
            model,
            Path(scratch) / "model",
            test_x[:2],
            card=card,
            pip_requirements=_pip_requirements(),
            onnx_file=twins[0] if twins else None,
        )
        mlflow.log_artifacts(str(folder), artifact_path="model")
