"""otrain-promote's side of the MLflow model registry: register a training's model and move an alias.

Each training's model is registered as a new version of one registered model, with its test
metrics and a summary of its split as version tags (method, cube hash, seed, fractions, and the
counts and SHA-256 digests of the candidate ids of its validation and test sets: MLflow limits
the length of a tag). The ids themselves are in the model card, an artifact of the training's
run; the gate reads the champion's from there, checked against the digests. Whether the
alias (``champion``) moves to the new version is decided by a gate (:class:`Gate`; otrain's is
:class:`otrain.judge.gate.PromotionGate`, which scores both models on rows neither trained
on): this module holds the registry's side only, and imports no scoring code.

The whole promotion (register, compare, move the alias) holds a lock on this machine, and the
alias is only moved if it still names the champion the new model was compared with, so two
promotions at once never let a worse model win because it finished last.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from otrain.errors import DataError
from otrain.io.atomic import write_json_atomic
from otrain.io.card import matches_summary, split_record, split_summary, training_card
from otrain.io.layout import CARD_SUFFIX, METRICS_FILE, RUN_FILE, TEST_CUBE
from otrain.io.locking import exclusive_lock
from otrain.options import PromoteConfig
from otrain.options.uris import ModelUri, model_version_uri, run_model_uri
from otrain.track.tracking import (
    RunInfo,
    check_tracking_uri,
    read_run_file,
    resolve_tracking_uri,
    store_lock,
    using_tracking_uri,
)
from otrain.track.uris import model_version

__all__ = ["SPLIT_TAG", "Gate", "PromotionDecision", "promote"]

logger = logging.getLogger("otrain")

#: Version tag holding the JSON summary of the training's split (:func:`otrain.io.card.split_summary`).
SPLIT_TAG = "otrain.split"
#: Times the gate compares again when another machine moved the alias meanwhile.
_ATTEMPTS = 3
#: Seconds a promotion waits for another one on this machine to finish.
_LOCK_WAIT = 3600.0


@dataclass
class PromotionDecision:
    """What the gate decided, and why.

    The gate fills in ``new_value`` (NaN until then) when it scores the new model.
    ``new_threshold`` and ``champion_threshold`` are the thresholds the two models were judged
    at (None for a metric that needs none, such as ROC AUC); ``note`` says when one is not the
    threshold of the model's own card (--threshold, or a card that records none).
    """

    registered_name: str
    version: str
    promoted: bool
    reason: str
    metric: str
    new_value: float = math.nan
    champion_version: str | None = None
    champion_value: float | None = None
    compared_on: int | None = None
    new_threshold: float | None = None
    champion_threshold: float | None = None
    note: str | None = None


class Gate(Protocol):
    """What :func:`promote` asks the gate that judges a new version against the champion."""

    def score_new(self, decision: PromotionDecision, model_uri: str) -> None:
        """Score the newly registered model on the whole test cube; fill in the value, rows and threshold."""
        ...

    def judge(
        self,
        decision: PromotionDecision,
        champion_version: str,
        champion_record: dict[str, Any] | None,
        champion_uri: str,
    ) -> None:
        """Compare the new model with the champion (its split record from its version tag); fill in ``decision``."""
        ...


#: What a version's split tag must hold to be read (a summary, or the whole record of an older otrain).
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


def promote(config: PromoteConfig, open_gate: Callable[[Path, dict[str, Any] | None], Gate]) -> PromotionDecision:
    """Register the model of ``config.model_dir`` and move the alias if the gate allows it.

    Parameters
    ----------
    config : PromoteConfig
        The options of otrain-promote.
    open_gate : callable
        Makes the gate from the training's test cube and its split record (None without one),
        once the training and its run are found and before anything is registered.

    Returns
    -------
    PromotionDecision
        What was registered and decided; also written to ``config.report`` when given.

    Raises
    ------
    DataError
        When the training folder has no MLflow run, test cube or model card.
    OptionError
        When the tracking store cannot be reached (checked before anything is registered).
    """
    run = read_run_file(config.model_dir)
    if run is None:
        raise DataError(f"{config.model_dir}: no {RUN_FILE} (was the model trained with --no-tracking?)")
    test_file = config.model_dir / TEST_CUBE
    if not test_file.is_file():
        raise DataError(f"{test_file}: test cube missing; promote a folder written by otrain-train")
    card = training_card(config.model_dir)
    uri = resolve_tracking_uri(run.tracking_uri)
    check_tracking_uri(uri, skippable=False)
    with using_tracking_uri(uri):
        decision = _register_and_judge(config, run, card, test_file, uri, open_gate)
    if config.report is not None:
        write_json_atomic(config.report, {key: value for key, value in asdict(decision).items() if value is not None})
    return decision


def _register_and_judge(
    config: PromoteConfig,
    run: RunInfo,
    card: dict[str, Any],
    test_file: Path,
    uri: str,
    open_gate: Callable[[Path, dict[str, Any] | None], Gate],
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
            f"{config.model_dir}: its MLflow run {run.run_id} is not in the store {uri} ({RUN_FILE} names "
            f"{run.tracking_uri}); set MLFLOW_TRACKING_URI to the store the model was trained with"
        ) from None
    record = split_record(card)
    gate = open_gate(test_file, record)
    metrics_file = config.model_dir / METRICS_FILE
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    name = config.registered_name

    with exclusive_lock(store_lock(uri, f"promote-{name}"), f"the promotion gate of {name}", wait=_LOCK_WAIT):
        version = mlflow.register_model(run_model_uri(run.run_id), name)
        for key, value in metrics.items():
            client.set_model_version_tag(name, version.version, f"test_{key}", str(value))
        if record is not None:
            summary = json.dumps(split_summary(record), sort_keys=True)
            client.set_model_version_tag(name, version.version, SPLIT_TAG, summary)
        decision = PromotionDecision(
            registered_name=name,
            version=str(version.version),
            promoted=True,
            reason="no champion yet",
            metric=config.metric,
        )
        gate.score_new(decision, model_version_uri(name, version.version))
        for _ in range(_ATTEMPTS):
            champion = _alias_holder(client, name, config.alias)
            if champion is None or str(champion.version) == str(version.version):
                break
            champion_version = str(champion.version)
            held = client.get_model_version(name, champion_version)
            champion_record = _champion_record(client, held.run_id, _parse_record(held.tags.get(SPLIT_TAG)))
            gate.judge(decision, champion_version, champion_record, model_version_uri(name, champion_version))
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
        return model_version(client, ModelUri(name=name, alias=alias))
    except MlflowException:
        return None


def _champion_record(client: Any, run_id: str, summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """Return the champion's split record with its candidate ids, read from the model card its run logged.

    The version tag holds a summary (:func:`otrain.io.card.split_summary`); the card, an artifact
    of the run, holds the ids, and is used only when its record is the one the tag summarises. A
    tag of an older otrain (the whole record, without ids) is returned as it is; a summary whose
    card cannot be read, likewise (the gate then refuses to compare, and says why).
    """
    if summary is None or "test_ids_sha256" not in summary:
        return summary
    import tempfile

    from mlflow.exceptions import MlflowException

    try:
        cards = [entry.path for entry in client.list_artifacts(run_id, "training") if entry.path.endswith(CARD_SUFFIX)]
        if len(cards) == 1:
            with tempfile.TemporaryDirectory() as scratch:
                card = json.loads(Path(client.download_artifacts(run_id, cards[0], scratch)).read_text())
            record = card.get("split") if isinstance(card, dict) else None
            if isinstance(record, dict) and matches_summary(record, summary):
                return record
    except (MlflowException, OSError, ValueError) as error:
        logger.warning("the model card of run %s cannot be read (%s)", run_id, error)
    return summary
