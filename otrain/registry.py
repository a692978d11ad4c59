"""otrain-promote: the MLflow model registry, with a promotion gate.

Each training's model is registered as a new version of one registered model, its test
metrics as version tags. The alias (``champion``) moves to the new version only when, scored on
the new training's test cube, the new model's metric is at least the champion's minus a
tolerance: a gate, not a blind overwrite. Both models are scored on the same cube here, so the
comparison holds even when the champion was trained on other data.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from otrain.config import PromoteConfig
from otrain.datacube import Datacube
from otrain.errors import DataError
from otrain.evaluation import evaluate, write_json
from otrain.tracking import read_run_file

__all__ = ["PromotionDecision", "promote"]

logger = logging.getLogger("otrain")


@dataclass
class PromotionDecision:
    """What the gate decided, and why."""

    registered_name: str
    version: str
    promoted: bool
    reason: str
    metric: str
    new_value: float
    champion_version: str | None = None
    champion_value: float | None = None


def _score(model: Any, cube: Datacube, threshold: float, metric: str) -> float:
    probabilities = np.asarray(model.predict(cube.cube, batch_size=256, verbose=0))[:, 1]
    return float(evaluate(cube.labels, probabilities, threshold)[metric])


def promote(config: PromoteConfig) -> PromotionDecision:
    """Register the model of ``config.model_dir`` and move the alias if the gate allows it.

    Raises
    ------
    DataError
        When the training folder has no MLflow run or test cube.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    import otrain.model  # noqa: F401 - registers the custom layers for loading

    run = read_run_file(config.model_dir)
    if run is None:
        raise DataError(f"{config.model_dir}: no mlflow_run.json (was the model trained with --no-tracking?)")
    test_file = config.model_dir / "test_set" / "datacube" / "cube_test.npz"
    if not test_file.is_file():
        raise DataError(f"{test_file}: test cube missing; promote a folder written by otrain-train")
    uri = os.environ.get("MLFLOW_TRACKING_URI") or run.tracking_uri
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    cube = Datacube.load(test_file)
    metrics_file = config.model_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}

    version = mlflow.register_model(f"runs:/{run.run_id}/model", config.registered_name)
    for key, value in metrics.items():
        client.set_model_version_tag(config.registered_name, version.version, f"test_{key}", str(value))
    new_model = mlflow.keras.load_model(f"models:/{config.registered_name}/{version.version}")
    new_value = _score(new_model, cube, config.threshold, config.metric)
    decision = PromotionDecision(
        registered_name=config.registered_name,
        version=str(version.version),
        promoted=True,
        reason="no champion yet",
        metric=config.metric,
        new_value=new_value,
    )
    try:
        champion = client.get_model_version_by_alias(config.registered_name, config.alias)
    except MlflowException:
        champion = None
    if champion is not None and str(champion.version) != str(version.version):
        champion_model = mlflow.keras.load_model(f"models:/{config.registered_name}@{config.alias}")
        champion_value = _score(champion_model, cube, config.threshold, config.metric)
        decision.champion_version, decision.champion_value = str(champion.version), champion_value
        if new_value >= champion_value - config.tolerance:
            decision.reason = (
                f"{config.metric} {new_value:.4f} >= champion v{champion.version} {champion_value:.4f} "
                f"- tolerance {config.tolerance}"
            )
        else:
            decision.promoted = False
            decision.reason = (
                f"{config.metric} {new_value:.4f} is worse than champion v{champion.version} {champion_value:.4f} "
                f"by more than {config.tolerance}; the alias '{config.alias}' stays on v{champion.version}"
            )
    if decision.promoted:
        client.set_registered_model_alias(config.registered_name, config.alias, version.version)
    client.set_model_version_tag(config.registered_name, version.version, "promotion", decision.reason)
    if config.report is not None:
        write_json(config.report, {key: value for key, value in asdict(decision).items() if value is not None})
    return decision
