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

Each model is judged at its own operating point. The default metric, ROC AUC, needs no
threshold: it compares how well the two models rank real above bogus, whatever threshold each
runs at. A thresholded metric (MCC, F1, accuracy) is computed for each model at the threshold
its model card records (the one every scoring command uses, chosen at training with
--target-fnr), read from the registered MLflow model, where training copies the card; a model
whose card records none (an older otrain) is judged at 0.5, and the decision says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from otrain.data.datacube import Datacube, Split, recorded_split
from otrain.errors import DataError
from otrain.io.card import DEFAULT_THRESHOLD, is_threshold, recorded_ids
from otrain.io.ids import candidate_key
from otrain.metrics.evaluation import binary_metrics, evaluate
from otrain.options import PromoteConfig
from otrain.score.scoring import score_loaded
from otrain.track.registry import PromotionDecision

__all__ = [
    "MIN_COMPARISON_ROWS",
    "THRESHOLD_FREE",
    "PromotionGate",
    "comparison_rows",
    "registered_threshold",
    "verdict",
]

#: Fewest held-out test cutouts the gate compares two models on.
MIN_COMPARISON_ROWS = 10
#: The metrics of otrain-promote that need no threshold.
THRESHOLD_FREE = ("roc_auc", "average_precision")
_NOT_UNIQUE = "candidate ids of {name} are not unique, so the rows the champion trained on cannot be told"


def _score(model: Any, cube: Datacube, rows: np.ndarray, threshold: float | None, metric: str) -> float:
    """Score ``model`` on ``rows`` and return ``metric``; ``threshold`` is None for a metric that needs none."""
    probabilities = score_loaded(model, cube.subset(rows), "the test cube").probabilities
    labels = cube.labels[rows]
    at = DEFAULT_THRESHOLD if threshold is None else threshold  # not used by a threshold-free metric
    figures = binary_metrics(labels, probabilities, at)  # no threshold table unless needed
    return float(figures[metric] if metric in figures else evaluate(labels, probabilities, at)[metric])


def registered_threshold(model_uri: str) -> float | None:
    """Return the threshold of a logged otrain model's card, which training copies into its MLmodel metadata.

    Parameters
    ----------
    model_uri : str
        An MLflow model URI (``models:/<name>/<version>``, ``runs:/<run>/model``).

    Returns
    -------
    float or None
        The threshold; None when the model's card records none (a model of an older otrain).

    Raises
    ------
    DataError
        When the recorded threshold is not a probability.
    """
    from mlflow.models import get_model_info

    metadata = get_model_info(model_uri).metadata
    card = metadata.get("otrain") if isinstance(metadata, dict) else None
    value = card.get("threshold") if isinstance(card, dict) else None
    if value is None:
        return None
    if not is_threshold(value):
        raise DataError(f"{model_uri}: the threshold of its model card must be a probability, got {value!r}")
    return float(value)


def _operating_point(config: PromoteConfig, model_uri: str, who: str) -> tuple[float | None, str | None]:
    """Return the threshold ``config.metric`` judges a model at, and a note when it is not the model's own."""
    if config.metric in THRESHOLD_FREE:
        return None, None
    if config.threshold is not None:
        return config.threshold, None
    recorded = registered_threshold(model_uri)
    if recorded is None:
        note = f"{who}'s model card records no threshold (an older model): judged at {DEFAULT_THRESHOLD}"
        return DEFAULT_THRESHOLD, note
    return recorded, None


def _at(threshold: float | None) -> str:
    return "" if threshold is None else f" at threshold {threshold:.4g}"


def _same_split(first: dict[str, Any], second: dict[str, Any]) -> bool:
    """Two records of the same row split: 'row' (otrain-train now) and 'stratified' (before) are one rule."""
    keys = ("data_hash", "seed", "frac", "test_frac")
    methods = {first.get("method"), second.get("method")}
    return (
        methods <= {"stratified", "row"}
        and "stratified" in methods
        and all(first.get(key) == second.get(key) for key in keys)
    )


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
    new_threshold: float | None = None,
    champion_threshold: float | None = None,
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
    new_threshold, champion_threshold : float or None
        The thresholds the two models were judged at, named in the reason; None for a metric
        that needs none.

    Returns
    -------
    tuple
        (promoted, reason).
    """
    comparison = f"{metric} {new_value:.4f}{_at(new_threshold)}"
    champion = f"champion v{champion_version} {champion_value:.4f}{_at(champion_threshold)}"
    if new_value >= champion_value - tolerance:
        return True, f"{comparison} >= {champion} - tolerance {tolerance} ({why})"
    return False, (
        f"{comparison} is worse than {champion} by more than {tolerance} ({why}); "
        f"the alias '{alias}' stays on v{champion_version}"
    )


def _not_compared(decision: PromotionDecision, reason: str) -> None:
    decision.promoted = False
    decision.champion_value = decision.compared_on = None
    decision.reason = reason


class PromotionGate:
    """The judge that :func:`otrain.track.registry.promote` asks: scores MLflow models on the test cube.

    Parameters
    ----------
    config : PromoteConfig
        The metric, threshold (None: each model's own), tolerance and alias.
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
        self._new_threshold: float | None = None
        self._new_note: str | None = None

    @staticmethod
    def _load(model_uri: str) -> Any:
        import mlflow

        import otrain.nets.model  # noqa: F401 - registers the custom layers for loading

        return mlflow.keras.load_model(model_uri)

    def score_new(self, decision: PromotionDecision, model_uri: str) -> None:
        """Load the new model (kept for the comparisons), score it on the whole test cube; fill in ``decision``.

        Sets ``new_value``, ``compared_on`` (every test cutout), ``new_threshold`` and ``note``.

        Raises
        ------
        DataError
            When the model's card records a threshold that is not a probability.
        """
        self._new_threshold, self._new_note = _operating_point(self.config, model_uri, f"v{decision.version}")
        self._new_model = self._load(model_uri)
        everything = np.arange(len(self.cube))
        decision.new_value = _score(self._new_model, self.cube, everything, self._new_threshold, self.config.metric)
        decision.compared_on, decision.new_threshold = len(self.cube), self._new_threshold
        decision.note = self._notes(None)

    def _notes(self, champion_note: str | None) -> str | None:
        """Say which threshold is not a model's own: --threshold for both, or a card without one."""
        config = self.config
        if config.metric not in THRESHOLD_FREE and config.threshold is not None:
            return f"both models judged at --threshold {config.threshold:.4g}, not at their cards' thresholds"
        notes = [note for note in (self._new_note, champion_note) if note]
        return "; ".join(notes) or None

    def judge(
        self,
        decision: PromotionDecision,
        champion_version: str,
        champion_record: dict[str, Any] | None,
        champion_uri: str,
    ) -> None:
        """Compare the new model with the champion on rows neither trained on; fill in ``decision``.

        Each model is judged at its own threshold (:func:`registered_threshold`) for a
        thresholded metric; ``champion_threshold`` and ``note`` say which.
        """
        config = self.config
        rows, why = comparison_rows(self.cube, self.record, champion_record, champion_version)
        decision.champion_version = champion_version
        decision.champion_threshold, decision.note = None, self._notes(None)
        stays = f"the alias '{config.alias}' stays on v{champion_version}"
        if rows is None:
            _not_compared(decision, f"not compared: {why}; {stays}")
            return
        try:
            champion_threshold, champion_note = _operating_point(config, champion_uri, f"champion v{champion_version}")
        except DataError as error:
            _not_compared(decision, f"not compared: {error}; {stays}")
            return
        try:
            champion_value = _score(self._load(champion_uri), self.cube, rows, champion_threshold, config.metric)
        except DataError as error:
            _not_compared(decision, f"not compared: champion v{champion_version} cannot score this cube ({error})")
            return
        new_value = _score(self._new_model, self.cube, rows, self._new_threshold, config.metric)
        decision.new_value, decision.champion_value, decision.compared_on = new_value, champion_value, len(rows)
        decision.champion_threshold, decision.note = champion_threshold, self._notes(champion_note)
        decision.promoted, decision.reason = verdict(
            new_value,
            champion_value,
            metric=config.metric,
            tolerance=config.tolerance,
            alias=config.alias,
            champion_version=champion_version,
            why=why if decision.note is None else f"{why}; {decision.note}",
            new_threshold=self._new_threshold,
            champion_threshold=champion_threshold,
        )
