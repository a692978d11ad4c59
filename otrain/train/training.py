"""otrain-train: fit a network on a datacube, evaluate it on a held-out test set.

Outputs go to ``<model-path>/CNN_training/<name>/`` (the original's layout), and appear
complete or not at all. While a training runs, its folder holds a lock (one training per
folder) and a checkpoint, ``.checkpoint/``:

- after every epoch, the weights and optimiser state, the best weights so far and the early
  stopping state are written into a new ``epoch-NNNN/`` folder, then ``latest.json`` (the
  history and the name of that folder) is replaced atomically: a checkpoint is always whole,
  whenever the process dies;
- when training has ended, every output is written into ``.checkpoint/final/``; a marker
  listing them is written last, then they are renamed into the folder. A run interrupted
  after the marker is finished by ``--resume``; one interrupted before it resumes from its
  last epoch (in the same MLflow run).

``--overwrite`` replaces only the files a training writes; other files in the folder stay.

When ``TF_CONFIG`` describes a cluster of several workers, they train together with
``tf.distribute.MultiWorkerMirroredStrategy`` (``--batch-size`` is the global batch). The chief
(task ``chief``, else ``worker 0``) does everything above; the other workers only train, with their
checkpoint in a private temporary folder, and never touch the training folder. ``--resume`` makes
every worker start from the chief's checkpoint, which they read from the training folder (shared
storage, or a copy at the same path).

Why this module is still over 1,000 lines: it holds the fit loop and what issue 24 moves into a
``train/`` subpackage (the checkpoint and interrupts, the distributed strategy, the post-fit
steps: calibration, threshold, twin, card; publishing). The train and dataset-size stages of
the pipeline depend on it, so that split is one move, with their dependency lists re-keyed and
the whole suite run before and after, not a piece of it now.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from otrain import __version__
from otrain.data.datacube import Datacube, Split, stratified_split
from otrain.errors import DataError, OptionError, OtrainError, first_line
from otrain.io.atomic import atomic_path, write_text_atomic
from otrain.io.card import card_planes, read_card, write_card
from otrain.io.jsonfile import json_object, read_json
from otrain.io.layout import (
    ACCURACY_CURVE,
    CARD_SUFFIX,
    CHECKPOINT_COMPLETE,
    CHECKPOINT_FOLDER,
    CHECKPOINT_POINTER,
    CHECKPOINT_STAGING,
    HISTORY_FILE,
    LOSS_CURVE,
    METRICS_FILE,
    RUN_FILE,
    TEST_CUBE,
    TRAINING_LOCK,
    VALIDATION_CUBE,
    model_of_card,
    twin_path,
)
from otrain.io.locking import exclusive_lock
from otrain.io.outputs import HISTORY_COLUMNS
from otrain.io.progress import announce
from otrain.metrics.evaluation import binary_metrics, write_json
from otrain.options import (
    AUTO_BATCH_MAX,
    AUTO_BATCH_MIN,
    AUTO_BATCH_MIN_STEPS,
    MONITOR_MODES,
    PLATEAU_FACTOR,
    PLATEAU_PATIENCE,
    Cluster,
    TrainConfig,
)
from otrain.score.scoring import predict, predict_columns
from otrain.track.tracking import (
    RunInfo,
    check_tracking_uri,
    dvc_tags,
    git_commit,
    open_run,
    read_run_file,
    resolve_tracking_uri,
)

__all__ = [
    "PARITY_CUTOUTS",
    "Checkpoint",
    "TrainingDivergedError",
    "TrainingResult",
    "auto_batch_size",
    "check_init_from",
    "parity_rows",
    "train",
]

logger = logging.getLogger("otrain")

#: Inside the checkpoint: the pointer to the last finished epoch, and the staged final outputs.
POINTER, STAGING, COMPLETE = CHECKPOINT_POINTER, CHECKPOINT_STAGING, CHECKPOINT_COMPLETE
_WEIGHTS = "latest.weights.h5"
_BEST_WEIGHTS = "best.weights.h5"
#: The ONNX twin is checked on every cutout of a cube up to this many; beyond, on the validation
#: and test sets and a seeded sample of the training set, this many in all (see :func:`parity_rows`).
PARITY_CUTOUTS = 10_000
#: What a resumed training must share with the interrupted one (besides the data); --epochs may change.
RESUME_KEYS = (
    "architecture",
    "seed",
    "frac",
    "test_frac",
    "dropout",
    "learning_rate",
    "normalisation",
    "augment",
    "class_weight",
    "mixed_precision",
    "patience",
    "threshold",
    "init_from",
    "calibration",
    "target_fnr",
    "target_fpr",
    "monitor",
    "lr_schedule",
)


def auto_batch_size(n_train: int) -> int:
    """Batch size for ``--batch-size auto``.

    The original's batch (``AUTO_BATCH_MAX`` in :mod:`otrain.options`), reduced so that an epoch
    has at least ``AUTO_BATCH_MIN_STEPS`` gradient steps, never below ``AUTO_BATCH_MIN`` (nor
    above the training set).
    """
    size = min(AUTO_BATCH_MAX, max(AUTO_BATCH_MIN, n_train // AUTO_BATCH_MIN_STEPS))
    return max(1, min(size, n_train))


class TrainingDivergedError(OtrainError):
    """The loss became NaN or infinite (exit status 1)."""


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


def _configure_tensorflow(config: TrainConfig, cluster: Cluster | None = None) -> Any:
    """Seed everything, choose the distribution strategy and the precision policy.

    A cluster of several workers (``TF_CONFIG``) trains with
    ``tf.distribute.MultiWorkerMirroredStrategy``. On one machine, several GPUs, or several
    logical CPU devices (``tf.config.set_logical_device_configuration``), are used together
    through ``tf.distribute.MirroredStrategy``.
    """
    import keras
    import tensorflow as tf

    from otrain.nets.model import log_visible_devices

    gpus = _grow_gpu_memory()
    multi_worker = None
    if cluster is not None and cluster.workers > 1:
        # Created before anything starts TensorFlow's runtime (TensorFlow's rule); it reads TF_CONFIG
        # and waits, without a time limit, until every worker has started.
        announce(f"{cluster.task} of a cluster of {cluster.workers} workers: waiting for the others")
        multi_worker = tf.distribute.MultiWorkerMirroredStrategy()
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    log_visible_devices()
    keras.mixed_precision.set_global_policy("mixed_float16" if config.mixed_precision else "float32")
    if multi_worker is not None:
        logger.info(
            "training on %d workers with MultiWorkerMirroredStrategy (%d replicas)",
            cluster.workers,  # type: ignore[union-attr]
            multi_worker.num_replicas_in_sync,
        )
        return multi_worker
    kind = "GPU" if gpus else "CPU"
    devices = [device.name for device in tf.config.list_logical_devices(kind)]
    if len(devices) > 1:
        logger.info("training on %d %s devices with MirroredStrategy", len(devices), kind)
        return tf.distribute.MirroredStrategy(devices)
    logger.info("training on %s", "1 GPU" if gpus else "the CPU")
    return tf.distribute.get_strategy()


def _grow_gpu_memory() -> list[Any]:
    """Let TensorFlow take GPU memory as it needs it; return the GPUs.

    Must run before anything starts TensorFlow's runtime (the setting cannot change afterwards).
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    return gpus


def _replica_batch(batch_size: int, replicas: int) -> int:
    """Round a batch size down to a multiple of the replicas (at least one cutout each)."""
    return max(replicas, batch_size - batch_size % replicas) if replicas > 1 else batch_size


def _dataset(
    x: np.ndarray, labels: np.ndarray, batch_size: int, seed: int, augment: bool, train: bool, replicas: int = 1
) -> Any:
    """Return a batched dataset; with several replicas, every batch splits evenly between them.

    Keras under ``MirroredStrategy`` fails on a batch that does not split evenly: the batch size
    is a multiple of the replicas (see :func:`_replica_batch`), the training set drops its last
    partial batch (the shuffle changes it every epoch), the validation set at most
    ``replicas - 1`` cutouts.
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

    # The training set drops its last partial batch only with several replicas (see _dataset).
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


def _initialise_from(model: Any, source: Path, planes: tuple[str, ...] | None) -> None:
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

    _grow_gpu_memory()  # building a model starts TensorFlow's runtime
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


def _calibrate(
    model: Any, config: TrainConfig, cube: Datacube, split: Split, test_x: np.ndarray, test_labels: np.ndarray
) -> tuple[Any, dict[str, Any], np.ndarray, np.ndarray]:
    """Fit ``--calibration`` on the validation set.

    Returns
    -------
    tuple
        The calibrated model; the card's record (fitted parameters, expected calibration error
        of the validation and test sets before and after); the calibrated P(real) of the
        validation and of the test set, as that model computes them.
    """
    from otrain.metrics.evaluation import expected_calibration_error
    from otrain.nets.calibration import fit_calibration
    from otrain.nets.model import with_calibration

    validation_x, validation_labels = cube.cube[split.validation], cube.labels[split.validation]
    raw_columns, raw_test = predict_columns(model, validation_x), predict(model, test_x)
    raw_validation = raw_columns[:, 1]
    fit = fit_calibration(validation_labels, raw_columns, config.calibration)  # both columns, as the layer
    if fit.method != "none":
        model = with_calibration(model, fit.temperature, fit.bias)
        logger.info("calibration (%s): temperature %.4g, offset %.4g", fit.method, fit.temperature, fit.bias)
    validation, test = (
        (predict(model, validation_x), predict(model, test_x)) if fit.method != "none" else (raw_validation, raw_test)
    )
    record = {
        "method": fit.method,
        "temperature": fit.temperature,
        "bias": fit.bias,
        "fitted_on": fit.fitted_on,
        # The prior P(real) is calibrated to (see --prob-ratio of otrain-infer for another night's).
        "fraction_real": float(np.mean(validation_labels == 1)),
        "ece_validation_before": expected_calibration_error(validation_labels, raw_validation),
        "ece_validation_after": expected_calibration_error(validation_labels, validation),
        "ece_test_before": expected_calibration_error(test_labels, raw_test),
        "ece_test_after": expected_calibration_error(test_labels, test),
    }
    return model, record, validation, test


def _choose_threshold(
    config: TrainConfig, labels: np.ndarray, probabilities: np.ndarray
) -> tuple[float, dict[str, Any]]:
    """Return the decision threshold (``--threshold``, or chosen by a target rate) and how it was chosen."""
    from otrain.nets.calibration import threshold_for_fnr, threshold_for_fpr

    if config.target_fnr is None and config.target_fpr is None:
        threshold = 0.5 if config.threshold is None else config.threshold
        return threshold, {"method": "given" if config.threshold is not None else "default"}
    if config.target_fnr is not None:
        method, target = "target_fnr", config.target_fnr
        threshold = threshold_for_fnr(labels, probabilities, target)
    else:
        method, target = "target_fpr", float(config.target_fpr)  # type: ignore[arg-type]
        threshold = threshold_for_fpr(labels, probabilities, target)
    decided = probabilities > threshold
    rule = {
        "method": method,
        "target": target,
        "chosen_on": "validation set",
        "n_real": int(np.count_nonzero(labels == 1)),
        "n_bogus": int(np.count_nonzero(labels == 0)),
        "validation_fnr": float(np.mean(~decided[labels == 1])) if np.any(labels == 1) else None,
        "validation_fpr": float(np.mean(decided[labels == 0])) if np.any(labels == 0) else None,
    }
    announce(f"threshold {threshold:.6g}, chosen on the validation set for {method.replace('_', ' ')} {target}")
    return threshold, rule


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard-link ``source`` as ``target`` (no copy of the weights), or copy it where links are not supported."""
    try:
        os.link(source, target)
    except OSError:
        with atomic_path(target) as temporary:
            shutil.copyfile(source, temporary)


@dataclass
class Checkpoint:
    """The checkpoint of a training: finished epochs, their history, early-stopping state.

    Attributes
    ----------
    folder : Path
        ``<training folder>/.checkpoint``.
    epochs_done : int
        Epochs finished (0: none yet).
    history : list of dict
        One row per finished epoch (the columns of ``history.csv``).
    best_value : float or None
        Best value so far of the monitored validation metric (``--monitor``).
    best_epoch : int
        The epoch that reached it (1-based; 0 when none).
    wait : int
        Epochs since then.
    learning_rate : float or None
        The learning rate reached by ``--lr-schedule plateau`` (None: the initial one).
    stopped : bool
        Early stopping ended the training.
    state : str or None
        The ``epoch-NNNN`` folder holding the weights of the last finished epoch.
    """

    folder: Path
    epochs_done: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_value: float | None = None
    best_epoch: int = 0
    wait: int = 0
    stopped: bool = False
    state: str | None = None
    learning_rate: float | None = None

    @classmethod
    def read(cls, folder: Path) -> Checkpoint:
        """Read the checkpoint of ``folder``; one without a finished epoch reads as epoch 0.

        Raises
        ------
        DataError
            When ``latest.json`` or the weights it names cannot be read; the message names the file.
        """
        pointer = folder / POINTER
        if not pointer.is_file():
            return cls(folder)

        def parse(data: Any) -> Checkpoint:
            if "best_val_loss" in data:  # a checkpoint from before --monitor, which watched the loss
                data["best_value"] = data.pop("best_val_loss")
            return cls(folder, **{key: data[key] for key in data if key != "folder"})

        checkpoint = read_json(
            pointer, "the checkpoint cannot be read", parse=parse, advice="pass --overwrite to start again"
        )
        if checkpoint.state is None or not (folder / checkpoint.state / _WEIGHTS).is_file():
            raise DataError(
                f"{pointer}: the checkpoint names weights that do not exist; pass --overwrite to start again"
            )
        return checkpoint

    @property
    def weights(self) -> Path | None:
        """The weights (and optimiser state) of the last finished epoch."""
        return self.folder / self.state / _WEIGHTS if self.state else None

    @property
    def best_weights(self) -> Path | None:
        """The weights of the epoch with the best monitored value, when kept."""
        path = self.folder / self.state / _BEST_WEIGHTS if self.state else None
        return path if path is not None and path.is_file() else None

    def save(self, model: Any, improved: bool, keep_best: bool) -> None:
        """Write the state of the epoch just finished, then point ``latest.json`` at it (atomically).

        Parameters
        ----------
        model : keras.Model
            The compiled model; its weights and its optimiser's state are saved.
        improved : bool
            This epoch has the best monitored value so far (its weights become the best ones).
        keep_best : bool
            Keep the best weights (early stopping restores them).
        """
        previous = self.best_weights
        state = f"epoch-{self.epochs_done:04d}"
        folder = self.folder / state
        shutil.rmtree(folder, ignore_errors=True)  # a half-written one from a killed run
        folder.mkdir(parents=True)
        with atomic_path(folder / _WEIGHTS) as temporary:
            model.save_weights(temporary)
        if keep_best and improved:
            _link_or_copy(folder / _WEIGHTS, folder / _BEST_WEIGHTS)
        elif keep_best and previous is not None:
            _link_or_copy(previous, folder / _BEST_WEIGHTS)
        self.state = state
        record = {key: value for key, value in self.__dict__.items() if key != "folder"}
        write_text_atomic(self.folder / POINTER, json.dumps(record, indent=1) + "\n")
        for old in self.folder.glob("epoch-*"):
            if old.name != state:
                shutil.rmtree(old, ignore_errors=True)

    def load_into(self, model: Any, best: bool = False) -> None:
        """Load the last (or best) weights and the optimiser state into a freshly built model.

        Parameters
        ----------
        model : keras.Model
            A compiled model of the same architecture.
        best : bool
            Load the best weights instead of the last ones.

        Raises
        ------
        DataError
            When the weights file cannot be read (corrupt or truncated); the message names it.
        """
        path = self.best_weights if best else self.weights
        if path is None:
            return
        if not model.optimizer.built:  # its state is in the file too; building it twice adds variables
            model.optimizer.build(model.trainable_variables)
        try:
            model.load_weights(path)
        except Exception:  # h5py and Keras raise many types on a damaged file
            raise DataError(
                f"{path}: checkpoint cannot be read (corrupt or truncated); pass --overwrite to start again"
            ) from None


@contextmanager
def _interrupt_between_steps() -> Iterator[Callable[[], None]]:
    """Defer Ctrl-C and SIGTERM during ``fit`` to the next step boundary.

    A KeyboardInterrupt raised at an arbitrary point inside TensorFlow's training loop has been
    seen to crash the process (SIGSEGV) instead of ending it cleanly; raised from a callback
    between two steps, it unwinds like any exception. Yields the check the callback calls.
    Outside the main thread (a library caller's worker) signals cannot be caught: nothing changes.
    """
    pending: list[int] = []

    def check() -> None:
        if pending:
            raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield check
        return
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {number: signal.signal(number, lambda number, frame: pending.append(number)) for number in signals}
    try:
        yield check
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    check()  # a signal that came after the last step


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


def _write_history(path: Path, history: list[dict[str, float]]) -> Path:
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as stream:
        # restval: rows of a checkpoint written before a column existed (resumed across versions).
        writer = csv.DictWriter(stream, fieldnames=HISTORY_COLUMNS, restval="nan")
        writer.writeheader()
        writer.writerows(history)
    return path


def _device() -> str:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return f"{len(gpus)} GPU" if gpus else "CPU"


def _pip_requirements() -> list[str]:
    import keras
    import tensorflow as tf

    return [f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}", f"numpy=={np.__version__}"]


def _split_record(config: TrainConfig, data_hash: str, given: bool) -> dict[str, Any]:
    """How the training rows were chosen: enough to recompute them (the promotion gate does)."""
    return {
        "method": "given" if given else "stratified",
        "cube": str(config.cube),
        "data_hash": data_hash,
        "seed": config.seed,
        "frac": config.frac,
        "test_frac": config.test_frac,
    }


def train(
    config: TrainConfig,
    on_ready: Callable[[RunInfo | None], None] | None = None,
    *,
    cube: Datacube | None = None,
    split: Split | None = None,
    cluster: Cluster | None = None,
    init_checked: bool = False,
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
    cluster : Cluster, optional
        This process's place in a multi-worker training; default: one worker, whatever
        ``TF_CONFIG`` says (otrain-train passes :func:`otrain.options.training.cluster_from_environment`;
        cross-validation and the dataset-size study train alone). A worker other than the chief
        only trains: its result has ``chief`` False, no outputs and no test metrics.
    init_checked : bool
        True when the caller has checked ``config.init_from`` against this cube already
        (:func:`check_init_from`, as cross-validation does once for all its folds); else it is
        checked here before anything is written.

    Returns
    -------
    TrainingResult
        Paths, test metrics and history.

    Raises
    ------
    DataError
        On a cube that cannot be trained on (one class, too few cutouts, too small), a
        checkpoint that cannot be read, or a training folder another training holds.
    OptionError
        On an unreachable tracking store, a batch size larger than the training set, a
        ``TF_CONFIG`` that is not a cluster holding this task, or ``--resume`` with other options
        than the interrupted training's.
    TrainingDivergedError
        When the loss becomes NaN or infinite (the checkpoint is removed, the run is FAILED).
    """
    cluster = Cluster() if cluster is None else cluster
    cube = Datacube.load(config.cube) if cube is None else cube
    _check_cube(cube, config)
    given = split is not None
    if split is None:
        split = stratified_split(cube.labels, config.frac, config.test_frac, config.seed)
    batch_size = _batch_size(config, len(split.train))
    if not cluster.is_chief:
        return _train_worker(config, cube, split, batch_size, cluster)
    tracking_uri = resolve_tracking_uri(config.tracking_uri)
    if config.tracking:
        check_tracking_uri(tracking_uri)
    with exclusive_lock(config.output_dir / TRAINING_LOCK, f"the training folder {config.output_dir}"):
        return _train_locked(config, cube, split, given, batch_size, tracking_uri, on_ready, cluster, init_checked)


def _train_locked(
    config: TrainConfig,
    cube: Datacube,
    split: Split,
    given: bool,
    batch_size: int,
    tracking_uri: str,
    on_ready: Callable[[RunInfo | None], None] | None,
    cluster: Cluster,
    init_checked: bool = False,
) -> TrainingResult:
    checkpoint_folder = config.output_dir / CHECKPOINT_FOLDER
    if not (config.resume or config.overwrite) and (config.holds_training() or checkpoint_folder.is_dir()):
        # Another training of this folder finished, or was interrupted, since the options were checked.
        raise OptionError(f"--model-name: {config.output_dir} already holds a training; pass --overwrite to replace it")
    previous_run = read_run_file(checkpoint_folder) if config.resume else None

    data_hash = cube.content_hash()
    options = config.model_dump(mode="json")
    fingerprint = {"data_hash": data_hash, "batch_size_used": batch_size, **{key: options[key] for key in RESUME_KEYS}}
    fingerprint["model_file"] = config.model_file.name
    fingerprint_file = checkpoint_folder / "options.json"
    staged = checkpoint_folder / STAGING
    checkpoint = Checkpoint(checkpoint_folder)
    if config.resume:
        if fingerprint_file.is_file():
            saved = read_json(
                fingerprint_file,
                "the checkpoint cannot be read",
                parse=json_object,
                advice="pass --overwrite to start again",
            )
            saved.setdefault("architecture", "otrain")  # a checkpoint from before --architecture
            changed = sorted(key for key in fingerprint if key in saved and saved[key] != fingerprint[key])
            if changed:
                raise OptionError(
                    f"--resume: the interrupted training used other values of {', '.join(changed)}; "
                    "resume with the same ones (only --epochs may change) or pass --overwrite to start again"
                )
        if (staged / COMPLETE).is_file():
            announce(f"resuming: the interrupted training had finished; moving its outputs into {config.output_dir}")
            with _tracked(config, tracking_uri, previous_run, {}, only_resume=True):
                return _publish(config, staged)
        checkpoint = Checkpoint.read(checkpoint_folder)
        if checkpoint.epochs_done == 0:
            announce(f"resuming {checkpoint_folder}: no epoch had finished, starting from epoch 1")
        else:
            how = "stopped early" if checkpoint.stopped else f"of {config.epochs}"
            announce(f"resuming {checkpoint_folder}: epoch {checkpoint.epochs_done} {how} had finished")
    strategy = _configure_tensorflow(config, cluster)
    replica_batch = _distributed_batch(config, split, batch_size, strategy.num_replicas_in_sync)
    if checkpoint.epochs_done == 0 and not init_checked:
        check_init_from(config, cube)
    # Everything that can be checked before training is checked: only now is anything written.
    if config.overwrite:
        shutil.rmtree(checkpoint_folder, ignore_errors=True)
    shutil.rmtree(staged, ignore_errors=True)
    checkpoint_folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(fingerprint_file, json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")

    tags = {
        "otrain.version": __version__,
        "otrain.data_hash": data_hash,
        "otrain.cube": str(config.cube),
        "git.commit": git_commit(),
        "mlflow.note.content": f"otrain-train {config.name} on {config.cube}",
        **dvc_tags(config.cube),
    }
    split_record = _split_record(config, data_hash, given)
    try:
        with _tracked(config, tracking_uri, previous_run, tags) as run:
            if run is not None:
                run.write(checkpoint_folder)
            return _fit_and_write(
                config, cube, split, split_record, replica_batch, checkpoint, run, on_ready, cluster, strategy
            )
    except TrainingDivergedError:
        shutil.rmtree(checkpoint_folder, ignore_errors=True)
        raise


@contextmanager
def _tracked(
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


def _fit_and_write(
    config: TrainConfig,
    cube: Datacube,
    split: Split,
    split_record: dict[str, Any],
    batch_size: int,
    checkpoint: Checkpoint,
    run: RunInfo | None,
    on_ready: Callable[[RunInfo | None], None] | None,
    cluster: Cluster,
    strategy: Any,
) -> TrainingResult:
    """Train under ``strategy`` (``batch_size`` rounded for its replicas), evaluate, write every output."""
    import keras
    import tensorflow as tf

    from otrain.metrics.plots import plot_training_curve
    from otrain.nets.model import save_model

    if run is not None:
        import mlflow

        params = {key: value for key, value in config.model_dump(mode="json").items() if value is not None}
        params.update(batch_size_used=batch_size, n_train=len(split.train), n_validation=len(split.validation))
        params.update(n_test=len(split.test), n_workers=cluster.workers)
        existing = mlflow.get_run(run.run_id).data.params
        mlflow.log_params({key: value for key, value in params.items() if key not in existing})
        mlflow.set_tags({"tensorflow.version": tf.__version__, "device": _device()})
    if on_ready is not None:
        on_ready(run)

    input_shape = tuple(int(size) for size in cube.cube.shape[1:])
    model = _build_and_fit(config, cube, split, batch_size, checkpoint, strategy, run is not None)
    if cluster.workers > 1:
        # The other workers have stopped: what follows runs here alone, outside the strategy,
        # whose every computation must be entered by all the workers.
        model = _build_with_weights(config, cube, split, batch_size, model)
        strategy = tf.distribute.get_strategy()
    if config.patience > 0 and checkpoint.best_weights is not None:
        with strategy.scope():
            checkpoint.load_into(model, best=True)  # keep the best weights, as Keras' EarlyStopping would
    history = checkpoint.history

    test_x, test_labels = cube.cube[split.test], cube.labels[split.test]
    with strategy.scope():
        model, calibration, validation_p, probabilities = _calibrate(model, config, cube, split, test_x, test_labels)
    threshold, threshold_rule = _choose_threshold(config, cube.labels[split.validation], validation_p)
    metrics = binary_metrics(test_labels, probabilities, threshold)
    metrics["expected_calibration_error"] = calibration["ece_test_after"]
    metrics["epochs_run"] = len(history)

    staged = checkpoint.folder / STAGING
    shutil.rmtree(staged, ignore_errors=True)
    model_file = staged / config.model_file.name
    outputs = [save_model(model, model_file)]
    rows, checked = parity_rows(split, len(cube.cube), config.seed, PARITY_CUTOUTS)
    pixels = cube.cube if rows is None else cube.cube[rows]
    onnx_record = _export_twin(
        model, model_file, pixels, f"{config.cube.name} ({checked})", threshold, twin_path(config.model_file)
    )
    if (staged / onnx_record["file"]).is_file():  # not even an absence record when it could not be written
        outputs.append(staged / onnx_record["file"])
    outputs.append(cube.subset(split.validation).save(staged / VALIDATION_CUBE, one_hot_labels=True))
    outputs.append(cube.subset(split.test).save(staged / TEST_CUBE))
    outputs.append(_write_history(staged / HISTORY_FILE, history))
    loss_curve, accuracy_curve = (staged / curve.format(name=config.name) for curve in (LOSS_CURVE, ACCURACY_CURVE))
    outputs.append(plot_training_curve(history, "loss", f"{config.name}: loss", loss_curve))
    outputs.append(plot_training_curve(history, "accuracy", f"{config.name}: accuracy", accuracy_curve))
    outputs.append(write_json(staged / METRICS_FILE, metrics))
    card = {
        "model_file": config.model_file.name,
        "input_shape": list(input_shape),
        "architecture": config.architecture,
        "planes": list(cube.planes) if cube.planes is not None else None,
        "init_from": str(config.init_from) if config.init_from is not None else None,
        "normalisation": config.normalisation,
        "classes": {"0": "bogus", "1": "real"},
        "threshold": threshold,
        "threshold_rule": threshold_rule,
        "decision_rule": "real if P(real) > threshold",
        "calibration": calibration,
        "params": config.model_dump(mode="json"),
        "batch_size_used": batch_size,
        "workers": cluster.workers,
        "data_hash": split_record["data_hash"],
        "cube": str(config.cube),
        "split": split_record,
        "split_sizes": {"train": len(split.train), "validation": len(split.validation), "test": len(split.test)},
        "test_metrics": metrics,
        "onnx": onnx_record,
        "otrain_version": __version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "mlflow_run_id": run.run_id if run else None,
    }
    outputs.append(write_card(model_file, card))
    logging_failed = None
    if run is not None:
        try:
            _log_to_mlflow(model, metrics, outputs, test_x)
        except Exception as error:  # the store or the artifact server went away
            logging_failed = error
        else:
            run.write(staged)
    _mark_complete(config, staged)
    result = _publish(config, staged)
    if logging_failed is not None:
        raise OtrainError(
            f"training finished and {config.output_dir} is written, but logging to MLflow failed ({logging_failed})"
        )
    result.run = run
    return result


def parity_rows(split: Split, cutouts: int, seed: int, limit: int = PARITY_CUTOUTS) -> tuple[np.ndarray | None, str]:
    """Choose the cutouts of the cube the ONNX twin is checked on.

    Every one of a cube of at most ``limit`` cutouts. Beyond, the check would run Keras and ONNX
    Runtime over the whole cube in every training (K times in cross-validation, once per size
    in the dataset-size study): it takes every cutout of the validation and test sets, which
    the training scores anyway, and fills up to ``limit`` with training cutouts drawn with
    ``seed``.

    Parameters
    ----------
    split : Split
        The training's split of the cube.
    cutouts : int
        The cube's number of cutouts.
    seed : int
        The training's ``--seed``.
    limit : int
        :data:`PARITY_CUTOUTS` by default.

    Returns
    -------
    numpy.ndarray or None
        The rows, in increasing order; None for every row.
    str
        What they are, for the card.
    """
    if cutouts <= limit:
        return None, "every cutout"
    held_out = np.concatenate([split.validation, split.test])
    room = min(max(limit - len(held_out), 0), len(split.train))
    drawn = np.random.default_rng(seed).choice(split.train, size=room, replace=False)
    rows = np.sort(np.concatenate([held_out, drawn]))
    return rows, (
        f"{len(rows)} of {cutouts} cutouts: the validation and test sets, and {room} of the "
        f"{len(split.train)} training cutouts drawn with --seed"
    )


def _export_twin(
    model: Any, model_file: Path, pixels: np.ndarray, checked_on: str, threshold: float, shown: Path | None = None
) -> dict[str, Any]:
    """Write the model's ONNX twin, checked on ``pixels``; without one, an absence record in its place.

    A model that cannot have a twin is still a model: the training goes on, says why in one
    line, and writes where the twin goes an absence record that says why (the pipeline
    declares that file as an output; the scoring commands name the reason and use Keras).
    Whatever fails, the conversion, the check or the writing (a full disk, a file over ONNX's
    2 GB), the twin never fails the training; nor does an absence record that cannot be
    written either, which is said in a second line (the file is then missing). An interrupt
    (Ctrl-C) still interrupts. ``shown``: the twin's final place, named in messages
    (``model_file`` is a staging file).

    Returns
    -------
    dict
        The card's ``onnx`` record; with ``absent`` and ``error`` when there is no twin, and
        ``record_error`` when not even the absence record could be written.
    """
    from otrain.score.twin import export_onnx, write_absent_twin

    twin = twin_path(model_file)
    try:
        return export_onnx(model, model_file, pixels, checked_on=checked_on, threshold=threshold, shown=shown)
    except Exception as error:  # a twin is an extra: nothing about it fails the training
        reason = (
            str(error)
            if isinstance(error, DataError)
            else f"{(shown or twin).name}: not exported ({first_line(error)[:300]})"
        )
    logger.warning("no ONNX twin: %s; otrain-infer will score with Keras", reason)
    try:
        return write_absent_twin(model_file, reason)
    except Exception as error:
        logger.warning("no absence record either: %s cannot be written (%s)", shown or twin, first_line(error)[:300])
        return {"file": twin.name, "absent": True, "error": reason, "record_error": first_line(error)[:300]}


def _distributed_batch(config: TrainConfig, split: Split, batch_size: int, replicas: int) -> int:
    """Round the (global) batch for the replicas; check every replica gets validation cutouts."""
    rounded = _replica_batch(batch_size, replicas)
    if rounded != batch_size:
        logger.info("batch size %d rounded down to %d for %d replicas", batch_size, rounded, replicas)
    if len(split.validation) < replicas:
        raise DataError(
            f"{config.cube}: the validation set holds {len(split.validation)} cutouts, fewer than the {replicas} "
            "replicas that share each batch; use a larger --frac or cube"
        )
    return rounded


def _new_model(config: TrainConfig, cube: Datacube, split: Split, batch_size: int, replicas: int) -> Any:
    from otrain.nets.model import build_model

    return build_model(
        tuple(int(size) for size in cube.cube.shape[1:]),  # type: ignore[arg-type]
        architecture=config.architecture,
        dropout=config.dropout,
        learning_rate=_learning_rate(config, len(split.train), batch_size, replicas),
        normalisation=config.normalisation,
    )


def _build_and_fit(
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
        model = _new_model(config, cube, split, batch_size, replicas)
        if config.init_from is not None and checkpoint.epochs_done == 0:
            _initialise_from(model, config.init_from, cube.planes)
        checkpoint.load_into(model)
        if config.lr_schedule == "plateau" and checkpoint.learning_rate is not None:
            model.optimizer.learning_rate = checkpoint.learning_rate
        if multi_worker:
            model.optimizer.build(model.trainable_variables)  # here, not inside the first step
    if private is not None:
        checkpoint.folder, checkpoint.state = private, None
    if checkpoint.epochs_done >= config.epochs or checkpoint.stopped:
        return model
    training = _dataset(
        cube.cube[split.train], cube.labels[split.train], batch_size, config.seed, config.augment, True, replicas
    )
    validation = _dataset(
        cube.cube[split.validation], cube.labels[split.validation], batch_size, config.seed, False, False, replicas
    )
    if multi_worker:
        _fit_across_workers(model)
    with _interrupt_between_steps() as interrupted, strategy.scope():
        try:
            model.fit(
                training,
                validation_data=validation,
                epochs=config.epochs,
                initial_epoch=checkpoint.epochs_done,
                shuffle=False,  # the dataset shuffles itself, reproducibly
                class_weight=_class_weights(cube.labels[split.train], config.class_weight),
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


def _fit_across_workers(model: Any) -> None:
    """Let Keras' ``fit`` run under MultiWorkerMirroredStrategy (Keras 3 fails there, keras-team/keras#20585).

    Keras reduces the first batch across workers to build the model symbolically, which
    MultiWorkerMirroredStrategy cannot do with a tuple; without the model's own strategy, ``fit``
    skips that step (the model, its optimiser and metrics are built already) and takes the strategy
    from the scope it is called in. Keras then reduces each step's logs along their first axis
    across workers, which scalars lack: the steps return them as one-element vectors.
    """
    import keras

    train_step, test_step = model.train_step, model.test_step

    def vectors(logs: dict[str, Any]) -> dict[str, Any]:
        return {key: keras.ops.reshape(value, [1]) for key, value in logs.items()}

    model._distribute_strategy = None
    model.train_step = lambda data: vectors(train_step(data))
    model.test_step = lambda data: vectors(test_step(data))


def _build_with_weights(config: TrainConfig, cube: Datacube, split: Split, batch_size: int, trained: Any) -> Any:
    """Return a model outside any strategy holding the weights (and optimiser state) of ``trained``."""
    model = _new_model(config, cube, split, batch_size, 1)
    model.optimizer.build(model.trainable_variables)
    model.set_weights(trained.get_weights())
    return model


def _train_worker(
    config: TrainConfig, cube: Datacube, split: Split, batch_size: int, cluster: Cluster
) -> TrainingResult:
    """Train as a worker other than the chief: nothing is written outside a private temporary folder."""
    folder = config.output_dir / CHECKPOINT_FOLDER
    checkpoint = Checkpoint(folder)
    if config.resume:
        if (folder / STAGING / COMPLETE).is_file():
            announce(f"{cluster.task}: the interrupted training had finished; the chief moves its outputs in")
            return TrainingResult(config.output_dir, config.model_file, {}, [], batch_size, {}, chief=False)
        checkpoint = Checkpoint.read(folder)
        if checkpoint.epochs_done:
            announce(f"{cluster.task}: resuming from the chief's checkpoint, epoch {checkpoint.epochs_done}")
    strategy = _configure_tensorflow(config, cluster)
    batch_size = _distributed_batch(config, split, batch_size, strategy.num_replicas_in_sync)
    with tempfile.TemporaryDirectory(prefix="otrain-worker-") as private:
        _build_and_fit(config, cube, split, batch_size, checkpoint, strategy, False, Path(private))
    sizes = {"train": len(split.train), "validation": len(split.validation), "test": len(split.test)}
    metrics = {"epochs_run": len(checkpoint.history)}
    return TrainingResult(
        config.output_dir, config.model_file, metrics, checkpoint.history, batch_size, sizes, chief=False
    )


def _mark_complete(config: TrainConfig, staged: Path) -> None:
    """Write the commit marker: the staged outputs are whole, and these are their names."""
    names = [name for name in config.output_names() if (staged / name).is_file()]
    write_text_atomic(staged / COMPLETE, json.dumps(names) + "\n")


def _publish(config: TrainConfig, staged: Path) -> TrainingResult:
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


def _log_to_mlflow(model: Any, metrics: dict[str, Any], outputs: list[Path], test_x: np.ndarray) -> None:
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
