"""Calibrated P(real) and operating points: the fit, the layer in the model, the card, infer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from astropy.io import ascii as astropy_ascii
from conftest import call_main, train
from numpy.testing import assert_allclose

from otrain.errors import DataError
from otrain.nets.calibration import (
    CalibrationFit,
    apply_calibration,
    fit_calibration,
    log_odds,
)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _columns(p_real: np.ndarray) -> np.ndarray:
    """Softmax rows (P(bogus), P(real)) of P(real) values far enough from 1 for 1 - p to be exact enough."""
    return np.stack([1 - p_real, p_real], axis=1)


def _overconfident(n: int, temperature: float, bias: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from sigmoid(z / T + b), and a network whose softmax rows say sigmoid(z): off by T and b."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 4.0, n)
    labels = (rng.random(n) < _sigmoid(z / temperature + bias)).astype(int)
    return labels, np.stack([_sigmoid(-z), _sigmoid(z)], axis=1)


def test_temperature_is_recovered_from_an_overconfident_network() -> None:
    labels, network = _overconfident(40_000, temperature=2.5, bias=0.0, seed=1)
    fit = fit_calibration(labels, network, "temperature")
    assert fit.method == "temperature"
    assert fit.bias == 0.0
    assert fit.fitted_on == len(labels)
    assert fit.temperature == pytest.approx(2.5, rel=0.05)


def test_platt_recovers_temperature_and_prior_offset() -> None:
    labels, network = _overconfident(40_000, temperature=2.0, bias=1.5, seed=2)
    fit = fit_calibration(labels, network, "platt")
    assert fit.temperature == pytest.approx(2.0, rel=0.06)
    assert fit.bias == pytest.approx(1.5, abs=0.1)


def test_calibration_lowers_the_calibration_error_of_an_overconfident_network() -> None:
    from otrain.metrics.evaluation import expected_calibration_error

    labels, network = _overconfident(20_000, temperature=3.0, bias=0.0, seed=3)
    fitted, held_out = slice(0, 10_000), slice(10_000, None)
    fit = fit_calibration(labels[fitted], network[fitted], "temperature")
    before = expected_calibration_error(labels[held_out], network[held_out, 1])
    after = expected_calibration_error(labels[held_out], apply_calibration(network[held_out], fit))
    assert before > 0.1
    assert after < 0.02


def test_a_few_perfectly_separated_cutouts_keep_their_ranking() -> None:
    """Found on real alerts: 21 validation cutouts, 3 bogus, all ranked right. Maximum likelihood
    alone sends T to its bound (0.02), every P(real) becomes 0 or 1 in float32, and a fold's ROC AUC
    fell from 0.8 to 0.66 through ties. The fit's priors keep T near 1."""
    rng = np.random.default_rng(4)
    labels = np.array([0] * 3 + [1] * 18)
    network = _columns(np.concatenate([rng.uniform(0.05, 0.4, 3), rng.uniform(0.6, 0.999, 18)]))
    for method in ("temperature", "platt"):
        fit = fit_calibration(labels, network, method)
        assert 0.3 < fit.temperature < 3.0, method
        held_out = rng.uniform(0.0, 1.0, 1000).astype(np.float32)
        calibrated = apply_calibration(_columns(held_out), fit).astype(np.float32)
        assert len(np.unique(calibrated)) == len(np.unique(held_out)), method


def test_none_is_the_identity_and_one_class_cannot_be_calibrated() -> None:
    fit = fit_calibration(np.array([0, 1]), _columns(np.array([0.2, 0.9])), "none")
    assert fit.is_identity
    assert_allclose(apply_calibration(_columns(np.array([0.2, 0.9])), fit), [0.2, 0.9], rtol=1e-9)
    with pytest.raises(DataError, match="only real ones; use a larger --frac or --calibration none"):
        fit_calibration(np.ones(5, dtype=int), _columns(np.linspace(0.1, 0.9, 5)), "temperature")


def test_log_odds_are_finite_at_zero_and_one() -> None:
    z = log_odds(_columns(np.array([0.0, 0.5, 1.0])))
    assert np.all(np.isfinite(z))
    assert z[1] == 0.0
    assert z[0] == pytest.approx(-math.log(1e7), rel=1e-6)
    with pytest.raises(ValueError, match=r"log-odds need \(N, 2\) rows \(P\(bogus\), P\(real\)\), got shape \(3,\)"):
        log_odds(np.array([0.0, 0.5, 1.0]))  # P(real) alone: 1 - p would lose the bits near 1


def test_the_models_calibration_layer_computes_what_was_fitted(tmp_path: Path) -> None:
    import keras

    from otrain.nets.model import Calibration, build_model, load_model, save_model, with_calibration

    model = build_model((16, 16, 1), normalisation="robust")
    calibrated = with_calibration(model, temperature=2.0, bias=-0.7)
    again = with_calibration(calibrated, temperature=3.0, bias=0.0)  # replaces, does not stack
    assert sum(isinstance(layer, Calibration) for layer in again.layers) == 1
    pixels = np.random.default_rng(0).normal(size=(8, 16, 16, 1)).astype("float32") * 50
    raw = np.asarray(model.predict_on_batch(pixels))
    expected = apply_calibration(raw, CalibrationFit("platt", temperature=2.0, bias=-0.7))
    for suffix in (".keras", ".h5"):
        loaded = load_model(save_model(calibrated, tmp_path / f"calibrated{suffix}"))
        got = np.asarray(loaded.predict_on_batch(pixels))
        assert isinstance(loaded.layers[-1], Calibration)
        assert_allclose(got[:, 1], expected, atol=2e-6)
        assert_allclose(got.sum(axis=1), 1.0, atol=1e-6)
    keras.backend.clear_session()


def test_numpy_and_the_layer_agree_near_one() -> None:
    """P(bogus) from 1e-9 to 1e-3 before a temperature of 8.2 and an offset that bring the calibrated P(real)
    back near 0.5 (issue 23's case): the fit and the numpy calibration take z from both columns, as the layer
    does. Taken from P(real) alone, as the fit did before (log p - log(1 - p) of float32 p), z was 0.18 off
    at P(bogus) 1e-7 and the calibrated P(real) 0.005 off the layer's."""
    from otrain.nets.model import Calibration

    fit = CalibrationFit("platt", temperature=8.2, bias=-1.5)
    layer = Calibration(temperature=fit.temperature, bias=fit.bias)
    bogus = np.array([1e-9, 1e-8, 1e-7, 3e-7, 1e-6, 3e-6, 1e-5, 1e-4, 1e-3], np.float32)
    rows = np.stack([bogus, 1 - bogus], axis=1).astype(np.float32)
    assert rows[0, 1] == 1.0  # P(real) alone says nothing more here
    from_layer = np.asarray(layer(rows), np.float64)[:, 1]
    assert_allclose(apply_calibration(rows, fit), from_layer, rtol=1e-6)
    # And both are the exact value of those float32 columns.
    exact = np.log(rows[:, 1].astype(np.float64)) - np.log(np.maximum(bogus.astype(np.float64), 1e-7))
    assert_allclose(log_odds(rows), exact, rtol=1e-12)
    assert_allclose(apply_calibration(rows, fit), _sigmoid(exact / 8.2 - 1.5), rtol=1e-12)


def test_a_model_saved_before_log_odds_keeps_its_formula(tmp_path: Path) -> None:
    """A calibration layer saved by an earlier otrain (no ``log_odds`` in its configuration) computes
    what it computed then, log p - log(1 - p), so its existing ONNX twin still agrees with it; a layer
    made now takes log P(real) - log P(bogus) and saves that choice."""
    import zipfile

    from otrain.nets.model import Calibration, build_model, load_model, save_model, with_calibration

    calibrated = with_calibration(build_model((16, 16, 1), normalisation="robust"), temperature=3.0, bias=0.2)
    new_file = save_model(calibrated, tmp_path / "new.keras")
    with zipfile.ZipFile(new_file) as archive:
        contents = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(contents["config.json"])
    layer = next(entry for entry in config["config"]["layers"] if entry["class_name"] == "Calibration")
    assert layer["config"].pop("log_odds") == "columns"
    contents["config.json"] = json.dumps(config).encode()
    old_file = tmp_path / "old.keras"
    with zipfile.ZipFile(old_file, "w") as archive:
        for name, data in contents.items():
            archive.writestr(name, data)
    old, new = load_model(old_file), load_model(new_file)
    assert isinstance(old.layers[-1], Calibration)
    assert (old.layers[-1].log_odds, new.layers[-1].log_odds) == ("complement", "columns")
    rows = np.array([[0.3, 0.7], [1e-6, 1 - 1e-6], [0.9, 0.1]], np.float32)
    p = np.clip(rows[:, 1], np.float32(1e-7), np.float32(1 - 1e-7))
    then = _sigmoid((np.log(p) - np.log(np.float32(1) - p)).astype(np.float64) / 3.0 + 0.2)
    now = _sigmoid((np.log(rows[:, 1].astype(np.float64)) - np.log(rows[:, 0].astype(np.float64))) / 3.0 + 0.2)
    assert_allclose(np.asarray(old.layers[-1](rows))[:, 1], then, rtol=1e-6)
    assert_allclose(np.asarray(new.layers[-1](rows))[:, 1], now, rtol=1e-6)
    with pytest.raises(ValueError, match="log_odds must be 'columns' or 'complement'"):
        Calibration(log_odds="log1p")


def _card(folder: Path, name: str) -> dict:
    return json.loads((folder / f"{name}.keras.card.json").read_text())


def test_training_fits_and_stores_the_calibration(trained: Path) -> None:
    from otrain.nets.model import Calibration, load_model

    card = _card(trained, "tiny")
    calibration = card["calibration"]
    assert calibration["method"] == "temperature"
    assert calibration["temperature"] > 0
    assert calibration["temperature"] != 1.0
    assert calibration["fitted_on"] == card["split_sizes"]["validation"]
    validation = np.load(trained / "validation_set" / "datacube" / "cube_validation.npz")
    assert calibration["fraction_real"] == pytest.approx(np.mean(np.argmax(validation["labels"], axis=1) == 1))
    for key in ("ece_validation_before", "ece_validation_after", "ece_test_before", "ece_test_after"):
        assert 0 <= calibration[key] <= 1
    # Fitted by likelihood on the validation set, the temperature cannot make its NLL worse, and
    # its calibration error there is what the card says.
    assert calibration["ece_validation_after"] <= calibration["ece_validation_before"] + 0.05
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["expected_calibration_error"] == pytest.approx(calibration["ece_test_after"])
    assert card["threshold"] == 0.5
    assert card["threshold_rule"] == {"method": "default"}
    model = load_model(trained / "tiny.keras")
    assert isinstance(model.layers[-1], Calibration)
    assert model.layers[-1].temperature == pytest.approx(calibration["temperature"])


def test_calibration_none_keeps_the_networks_output(workspace: Path) -> None:
    from otrain.nets.model import Calibration, load_model

    assert train(workspace, "raw", "--epochs", "1", "--no-tracking", "--calibration", "none", models="raw") == 0
    folder = workspace / "raw" / "CNN_training" / "raw"
    assert _card(folder, "raw")["calibration"]["method"] == "none"
    assert not any(isinstance(layer, Calibration) for layer in load_model(folder / "raw.keras").layers)


def test_platt_calibration_trains_and_records_its_offset(workspace: Path) -> None:
    assert train(workspace, "platt", "--epochs", "2", "--no-tracking", "--calibration", "platt", models="platt") == 0
    calibration = _card(workspace / "platt" / "CNN_training" / "platt", "platt")["calibration"]
    assert calibration["method"] == "platt"
    assert calibration["bias"] != 0.0


@pytest.fixture(scope="module")
def target_fnr_model(workspace: Path) -> Path:
    assert train(workspace, "fnr", "--epochs", "3", "--no-tracking", "--target-fnr", "0.05", models="fnr") == 0
    return workspace / "fnr" / "CNN_training" / "fnr"


def test_target_fnr_chooses_the_threshold_on_the_validation_set(target_fnr_model: Path) -> None:
    from otrain.data.datacube import Datacube
    from otrain.nets.model import load_model
    from otrain.score.scoring import predict

    card = _card(target_fnr_model, "fnr")
    rule = card["threshold_rule"]
    assert rule["method"] == "target_fnr"
    assert rule["target"] == 0.05
    assert rule["chosen_on"] == "validation set"
    validation = Datacube.load(target_fnr_model / "validation_set" / "datacube" / "cube_validation.npz")
    p_real = predict(load_model(target_fnr_model / "fnr.keras"), validation.cube)
    missed = np.count_nonzero(p_real[validation.labels == 1] <= card["threshold"])
    assert missed <= math.floor(0.05 * validation.n_real)
    assert rule["validation_fnr"] == pytest.approx(missed / validation.n_real)
    # The highest such float32 threshold (the model's P(real) are float32 numbers): one real cutout
    # more would be missed at the next float32 above it.
    assert card["threshold"] == float(np.float32(card["threshold"]))
    above = float(np.nextafter(np.float32(card["threshold"]), np.float32(2)))
    assert np.count_nonzero(p_real[validation.labels == 1] <= above) > missed or card["threshold"] == 1.0
    metrics = json.loads((target_fnr_model / "metrics.json").read_text())
    assert metrics["threshold"] == card["threshold"]


def test_infer_uses_the_cards_threshold_unless_told(target_fnr_model: Path, workspace: Path, tmp_path: Path) -> None:
    from otrain.cli.infer import main as infer_main

    night, model = workspace / "survey" / "night", target_fnr_model / "fnr.keras"
    threshold = _card(target_fnr_model, "fnr")["threshold"]
    assert threshold != 0.5
    assert call_main(infer_main, "--cutouts", night, "--model", model, "--output", tmp_path / "card.dat") == 0
    table = astropy_ascii.read(tmp_path / "card.dat", format="commented_header")
    assert np.array_equal(np.asarray(table["real"]), (np.asarray(table["label1"]) > threshold).astype(int))
    given = ("--threshold", "0.5", "--output", tmp_path / "given.dat")
    assert call_main(infer_main, "--cutouts", night, "--model", model, *given) == 0
    table = astropy_ascii.read(tmp_path / "given.dat", format="commented_header")
    assert np.array_equal(np.asarray(table["real"]), (np.asarray(table["label1"]) > 0.5).astype(int))


def test_target_fpr_and_the_rule_of_one_threshold(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert train(workspace, "fpr", "--epochs", "2", "--no-tracking", "--target-fpr", "0.1", models="fpr") == 0
    rule = _card(workspace / "fpr" / "CNN_training" / "fpr", "fpr")["threshold_rule"]
    assert rule["method"] == "target_fpr"
    assert rule["validation_fpr"] <= 0.1
    capsys.readouterr()
    both = ("--threshold", "0.3", "--target-fnr", "0.01")
    assert train(workspace, "both", "--no-tracking", *both, models="both") == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("--threshold, --target-fnr: give one way of choosing the threshold, not 2")
    assert len(err.splitlines()) == 1
    assert not (workspace / "both").exists()


def test_a_card_with_a_bad_threshold_is_named(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from otrain.cli.infer import main as infer_main

    model = Path(shutil.copy(trained / "tiny.keras", tmp_path / "copy.keras"))
    card = json.loads((trained / "tiny.keras.card.json").read_text())
    (tmp_path / "copy.keras.card.json").write_text(json.dumps({**card, "threshold": "high"}))
    night = trained.parents[2] / "survey" / "night"
    assert call_main(infer_main, "--cutouts", night, "--model", model, "--output", tmp_path / "t.dat") == 2
    err = capsys.readouterr().err.strip()
    assert "copy.keras.card.json: 'threshold' must be a probability, got 'high'" in err
    assert not (tmp_path / "t.dat").exists()
