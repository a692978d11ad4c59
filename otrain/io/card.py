"""Model cards: the JSON record ``<model>.card.json`` beside every model file, read without TensorFlow.

Every card otrain reads or writes goes through this module: one reader (:func:`read_card`,
whose errors name the card), one writer (:func:`write_card`, :func:`update_card`), and the
entries the commands take from a card (threshold, planes, split: the candidate ids a training
held out, and the small summary of them that MLflow version tags hold). Scoring with ONNX Runtime
must not import TensorFlow, so none of this lives in :mod:`otrain.nets.model`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from otrain.errors import DataError, first_line
from otrain.io.atomic import write_json_atomic
from otrain.io.layout import CARD_SUFFIX, card_file, model_of_card

__all__ = [
    "DEFAULT_THRESHOLD",
    "LOWEST_THRESHOLD",
    "card_planes",
    "card_threshold",
    "ids_digest",
    "is_threshold",
    "matches_summary",
    "read_card",
    "recorded_ids",
    "split_record",
    "split_summary",
    "training_card",
    "update_card",
    "write_card",
]

#: The threshold of a model whose card records none (and of a model without a card).
DEFAULT_THRESHOLD = 0.5
#: The lowest threshold a card may record: the largest float32 below 0 (-2**-149), which decides
#: every cutout real, one scored exactly 0 included, in float32 as in float64. A training chooses
#: it for ``--target-fnr`` when a real cutout of the validation set that must be kept scores 0
#: (:func:`otrain.metrics.evaluation.threshold_for_fnr`).
LOWEST_THRESHOLD = -(2.0**-149)


def read_card(model_file: Path) -> dict[str, Any]:
    """Return a model's card; an empty dict for a model without one (original O'TRAIN models).

    Raises
    ------
    DataError
        If the card exists but is not a JSON object; the message names it.
    """
    card = card_file(model_file)
    if not card.is_file():
        return {}
    try:
        data = json.loads(card.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DataError(f"{card}: not a readable model card ({first_line(error)})") from None
    if not isinstance(data, dict):
        raise DataError(f"{card}: not a readable model card (not a JSON object)")
    return data


def training_card(folder: Path) -> dict[str, Any]:
    """Return the card of the one model in a training folder.

    Raises
    ------
    DataError
        If the folder holds no card or several, or the card cannot be read; the message names it.
    """
    cards = sorted(folder.glob(f"*{CARD_SUFFIX}"))
    if len(cards) != 1:
        found = "no model card" if not cards else f"{len(cards)} model cards"
        raise DataError(f"{folder}: {found} (*{CARD_SUFFIX}); promote a folder written by otrain-train")
    return read_card(model_of_card(cards[0]))


def write_card(model_file: Path, card: dict[str, Any]) -> Path:
    """Write the model card beside a model file, atomically.

    Returns
    -------
    Path
        The card.
    """
    return write_json_atomic(card_file(model_file), card)


def update_card(model_file: Path, **entries: Any) -> Path:
    """Set ``entries`` in a model's card (written atomically; created when the model has none).

    Returns
    -------
    Path
        The card.
    """
    card = read_card(model_file)
    card.setdefault("model_file", model_file.name)
    card.update(entries)
    return write_card(model_file, card)


def card_threshold(model_file: Path) -> float:
    """Return the decision threshold a model's card records; 0.5 for a model without a card or threshold.

    A recorded threshold is a probability, or :data:`LOWEST_THRESHOLD` (every cutout real).

    Raises
    ------
    DataError
        If the card cannot be read or its threshold is neither; the message names the card.
    """
    value = read_card(model_file).get("threshold", DEFAULT_THRESHOLD)
    if not is_threshold(value):
        raise DataError(f"{card_file(model_file)}: 'threshold' must be a probability, got {value!r}")
    return float(value)


def is_threshold(value: Any) -> bool:
    """Tell whether a value is a threshold a model card may record: a probability, or :data:`LOWEST_THRESHOLD`.

    Parameters
    ----------
    value : Any
        The recorded value.

    Returns
    -------
    bool
        True for a number (not a bool) in [LOWEST_THRESHOLD, 1].
    """
    return not isinstance(value, bool) and isinstance(value, (int, float)) and LOWEST_THRESHOLD <= value <= 1


def card_planes(model_file: Path) -> tuple[str, ...] | None:
    """Return the planes a model was trained on, from its card; None for a model without (original ones).

    Raises
    ------
    DataError
        If the card cannot be read or records planes that are not a list of names.
    """
    planes = read_card(model_file).get("planes")
    if planes is None:
        return None
    if not isinstance(planes, list) or not all(isinstance(name, str) and name for name in planes):
        raise DataError(f"{card_file(model_file)}: 'planes' must be a list of plane names, got {planes!r}")
    return tuple(planes)


def split_record(card: dict[str, Any]) -> dict[str, Any] | None:
    """Return the record of a training's split from its model card.

    Parameters
    ----------
    card : dict
        A model card; cards of older otrain, without a ``split`` entry, are read from their
        parameters and data hash.

    Returns
    -------
    dict or None
        ``method``, ``cube``, ``data_hash``, ``seed``, ``frac``, ``test_frac``, and for a card
        of this otrain ``group_keyword``, ``unique_ids``, ``validation_ids`` and ``test_ids``
        (see :func:`otrain.data.datacube.record_split`); None when the card does not say.
    """
    if "split" in card:
        return card["split"]
    params = card.get("params") or {}
    if not {"seed", "frac", "test_frac"} <= set(params) or "data_hash" not in card:
        return None
    return {
        "method": "stratified",
        "cube": card.get("cube"),
        "data_hash": card["data_hash"],
        **{key: params[key] for key in ("seed", "frac", "test_frac")},
    }


#: The entries of a split record that hold candidate ids (the validation and test sets).
ID_LISTS = ("validation_ids", "test_ids")


def recorded_ids(record: dict[str, Any] | None) -> tuple[list[str], list[str]] | None:
    """Return the candidate ids of a split record's validation and test sets; None when it holds none.

    Records of an older otrain (and the small summaries of MLflow version tags) hold no ids.
    """
    if not record or not all(isinstance(record.get(name), list) for name in ID_LISTS):
        return None
    validation, test = ([str(value) for value in record[name]] for name in ID_LISTS)
    return validation, test


def ids_digest(ids: list[str]) -> str:
    """Return the SHA-256 of a list of candidate ids, whatever their order (one id a line, sorted)."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def split_summary(record: dict[str, Any]) -> dict[str, Any]:
    """Return a split record small enough for an MLflow tag: the ids replaced by their counts and digests.

    Parameters
    ----------
    record : dict
        A model card's ``split``.

    Returns
    -------
    dict
        The record without ``validation_ids`` and ``test_ids``, with ``n_validation``,
        ``n_test``, ``validation_ids_sha256`` and ``test_ids_sha256`` (:func:`ids_digest`) when
        it held them; a record without ids unchanged.
    """
    summary = {key: value for key, value in record.items() if key not in ID_LISTS}
    ids = recorded_ids(record)
    if ids is not None:
        for name, chosen in zip(ID_LISTS, ids, strict=True):
            summary[f"n_{name.removesuffix('_ids')}"] = len(chosen)
            summary[f"{name}_sha256"] = ids_digest(chosen)
    return summary


def matches_summary(record: dict[str, Any], summary: dict[str, Any]) -> bool:
    """Tell whether a card's split record is the one a version tag summarises (same ids, same cube)."""
    return split_summary(record) == summary
