"""The promotion gate of otrain-promote: whether a new model is at least as good as the champion.

The registry (:mod:`otrain.track.registry`) registers the new version, finds the champion and
moves the alias; this module judges. The new model takes the alias only when its metric is at
least the champion's minus a tolerance, both scored on test rows that neither model trained on:

- the champion's model card records the candidate ids of its validation and test sets: a new
  test cutout is unseen when its id is in the champion's test set, or, when the champion's
  cube is here (found by path, checked by hash), when its id is not among that cube's training
  and validation rows; the others are left out;
- a champion of an older otrain records no ids: with the same cube, seed and fractions the new
  test set was held out from both trainings; otherwise its training and validation rows are
  recomputed from its seed and fractions (with a warning: NumPy does not promise its shuffle
  across versions);
- when that cannot be done (the ids cannot be read, the cube is gone, ids are not unique, too
  few rows remain), the gate refuses to promote and says why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from otrain.data.datacube import Datacube, Split, recorded_split
from otrain.errors import DataError
from otrain.io.card import recorded_ids
from otrain.io.ids import candidate_key
from otrain.metrics.evaluation import binary_metrics, evaluate
from otrain.options import PromoteConfig
from otrain.score.scoring import score_loaded
from otrain.track.registry import PromotionDecision

__all__ = ["MIN_COMPARISON_ROWS", "PromotionGate", "comparison_rows", "verdict"]

#: Fewest held-out test cutouts the gate compares two models on.
MIN_COMPARISON_ROWS = 10
_NOT_UNIQUE = "candidate ids of {name} are not unique, so the rows the champion trained on cannot be told"


def _score(model: Any, cube: Datacube, rows: np.ndarray, threshold: float, metric: str) -> float:
    probabilities = score_loaded(model, cube.subset(rows), "the test cube").probabilities
    labels = cube.labels[rows]
    figures = binary_metrics(labels, probabilities, threshold)  # no threshold table unless needed
    return float(figures[metric] if metric in figures else evaluate(labels, probabilities, threshold)[metric])


def _same_split(first: dict[str, Any], second: dict[str, Any]) -> bool:
    keys = ("method", "data_hash", "seed", "frac", "test_frac")
    return first.get("method") == "stratified" and all(first.get(key) == second.get(key) for key in keys)


def _recorded_split(record: dict[str, Any], candidates: list[str | None]) -> tuple[Datacube, Split] | None:
    """Find the cube a split record names among ``candidates`` (checked by hash) and read its split from the record."""
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


def _too_few(test: Datacube, rows: np.ndarray, champion_version: str, note: str = "") -> str | None:
    """Say why ``rows`` are too few to compare on (or one class only); None when they will do."""
    if len(rows) >= MIN_COMPARISON_ROWS and len(np.unique(test.labels[rows])) == 2:
        return None
    classes = "" if len(np.unique(test.labels[rows])) == 2 else ", not both classes,"
    return (
        f"only {len(rows)} of the {len(test)} test cutouts{classes} were not seen by champion "
        f"v{champion_version} in training: too few to compare{note}"
    )


def _rows_by_ids(
    test: Datacube, new: dict[str, Any] | None, champion: dict[str, Any], champion_version: str
) -> tuple[np.ndarray | None, str]:
    """Choose the rows of ``test`` the champion never trained on, by the candidate ids its record names."""
    if not champion.get("unique_ids", True):
        return (
            None,
            "candidate ids of the champion's cube are not unique, so the rows the champion trained on cannot be told",
        )
    _, champion_test = recorded_ids(champion) or ([], [])
    held_out = set(champion_test)
    keys = [candidate_key(candid) for candid in test.candids]
    unseen = np.array([key in held_out for key in keys], dtype=bool)
    if unseen.all():
        why = f"every test cutout is in champion v{champion_version}'s recorded test set: held out from both"
        return np.arange(len(test)), why
    note = ""
    found = _recorded_split(champion, [champion.get("cube"), new.get("cube") if new else None])
    if found is None:
        note = (
            f" (its cube {str(champion.get('data_hash'))[:12]}... ({champion.get('cube')}) is not available here, so "
            "only the cutouts of its recorded test set count as unseen)"
        )
    else:
        cube, split = found
        seen = {candidate_key(candid) for candid in cube.candids[np.concatenate([split.train, split.validation])]}
        unseen |= np.array([key not in seen for key in keys], dtype=bool)
    rows = np.flatnonzero(unseen).astype(np.int64)
    refused = _too_few(test, rows, champion_version, note)
    if refused is not None:
        return None, refused
    return rows, f"compared on the {len(rows)} of {len(test)} test cutouts that champion v{champion_version} never saw"


def comparison_rows(
    test: Datacube, new: dict[str, Any] | None, champion: dict[str, Any] | None, champion_version: str
) -> tuple[np.ndarray | None, str]:
    """Choose the rows of the new test cube on which the new model and the champion are compared.

    The champion's record names the candidate ids of its validation and test sets: a new test
    cutout is unseen when its id is in the champion's test set, or, when the champion's cube is
    here (found by path, checked by hash), when its id is not among that cube's training and
    validation rows. A record of an older otrain holds no ids: its rows are recomputed from its
    seed and fractions, with a warning.

    Parameters
    ----------
    test : Datacube
        The new training's test cube.
    new, champion : dict or None
        The split records of the new training and of the champion (see
        :func:`otrain.io.card.split_record`).
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
    if recorded_ids(champion) is not None:
        return _rows_by_ids(test, new, champion, champion_version)
    if "test_ids_sha256" in champion:  # a version tag's summary whose card could not be read
        return None, (
            f"champion v{champion_version}'s record of the cutouts it held out (the candidate ids in its model card) "
            "cannot be read from its MLflow run, so the rows it trained on cannot be told"
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
            return None, _NOT_UNIQUE.format(name=name)
    seen = {candidate_key(candid) for candid in cube.candids[seen_rows]}
    rows = np.array(
        [row for row, candid in enumerate(test.candids) if candidate_key(candid) not in seen], dtype=np.int64
    )
    refused = _too_few(test, rows, champion_version)
    if refused is not None:
        return None, refused
    return rows, f"compared on the {len(rows)} of {len(test)} test cutouts that champion v{champion_version} never saw"


def verdict(
    new_value: float,
    champion_value: float,
    *,
    metric: str,
    tolerance: float,
    alias: str,
    champion_version: str,
    why: str,
) -> tuple[bool, str]:
    """Decide on two scores of the same rows: promote when the new one is at least the champion's minus the tolerance.

    Parameters
    ----------
    new_value, champion_value : float
        The metric of the new model and of the champion on the compared rows.
    metric : str
        The metric's name (--metric).
    tolerance : float
        How much worse the new model may be (--tolerance).
    alias : str
        The alias at stake (--alias), for the message.
    champion_version : str
        The champion's version.
    why : str
        Which rows were compared (:func:`comparison_rows`).

    Returns
    -------
    tuple
        (promoted, reason).
    """
    comparison = f"{metric} {new_value:.4f}"
    if new_value >= champion_value - tolerance:
        return (
            True,
            f"{comparison} >= champion v{champion_version} {champion_value:.4f} - tolerance {tolerance} ({why})",
        )
    return False, (
        f"{comparison} is worse than champion v{champion_version} {champion_value:.4f} by more than "
        f"{tolerance} ({why}); the alias '{alias}' stays on v{champion_version}"
    )


class PromotionGate:
    """The judge that :func:`otrain.track.registry.promote` asks: scores MLflow models on the test cube.

    Parameters
    ----------
    config : PromoteConfig
        The metric, threshold, tolerance and alias.
    test_file : Path
        The new training's test cube.
    record : dict or None
        The new training's split record (from its model card).

    Raises
    ------
    DataError
        When the test cube cannot be read.
    """

    def __init__(self, config: PromoteConfig, test_file: Path, record: dict[str, Any] | None) -> None:
        self.config = config
        self.cube = Datacube.load(test_file)
        self.record = record
        self._new_model: Any = None

    @staticmethod
    def _load(model_uri: str) -> Any:
        import mlflow

        import otrain.nets.model  # noqa: F401 - registers the custom layers for loading

        return mlflow.keras.load_model(model_uri)

    def score_new(self, model_uri: str) -> tuple[float, int]:
        """Load the new model (kept for the comparisons) and score it on the whole test cube.

        Returns
        -------
        tuple
            (the metric, the number of test cutouts).
        """
        self._new_model = self._load(model_uri)
        everything = np.arange(len(self.cube))
        return _score(self._new_model, self.cube, everything, self.config.threshold, self.config.metric), len(self.cube)

    def judge(
        self,
        decision: PromotionDecision,
        champion_version: str,
        champion_record: dict[str, Any] | None,
        champion_uri: str,
    ) -> None:
        """Compare the new model with the champion on rows neither trained on; fill in ``decision``."""
        config = self.config
        rows, why = comparison_rows(self.cube, self.record, champion_record, champion_version)
        decision.champion_version = champion_version
        if rows is None:
            decision.promoted = False
            decision.champion_value = decision.compared_on = None
            decision.reason = f"not compared: {why}; the alias '{config.alias}' stays on v{champion_version}"
            return
        champion_model = self._load(champion_uri)
        try:
            champion_value = _score(champion_model, self.cube, rows, config.threshold, config.metric)
        except DataError as error:
            decision.promoted = False
            decision.champion_value = decision.compared_on = None
            decision.reason = f"not compared: champion v{champion_version} cannot score this cube ({error})"
            return
        new_value = _score(self._new_model, self.cube, rows, config.threshold, config.metric)
        decision.new_value, decision.champion_value, decision.compared_on = new_value, champion_value, len(rows)
        decision.promoted, decision.reason = verdict(
            new_value,
            champion_value,
            metric=config.metric,
            tolerance=config.tolerance,
            alias=config.alias,
            champion_version=champion_version,
            why=why,
        )
