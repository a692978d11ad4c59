"""Where a training runs: TensorFlow's set-up and its distribution strategy.

One device, several GPUs or logical CPU devices on one machine (``MirroredStrategy``), or a
cluster of several workers described by ``TF_CONFIG`` (``MultiWorkerMirroredStrategy``, with
the work-around Keras 3 needs there); the global batch rounded for the replicas.
"""

from __future__ import annotations

import logging
from typing import Any

from otrain.data.datacube import Split
from otrain.errors import DataError
from otrain.io.progress import announce
from otrain.options import Cluster, TrainConfig

__all__ = ["configure_tensorflow", "distributed_batch", "fit_across_workers", "grow_gpu_memory"]

logger = logging.getLogger("otrain")


def configure_tensorflow(config: TrainConfig, cluster: Cluster | None = None) -> Any:
    """Seed everything, choose the distribution strategy and the precision policy.

    A cluster of several workers (``TF_CONFIG``) trains with
    ``tf.distribute.MultiWorkerMirroredStrategy``. On one machine, several GPUs, or several
    logical CPU devices (``tf.config.set_logical_device_configuration``), are used together
    through ``tf.distribute.MirroredStrategy``.
    """
    import keras
    import tensorflow as tf

    from otrain.nets.model import log_visible_devices

    gpus = grow_gpu_memory()
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


def grow_gpu_memory() -> list[Any]:
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


def distributed_batch(config: TrainConfig, split: Split, batch_size: int, replicas: int) -> int:
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


def fit_across_workers(model: Any) -> None:
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
