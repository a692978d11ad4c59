"""Test-time augmentation: the mean over the 8 flips and rotations, inside the saved model and its twin."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import ascii as astropy_ascii
from conftest import call_main, run_command
from numpy.testing import assert_allclose

from otrain.data.datacube import Datacube

SIZE = 16


def _numpy_views(pixels: np.ndarray) -> list[np.ndarray]:
    """The 8 symmetries of the square, made with NumPy alone: 4 rotations, and the same after a flip."""
    rotations = [np.rot90(pixels, k, axes=(1, 2)) for k in range(4)]
    return [np.ascontiguousarray(view) for view in rotations + [np.flip(view, axis=2) for view in rotations]]


def _cutouts(n: int = 12, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Cutouts with no symmetry: noise, a point source off centre, a bright gradient."""
    rng = np.random.default_rng(seed)
    pixels = rng.normal(100.0, 5.0, size=(n, SIZE, SIZE, channels)).astype(np.float32)
    pixels[:, 5, 9, :] += rng.uniform(20, 200, size=(n, channels)).astype(np.float32)
    pixels += np.linspace(0, 30, SIZE, dtype=np.float32)[None, :, None, None]
    return pixels


def _network(architecture: str = "vgg") -> Any:
    import keras

    from otrain.nets.model import build_model

    keras.utils.set_random_seed(3)
    return build_model((SIZE, SIZE, 3), architecture=architecture, normalisation="asinh")  # type: ignore[arg-type]


def _p_real(model: Any, pixels: np.ndarray) -> np.ndarray:
    from otrain.score.scoring import predict

    return predict(model, pixels)


@pytest.mark.parametrize("architecture", ["vgg", "otrain"])
def test_the_augmented_score_does_not_change_under_flips_and_rotations(architecture: str) -> None:
    from otrain.nets.model import with_calibration
    from otrain.nets.tta import with_tta

    network = _network(architecture)
    pixels = _cutouts()
    plain = [_p_real(network, view) for view in _numpy_views(pixels)]
    # The network alone sees each orientation differently (else this test would prove nothing).
    assert max(np.max(np.abs(scores - plain[0])) for scores in plain) > 1e-4
    for model in (with_tta(network), with_calibration(with_tta(network), 1.7, 0.3)):
        scores = [_p_real(model, view) for view in _numpy_views(pixels)]
        for other in scores[1:]:
            assert_allclose(other, scores[0], rtol=0, atol=2e-6)


def test_it_is_the_mean_log_odds_of_the_8_views_then_the_calibration() -> None:
    from otrain.nets.calibration import CalibrationFit, apply_calibration, log_odds
    from otrain.nets.model import with_calibration
    from otrain.nets.tta import with_tta
    from otrain.score.scoring import predict_columns

    network = _network()
    pixels = _cutouts()
    z = np.mean([log_odds(predict_columns(network, view)) for view in _numpy_views(pixels)], axis=0)
    expected = 1.0 / (1.0 + np.exp(-z))
    assert_allclose(_p_real(with_tta(network), pixels), expected, rtol=0, atol=1e-6)
    calibrated = with_calibration(with_tta(network), 1.7, 0.3)
    columns = np.stack([1.0 - expected, expected], axis=1)
    assert_allclose(
        _p_real(calibrated, pixels), apply_calibration(columns, CalibrationFit("platt", 1.7, 0.3)), rtol=0, atol=1e-6
    )
    # The mean of the probabilities, kept for comparison.
    mean_p = np.mean([_p_real(network, view) for view in _numpy_views(pixels)], axis=0)
    assert_allclose(_p_real(with_tta(network, combine="probability"), pixels), mean_p, rtol=0, atol=1e-6)


def test_the_views_come_after_the_scaling_and_the_mean_before_the_calibration() -> None:
    from otrain.nets.dihedral import DihedralMean, DihedralViews
    from otrain.nets.model import Calibration, RobustScaling, with_calibration
    from otrain.nets.tta import has_tta, with_tta, without_tta

    network = _network()
    calibrated = with_calibration(network, 2.0, 0.0)
    augmented = with_tta(calibrated)  # an existing calibration stays last
    kinds = [type(layer) for layer in augmented.layers]
    assert kinds[:2] == [RobustScaling, DihedralViews]
    assert kinds[-2:] == [DihedralMean, Calibration]
    recalibrated = with_calibration(augmented, 1.5, 0.0)  # replaced in place, views and mean kept
    assert [type(layer) for layer in recalibrated.layers] == kinds
    assert has_tta(recalibrated)
    assert not has_tta(network)
    body = without_tta(recalibrated)
    assert not has_tta(body)
    assert [type(layer) for layer in body.layers] == [type(layer) for layer in calibrated.layers]
    assert without_tta(network) is network
    pixels = _cutouts(4)
    assert_allclose(_p_real(body, pixels), _p_real(with_calibration(network, 1.5, 0.0), pixels), atol=1e-7)


def test_non_square_cutouts_and_a_second_augmentation_are_refused() -> None:
    from otrain.nets.model import build_model
    from otrain.nets.tta import with_tta

    with pytest.raises(ValueError, match="needs square cutouts, the model takes 16x24"):
        with_tta(build_model((16, 24, 1), architecture="vgg"))
    with pytest.raises(ValueError, match="has test-time augmentation already"):
        with_tta(with_tta(_network()))


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_it_is_saved_and_loaded_with_the_model(suffix: str, tmp_path: Path) -> None:
    from otrain.nets.dihedral import DihedralMean
    from otrain.nets.model import load_model, save_model, with_calibration
    from otrain.nets.tta import has_tta, with_tta

    model = with_calibration(with_tta(_network(), combine="probability"), 1.3, 0.0)
    loaded = load_model(save_model(model, tmp_path / f"tta{suffix}"))
    assert has_tta(loaded)
    assert next(layer for layer in loaded.layers if isinstance(layer, DihedralMean)).combine == "probability"
    pixels = _cutouts()
    assert_allclose(_p_real(loaded, pixels), _p_real(model, pixels), rtol=0, atol=0)


def test_the_onnx_twin_passes_the_parity_check_and_is_invariant_too(tmp_path: Path) -> None:
    from otrain.nets.model import save_model, with_calibration
    from otrain.nets.tta import with_tta
    from otrain.score.backends import OnnxClassifier
    from otrain.score.scoring import predict
    from otrain.score.twin import export_onnx

    model = with_calibration(with_tta(_network()), 1.7, 0.3)
    model_file = save_model(model, tmp_path / "tta.keras")
    pixels = _cutouts(40)
    record = export_onnx(model, model_file, pixels)
    assert record["parity"]["cutouts"] == 40
    assert record["parity"]["max_share_of_allowance"] <= 1.0
    twin = OnnxClassifier(tmp_path / "tta.onnx")
    scores = [predict(twin, view) for view in _numpy_views(pixels)]
    for other in scores[1:]:
        assert_allclose(other, scores[0], rtol=0, atol=2e-6)
    assert_allclose(scores[0], _p_real(model, pixels), rtol=0, atol=1e-6)


def test_grad_cam_explains_the_network_on_the_cutout_as_given() -> None:
    from otrain.judge.gradcam import gradcam_maps
    from otrain.nets.model import with_calibration
    from otrain.nets.tta import with_tta

    network = _network()
    pixels, classes = _cutouts(3), np.array([1, 0, 1])
    maps = gradcam_maps(with_calibration(with_tta(network), 1.5, 0.0), pixels, classes)
    assert maps.shape == (3, SIZE, SIZE)
    assert_allclose(maps, gradcam_maps(network, pixels, classes), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# otrain-train --tta, end to end.


def test_train_with_tta_then_infer(tree_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from otrain.cli.convert import main as convert_main
    from otrain.cli.train import main as train_main
    from otrain.nets.model import load_model
    from otrain.nets.tta import has_tta

    tree = tree_factory(30, 30, size=SIZE)
    assert call_main(convert_main, "--path", tmp_path, "--cube", "tiny", "--cutouts", tree, "--frac-true", "-1") == 0
    cube = tmp_path / "datacube" / "tiny.npz"
    options = ("--cube", cube, "--model-path", tmp_path / "models", "--no-tracking", "--batch-size", "16")
    recipe = ("--recipe", "small-real", "--epochs", "1")
    assert call_main(train_main, *options, "--model-name", "tta", *recipe, "--tta") == 0
    folder = tmp_path / "models" / "CNN_training" / "tta"
    card = json.loads((folder / "tta.keras.card.json").read_text())
    assert card["test_time_augmentation"] == {"views": 8, "combine": "log_odds"}
    assert card["params"]["tta"] is True
    assert card["recipe"] == {"name": "small-real", "values": card["recipe"]["values"], "overridden": {"epochs": 1}}
    assert (card["architecture"], card["normalisation"], card["params"]["lr_schedule"]) == ("vgg", "asinh", "cosine")
    assert "absent" not in card["onnx"]
    assert card["onnx"]["parity"]["cutouts"] == 60
    model = load_model(folder / "tta.keras")
    assert has_tta(model)
    from otrain.judge.gradcam import gradcam_maps

    maps = gradcam_maps(model, Datacube.load(cube).cube[:2], np.array([1, 0]), "gradcam++")
    assert maps.shape == (2, SIZE, SIZE)
    # The test metrics are those of the augmented, calibrated model.
    test = Datacube.load(folder / "test_set" / "datacube" / "cube_test.npz")
    from otrain.metrics.evaluation import expected_calibration_error

    assert card["test_metrics"]["expected_calibration_error"] == pytest.approx(
        expected_calibration_error(test.labels, _p_real(model, test.cube)), abs=1e-6
    )
    tables = {}
    for backend in ("onnx", "keras"):
        output = tmp_path / f"{backend}.dat"
        result = run_command(
            "otrain-infer", "--cutouts", str(tree / "true"), "--model", str(folder / "tta.keras"),
            "--output", str(output), "--no-tracking", "--backend", backend,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        tables[backend] = astropy_ascii.read(output, format="commented_header")
    assert len(tables["onnx"]) == 30
    assert_allclose(tables["onnx"]["label1"], tables["keras"]["label1"], atol=1e-5)
    # otrain-infer scores the mean of the views: a cutout and its rotation by 90 degrees score alike.
    pixels = Datacube.load(cube).cube[:5]
    rotated = np.ascontiguousarray(np.rot90(pixels, 1, axes=(1, 2)))
    assert_allclose(_p_real(model, rotated), _p_real(model, pixels), atol=2e-6)
    # Not square: refused before anything is written.
    whole = Datacube.load(cube)
    narrow_file = dataclasses.replace(whole, cube=np.ascontiguousarray(whole.cube[:, :, :12, :])).save(
        tmp_path / "narrow.npz"
    )
    capsys.readouterr()
    code = call_main(train_main, *options[2:], "--cube", narrow_file, "--model-name", "narrow", "--tta")
    assert code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(f"error: --tta: needs square cutouts (8 flips and rotations of one shape), {narrow_file} holds 16x12")
    )
    assert not (tmp_path / "models" / "CNN_training" / "narrow").exists()
