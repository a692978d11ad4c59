"""The promotion gate judges each model at its own operating point (otrain-promote, end to end).

Real Keras models logged to a real MLflow store, registered by otrain-promote itself. Each model
is a logistic function of a 1x1 cutout's pixel x: P(real) = sigmoid(x - centre). Both rank the
test cutouts alike, and each card's threshold cuts at the same x, so at their own thresholds
they make the same decisions; at a shared 0.5 they do not. The expected figures are computed
here from the labels and the scores, not taken from the gate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import call_main
from helpers import tracking_at
from sklearn.metrics import matthews_corrcoef, roc_auc_score

from otrain.data.datacube import Datacube
from otrain.io.layout import TEST_CUBE

#: The test cutouts' pixels: 0 to 19; real from 10 on, but for a real at 3 and a bogus at 15.
PIXELS = np.arange(20, dtype=np.float64)
LABELS = np.where((PIXELS >= 10) != np.isin(PIXELS, [3, 15]), 1, 0)
#: Where the cards' thresholds cut: real when x > 9.5.
CUT = 9.5
#: The champion's and the new model's centres: at 0.5 they cut at 12.25 and 3.25.
CENTRES = {"champion": 12.25, "older": 12.25, "new": 3.25}


def sigmoid(value: np.ndarray | float) -> Any:
    return 1 / (1 + np.exp(-np.asarray(value, dtype=np.float64)))


def p_real(name: str) -> np.ndarray:
    """The model's P(real) of each test cutout, computed here."""
    return sigmoid(PIXELS - CENTRES[name])


def card_threshold_of(name: str) -> float:
    """The threshold of a model's card: the P(real) it gives at x = CUT."""
    return float(sigmoid(CUT - CENTRES[name]))


def mcc(name: str, threshold: float) -> float:
    return float(matthews_corrcoef(LABELS, (p_real(name) > threshold).astype(int)))


def logistic_model(centre: float) -> Any:
    """A real Keras classifier of 1x1 cutouts giving P(real) = sigmoid(x - centre)."""
    import keras

    inputs = keras.Input((1, 1, 1))
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, outputs)
    model.layers[-1].set_weights([np.array([[0.0, 1.0]], np.float32), np.array([0.0, -centre], np.float32)])
    return model


@pytest.fixture(scope="module")
def trainings(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Path]]:
    """Training folders as otrain-train leaves them (model card, test cube, MLflow run with the model).

    ``champion`` and ``new`` have a threshold in their cards; ``older`` (the champion's model)
    has none, as a model of an older otrain.
    """
    from otrain.io.card import write_card
    from otrain.score.mlflow_model import save_mlflow_model
    from otrain.track.tracking import open_run

    root = tmp_path_factory.mktemp("gate")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    n = len(PIXELS)
    test = Datacube(
        cube=PIXELS.astype(np.float32).reshape(n, 1, 1, 1),
        labels=LABELS.astype(np.int64),
        mags=np.full(n, np.nan),
        errmags=np.full(n, np.nan),
        filters=np.full(n, "", dtype="U1"),
        fwhms=np.full(n, np.nan),
        candids=np.arange(n, dtype=np.int64),
    )
    # One split record for all: the test set is held out from every model, compared whole.
    split = {"method": "stratified", "cube": None, "data_hash": test.content_hash(), "seed": 1}
    split |= {"frac": 0.25, "test_frac": 0.25}
    folders = {}
    for name, centre in CENTRES.items():
        folder = root / name
        (folder / TEST_CUBE).parent.mkdir(parents=True)
        test.save(folder / TEST_CUBE)
        model = logistic_model(centre)
        card: dict[str, Any] = {"model_file": "m.keras", "input_shape": [1, 1, 1], "split": split}
        if name != "older":
            card["threshold"] = card_threshold_of(name)
        write_card(folder / "m.keras", card)
        with tracking_at(uri), open_run(uri, "gate", run_name=name) as run:
            import mlflow

            saved = save_mlflow_model(model, root / f"{name}-model", test.cube[:2], card=card, pip_requirements=[])
            mlflow.log_artifacts(str(saved), artifact_path="model")
        run.write(folder)
        folders[name] = folder
    return uri, folders


def promote(
    trainings: tuple[str, dict[str, Path]], champion: str, name: str, report: Path, *options: str
) -> dict[str, Any]:
    """Register ``champion`` then ``new`` under ``name``, the second with ``options``; return its report."""
    from otrain.cli.promote import main as promote_main

    uri, folders = trainings
    with tracking_at(uri):
        first = report.with_name("first.json")
        common = ("--registered-name", name, *options)
        assert call_main(promote_main, "--model-dir", folders[champion], *common, "--report", first) == 0
        assert json.loads(first.read_text())["promoted"] is True
        assert call_main(promote_main, "--model-dir", folders["new"], *common, "--report", report) == 0
    return json.loads(report.read_text())


def promotion_tag(trainings: tuple[str, dict[str, Path]], name: str) -> str:
    from mlflow.tracking import MlflowClient

    return MlflowClient(trainings[0]).get_model_version(name, "2").tags["promotion"]


def test_the_default_metric_needs_no_threshold(
    trainings: tuple[str, dict[str, Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = roc_auc_score(LABELS, p_real("new"))
    assert roc_auc_score(LABELS, p_real("champion")) == expected  # and at 0.5, mcc would not promote
    decision = promote(trainings, "champion", "by-rank", tmp_path / "report.json")
    assert decision["metric"] == "roc_auc"
    assert decision["promoted"] is True
    assert decision["new_value"] == pytest.approx(expected)
    assert decision["champion_value"] == pytest.approx(expected)
    assert "new_threshold" not in decision
    assert "champion_threshold" not in decision
    assert "note" not in decision
    assert decision["reason"].startswith(f"roc_auc {expected:.4f} >= champion v1 {expected:.4f} - tolerance")
    assert "threshold" not in decision["reason"]
    assert "(roc_auc " in capsys.readouterr().out


def test_a_thresholded_metric_judges_each_model_at_its_own_cards_threshold(
    trainings: tuple[str, dict[str, Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new_at, champion_at = card_threshold_of("new"), card_threshold_of("champion")
    # The case: the thresholds differ; at their own the models tie, at a shared 0.5 the new one
    # would lose by far more than the tolerance.
    assert champion_at < 0.1 < 0.9 < new_at
    assert mcc("new", new_at) == mcc("champion", champion_at) == 0.8
    assert mcc("new", 0.5) < mcc("champion", 0.5) - 0.2
    decision = promote(trainings, "champion", "own", tmp_path / "report.json", "--metric", "mcc")
    assert decision["promoted"] is True, decision["reason"]
    assert decision["metric"] == "mcc"
    assert decision["new_threshold"] == pytest.approx(new_at)
    assert decision["champion_threshold"] == pytest.approx(champion_at)
    assert decision["new_value"] == pytest.approx(mcc("new", new_at))
    assert decision["champion_value"] == pytest.approx(mcc("champion", champion_at))
    assert "note" not in decision
    reason = (
        f"mcc {mcc('new', new_at):.4f} at threshold {new_at:.4g} >= champion v1 {mcc('champion', champion_at):.4f} "
        f"at threshold {champion_at:.4g} - tolerance 0.005 (same cube, seed and fractions"
    )
    assert decision["reason"].startswith(reason)
    assert promotion_tag(trainings, "own") == decision["reason"]
    out = capsys.readouterr().out
    assert f"registered own version 2 (mcc {mcc('new', new_at):.4f} at threshold {new_at:.4g})" in out
    assert f"promoted to 'champion': {reason}" in out


def test_an_explicit_threshold_judges_both_models_at_it(trainings: tuple[str, dict[str, Path]], tmp_path: Path) -> None:
    options = ("--metric", "mcc", "--threshold", "0.5")
    decision = promote(trainings, "champion", "shared", tmp_path / "report.json", *options)
    assert decision["promoted"] is False
    assert decision["new_threshold"] == decision["champion_threshold"] == 0.5
    assert decision["new_value"] == pytest.approx(mcc("new", 0.5))
    assert decision["champion_value"] == pytest.approx(mcc("champion", 0.5))
    note = "both models judged at --threshold 0.5, not at their cards' thresholds"
    assert decision["note"] == note
    assert decision["reason"].startswith(
        f"mcc {mcc('new', 0.5):.4f} at threshold 0.5 is worse than champion v1 {mcc('champion', 0.5):.4f} "
        "at threshold 0.5 by more than 0.005 ("
    )
    assert f"; {note}); the alias 'champion' stays on v1" in decision["reason"]
    assert promotion_tag(trainings, "shared") == decision["reason"]


def test_a_model_whose_card_records_no_threshold_is_judged_at_one_half_and_the_report_says_so(
    trainings: tuple[str, dict[str, Path]], tmp_path: Path
) -> None:
    decision = promote(trainings, "older", "older", tmp_path / "report.json", "--metric", "mcc")
    new_at = card_threshold_of("new")
    assert decision["champion_threshold"] == 0.5
    assert decision["new_threshold"] == pytest.approx(new_at)
    assert decision["champion_value"] == pytest.approx(mcc("older", 0.5))
    assert decision["new_value"] == pytest.approx(mcc("new", new_at))
    assert decision["promoted"] is True
    note = "champion v1's model card records no threshold (an older model): judged at 0.5"
    assert decision["note"] == note
    assert "at threshold 0.5 - tolerance 0.005 (same cube, seed and fractions" in decision["reason"]
    assert decision["reason"].endswith(f"; {note})")


def test_the_first_version_of_an_older_model_is_judged_at_one_half_with_a_note(
    trainings: tuple[str, dict[str, Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from otrain.cli.promote import main as promote_main

    uri, folders = trainings
    report = tmp_path / "report.json"
    with tracking_at(uri):
        options = ("--registered-name", "first-older", "--metric", "f1", "--report", report)
        assert call_main(promote_main, "--model-dir", folders["older"], *options) == 0
    decision = json.loads(report.read_text())
    assert decision["reason"] == "no champion yet"
    assert decision["new_threshold"] == 0.5
    assert decision["note"] == "v1's model card records no threshold (an older model): judged at 0.5"
    out = capsys.readouterr().out
    assert "(f1 " in out
    assert " at threshold 0.5)" in out
    assert "note: v1's model card records no threshold (an older model): judged at 0.5" in out


def test_a_card_threshold_that_is_not_a_probability_is_refused(tmp_path: Path) -> None:
    """The threshold is read from the logged model's card (its MLmodel metadata), and checked."""
    import mlflow

    from otrain.errors import DataError
    from otrain.judge.gate import registered_threshold
    from otrain.score.mlflow_model import save_mlflow_model
    from otrain.track.tracking import open_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    example = np.zeros((2, 1, 1, 1), np.float32)
    runs = {}
    cards = {"good": {"threshold": 0.25}, "none": {}, "broken": {"threshold": 1.5}}
    cards["lowest"] = {"threshold": -(2.0**-149)}
    for name, card in cards.items():
        saved = save_mlflow_model(logistic_model(0.0), tmp_path / name, example, card=card, pip_requirements=[])
        with tracking_at(uri), open_run(uri, "gate", run_name=name) as run:
            mlflow.log_artifacts(str(saved), artifact_path="model")
        runs[name] = f"runs:/{run.run_id}/model"
    with tracking_at(uri):
        assert registered_threshold(runs["good"]) == 0.25
        assert registered_threshold(runs["none"]) is None
        # --target-fnr records the largest float32 below 0 when a real cutout scored 0 must be kept.
        assert registered_threshold(runs["lowest"]) == -(2.0**-149)
        with pytest.raises(DataError, match=r"/model: the threshold of its model card must be a probability, got 1.5$"):
            registered_threshold(runs["broken"])
