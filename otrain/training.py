"""otrain-train: fit the O'TRAIN CNN on a datacube, evaluate it on a held-out test set.

Outputs go to ``<model-path>/CNN_training/<name>/`` (reference section 4.2), each written
atomically once training has finished, so an interrupted run never leaves a model, cube or
table that looks complete. While training, a checkpoint folder ``.checkpoint/`` holds the
weights, the optimiser state and the history of the finished epochs: ``--resume`` continues
from there (and in the same MLflow run).
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from otrain import __version__
from otrain.atomic import atomic_path, write_text_atomic
from otrain.config import TrainConfig
from otrain.datacube import Datacube, Split, stratified_split
from otrain.errors import DataError, OptionError, OtrainError
from otrain.evaluation import binary_metrics, write_json
from otrain.progress import announce
from otrain.tracking import (
    RunInfo,
    check_tracking_uri,
    dvc_tags,
    git_commit,
    open_run,
    read_run_file,
    resolve_tracking_uri,
)

__all__ = ["TrainingResult", "auto_batch_size", "train"]

logger = logging.getLogger("otrain")

CHECKPOINT_FOLDER = ".checkpoint"
_MIN_STEPS_PER_EPOCH = 20
_MAX_BATCH = 1024
_MIN_BATCH = 16
HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")
#: What a resumed training must share with the interrupted one (besides the data); --epochs may change.
RESUME_KEYS = (
    "seed",
    "frac",
    "test_frac",
    "dropout",
    "learning_rate",
    "normalisation",
    "augment",
    "class_weight",
    "mixed_precision",
)


def auto_batch_size(n_train: int) -> int:
    """Batch size for ``--batch-size auto``.

    The original's 1024, reduced so that an epoch has at least 20 gradient steps, never below
    16 (nor above the training set).
    """
    size = min(_MAX_BATCH, max(_MIN_BATCH, n_train // _MIN_STEPS_PER_EPOCH))
    return max(1, min(size, n_train))


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


def _check_cube(cube: Datacube, config: TrainConfig) -> None:
    if cube.n_real == 0 or cube.n_bogus == 0:
        present = "real" if cube.n_real else "bogus"
        raise DataError(
            f"{config.cube}: the cube holds only {present} cutouts ({len(cube)}); training needs both classes"
        )
    height, width = cube.cube.shape[1:3]
    if height < 8 or width < 8:
        raise DataError(f"{config.cube}: cutouts are {height}x{width} pixels; the network needs at least 8x8")
    smallest = min(cube.n_real, cube.n_bogus)
    if smallest < 5:
        raise DataError(
            f"{config.cube}: only {smallest} cutouts of one class; training, validation and test sets need more"
        )


def _batch_size(config: TrainConfig, n_train: int) -> int:
    if config.batch_size == "auto":
        return auto_batch_size(n_train)
    size = int(config.batch_size)
    if size > n_train:
        raise OptionError(f"--batch-size: {size} is larger than the training set ({n_train} cutouts)")
    return size


def _class_weights(labels: np.ndarray, mode: str) -> dict[int, float] | None:
    if mode == "none":
        return None
    counts = np.bincount(labels, minlength=2)
    return {label: float(len(labels) / (2.0 * counts[label])) for label in (0, 1)}


def _configure_tensorflow(config: TrainConfig) -> Any:
    """Seed everything, choose the distribution strategy and the precision policy."""
    import keras
    import tensorflow as tf

    from otrain.model import log_visible_devices

    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    gpus = tf.config.list_physical_devices("GPU")
    log_visible_devices()
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    keras.mixed_precision.set_global_policy("mixed_float16" if config.mixed_precision else "float32")
    if len(gpus) > 1:
        logger.info("training on %d GPUs with MirroredStrategy", len(gpus))
        return tf.distribute.MirroredStrategy()
    logger.info("training on %s", "1 GPU" if gpus else "the CPU")
    return tf.distribute.get_strategy()


def _dataset(x: np.ndarray, labels: np.ndarray, batch_size: int, seed: int, augment: bool, train: bool) -> Any:
    import tensorflow as tf

    one_hot = np.eye(2, dtype=np.float32)[labels]
    dataset = tf.data.Dataset.from_tensor_slices((x, one_hot))
    if train:
        dataset = dataset.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    if augment:

        def flip_rotate(image: Any, label: Any) -> tuple[Any, Any]:
            image = tf.image.random_flip_left_right(image, seed=seed)
            image = tf.image.rot90(image, k=tf.random.uniform([], 0, 4, dtype=tf.int32, seed=seed + 1))
            return image, label

        dataset = dataset.map(flip_rotate, num_parallel_calls=1)
    return dataset.batch(batch_size).prefetch(2)


def _epoch_callbacks(
    config: TrainConfig, checkpoint: Path, history: list[dict[str, float]], tracking: bool
) -> list[Any]:
    import keras

    history_file = checkpoint / "history.csv"

    class EpochReport(keras.callbacks.Callback):
        """Print one line per epoch, keep the history on disk (for --resume), log to MLflow."""

        def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            logs = logs or {}
            row = {"epoch": epoch + 1, **{key: float(logs.get(key, np.nan)) for key in HISTORY_COLUMNS[1:]}}
            history[:] = [previous for previous in history if previous["epoch"] < row["epoch"]] + [row]
            _write_history(history_file, history)
            elapsed = time.perf_counter() - self.started
            announce(
                f"epoch {row['epoch']}/{config.epochs}: loss {row['loss']:.4f} accuracy {row['accuracy']:.4f} "
                f"val_loss {row['val_loss']:.4f} val_accuracy {row['val_accuracy']:.4f} ({elapsed:.1f} s)",
            )
            if tracking:
                import mlflow

                mlflow.log_metrics({key: value for key, value in row.items() if key != "epoch"}, step=row["epoch"])

    callbacks: list[Any] = [keras.callbacks.BackupAndRestore(str(checkpoint / "state")), EpochReport()]
    if config.patience > 0:
        callbacks.insert(
            0,
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True),
        )
    return callbacks


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=HISTORY_COLUMNS)
        writer.writeheader()
        writer.writerows(history)


def _read_history(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with open(path, newline="") as stream:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(stream)]


def _device() -> str:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return f"{len(gpus)} GPU" if gpus else "CPU"


def _pip_requirements() -> list[str]:
    import keras
    import tensorflow as tf

    return [f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}", f"numpy=={np.__version__}"]


def train(
    config: TrainConfig,
    on_ready: Callable[[RunInfo | None], None] | None = None,
    *,
    cube: Datacube | None = None,
    split: Split | None = None,
) -> TrainingResult:
    """Train, evaluate on the test set, and write every output of otrain-train.

    Parameters
    ----------
    config : TrainConfig
        Validated options.
    on_ready : callable, optional
        Called with the MLflow run (or None) once tracking is set up, before training.
    cube : Datacube, optional
        The cube, when the caller has it in memory already (else read from ``config.cube``).
    split : Split, optional
        A split chosen by the caller (the dataset-size study keeps one test set for all sizes).
        When an MLflow run is active, the training's run is nested in it.

    Returns
    -------
    TrainingResult
        Paths, test metrics and history.

    Raises
    ------
    DataError
        On a cube that cannot be trained on (one class, too few cutouts, too small).
    OptionError
        On an unreachable tracking store, or a batch size larger than the training set.
    """
    cube = Datacube.load(config.cube) if cube is None else cube
    _check_cube(cube, config)
    if split is None:
        split = stratified_split(cube.labels, config.frac, config.test_frac, config.seed)
    batch_size = _batch_size(config, len(split.train))
    checkpoint = config.output_dir / CHECKPOINT_FOLDER
    previous_run = read_run_file(checkpoint) if config.resume else None
    if config.resume and not checkpoint.is_dir():
        raise OptionError(f"--resume: no interrupted training to continue in {config.output_dir}")
    tracking_uri = resolve_tracking_uri(config.tracking_uri)
    if config.tracking:
        check_tracking_uri(tracking_uri)

    data_hash = cube.content_hash()
    options = config.model_dump(mode="json")
    fingerprint = {"data_hash": data_hash, "batch_size_used": batch_size, **{key: options[key] for key in RESUME_KEYS}}
    fingerprint_file = checkpoint / "options.json"
    if config.resume and fingerprint_file.is_file():
        saved = json.loads(fingerprint_file.read_text())
        changed = sorted(key for key in fingerprint if saved.get(key) != fingerprint[key])
        if changed:
            raise OptionError(
                f"--resume: the interrupted training used other values of {', '.join(changed)}; "
                "resume with the same ones (only --epochs may change) or pass --overwrite to start again"
            )

    if config.overwrite and not config.resume and config.output_dir.exists():
        shutil.rmtree(config.output_dir)
    config.output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint.mkdir(exist_ok=True)
    write_text_atomic(fingerprint_file, json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")

    tags = {
        "otrain.version": __version__,
        "otrain.data_hash": data_hash,
        "otrain.cube": str(config.cube),
        "git.commit": git_commit(),
        "mlflow.note.content": f"otrain-train {config.name} on {config.cube}",
        **dvc_tags(config.cube),
    }
    if not config.tracking:
        return _fit_and_write(config, cube, split, batch_size, checkpoint, None, tags, on_ready)
    with open_run(
        tracking_uri,
        config.experiment,
        run_name=config.name,
        run_id=previous_run.run_id if previous_run else None,
        tags=tags,
    ) as run:
        run.write(checkpoint)
        return _fit_and_write(config, cube, split, batch_size, checkpoint, run, tags, on_ready)


def _fit_and_write(
    config: TrainConfig,
    cube: Datacube,
    split: Split,
    batch_size: int,
    checkpoint: Path,
    run: RunInfo | None,
    tags: dict[str, Any],
    on_ready: Callable[[RunInfo | None], None] | None,
) -> TrainingResult:
    import keras
    import tensorflow as tf

    from otrain.model import build_model, save_model, write_card
    from otrain.plots import plot_training_curve

    strategy = _configure_tensorflow(config)
    if run is not None:
        import mlflow

        params = {key: value for key, value in config.model_dump(mode="json").items() if value is not None}
        params.update(batch_size_used=batch_size, n_train=len(split.train), n_validation=len(split.validation))
        params.update(n_test=len(split.test))
        existing = mlflow.get_run(run.run_id).data.params
        mlflow.log_params({key: value for key, value in params.items() if key not in existing})
        mlflow.set_tags({"tensorflow.version": tf.__version__, "device": _device()})
    if on_ready is not None:
        on_ready(run)

    input_shape = tuple(int(size) for size in cube.cube.shape[1:])
    with strategy.scope():
        model = build_model(
            input_shape,  # type: ignore[arg-type]
            dropout=config.dropout,
            learning_rate=config.learning_rate,
            normalisation=config.normalisation,
        )
    history = _read_history(checkpoint / "history.csv") if config.resume else []
    training = _dataset(cube.cube[split.train], cube.labels[split.train], batch_size, config.seed, config.augment, True)
    validation = _dataset(
        cube.cube[split.validation], cube.labels[split.validation], batch_size, config.seed, False, False
    )
    model.fit(
        training,
        validation_data=validation,
        epochs=config.epochs,
        shuffle=False,  # the dataset shuffles itself, reproducibly
        class_weight=_class_weights(cube.labels[split.train], config.class_weight),
        callbacks=_epoch_callbacks(config, checkpoint, history, run is not None),
        verbose=0,
    )

    test_x, test_labels = cube.cube[split.test], cube.labels[split.test]
    probabilities = model.predict(test_x, batch_size=256, verbose=0)[:, 1]
    metrics = binary_metrics(test_labels, probabilities, config.threshold)
    metrics["epochs_run"] = len(history)

    output = config.output_dir
    outputs = [save_model(model, config.model_file)]
    outputs.append(
        cube.subset(split.validation).save(
            output / "validation_set" / "datacube" / "cube_validation.npz", one_hot_labels=True
        )
    )
    outputs.append(cube.subset(split.test).save(output / "test_set" / "datacube" / "cube_test.npz"))
    _write_history(output / "history.csv", history)
    outputs.append(output / "history.csv")
    outputs.append(
        plot_training_curve(history, "loss", f"{config.name}: loss", output / f"{config.name}_loss_vs_epochs.png")
    )
    outputs.append(
        plot_training_curve(
            history, "accuracy", f"{config.name}: accuracy", output / f"{config.name}_accuracy_vs_epochs.png"
        )
    )
    outputs.append(write_json(output / "metrics.json", metrics))
    card = {
        "model_file": config.model_file.name,
        "input_shape": list(input_shape),
        "normalisation": config.normalisation,
        "classes": {"0": "bogus", "1": "real"},
        "threshold": config.threshold,
        "decision_rule": "real if P(real) > threshold",
        "params": config.model_dump(mode="json"),
        "batch_size_used": batch_size,
        "data_hash": tags["otrain.data_hash"],
        "cube": str(config.cube),
        "split_sizes": {"train": len(split.train), "validation": len(split.validation), "test": len(split.test)},
        "test_metrics": metrics,
        "otrain_version": __version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "mlflow_run_id": run.run_id if run else None,
    }
    outputs.append(write_card(config.model_file, card))
    if run is not None:
        try:
            _log_to_mlflow(model, metrics, outputs, test_x)
        except Exception as error:  # the store or the artifact server went away
            raise OtrainError(
                f"training finished and {output} is written, but logging to MLflow failed ({error})"
            ) from None
        outputs.append(run.write(output))
    shutil.rmtree(checkpoint, ignore_errors=True)
    return TrainingResult(
        output_dir=output,
        model_file=config.model_file,
        metrics=metrics,
        history=history,
        batch_size=batch_size,
        split_sizes=card["split_sizes"],
        run=run,
        outputs=outputs,
    )


def _log_to_mlflow(model: Any, metrics: dict[str, Any], outputs: list[Path], test_x: np.ndarray) -> None:
    import mlflow
    from mlflow.models import infer_signature

    mlflow.log_metrics({f"test_{key}": float(value) for key, value in metrics.items() if np.isfinite(value)})
    for path in outputs:
        if path.suffix in (".png", ".csv", ".json") and path.name != "mlflow_run.json":
            mlflow.log_artifact(str(path), artifact_path="training")
    example = test_x[:2]
    signature = infer_signature(example, model.predict(example, verbose=0))
    # mlflow.keras.log_model with an input example fails (mlflow issue #16183: it writes the
    # example before creating its folder), so save into a folder we create, then log it.
    with tempfile.TemporaryDirectory() as scratch:
        mlflow.keras.save_model(
            model,
            path=scratch,
            signature=signature,
            input_example=example,
            pip_requirements=_pip_requirements(),
        )
        mlflow.log_artifacts(scratch, artifact_path="model")
