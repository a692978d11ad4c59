"""The fit loop: the network built, its starting weights, the datasets, the learning rate, the epochs.

:func:`build_and_fit` builds the network under a distribution strategy (:mod:`otrain.train.distribute`),
loads its checkpoint (:mod:`otrain.train.checkpoint`) or the weights of ``--init-from``, and trains
the epochs left; after every epoch a callback checks the loss, keeps the early-stopping and
``--lr-schedule plateau`` state, checkpoints, reports progress and logs to MLflow.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from otrain.data.datacube import Datacube, Split
from otrain.errors import DataError, OtrainError, first_line
from otrain.io.card import card_planes
from otrain.io.outputs import HISTORY_COLUMNS
from otrain.io.progress import announce
from otrain.options import MONITOR_MODES, PLATEAU_FACTOR, PLATEAU_PATIENCE, TrainConfig
from otrain.train.checkpoint import Checkpoint, interrupt_between_steps
from otrain.train.distribute import fit_across_workers, grow_gpu_memory

__all__ = [
    "TrainingDivergedError",
    "build_and_fit",
    "build_with_weights",
    "check_init_from",
    "class_weights",
    "initialise_from",
    "make_dataset",
    "new_model",
]

logger = logging.getLogger("otrain")


class TrainingDivergedError(OtrainError):
    """The loss became NaN or infinite (exit status 1)."""


def class_weights(labels: np.ndarray, mode: str) -> dict[int, float] | None:
    """Return Keras class weights for ``--class-weight`` ``mode`` (``balanced``: classes weigh the same), or None."""
    if mode == "none":
        return None
    counts = np.bincount(labels, minlength=2)
    return {label: float(len(labels) / (2.0 * counts[label])) for label in (0, 1)}


def make_dataset(
    x: np.ndarray, labels: np.ndarray, batch_size: int, seed: int, augment: bool, train: bool, replicas: int = 1
) -> Any:
    """Return a batched dataset; with several replicas, every batch splits evenly between them.

    Keras under ``MirroredStrategy`` fails on a batch that does not split evenly: the batch size
    is a multiple of the replicas (see ``otrain.train.distribute._replica_batch``), the
    training set drops its last partial batch (the shuffle changes it every epoch), the validation
    set at most ``replicas - 1`` cutouts.
    """
    import tensorflow as tf

    if replicas > 1 and not train:
        keep = len(x) - len(x) % replicas
        x, labels = x[:keep], labels[:keep]
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
    options = tf.data.Options()
    # Under MultiWorkerMirroredStrategy every worker builds this same dataset, then keeps its share
    # of each batch; there are no files to shard by.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = dataset.with_options(options)
    return dataset.batch(batch_size, drop_remainder=train and replicas > 1).prefetch(2)


def _learning_rate(config: TrainConfig, n_train: int, batch_size: int, replicas: int) -> Any:
    """Return the optimiser's learning rate: a number, or Keras' cosine decay over the planned steps.

    The cosine is a function of the optimiser's step count, which the checkpoint keeps: a resumed
    training continues the same curve (stretched to the new total when --epochs changed).
    """
    if config.lr_schedule != "cosine":
        return config.learning_rate
    import keras

    # The training set drops its last partial batch only with several replicas (see make_dataset).
    steps = n_train // batch_size if replicas > 1 else math.ceil(n_train / batch_size)
    return keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=max(1, steps * config.epochs))


def _starting_weights(model: Any, source: Path, planes: tuple[str, ...] | None) -> list[list[np.ndarray]]:
    """Return the weights of the trained model ``source``, one list per layer of ``model`` that has weights.

    Raises
    ------
    DataError
        When ``source`` is not a readable Keras model, is another network (layers or weight
        shapes), takes other cutouts, or was trained on other planes than the cube's (as its card
        says).
    """
    from otrain.nets.model import input_shape_of, load_model

    trained = load_model(source)
    ours, theirs = input_shape_of(model), input_shape_of(trained)
    if theirs != ours:
        raise DataError(
            f"--init-from: {source} takes {'x'.join(map(str, theirs))} cutouts, this cube has "
            f"{'x'.join(map(str, ours))}; use the same --cutout-size and planes"
        )
    source_planes = card_planes(source)
    if source_planes is not None and planes is not None and source_planes != planes:
        raise DataError(
            f"--init-from: {source} was trained on planes {' '.join(source_planes)}, this cube holds {' '.join(planes)}"
        )
    weights = [layer.get_weights() for layer in model.layers if layer.weights]
    trained_weights = [layer.get_weights() for layer in trained.layers if layer.weights]
    shapes = [[array.shape for array in layer] for layer in weights]
    if shapes != [[array.shape for array in layer] for layer in trained_weights]:
        raise DataError(f"--init-from: {source} is another network than the one this training builds")
    return trained_weights


def initialise_from(model: Any, source: Path, planes: tuple[str, ...] | None) -> None:
    """Copy the weights of the trained model ``source`` into ``model`` (``--init-from``).

    Raises
    ------
    DataError
        As :func:`_starting_weights`.
    """
    trained_weights = _starting_weights(model, source, planes)
    for layer, values in zip((layer for layer in model.layers if layer.weights), trained_weights, strict=True):
        layer.set_weights(values)
    logger.info("weights initialised from %s", source)


def check_init_from(config: TrainConfig, cube: Datacube) -> None:
    """Refuse an ``--init-from`` model that this training could not start from.

    Called before anything is written (the checkpoint, the MLflow run, a cross-validation's
    folds), so that a refused model leaves nothing behind. The network is built here, aside, to
    compare its weights' shapes with the model's.

    Parameters
    ----------
    config : TrainConfig
        The training's options; nothing is checked when ``init_from`` is None.
    cube : Datacube
        The cube it trains on (its cutouts' shape and planes).

    Raises
    ------
    DataError
        As :func:`_starting_weights`: not a readable model, other cutouts, planes or network.
    """
    if config.init_from is None:
        return
    import keras

    from otrain.nets.model import build_model

    grow_gpu_memory()  # building a model starts TensorFlow's runtime
    model = build_model(
        tuple(int(size) for size in cube.cube.shape[1:]),  # type: ignore[arg-type]
        architecture=config.architecture,
        dropout=config.dropout,
        learning_rate=config.learning_rate,
        normalisation=config.normalisation,
    )
    _starting_weights(model, config.init_from, cube.planes)
    # That model drew from the seeded generators: seed them again, so that the training is the
    # one it would be without this check.
    keras.utils.set_random_seed(config.seed)


def _epoch_callback(
    config: TrainConfig, checkpoint: Checkpoint, model_epochs: int, tracking: bool, interrupted: Callable[[], None]
) -> Any:
    import keras

    keep_best = config.patience > 0
    monitor, lower_is_better = config.monitor, MONITOR_MODES[config.monitor] == "min"

    def better(value: float) -> bool:
        if not math.isfinite(value):
            return False
        best = checkpoint.best_value
        return best is None or (value < best if lower_is_better else value > best)

    class EpochEnd(keras.callbacks.Callback):
        """After each epoch: the loss, early stopping, the learning rate, the checkpoint, progress, MLflow.

        Keras' EarlyStopping and ReduceLROnPlateau keep their state in memory only; this
        callback keeps it (best weights, counters, the plateau's learning rate) in the
        checkpoint, so that ``--resume`` continues the same training.
        """

        def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            interrupted()
            self.started = time.perf_counter()

        def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
            interrupted()

        def on_test_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
            interrupted()  # the validation that ends each epoch

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            logs = logs or {}
            row = {"epoch": epoch + 1, **{key: float(logs.get(key, np.nan)) for key in HISTORY_COLUMNS[1:]}}
            # The rate this epoch trained with (a schedule's value after its last step).
            row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            for key in ("loss", "val_loss"):
                if not math.isfinite(row[key]):
                    raise TrainingDivergedError(
                        f"training diverged at epoch {epoch + 1}: {key.replace('_', ' ')} is {row[key]}; "
                        "try a lower --learning-rate (or --normalisation robust)"
                    )
            improved = better(row[monitor])
            if improved:
                checkpoint.best_value, checkpoint.best_epoch, checkpoint.wait = row[monitor], epoch + 1, 0
            else:
                checkpoint.wait += 1
            checkpoint.stopped = keep_best and checkpoint.wait >= config.patience
            if config.lr_schedule == "plateau" and checkpoint.wait and checkpoint.wait % PLATEAU_PATIENCE == 0:
                checkpoint.learning_rate = row["learning_rate"] * PLATEAU_FACTOR
                self.model.optimizer.learning_rate = checkpoint.learning_rate
            checkpoint.history = [old for old in checkpoint.history if old["epoch"] < row["epoch"]] + [row]
            checkpoint.epochs_done = epoch + 1
            checkpoint.save(self.model, improved, keep_best)
            if checkpoint.stopped:
                self.model.stop_training = True
            elapsed = time.perf_counter() - self.started
            watched = f" {monitor} {row[monitor]:.4f}" if monitor != "val_loss" else ""
            rate = f" learning_rate {row['learning_rate']:.3g}" if config.lr_schedule != "constant" else ""
            announce(
                f"epoch {row['epoch']}/{model_epochs}: loss {row['loss']:.4f} accuracy {row['accuracy']:.4f} "
                f"val_loss {row['val_loss']:.4f} val_accuracy {row['val_accuracy']:.4f}{watched}{rate} "
                f"({elapsed:.1f} s)",
            )
            if tracking:
                import mlflow

                mlflow.log_metrics({key: value for key, value in row.items() if key != "epoch"}, step=row["epoch"])

    return EpochEnd()


def new_model(config: TrainConfig, cube: Datacube, split: Split, batch_size: int, replicas: int) -> Any:
    """Build and compile the network ``config`` asks for, on the cube's cutout shape, its learning rate scheduled."""
    from otrain.nets.model import build_model

    return build_model(
        tuple(int(size) for size in cube.cube.shape[1:]),  # type: ignore[arg-type]
        architecture=config.architecture,
        dropout=config.dropout,
        learning_rate=_learning_rate(config, len(split.train), batch_size, replicas),
        normalisation=config.normalisation,
    )


def build_and_fit(
    config: TrainConfig,
    cube: Datacube,
    split: Split,
    batch_size: int,
    checkpoint: Checkpoint,
    strategy: Any,
    tracking: bool,
    private: Path | None = None,
) -> Any:
    """Build the model under ``strategy``, load the checkpoint into it, and train the epochs left.

    ``private``: a worker other than the chief loads the chief's checkpoint, then writes its own
    epochs' checkpoints into this folder (they keep its early-stopping state in step with the chief's).
    """
    import tensorflow as tf

    replicas = strategy.num_replicas_in_sync
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    with strategy.scope():
        model = new_model(config, cube, split, batch_size, replicas)
        if config.init_from is not None and checkpoint.epochs_done == 0:
            initialise_from(model, config.init_from, cube.planes)
        checkpoint.load_into(model)
        if config.lr_schedule == "plateau" and checkpoint.learning_rate is not None:
            model.optimizer.learning_rate = checkpoint.learning_rate
        if multi_worker:
            model.optimizer.build(model.trainable_variables)  # here, not inside the first step
    if private is not None:
        checkpoint.folder, checkpoint.state = private, None
    if checkpoint.epochs_done >= config.epochs or checkpoint.stopped:
        return model
    training = make_dataset(
        cube.cube[split.train], cube.labels[split.train], batch_size, config.seed, config.augment, True, replicas
    )
    validation = make_dataset(
        cube.cube[split.validation], cube.labels[split.validation], batch_size, config.seed, False, False, replicas
    )
    if multi_worker:
        fit_across_workers(model)
    with interrupt_between_steps() as interrupted, strategy.scope():
        try:
            model.fit(
                training,
                validation_data=validation,
                epochs=config.epochs,
                initial_epoch=checkpoint.epochs_done,
                shuffle=False,  # the dataset shuffles itself, reproducibly
                class_weight=class_weights(cube.labels[split.train], config.class_weight),
                callbacks=[_epoch_callback(config, checkpoint, config.epochs, tracking, interrupted)],
                verbose=0,
            )
        except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError) as error:
            if not multi_worker:
                raise
            raise OtrainError(
                f"another worker of the cluster stopped answering after epoch {checkpoint.epochs_done} "
                f"({first_line(error)}); start every worker again with --resume"
            ) from None
    return model


def build_with_weights(config: TrainConfig, cube: Datacube, split: Split, batch_size: int, trained: Any) -> Any:
    """Return a model outside any strategy holding the weights (and optimiser state) of ``trained``."""
    model = new_model(config, cube, split, batch_size, 1)
    model.optimizer.build(model.trainable_variables)
    model.set_weights(trained.get_weights())
    return model
