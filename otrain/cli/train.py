"""otrain-train: train the O'TRAIN CNN on a datacube."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from otrain.cli.app import run_command
from otrain.cli.tf_setup import prepare_tensorflow
from otrain.errors import OptionError
from otrain.options import TrainConfig, cluster_from_environment

__all__ = ["main"]


def _train(config: TrainConfig) -> None:
    cluster = cluster_from_environment()  # a bad TF_CONFIG fails before TensorFlow is imported
    if config.folds is not None and cluster.workers > 1:
        raise OptionError("--folds: an ensemble trains on one machine; unset TF_CONFIG")
    prepare_tensorflow()
    from otrain.train.training import train

    def announce(run: object) -> None:
        if run is not None:
            print(f"MLflow run {run.run_id} in {run.tracking_uri}")  # type: ignore[attr-defined]

    if config.folds is not None:
        from otrain.train.ensemble import train_ensemble

        result = train_ensemble(config, on_ready=announce)
    else:
        result = train(config, on_ready=announce, cluster=cluster)
    metrics = result.metrics
    sizes = result.split_sizes
    if not result.chief:
        print(
            f"{cluster.task}: trained {len(result.history)} epochs with the {cluster.workers} workers "
            f"(global batch {result.batch_size}); the chief writes the outputs to {result.output_dir}/"
        )
        return
    if config.folds is not None:
        print(
            f"trained {config.folds} members for {metrics['epochs_run']} epochs each, on {config.folds - 1} of "
            f"{config.folds} folds of {sizes['train']} cutouts (batch {result.batch_size}); test {sizes['test']}"
        )
    else:
        print(
            f"trained {metrics['epochs_run']} epochs on {sizes['train']} cutouts (batch {result.batch_size}); "
            f"validation {sizes['validation']}, test {sizes['test']}"
        )
    print(
        "test: accuracy {accuracy:.4f}  precision {precision:.4f}  recall {recall:.4f}  F1 {f1:.4f}  "
        "MCC {mcc:.4f}  ROC AUC {roc_auc:.4f}  (real if P(real) > {threshold})".format(**metrics)
    )
    print(f"model: {result.model_file}")
    print(f"outputs: {result.output_dir}/")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run otrain-train."""
    run_command(TrainConfig, _train, argv)
