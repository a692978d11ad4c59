"""Where a model's companions lie: its card, its ONNX twin, its int8 model (file names beside the model file).

These conventions are being moved to the I/O layer (one module for the file layout of a
training folder); they are kept here, unchanged, until then.
"""

from __future__ import annotations

import json
from pathlib import Path

from otrain.errors import first_line

__all__ = [
    "card_file",
    "card_threshold",
    "int8_path",
    "twin_path",
]


def card_file(model_file: Path) -> Path:
    """Return the model card of ``model_file``: ``<model>.card.json`` beside it."""
    return model_file.with_name(model_file.name + ".card.json")


def card_threshold(model_file: Path) -> float:
    """Return the decision threshold a model's card records; 0.5 for a model without a card or threshold.

    Raises
    ------
    ValueError
        If the card cannot be read or its threshold is not a probability; the message names the card.
    """
    card = card_file(model_file)
    if not card.is_file():
        return 0.5
    try:
        value = json.loads(card.read_text()).get("threshold", 0.5)
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as error:
        raise ValueError(f"{card}: not a readable model card ({first_line(error)})") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{card}: 'threshold' must be a probability, got {value!r}")
    return float(value)


def twin_path(model_file: Path) -> Path:
    """Return the ONNX twin of a model file: ``<stem>.onnx`` beside it."""
    return model_file.with_suffix(".onnx")


def int8_path(model_file: Path) -> Path:
    """Return the int8 model of a model file: ``<stem>.int8.onnx`` beside it."""
    return model_file.with_suffix(".int8.onnx")
