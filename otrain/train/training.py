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

The pieces live beside this module: :mod:`otrain.train.fit` (the fit loop),
:mod:`otrain.train.checkpoint` (the checkpoint, interrupts), :mod:`otrain.train.distribute` (the
strategy), :mod:`otrain.train.postfit` (calibration, threshold, twin) and
:mod:`otrain.train.publish` (publishing the staged outputs, MLflow); this one runs a training
through them and writes its outputs.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from otrain import __version__
from otrain.data.datacube import Datacube, Split, cube_split, record_split
from otrain.errors import DataError, OptionError
from otrain.io.atomic import write_text_atomic
from otrain.io.jsonfile import json_object, read_json
from otrain.io.layout import (
    ACCURACY_CURVE,
    CHECKPOINT_FOLDER,
    HISTORY_FILE,
    LOSS_CURVE,
    METRICS_FILE,
    TEST_CUBE,
    TRAINING_LOCK,
    VALIDATION_CUBE,
    twin_path,
)
from otrain.io.locking import exclusive_lock
from otrain.io.progress import announce
from otrain.metrics.evaluation import binary_metrics, operating_rates, write_json
from otrain.options import (
    AUTO_BATCH_MAX,
    AUTO_BATCH_MIN,
    AUTO_BATCH_MIN_STEPS,
    Cluster,
    TrainConfig,
)
from otrain.track.tracking import (
    RunInfo,
    check_tracking_uri,
    dvc_tags,
    git_commit,
    read_run_file,
    resolve_tracking_uri,
)
from otrain.train.checkpoint import COMPLETE, STAGING, Checkpoint
from otrain.train.distribute import configure_tensorflow, distributed_batch
from otrain.train.fit import TrainingDivergedError, build_and_fit, build_with_weights, check_init_from
from otrain.train.postfit import PARITY_CUTOUTS, calibrate, choose_threshold, export_twin, parity_rows
from otrain.train.publish import TrainingResult, finish, publish, tracked, write_history

__all__ = ["auto_batch_size", "check_cube", "train", "training_batch_size"]

#: What a resumed training must share with the interrupted one (besides the data); --epochs may change.
RESUME_KEYS = (
    "architecture",
    "seed",
    "frac",
    "test_frac",
    "split_by",
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
    "tta",
)


def auto_batch_size(n_train: int) -> int:
    """Batch size for ``--batch-size auto``.

    The original's batch (``AUTO_BATCH_MAX`` in :mod:`otrain.options`), reduced so that an epoch
    has at least ``AUTO_BATCH_MIN_STEPS`` gradient steps, never below ``AUTO_BATCH_MIN`` (nor
    above the training set).
    """
    size = min(AUTO_BATCH_MAX, max(AUTO_BATCH_MIN, n_train // AUTO_BATCH_MIN_STEPS))
    return max(1, min(size, n_train))


def check_cube(cube: Datacube, config: TrainConfig) -> None:
    """Refuse a cube that cannot train: one class, cutouts under 8x8, under 5 of a class, not square with --tta."""
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
    if config.tta and height != width:
        raise OptionError(
            f"--tta: needs square cutouts (8 flips and rotations of one shape), {config.cube} holds {height}x{width}"
        )


def training_batch_size(config: TrainConfig, n_train: int) -> int:
    """Return the batch size of a training on ``n_train`` rows: ``--batch-size``, or chosen when ``auto``."""
    if config.batch_size == "auto":
        return auto_batch_size(n_train)
    size = int(config.batch_size)
    if size > n_train:
        raise OptionError(f"--batch-size: {size} is larger than the training set ({n_train} cutouts)")
    return size


def _device() -> str:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return f"{len(gpus)} GPU" if gpus else "CPU"


def _split_record(config: TrainConfig, cube: Datacube, split: Split, method: str) -> dict[str, Any]:
    """Which cutouts the training held out (their candidate ids): what every later reader uses."""
    return record_split(
        cube, split, method=method, source=config.cube, seed=config.seed, frac=config.frac, test_frac=config.test_frac
    )


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
        (:func:`~otrain.train.fit.check_init_from`, as cross-validation does once for all its folds); else it is
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
    check_cube(cube, config)
    method = "given"
    if split is None:
        split, method = cube_split(cube, config.split_by, config.frac, config.test_frac, config.seed, config.cube)
    batch_size = training_batch_size(config, len(split.train))
    if not cluster.is_chief:
        return _train_worker(config, cube, split, batch_size, cluster)
    tracking_uri = resolve_tracking_uri(config.tracking_uri)
    if config.tracking:
        check_tracking_uri(tracking_uri)
    with exclusive_lock(config.output_dir / TRAINING_LOCK, f"the training folder {config.output_dir}"):
        return _train_locked(config, cube, split, method, batch_size, tracking_uri, on_ready, cluster, init_checked)


def _train_locked(
    config: TrainConfig,
    cube: Datacube,
    split: Split,
    method: str,
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
            saved.setdefault("split_by", "row")  # ... before --split-by: it split by row
            saved.setdefault("tta", False)
            changed = sorted(key for key in fingerprint if key in saved and saved[key] != fingerprint[key])
            if changed:
                raise OptionError(
                    f"--resume: the interrupted training used other values of {', '.join(changed)}; "
                    "resume with the same ones (only --epochs may change) or pass --overwrite to start again"
                )
        if (staged / COMPLETE).is_file():
            announce(f"resuming: the interrupted training had finished; moving its outputs into {config.output_dir}")
            with tracked(config, tracking_uri, previous_run, {}, only_resume=True):
                return publish(config, staged)
        checkpoint = Checkpoint.read(checkpoint_folder)
        if checkpoint.epochs_done == 0:
            announce(f"resuming {checkpoint_folder}: no epoch had finished, starting from epoch 1")
        else:
            how = "stopped early" if checkpoint.stopped else f"of {config.epochs}"
            announce(f"resuming {checkpoint_folder}: epoch {checkpoint.epochs_done} {how} had finished")
    strategy = configure_tensorflow(config, cluster)
    replica_batch = distributed_batch(config, split, batch_size, strategy.num_replicas_in_sync)
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
    split_record = _split_record(config, cube, split, method)
    try:
        with tracked(config, tracking_uri, previous_run, tags) as run:
            if run is not None:
                run.write(checkpoint_folder)
            return _fit_and_write(
                config, cube, split, split_record, replica_batch, checkpoint, run, on_ready, cluster, strategy
            )
    except TrainingDivergedError:
        shutil.rmtree(checkpoint_folder, ignore_errors=True)
        raise


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
    from otrain.nets.dihedral import VIEWS
    from otrain.nets.model import save_model
    from otrain.nets.tta import with_tta

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
    model = build_and_fit(config, cube, split, batch_size, checkpoint, strategy, run is not None)
    if cluster.workers > 1:
        # The other workers have stopped: what follows runs here alone, outside the strategy,
        # whose every computation must be entered by all the workers.
        model = build_with_weights(config, cube, split, batch_size, model)
        strategy = tf.distribute.get_strategy()
    if config.patience > 0 and checkpoint.best_weights is not None:
        with strategy.scope():
            checkpoint.load_into(model, best=True)  # keep the best weights, as Keras' EarlyStopping would
    history = checkpoint.history

    test_x, test_labels = cube.cube[split.test], cube.labels[split.test]
    with strategy.scope():
        if config.tta:
            model = with_tta(model)  # before the calibration: it is fitted on the mean of the views
        model, calibration, validation_p, probabilities = calibrate(model, config, cube, split, test_x, test_labels)
    threshold, threshold_rule = choose_threshold(config, cube.labels[split.validation], validation_p)
    metrics = binary_metrics(test_labels, probabilities, threshold)
    metrics.update(operating_rates(test_labels, probabilities))  # exact FPR at 1 % FNR and the reverse
    metrics["expected_calibration_error"] = calibration["ece_test_after"]
    metrics["epochs_run"] = len(history)

    staged = checkpoint.folder / STAGING
    shutil.rmtree(staged, ignore_errors=True)
    model_file = staged / config.model_file.name
    outputs = [save_model(model, model_file)]
    rows, checked = parity_rows(split, len(cube.cube), config.seed, PARITY_CUTOUTS)
    pixels = cube.cube if rows is None else cube.cube[rows]
    onnx_record = export_twin(
        model, model_file, pixels, f"{config.cube.name} ({checked})", threshold, twin_path(config.model_file)
    )
    if (staged / onnx_record["file"]).is_file():  # not even an absence record when it could not be written
        outputs.append(staged / onnx_record["file"])
    outputs.append(cube.subset(split.validation).save(staged / VALIDATION_CUBE, one_hot_labels=True))
    outputs.append(cube.subset(split.test).save(staged / TEST_CUBE))
    outputs.append(write_history(staged / HISTORY_FILE, history))
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
        "recipe": config.recipe_record(),
        "test_time_augmentation": {"views": VIEWS, "combine": "log_odds"} if config.tta else None,
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
    return finish(config, staged, card, outputs, (model, metrics, test_x), run)


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
    strategy = configure_tensorflow(config, cluster)
    batch_size = distributed_batch(config, split, batch_size, strategy.num_replicas_in_sync)
    with tempfile.TemporaryDirectory(prefix="otrain-worker-") as private:
        build_and_fit(config, cube, split, batch_size, checkpoint, strategy, False, Path(private))
    sizes = {"train": len(split.train), "validation": len(split.validation), "test": len(split.test)}
    metrics = {"epochs_run": len(checkpoint.history)}
    return TrainingResult(
        config.output_dir, config.model_file, metrics, checkpoint.history, batch_size, sizes, chief=False
    )
