"""Model cards: the JSON record ``<model>.card.json`` beside every model file, read without TensorFlow.

Scoring with ONNX Runtime must not import TensorFlow, so what a scoring command needs from a
card (the planes, the ONNX twin's record) is read here, not in :mod:`otrain.nets.model`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from otrain.errors import DataError, first_line
from otrain.io.atomic import write_json_atomic
from otrain.options import card_file

__all__ = ["card_planes", "read_card", "split_record", "update_card"]


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
    return write_json_atomic(card_file(model_file), card)


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
        ``method``, ``cube``, ``data_hash``, ``seed``, ``frac``, ``test_frac``; None when the
        card does not say.
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
