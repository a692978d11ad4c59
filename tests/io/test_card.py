"""The one model-card reader and writer (otrain.io.card) and the training folder's layout: no TensorFlow."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from otrain.errors import DataError
from otrain.io.card import LOWEST_THRESHOLD, card_threshold, read_card, training_card, update_card, write_card
from otrain.io.layout import card_file, int8_path, model_of_card, training_folder, twin_path


def test_the_files_beside_a_model_are_named_from_it(tmp_path: Path) -> None:
    model = training_folder(tmp_path, "survey") / "survey.keras"
    assert model == tmp_path / "CNN_training" / "survey" / "survey.keras"
    assert card_file(model).name == "survey.keras.card.json"
    assert model_of_card(card_file(model)) == model
    assert twin_path(model).name == "survey.onnx"
    assert int8_path(model).name == "survey.int8.onnx"
    assert twin_path(tmp_path / "legacy.h5").name == "legacy.onnx"


def test_a_model_without_a_card_reads_as_empty_with_the_default_threshold(tmp_path: Path) -> None:
    model = tmp_path / "original.h5"
    assert read_card(model) == {}
    assert card_threshold(model) == 0.5


def test_written_cards_read_back_and_updates_keep_the_rest(tmp_path: Path) -> None:
    model = tmp_path / "m.keras"
    assert write_card(model, {"threshold": 0.3, "planes": ["DIFF"]}) == card_file(model)
    update_card(model, onnx={"file": "m.onnx"})
    card = {"threshold": 0.3, "planes": ["DIFF"], "model_file": "m.keras", "onnx": {"file": "m.onnx"}}
    assert read_card(model) == card
    assert card_threshold(model) == 0.3
    # The largest float32 below 0, which a --target-fnr training records when a real cutout scored 0 must be kept.
    update_card(model, threshold=-(2.0**-149))
    assert card_threshold(model) == -(2.0**-149) == LOWEST_THRESHOLD


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "m.keras.card.json: not a readable model card (Expecting property name"),
        ("[0.5]", "m.keras.card.json: not a readable model card (not a JSON object)"),
        ('{"threshold": "high"}', "m.keras.card.json: 'threshold' must be a probability, got 'high'"),
        ('{"threshold": true}', "m.keras.card.json: 'threshold' must be a probability, got True"),
        ('{"threshold": 1.5}', "m.keras.card.json: 'threshold' must be a probability, got 1.5"),
        ('{"threshold": -0.001}', "m.keras.card.json: 'threshold' must be a probability, got -0.001"),
    ],
)
def test_a_bad_card_is_named_with_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    model = tmp_path / "m.keras"
    card_file(model).write_text(text)
    with pytest.raises(DataError, match=re.escape(message)) as raised:
        card_threshold(model)
    assert str(raised.value).startswith(str(tmp_path))


def test_a_training_folder_has_exactly_one_card(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r": no model card \(\*\.card\.json\); promote a folder written by"):
        training_card(tmp_path)
    write_card(tmp_path / "a.keras", {"model_file": "a.keras"})
    assert training_card(tmp_path) == {"model_file": "a.keras"}
    write_card(tmp_path / "b.h5", {})
    with pytest.raises(DataError, match=r": 2 model cards \(\*\.card\.json\)"):
        training_card(tmp_path)
    (tmp_path / "b.h5.card.json").unlink()
    card_file(tmp_path / "a.keras").write_text(json.dumps([1]))
    with pytest.raises(DataError, match=r"a\.keras\.card\.json: not a readable model card \(not a JSON object\)"):
        training_card(tmp_path)
