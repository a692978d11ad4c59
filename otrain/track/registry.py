"""otrain-promote: the MLflow model registry, with a promotion gate.

Each training's model is registered as a new version of one registered model, with its test
metrics and the record of its split (cube hash, seed, fractions) as version tags. The alias
(``champion``) moves to the new version only when the new model's metric is at least the
champion's minus a tolerance, both scored on test rows that neither model trained on:

- same cube, seed and fractions: the new test set was held out from both trainings;
- otherwise the champion's training and validation rows are recomputed from its own record
  (its cube, found by path and checked by hash) and the new test rows with those candidate ids
  are left out; when that cannot be done (the cube is gone, ids are not unique, too few rows
  remain), the gate refuses to promote and says why.

The whole gate (register, compare, move the alias) holds a lock on this machine, and the alias
is only moved if it still names the champion the new model was compared with, so two
promotions at once never let a worse model win because it finished last.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from otrain.data.datacube import Datacube, Split, recorded_split
from otrain.errors import DataError
from otrain.io.card import split_record
from otrain.io.locking import exclusive_lock
from otrain.metrics.evaluation import binary_metrics, evaluate, write_json
from otrain.options import PromoteConfig
from otrain.track.tracking import (
    RunInfo,
    check_tracking_uri,
    read_run_file,
    resolve_tracking_uri,
    store_lock,
    using_tracking_uri,
)

__all__ = ["SPLIT_TAG", "PromotionDecision", "comparison_rows", "promote", "split_record"]

logger = logging.getLogger("otrain")

#: Version tag holding the JSON record of the training's split.
SPLIT_TAG = "otrain.split"
#: Fewest held-out test cutouts the gate compares two models on.
MIN_COMPARISON_ROWS = 10
#: Times the gate compares again when another machine moved the alias meanwhile.
_ATTEMPTS = 3
#: Seconds a promotion waits for another one on this machine to finish.
_LOCK_WAIT = 3600.0


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
    compared_on: int | None = None


def _score(model: Any, cube: Datacube, rows: np.ndarray, threshold: float, metric: str) -> float:
    from otrain.score.scoring import fit_to_model, predict

    probabilities = predict(model, fit_to_model(cube.cube[rows], model, "the test cube"))
    labels = cube.labels[rows]
    figures = binary_metrics(labels, probabilities, threshold)  # no threshold table unless needed
    return float(figures[metric] if metric in figures else evaluate(labels, probabilities, threshold)[metric])


def _training_card(model_dir: Path) -> dict[str, Any]:
    cards = sorted(model_dir.glob("*.card.json"))
    if len(cards) != 1:
        found = "no model card" if not cards else f"{len(cards)} model cards"
        raise DataError(f"{model_dir}: {found} (*.card.json); promote a folder written by otrain-train")
    try:
        return json.loads(cards[0].read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"{cards[0]}: not a readable model card ({error})") from None


#: What a split record must hold for its rows to be recomputed.
_RECORD_KEYS = ("method", "data_hash", "seed", "frac", "test_frac")


def _parse_record(tag: str | None) -> dict[str, Any] | None:
    """Read a version's split tag; a missing or malformed one reads as None (no record)."""
    try:
        record = json.loads(tag) if tag else None
    except ValueError:
        return None
    if not isinstance(record, dict) or not set(_RECORD_KEYS) <= set(record):
        return None
    return record


def _same_split(first: dict[str, Any], second: dict[str, Any]) -> bool:
    keys = ("method", "data_hash", "seed", "frac", "test_frac")
    return first.get("method") == "stratified" and all(first.get(key) == second.get(key) for key in keys)


def _recorded_split(record: dict[str, Any], candidates: list[str | None]) -> tuple[Datacube, Split] | None:
    """Find the cube a split record names among ``candidates`` (checked by hash) and recompute the split."""
    for path in candidates:
        if path and Path(path).is_file():
            try:
                cube = Datacube.load(Path(path))
            except DataError:
                continue
            split = recorded_split(record, cube)
            if split is not None:
                return cube, split
    return None


def comparison_rows(
    test: Datacube, new: dict[str, Any] | None, champion: dict[str, Any] | None, champion_version: str
) -> tuple[np.ndarray | None, str]:
    """Choose the rows of the new test cube on which the new model and the champion are compared.

    Parameters
    ----------
    test : Datacube
        The new training's test cube.
    new, champion : dict or None
        The split records of the new training and of the champion (see :func:`split_record`).
    champion_version : str
        The champion's version, for the messages.

    Returns
    -------
    tuple
        (rows, why): the row indices held out from both trainings, or None with the reason
        the models cannot be compared fairly.
    """
    everything = np.arange(len(test))
    if champion is None:
        return None, (
            f"champion v{champion_version} has no record of the rows it trained on (registered by an older "
            "otrain), so a fair comparison is not possible"
        )
    if new is not None and _same_split(new, champion):
        return everything, "same cube, seed and fractions: the test set is held out from both"
    if champion.get("method") != "stratified":
        return None, f"champion v{champion_version} was trained on a hand-made split that cannot be recomputed"
    new_cube = new.get("cube") if new else None
    found = _recorded_split(champion, [champion.get("cube"), new_cube])
    if found is None:
        return None, (
            f"champion v{champion_version} was trained on cube {str(champion.get('data_hash'))[:12]}... "
            f"({champion.get('cube')}), which is not available here, and its training rows may be in this test set"
        )
    cube, split = found
    seen_rows = np.concatenate([split.train, split.validation])
    for name, ids in (("the champion's cube", cube.candids), ("the test cube", test.candids)):
        if len(np.unique(ids)) != len(ids):
            return None, f"candidate ids of {name} are not unique, so the rows the champion trained on cannot be told"
    seen = {str(candid) for candid in cube.candids[seen_rows]}
    rows = np.array([row for row, candid in enumerate(test.candids) if str(candid) not in seen], dtype=np.int64)
    held_out = len(rows)
    if held_out < MIN_COMPARISON_ROWS or len(np.unique(test.labels[rows])) < 2:
        classes = "" if len(np.unique(test.labels[rows])) == 2 else ", not both classes,"
        return None, (
            f"only {held_out} of the {len(test)} test cutouts{classes} were not seen by champion "
            f"v{champion_version} in training: too few to compare"
        )
    return rows, f"compared on the {held_out} of {len(test)} test cutouts that champion v{champion_version} never saw"


def promote(config: PromoteConfig) -> PromotionDecision:
    """Register the model of ``config.model_dir`` and move the alias if the gate allows it.

    Raises
    ------
    DataError
        When the training folder has no MLflow run, test cube or model card.
    OptionError
        When the tracking store cannot be reached (checked before anything is registered).
    """
    import otrain.nets.model  # noqa: F401 - registers the custom layers for loading

    run = read_run_file(config.model_dir)
    if run is None:
        raise DataError(f"{config.model_dir}: no mlflow_run.json (was the model trained with --no-tracking?)")
    test_file = config.model_dir / "test_set" / "datacube" / "cube_test.npz"
    if not test_file.is_file():
        raise DataError(f"{test_file}: test cube missing; promote a folder written by otrain-train")
    card = _training_card(config.model_dir)
    uri = resolve_tracking_uri(run.tracking_uri)
    check_tracking_uri(uri, skippable=False)
    with using_tracking_uri(uri):
        decision = _register_and_judge(config, run, card, test_file, uri)
    if config.report is not None:
        write_json(config.report, {key: value for key, value in asdict(decision).items() if value is not None})
    return decision


def _register_and_judge(
    config: PromoteConfig, run: RunInfo, card: dict[str, Any], test_file: Path, uri: str
) -> PromotionDecision:
    """Register the training's model, compare it with the champion, and move the alias or not."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    try:
        client.get_run(run.run_id)
    except MlflowException:
        raise DataError(
            f"{config.model_dir}: its MLflow run {run.run_id} is not in the store {uri} (mlflow_run.json names "
            f"{run.tracking_uri}); set MLFLOW_TRACKING_URI to the store the model was trained with"
        ) from None
    cube = Datacube.load(test_file)
    metrics_file = config.model_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    record = split_record(card)
    name = config.registered_name

    with exclusive_lock(store_lock(uri, f"promote-{name}"), f"the promotion gate of {name}", wait=_LOCK_WAIT):
        version = mlflow.register_model(f"runs:/{run.run_id}/model", name)
        for key, value in metrics.items():
            client.set_model_version_tag(name, version.version, f"test_{key}", str(value))
        if record is not None:
            client.set_model_version_tag(name, version.version, SPLIT_TAG, json.dumps(record, sort_keys=True))
        new_model = mlflow.keras.load_model(f"models:/{name}/{version.version}")
        everything = np.arange(len(cube))
        decision = PromotionDecision(
            registered_name=name,
            version=str(version.version),
            promoted=True,
            reason="no champion yet",
            metric=config.metric,
            new_value=_score(new_model, cube, everything, config.threshold, config.metric),
            compared_on=len(cube),
        )
        for _ in range(_ATTEMPTS):
            champion = _alias_holder(client, name, config.alias)
            if champion is None or str(champion.version) == str(version.version):
                break
            _judge(decision, config, cube, record, champion, client, new_model)
            if not decision.promoted:
                break
            # Another machine may have moved the alias while we compared: then compare again.
            current = _alias_holder(client, name, config.alias)
            if current is not None and str(current.version) == str(champion.version):
                break
        else:
            decision.promoted = False
            decision.reason = (
                f"not promoted: the alias '{config.alias}' moved {_ATTEMPTS} times while this model was compared "
                "(other promotions at the same time); run otrain-promote again"
            )
        if decision.promoted:
            client.set_registered_model_alias(name, config.alias, version.version)
        client.set_model_version_tag(name, version.version, "promotion", decision.reason)
    return decision


def _alias_holder(client: Any, name: str, alias: str) -> Any:
    """Return the version the alias names, or None when there is none."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _judge(
    decision: PromotionDecision,
    config: PromoteConfig,
    cube: Datacube,
    record: dict[str, Any] | None,
    champion: Any,
    client: Any,
    new_model: Any,
) -> None:
    """Compare the new model with the champion on rows neither trained on; fill in ``decision``."""
    import mlflow

    champion_version = str(champion.version)
    tag = client.get_model_version(config.registered_name, champion_version).tags.get(SPLIT_TAG)
    rows, why = comparison_rows(cube, record, _parse_record(tag), champion_version)
    decision.champion_version = champion_version
    if rows is None:
        decision.promoted = False
        decision.champion_value = decision.compared_on = None
        decision.reason = f"not compared: {why}; the alias '{config.alias}' stays on v{champion_version}"
        return
    champion_model = mlflow.keras.load_model(f"models:/{config.registered_name}/{champion_version}")
    try:
        champion_value = _score(champion_model, cube, rows, config.threshold, config.metric)
    except DataError as error:
        decision.promoted = False
        decision.champion_value = decision.compared_on = None
        decision.reason = f"not compared: champion v{champion_version} cannot score this cube ({error})"
        return
    new_value = _score(new_model, cube, rows, config.threshold, config.metric)
    decision.new_value, decision.champion_value, decision.compared_on = new_value, champion_value, len(rows)
    comparison = f"{config.metric} {new_value:.4f}"
    if new_value >= champion_value - config.tolerance:
        decision.promoted = True
        decision.reason = (
            f"{comparison} >= champion v{champion_version} {champion_value:.4f} - tolerance {config.tolerance} ({why})"
        )
    else:
        decision.promoted = False
        decision.reason = (
            f"{comparison} is worse than champion v{champion_version} {champion_value:.4f} by more than "
            f"{config.tolerance} ({why}); the alias '{config.alias}' stays on v{champion_version}"
        )
